//! The column-block multiply: C_J = A · B_J, all column-major.
//!
//! On x86-64 with AVX-512 the kernel is our own (`avx512`), for products of
//! enough rows that it fills its blocks, where it measured 1.1–1.4× the
//! speed of matrixmultiply's; elsewhere matrixmultiply picks its
//! AVX2/FMA kernels at run time, and simd128 for f32 on wasm, where f64 goes
//! through our `wasm_f64`. Threads are the caller's business: a block can be split into
//! narrower column ranges and each range multiplied independently.

use crate::matrix::{Dtype, Element, Matrix};

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod wasm_f64;

/// Whether f64 goes through our simd128 kernel rather than matrixmultiply's
/// portable one. Only where it measured faster (the page's `?bench` shows both).
pub const SIMD_F64: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));

/// Computes `c = a · b` where `b` holds `cols` columns of length `a.cols()` and
/// `c` holds `cols` columns of length `a.rows()`, both column-major.
///
/// # Panics
/// If the slice lengths do not match the shapes; callers validate untrusted
/// shapes before they get here.
pub fn multiply_into<T: Element>(a: &Matrix<T>, b: &[T], c: &mut [T]) {
    multiply_with(a, b, c, true);
}

/// As [`multiply_into`], but always through matrixmultiply: the reference our
/// own kernels are tested and benchmarked against.
pub fn multiply_into_portable<T: Element>(a: &Matrix<T>, b: &[T], c: &mut [T]) {
    multiply_with(a, b, c, false);
}

fn multiply_with<T: Element>(a: &Matrix<T>, b: &[T], c: &mut [T], ours: bool) {
    let (m, k) = (a.rows(), a.cols());
    assert!(k > 0 && b.len().is_multiple_of(k), "B block length {} is not a multiple of k={k}", b.len());
    let n = b.len() / k;
    assert_eq!(c.len(), m * n, "C block length does not match {m}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    match T::DTYPE {
        Dtype::F64 => gemm_f64(m, k, n, bytemuck::cast_slice(a.as_slice()), bytemuck::cast_slice(b), bytemuck::cast_slice_mut(c), ours),
        Dtype::F32 => gemm_f32(m, k, n, bytemuck::cast_slice(a.as_slice()), bytemuck::cast_slice(b), bytemuck::cast_slice_mut(c), ours),
    }
}

/// `c = a · b` on raw column-major slices, where `a` has `m` rows; `c` is
/// overwritten. For callers that hold columns of a larger matrix.
///
/// # Panics
/// If the lengths do not describe an m×k by k×n product.
pub fn gemm_into(m: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    assert!(m > 0 && a.len().is_multiple_of(m), "A's length {} is not a multiple of m={m}", a.len());
    let k = a.len() / m;
    assert!(k > 0 && b.len().is_multiple_of(k) && c.len() == m * (b.len() / k), "shapes do not match");
    gemm_f64(m, k, b.len() / k, a, b, c, true);
}

/// Returns A · B_J as a new matrix.
pub fn multiply<T: Element>(a: &Matrix<T>, b: &[T]) -> Matrix<T> {
    let n = b.len() / a.cols().max(1);
    let mut c = Matrix::zeros(a.rows(), n).expect("C is no larger than A and B");
    multiply_into(a, b, c.as_mut_slice());
    c
}

/// Floating-point operations in an m×k by k×n product.
pub fn flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64
}

fn as_isize(x: usize) -> isize {
    isize::try_from(x).expect("matrix dimension fits in isize")
}

/// The signature of matrixmultiply's `dgemm` and `sgemm`.
type RawGemm<T> = unsafe fn(usize, usize, usize, T, *const T, isize, isize, *const T, isize, isize, T, *mut T, isize, isize);

/// `c = a · b` for column-major m×k, k×n and m×n slices, through `raw`.
#[allow(unsafe_code)]
fn gemm<T: Element>(raw: RawGemm<T>, m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
    debug_assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    // SAFETY: the slices hold exactly m*k, k*n and m*n elements (checked by the
    // caller), and the strides describe column-major layouts within them.
    unsafe {
        raw(m, k, n, one, a.as_ptr(), 1, as_isize(m), b.as_ptr(), 1, as_isize(k), zero, c.as_mut_ptr(), 1, as_isize(m));
    }
}

/// `c = a · b` in f64: through our kernel where there is one for this CPU
/// and `ours` is set, else through matrixmultiply.
fn gemm_f64(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64], ours: bool) {
    #[cfg(target_arch = "x86_64")]
    if ours && avx512::suits::<f64>(m) {
        return avx512::gemm(m, k, n, a, b, c);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if ours {
        return wasm_f64::dgemm(m, k, n, a, b, c);
    }
    let _ = ours;
    gemm(matrixmultiply::dgemm, m, k, n, a, b, c);
}

/// As [`gemm_f64`], in f32 (matrixmultiply has a simd128 kernel of its own).
fn gemm_f32(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], ours: bool) {
    #[cfg(target_arch = "x86_64")]
    if ours && avx512::suits::<f32>(m) {
        return avx512::gemm(m, k, n, a, b, c);
    }
    let _ = ours;
    gemm(matrixmultiply::sgemm, m, k, n, a, b, c);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook triple loop, in f64, as an independent reference.
    pub(crate) fn naive(a: &Matrix<f64>, b: &Matrix<f64>) -> Matrix<f64> {
        Matrix::from_fn(a.rows(), b.cols(), |i, j| (0..a.cols()).map(|p| a.get(i, p) * b.get(p, j)).sum())
    }

    #[test]
    fn seed_example() {
        let a = Matrix::from_fn(3, 3, |i, j| (3 * i + j + 1) as f64);
        let c = multiply(&a, a.as_slice());
        assert_eq!(c.columns(0..1), &[30.0, 66.0, 102.0]);
        assert_eq!(c.columns(1..2), &[36.0, 81.0, 126.0]);
        assert_eq!(c.columns(2..3), &[42.0, 96.0, 150.0]);
    }

    #[test]
    fn f32_matches_f64_on_small_integers() {
        let a = Matrix::from_fn(5, 4, |i, j| (i as f32) - (j as f32));
        let b = Matrix::from_fn(4, 3, |i, j| (i * j) as f32);
        let c = multiply(&a, b.as_slice());
        let a64 = Matrix::from_fn(5, 4, |i, j| f64::from(a.get(i, j)));
        let b64 = Matrix::from_fn(4, 3, |i, j| f64::from(b.get(i, j)));
        let expect = naive(&a64, &b64);
        for (x, y) in c.as_slice().iter().zip(expect.as_slice()) {
            assert_eq!(f64::from(*x), *y);
        }
    }

    proptest! {
        #[test]
        fn matches_naive_on_integers(m in 1usize..40, k in 1usize..40, n in 1usize..40, seed in any::<u64>()) {
            // Small integers make every product and sum exact, so equality is exact.
            let v = |i: usize, j: usize, s: u64| ((i as u64 * 31 + j as u64 * 17 + s) % 7) as f64 - 3.0;
            let a = Matrix::from_fn(m, k, |i, j| v(i, j, seed));
            let b = Matrix::from_fn(k, n, |i, j| v(i, j, seed / 3));
            prop_assert_eq!(multiply(&a, b.as_slice()), naive(&a, &b));
        }
    }
}
