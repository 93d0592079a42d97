//! Native kernel speed on one thread, to set beside the browser's `?bench`:
//! `cargo run --release -p colonnade-native --example kernel_bench [n]`.

use std::time::Instant;

use colonnade_core::kernel::{flops, multiply_into};
use colonnade_core::{Element, Matrix};

fn median_gflops<T: Element>(n: usize) -> f64 {
    let a = Matrix::from_fn(n, n, |i, j| T::from_f64(((i * 7 + j * 3) % 11) as f64 - 5.0));
    let b = Matrix::from_fn(n, n, |i, j| T::from_f64(((i * 5 + j * 13) % 9) as f64 - 4.0));
    let mut c = Matrix::<T>::zeros(n, n).expect("fits");
    multiply_into(&a, b.as_slice(), c.as_mut_slice());
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            multiply_into(&a, b.as_slice(), c.as_mut_slice());
            flops(n, n, n) / start.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn main() {
    let n = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    println!("native n={n}, 1 thread: f32 {:.1} GFLOP/s, f64 {:.1} GFLOP/s", median_gflops::<f32>(n), median_gflops::<f64>(n));
}
