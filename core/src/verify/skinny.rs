//! The precompute's two skinny products in one pass over A:
//! y = A·x and s = |A|·t, where x and t have a few columns (one per group).
//!
//! A general kernel packs A for one and |A| for the other, and takes the
//! columns of x and t in blocks sized for square products. Here each element
//! of A is loaded once, its magnitude taken
//! in a register, and both products accumulated from it: a strip of rows times
//! a few columns of x and t at a time, in registers. A is packed a panel of
//! columns at a time into strips of rows (reading each column straight
//! through, which the prefetcher follows; strips read in place would hit the
//! same cache sets, their columns being m elements apart), and every column
//! of x and t passes over a strip while it is in L1. On x86-64 the same code
//! is compiled for AVX-512 and for AVX2 with FMA and picked at run time;
//! elsewhere it is plain. Any order of summation, with or without fused
//! multiply-adds, is within the error bounds the checks assume.

use std::ops::{Add, Mul, Range};

use crate::matrix::Element;

/// An element type the kernel works in.
pub(super) trait Lane: Copy + Default + Add<Output = Self> + Mul<Output = Self> {
    /// Fused; only where the CPU has FMA (elsewhere it is a slow library call).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn abs(self) -> Self;
}

impl Lane for f64 {
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        f64::mul_add(self, b, c)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
}

impl Lane for f32 {
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        f32::mul_add(self, b, c)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
}

/// The operands: A (m × k, column-major) and x and t (k × width), stored by
/// row (`xt[p * width + g]`, `tt` likewise); `width` is a multiple of
/// [`COLUMN_BLOCK`], zero-padded.
pub(super) struct Operands<'a, T> {
    pub m: usize,
    pub a: &'a [T],
    pub xt: &'a [T],
    pub tt: &'a [T],
    pub width: usize,
}

/// `Operands::width` is a multiple of this: the most columns of x or t any
/// kernel takes at once.
pub(super) const COLUMN_BLOCK: usize = 8;

/// A panel of A's columns packed at a time is about this many bytes: it stays
/// in L2 while its strips are worked through.
const PANEL_BYTES: usize = 1 << 20;

/// The code paths, best first.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kernel {
    Avx512,
    Avx2,
    Plain,
}

impl Kernel {
    /// Those this CPU can run.
    fn available() -> Vec<Kernel> {
        [Kernel::Avx512, Kernel::Avx2, Kernel::Plain].into_iter().filter(|k| k.runs_here()).collect()
    }

    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            match self {
                Kernel::Avx512 => fma && std::arch::is_x86_feature_detected!("avx512f"),
                Kernel::Avx2 => fma && std::arch::is_x86_feature_detected!("avx2"),
                Kernel::Plain => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Plain
        }
    }
}

/// (A·x, |A|·t), each m × width, column-major, summed in T.
pub(super) fn products<T: Lane>(operands: &Operands<'_, T>) -> (Vec<T>, Vec<T>) {
    products_with(Kernel::available()[0], operands)
}

#[allow(unsafe_code)]
fn products_with<T: Lane>(kernel: Kernel, operands: &Operands<'_, T>) -> (Vec<T>, Vec<T>) {
    let Operands { m, a, xt, tt, width } = *operands;
    assert!(width % COLUMN_BLOCK == 0 && xt.len() == tt.len() && xt.len() % width.max(1) == 0);
    let mut y = vec![T::default(); m * width];
    let mut s = vec![T::default(); m * width];
    if m == 0 || width == 0 || a.is_empty() {
        return (y, s);
    }
    assert_eq!(a.len(), m * (xt.len() / width), "A is m × k, x is k × width");
    assert!(kernel.runs_here(), "{kernel:?} needs what this CPU lacks");
    match kernel {
        // SAFETY: `runs_here` (asserted above) found the CPU features each of these is compiled for.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { products_avx512(operands, &mut y, &mut s) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { products_avx2(operands, &mut y, &mut s) },
        _ => panels::<T, 4, 4>(operands, &mut y, &mut s, |a, b, c| a * b + c, |_| {}),
    }
    (y, s)
}

