//! The wasm-only f64 kernel against matrixmultiply's portable one, in wasm,
//! and honest results of the wasm kernels against the master's verification.
//! Run by `cargo xtask test` through wasm-bindgen-test-runner.
#![cfg(target_arch = "wasm32")]

use colonnade_core::kernel::{multiply_into, multiply_into_portable, SIMD_F64};
use colonnade_core::plan::Tile;
use colonnade_core::verify::Verifier;
use colonnade_core::{DenseMatrix, Element, Matrix};
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

/// A tiny deterministic generator: uniform in [0, 1).
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn sign(&mut self) -> f64 {
        if self.unit() < 0.5 {
            -1.0
        } else {
            1.0
        }
    }
}

/// 1000 tiles of 8 rows × 64 columns at k = 600 (over two of the f64 kernel's
/// 256-deep slices and a remainder), computed by this build's kernel: none
/// may fail verification. Entries are uniform in [-1, 1], all positive of one
/// magnitude, or spread over many orders of magnitude with mixed signs.
fn honest_tiles_pass<T: Element>(wild_exponents: f64)
where
    DenseMatrix: From<Matrix<T>>,
{
    let (rows, width, k, n) = (8, 64, 600, 512);
    let m = 1000 / (n / width) * rows;
    let mut rng = Rng(5);
    let kind = |rng: &mut Rng, j: usize| match j / width % 3 {
        0 => rng.unit() * 2.0 - 1.0,
        1 => 1.0 + rng.unit(),
        _ => rng.sign() * 10f64.powf((rng.unit() * 2.0 - 1.0) * wild_exponents),
    };
    let a = Matrix::<T>::from_fn(m, k, |_, p| T::from_f64(kind(&mut rng, p % n)));
    let b = Matrix::<T>::from_fn(k, n, |_, j| T::from_f64(kind(&mut rng, j)));
    let tiles: Vec<Tile> = (0..n)
        .step_by(width)
        .flat_map(|c| (0..m).step_by(rows).map(move |r| Tile { rows: r..r + rows, cols: c..c + width, depth: 0..k }))
        .collect();
    assert_eq!(tiles.len(), 1000);
    let weights = (0..n).map(|_| rng.sign() * (1.0 + rng.unit())).collect();
    let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, weights, false);
    let mut rejected = Vec::new();
    for (i, tile) in tiles.iter().enumerate() {
        let a_part = Matrix::from_fn(rows, k, |r, p| a.get(tile.rows.start + r, p));
        let mut c = Matrix::<T>::zeros(rows, width).unwrap();
        multiply_into(&a_part, b.columns(tile.cols.clone()), c.as_mut_slice());
        if let Err(mismatch) = verifier.check(i, &DenseMatrix::from(c)) {
            rejected.push(mismatch.to_string());
        }
    }
    assert!(rejected.is_empty(), "{} of 1000 honest tiles rejected, first: {}", rejected.len(), rejected[0]);
    // And a wrong one is not let through here either.
    let mut c = Matrix::<T>::zeros(rows, width).unwrap();
    multiply_into(&Matrix::from_fn(rows, k, |r, p| a.get(r, p)), b.columns(0..width), c.as_mut_slice());
    c.as_mut_slice()[3] = T::from_f64(c.as_slice()[3].to_f64() * 1.001 + 1e-3);
    assert!(verifier.check(0, &DenseMatrix::from(c)).is_err());
}

#[wasm_bindgen_test]
fn honest_f64_tiles_from_the_simd_kernel_pass_verification() {
    honest_tiles_pass::<f64>(100.0);
}

#[wasm_bindgen_test]
fn honest_f32_tiles_from_the_simd_kernel_pass_verification() {
    honest_tiles_pass::<f32>(8.0);
}
