//! The wasm-only f64 kernel against matrixmultiply's portable one, in wasm.
//! Run by `cargo xtask test` through wasm-bindgen-test-runner.
#![cfg(target_arch = "wasm32")]

use colonnade_core::kernel::{multiply_into, multiply_into_portable, SIMD_F64};
use colonnade_core::Matrix;
use wasm_bindgen_test::wasm_bindgen_test;

fn check(m: usize, k: usize, n: usize) {
    // Small integers: both kernels are exact, so they must agree bit for bit.
    let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0);
    let mut fast = Matrix::<f64>::zeros(m, n).unwrap();
    let mut portable = Matrix::<f64>::zeros(m, n).unwrap();
    multiply_into(&a, b.as_slice(), fast.as_mut_slice());
    multiply_into_portable(&a, b.as_slice(), portable.as_mut_slice());
    assert_eq!(fast, portable, "{m}x{k} by {k}x{n}");
}

#[wasm_bindgen_test]
fn the_simd_kernel_is_in_use() {
    assert!(SIMD_F64, "built without simd128: check .cargo/config.toml");
}

#[wasm_bindgen_test]
fn matches_the_portable_kernel_on_awkward_shapes() {
    for (m, k, n) in [(1, 1, 1), (1, 7, 1), (5, 1, 3), (3, 5, 1), (4, 4, 4), (7, 9, 5), (65, 257, 9), (130, 300, 67)] {
        check(m, k, n);
    }
}

#[wasm_bindgen_test]
fn matches_the_portable_kernel_on_real_values() {
    let (m, k, n) = (97, 301, 45);
    let a = Matrix::from_fn(m, k, |i, j| ((i * 31 + j * 17) as f64).sin());
    let b = Matrix::from_fn(k, n, |i, j| ((i * 13 + j * 7) as f64).cos() * 1e3);
    let mut fast = Matrix::<f64>::zeros(m, n).unwrap();
    let mut portable = Matrix::<f64>::zeros(m, n).unwrap();
    multiply_into(&a, b.as_slice(), fast.as_mut_slice());
    multiply_into_portable(&a, b.as_slice(), portable.as_mut_slice());
    for (x, y) in fast.as_slice().iter().zip(portable.as_slice()) {
        assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{x} vs {y}");
    }
}