/// A register of rows: 8 of f64 (by 8 columns), 16 of f32 (by 4: a larger
/// block of accumulators defeats the compiler's vectorizer).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn products_avx512<T: Lane>(operands: &Operands<'_, T>, y: &mut [T], s: &mut [T]) {
    if size_of::<T>() == 4 {
        panels::<T, 16, 4>(operands, y, s, T::mul_add, prefetch_l2);
    } else {
        panels::<T, 8, 8>(operands, y, s, T::mul_add, prefetch_l2);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn products_avx2<T: Lane>(operands: &Operands<'_, T>, y: &mut [T], s: &mut [T]) {
    if size_of::<T>() == 4 {
        panels::<T, 8, 8>(operands, y, s, T::mul_add, prefetch_l2);
    } else {
        panels::<T, 4, 8>(operands, y, s, T::mul_add, prefetch_l2);
    }
}

/// Asks for every cache line of `values` to be brought into L2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_l2<T>(values: &[T]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    for line in values.chunks(64 / size_of::<T>()) {
        // SAFETY: a prefetch is only a hint; it reads nothing and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
}

/// Panel by panel: pack strips of R rows, run every column block over each,
/// then the rows left over one at a time.
#[inline(always)]
fn panels<T: Lane, const R: usize, const C: usize>(
    operands: &Operands<'_, T>,
    y: &mut [T],
    s: &mut [T],
    fma: impl Fn(T, T, T) -> T + Copy,
    prefetch: impl Fn(&[T]),
) {
    let Operands { m, a, xt, tt, width } = *operands;
    let k = a.len() / m;
    let panel = (PANEL_BYTES / size_of::<T>() / m).clamp(1, k);
    let whole = m - m % R;
    let mut packed = vec![T::default(); whole * panel];
    let mut single = vec![T::default(); panel];
    for start in (0..k).step_by(panel) {
        let end = (start + panel).min(k);
        let (columns, kp) = (&a[start * m..end * m], end - start);
        let (xt, tt) = (&xt[start * width..end * width], &tt[start * width..end * width]);
        let packed = &mut packed[..whole * kp];
        for (p, column) in columns.chunks_exact(m).enumerate() {
            for (strip, values) in column[..whole].chunks_exact(R).enumerate() {
                let at = (strip * kp + p) * R;
                packed[at..at + R].copy_from_slice(values);
            }
        }
        // The next panel, fetched into cache while this one is computed.
        let next = &a[end * m..(end + panel).min(k) * m];
        let ahead = next.len().div_ceil((whole / R).max(1)).max(1);
        let mut ahead_chunks = next.chunks(ahead);
        for (strip, row) in packed.chunks_exact(R * kp).zip((0..).step_by(R)) {
            if let Some(chunk) = ahead_chunks.next() {
                prefetch(chunk);
            }
            for first in (0..width).step_by(C) {
                block::<T, R, C>(strip, xt, tt, width, first, &mut y[first * m + row..], &mut s[first * m + row..], m, fma);
            }
        }
        for row in whole..m {
            let single = &mut single[..kp];
            single.iter_mut().zip(columns.chunks_exact(m)).for_each(|(v, column)| *v = column[row]);
            for first in (0..width).step_by(C) {
                block::<T, 1, C>(single, xt, tt, width, first, &mut y[first * m + row..], &mut s[first * m + row..], m, fma);
            }
        }
    }
}

/// Adds a strip's share to R rows of COLUMN_BLOCK columns of y and s, which
/// start at y[0] and s[0], columns m apart. `strip` holds R values per
/// column of the panel; `xt` and `tt` the panel's rows of x and t.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<T: Lane, const R: usize, const C: usize>(
    strip: &[T],
    xt: &[T],
    tt: &[T],
    width: usize,
    first: usize,
    y: &mut [T],
    s: &mut [T],
    m: usize,
    fma: impl Fn(T, T, T) -> T + Copy,
) {
    one::<T, R, C, false>(strip, xt, width, first, y, m, fma);
    one::<T, R, C, true>(strip, tt, width, first, s, m, fma);
}

#[inline(always)]
fn one<T: Lane, const R: usize, const C: usize, const ABS: bool>(
    strip: &[T],
    xt: &[T],
    width: usize,
    first: usize,
    y: &mut [T],
    m: usize,
    fma: impl Fn(T, T, T) -> T,
) {
    let mut ys = [[T::default(); R]; C];
    for (values, xs) in strip.chunks_exact(R).zip(xt.chunks_exact(width)) {
        let values: &[T; R] = values.try_into().expect("R rows");
        let values = if ABS { values.map(T::abs) } else { *values };
        let xs: &[T; C] = xs[first..first + C].try_into().expect("a column block");
        for g in 0..C {
            for r in 0..R {
                ys[g][r] = fma(values[r], xs[g], ys[g][r]);
            }
        }
    }
    for g in 0..C {
        let yg = &mut y[g * m..g * m + R];
        for r in 0..R {
            yg[r] = yg[r] + ys[g][r];
        }
    }
}

