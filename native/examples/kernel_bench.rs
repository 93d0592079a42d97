//! Native kernel speed on one thread, ours against matrixmultiply's, to set
//! beside the browser's `?bench`:
//! `cargo run --release -p colonnade-native --example kernel_bench [n | m k n]`
//! (a worker's task at n=4096 is `4096 4096 256`).
//! The two run in turns, so that a change in the machine's speed hits both;
//! the ratio is the median of each turn's own ratio.

use std::time::Instant;

use colonnade_core::kernel::{flops, multiply_into, multiply_into_portable};
use colonnade_core::{Element, Matrix};

const TURNS: usize = 7;

fn gflops<T: Element>(a: &Matrix<T>, b: &Matrix<T>, c: &mut Matrix<T>, multiply: fn(&Matrix<T>, &[T], &mut [T])) -> f64 {
    let start = Instant::now();
    multiply(a, b.as_slice(), c.as_mut_slice());
    flops(a.rows(), a.cols(), b.cols()) / start.elapsed().as_secs_f64() / 1e9
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn compare<T: Element>([m, k, n]: [usize; 3]) {
    let a = Matrix::from_fn(m, k, |i, j| T::from_f64(((i * 7 + j * 3) % 11) as f64 - 5.0));
    let b = Matrix::from_fn(k, n, |i, j| T::from_f64(((i * 5 + j * 13) % 9) as f64 - 4.0));
    let mut c = Matrix::<T>::zeros(m, n).expect("fits");
    let mut reference = Matrix::<T>::zeros(m, n).expect("fits");
    multiply_into(&a, b.as_slice(), c.as_mut_slice());
    multiply_into_portable(&a, b.as_slice(), reference.as_mut_slice());
    assert!(c == reference, "the kernels disagree on small integers, where both are exact");
    let (mut ours, mut theirs, mut ratios) = (vec![], vec![], vec![]);
    for _ in 0..TURNS {
        let o = gflops(&a, &b, &mut c, multiply_into);
        let t = gflops(&a, &b, &mut c, multiply_into_portable);
        ours.push(o);
        theirs.push(t);
        ratios.push(o / t);
    }
    println!(
        "{:>4} {m}x{k} by {k}x{n}, 1 thread: {:6.1} GFLOP/s, matrixmultiply {:6.1} GFLOP/s, ratio {:.2} (medians of {TURNS} turns)",
        T::DTYPE,
        median(ours),
        median(theirs),
        median(ratios)
    );
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("sizes are whole numbers")).collect();
    let shape = match args[..] {
        [] => [1024; 3],
        [n] => [n; 3],
        [m, k, n] => [m, k, n],
        _ => panic!("usage: kernel_bench [n | m k n]"),
    };
    compare::<f32>(shape);
    compare::<f64>(shape);
}
