//! Time to precompute result checks for an n×n job (median of 5):
//! `cargo run --release -p colonnade-native --example verify_prep [n]`.

use std::time::Instant;

use colonnade_core::plan::{CostModel, Plan};
use colonnade_core::verify::Verifier;
use colonnade_core::{DenseMatrix, Matrix};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let a = std::sync::Arc::new(DenseMatrix::F64(Matrix::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0)));
    let b = std::sync::Arc::new(DenseMatrix::F64(Matrix::from_fn(n, n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0)));
    let plan = Plan::new(n, n, n, CostModel::default().block_width(n, n, n, 8));
    let tiles: Vec<_> = (0..plan.blocks()).map(|i| plan.tile(i)).collect();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let v = Verifier::new(std::sync::Arc::clone(&a), std::sync::Arc::clone(&b), &tiles, vec![1.5; n], false);
            std::hint::black_box(v);
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("verify prep n={n}, {} blocks: median {:.1} ms", plan.blocks(), times[2] * 1e3);
}