/// x += Σ_j B[depth, j]·r_j and t += Σ_j |B[depth, j]·r_j| (in f64) over the
/// columns of `b`, each k long, with `weights` r: the precompute's pass over B.
#[allow(unsafe_code)]
pub(super) fn weigh<T: Element>(b: &[T], k: usize, depth: Range<usize>, weights: &[f64], x: &mut [f64], t: &mut [f64]) {
    assert!(b.len() == k * weights.len() && depth.end <= k && x.len() == depth.len() && t.len() == depth.len());
    match Kernel::available()[0] {
        // SAFETY: `available` found the CPU features each of these is compiled for.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { weigh_avx512(b, k, depth, weights, x, t) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { weigh_avx2(b, k, depth, weights, x, t) },
        _ => weigh_columns(b, k, depth, weights, x, t),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weigh_avx512<T: Element>(b: &[T], k: usize, depth: Range<usize>, weights: &[f64], x: &mut [f64], t: &mut [f64]) {
    weigh_columns(b, k, depth, weights, x, t);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn weigh_avx2<T: Element>(b: &[T], k: usize, depth: Range<usize>, weights: &[f64], x: &mut [f64], t: &mut [f64]) {
    weigh_columns(b, k, depth, weights, x, t);
}

#[inline(always)]
fn weigh_columns<T: Element>(b: &[T], k: usize, depth: Range<usize>, weights: &[f64], x: &mut [f64], t: &mut [f64]) {
    for (column, &r) in b.chunks_exact(k.max(1)).zip(weights) {
        for ((xp, tp), &v) in x.iter_mut().zip(t.iter_mut()).zip(&column[depth.clone()]) {
            let p = v.to_f64() * r;
            *xp += p;
            *tp += p.abs();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pass over B, against the plain definition, on a depth range inside k.
    #[test]
    fn weighing_matches_the_definition() {
        let (k, cols, depth) = (37, 5, 3..30);
        let b: Vec<f32> = (0..k * cols).map(|i| ((i * 29 % 13) as f32 - 6.0) / 8.0).collect();
        let weights = [1.5, -2.0, 1.25, -1.0, 1.75];
        let (mut x, mut t) = (vec![0.5; depth.len()], vec![0.25; depth.len()]);
        weigh(&b, k, depth.clone(), &weights, &mut x, &mut t);
        for (i, p) in depth.enumerate() {
            let terms = (0..cols).map(|j| f64::from(b[j * k + p]) * weights[j]);
            assert_eq!(x[i], 0.5 + terms.clone().sum::<f64>());
            assert_eq!(t[i], 0.25 + terms.map(f64::abs).sum::<f64>());
        }
    }

    /// Against the plain definition, on shapes with ragged rows and several
    /// panels, in both dtypes, through every kernel this CPU can run.
    #[test]
    fn both_products_match_the_definition() {
        for (m, k) in [(1, 5), (7, 3), (8, 5), (9, 5), (33, 2), (150, 4), (40_000, 9)] {
            let width = 2 * COLUMN_BLOCK;
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 11) as f64 - 5.0) / 4.0).collect();
            let xt: Vec<f64> = (0..k * width).map(|i| ((i * 13 % 7) as f64 - 3.0) / 2.0).collect();
            let tt: Vec<f64> = xt.iter().map(|v| v.abs() + 0.25).collect();
            let narrow = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (a32, xt32, tt32) = (narrow(&a), narrow(&xt), narrow(&tt));
            for kernel in Kernel::available() {
                let (y, s) = products_with(kernel, &Operands { m, a: &a, xt: &xt, tt: &tt, width });
                let (y32, s32) = products_with(kernel, &Operands { m, a: &a32, xt: &xt32, tt: &tt32, width });
                for g in 0..width {
                    for i in 0..m {
                        let want_y: f64 = (0..k).map(|p| a[p * m + i] * xt[p * width + g]).sum();
                        let want_s: f64 = (0..k).map(|p| a[p * m + i].abs() * tt[p * width + g]).sum();
                        // Quarters and halves: every sum here is exact in both dtypes.
                        assert_eq!((y[g * m + i], s[g * m + i]), (want_y, want_s), "m={m} ({i}, {g}) {kernel:?}");
                        assert_eq!((f64::from(y32[g * m + i]), f64::from(s32[g * m + i])), (want_y, want_s), "m={m} f32 ({i}, {g}) {kernel:?}");
                    }
                }
            }
        }
    }
}
