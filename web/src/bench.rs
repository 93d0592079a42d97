//! The kernel's speed in this browser, for `?bench` on the page.

use colonnade_core::kernel::{self, flops};
use colonnade_core::{Element, Matrix};

fn median_gflops<T: Element>(n: usize, multiply: fn(&Matrix<T>, &[T], &mut [T])) -> f64 {
    let a = Matrix::from_fn(n, n, |i, j| T::from_f64(((i * 7 + j * 3) % 11) as f64 - 5.0));
    let b = Matrix::from_fn(n, n, |i, j| T::from_f64(((i * 5 + j * 13) % 9) as f64 - 4.0));
    let mut c = Matrix::<T>::zeros(n, n).expect("small");
    multiply(&a, b.as_slice(), c.as_mut_slice()); // warm-up
    let mut samples: Vec<f64> = (0..3)
        .map(|_| {
            let start = super::now_ms();
            multiply(&a, b.as_slice(), c.as_mut_slice());
            flops(n, n, n) / ((super::now_ms() - start) / 1e3) / 1e9
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[1]
}

/// Median GFLOP/s of three n×n multiplies, as `[f32, f64, f64 through the portable fallback]`.
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn bench(n: usize) -> Vec<f64> {
    vec![
        median_gflops::<f32>(n, kernel::multiply_into),
        median_gflops::<f64>(n, kernel::multiply_into),
        median_gflops::<f64>(n, kernel::multiply_into_portable),
    ]
}

/// This Web Worker's f64 kernel speed, flop/s, from a few small products: the
/// hint the tab gives the master in its Hello.
pub fn measure_speed() -> u64 {
    (median_gflops::<f64>(192, kernel::multiply_into) * 1e9) as u64
}
