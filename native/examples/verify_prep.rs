//! What result checks cost the master for an n×n job (or an m×k by k×n
//! one), in f64 and f32 (medians of 5): the precompute, the check of one
//! honest tile, and the check of one tile with an element off by 10 times the
//! honest bound (the flagged row's exact recheck).
//! `cargo run --release -p colonnade-native --example verify_prep [n | m k n]`
//! (the bench's tall-skinny job: `200000 256 256`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use colonnade_core::kernel;
use colonnade_core::plan::model::Problem;
use colonnade_core::plan::{CostModel, Plan};
use colonnade_core::verify::Verifier;
use colonnade_core::{DenseMatrix, Element, Matrix};

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("sizes are whole numbers")).collect();
    let (m, k, n) = match sizes[..] {
        [] => (4096, 4096, 4096),
        [n] => (n, n, n),
        [m, k, n] => (m, k, n),
        _ => panic!("give n, or m k n"),
    };
    run::<f64>(m, k, n);
    run::<f32>(m, k, n);
}

/// A small deterministic generator: uniform in [0, 1).
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

fn run<T: Element>(m: usize, k: usize, n: usize)
where
    DenseMatrix: From<Matrix<T>>,
{
    let mut rng = Rng(42);
    let a = Matrix::<T>::from_fn(m, k, |_, _| T::from_f64(rng.unit() * 2.0 - 1.0));
    let b = Matrix::<T>::from_fn(k, n, |_, _| T::from_f64(rng.unit() * 2.0 - 1.0));
    let plan = Plan::columns(m, k, n, CostModel::default().column_width(Problem { m, k, n, elem: T::DTYPE.size() }));
    let tiles: Vec<_> = (0..plan.tiles()).map(|i| plan.tile(i)).collect();
    let weights: Vec<f64> = (0..n).map(|_| if rng.unit() < 0.5 { -1.0 } else { 1.0 } * (1.0 + rng.unit())).collect();
    let (a_shared, b_shared) = (Arc::new(DenseMatrix::from(a.clone())), Arc::new(DenseMatrix::from(b.clone())));

    let mut verifier = None;
    let prep = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                verifier = Some(Verifier::new(Arc::clone(&a_shared), Arc::clone(&b_shared), &tiles, weights.clone(), false));
                start.elapsed()
            })
            .collect(),
    );
    let verifier = verifier.expect("built five times");
    // As the master builds it: the pass over A cut in two, one slice per core.
    let on_two_threads = |work: Vec<Box<dyn FnOnce() + Send + '_>>| std::thread::scope(|s| work.into_iter().for_each(|piece| drop(s.spawn(piece))));
    let prep_two = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                Verifier::new_in_parts(Arc::clone(&a_shared), Arc::clone(&b_shared), &tiles, weights.clone(), false, 2, &on_two_threads);
                start.elapsed()
            })
            .collect(),
    );

    let cols = plan.tile(0).cols;
    let mut honest = None;
    let compute = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                honest = Some(kernel::multiply(&a, b.columns(cols.clone())));
                start.elapsed()
            })
            .collect(),
    );
    let honest = DenseMatrix::from(honest.expect("computed five times"));
    let check_honest = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                assert_eq!(verifier.check(0, &honest), Ok(()), "an honest tile fails");
                start.elapsed()
            })
            .collect(),
    );

    // Element (i, j) off by 10·k·u·(|A||B|)_ij.
    let (i, j) = (m / 3, cols.len() / 2);
    let s: f64 = (0..k).map(|p| (a.get(i, p).to_f64() * b.get(p, cols.start + j).to_f64()).abs()).sum();
    let u = match T::DTYPE {
        colonnade_core::Dtype::F64 => f64::EPSILON / 2.0,
        colonnade_core::Dtype::F32 => f64::from(f32::EPSILON) / 2.0,
    };
    let mut lie = honest.clone();
    nudge(&mut lie, j * m + i, 10.0 * k as f64 * u * s);
    let mut flagged = 0;
    let check_lie = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                let report = verifier.check_report(0, &lie);
                let took = start.elapsed();
                assert!(report.verdict.is_err(), "a 10x lie passes");
                flagged = report.flagged_rows;
                took
            })
            .collect(),
    );
    println!(
        "{} {m}x{k} by {k}x{n}, {} tiles of {} columns: precompute {prep:.1} ms ({prep_two:.1} ms on 2 threads); check of one tile: honest {check_honest:.2} ms, \
         with a 10x-bound lie {check_lie:.2} ms ({flagged} row flagged); computing the tile on 1 thread: {compute:.1} ms",
        T::DTYPE,
        plan.tiles(),
        cols.len(),
    );
}

/// Adds `delta` to element `at`, in the matrix's own precision.
fn nudge(c: &mut DenseMatrix, at: usize, delta: f64) {
    match c {
        DenseMatrix::F64(c) => c.as_mut_slice()[at] += delta,
        DenseMatrix::F32(c) => c.as_mut_slice()[at] = (f64::from(c.as_slice()[at]) + delta) as f32,
    }
}
