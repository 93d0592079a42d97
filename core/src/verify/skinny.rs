//! The precompute's two skinny products in one pass over A:
//! y = A·x and s = |A|·t, where x and t have a few columns (one per group).
//!
//! A general kernel packs A for one and |A| for the other, and takes the
//! columns of x and t in blocks sized for square products. Here a strip of
//! rows of A is packed once, and both products are accumulated from it, a
//! few columns of x and t at a time, in registers (the magnitudes taken in
//! registers too). A is packed a panel at a time (a band of rows by a few
//! columns, see [`panels`]), strip after strip, each written in order
//! (strips read in place would hit the same cache sets, their columns being
//! a column of A apart; packed column by column, the strips' writes did, and
//! took a tenth longer), and every column of x and t passes over a strip
//! while it is in L1. On x86-64 the strips are written in AVX-512
//! intrinsics, or compiled for AVX2 with FMA, picked at run time; elsewhere
//! the code is plain. Any order of summation, with or without fused
//! multiply-adds, is within the error bounds the checks assume.

use std::ops::{Add, Mul, Range};

use crate::matrix::Element;

/// An element type the kernel works in.
pub(super) trait Lane: Copy + Default + Add<Output = Self> + Mul<Output = Self> {
    /// Fused; only where the CPU has FMA (elsewhere it is a slow library call).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn abs(self) -> Self;
    /// [`avx512`]'s strip for this type: R = 3 registers of rows of y, then
    /// of s, by the 8 columns from `first`.
    ///
    /// # Safety
    /// Only where the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments, unsafe_code)]
    unsafe fn strip_avx512(strip: &[Self], xt: &[Self], tt: &[Self], width: usize, first: usize, y: &mut [Self], s: &mut [Self], m: usize);
}

/// The impl for a float type, whose AVX-512 strip is `avx512::$strip`.
macro_rules! lane {
    ($t:ty, $strip:ident) => {
        impl Lane for $t {
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                <$t>::mul_add(self, b, c)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            #[allow(unsafe_code)]
            unsafe fn strip_avx512(strip: &[Self], xt: &[Self], tt: &[Self], width: usize, first: usize, y: &mut [Self], s: &mut [Self], m: usize) {
                // SAFETY: the caller has checked for AVX-512F.
                unsafe {
                    avx512::$strip::<false>(strip, xt, width, first, y, m);
                    avx512::$strip::<true>(strip, tt, width, first, s, m);
                }
            }
        }
    };
}

lane!(f64, strip_f64);
lane!(f32, strip_f32);

/// The operands: A (m × k, column-major, its columns `lda` apart: m rows of
/// a taller matrix, or all of it) and x and t (k × width), stored by row
/// (`xt[p * width + g]`, `tt` likewise); `width` is a multiple of
/// [`COLUMN_BLOCK`], zero-padded.
pub(super) struct Operands<'a, T> {
    pub m: usize,
    pub lda: usize,
    pub a: &'a [T],
    pub xt: &'a [T],
    pub tt: &'a [T],
    pub width: usize,
}

/// `Operands::width` is a multiple of this: the most columns of x or t any
/// kernel takes at once.
pub(super) const COLUMN_BLOCK: usize = 8;

/// A panel of A packed at a time is about this many bytes: it stays in L2
/// while its strips are worked through.
const PANEL_BYTES: usize = 1 << 20;

/// A packed strip (R rows by the panel's columns) is about this many bytes:
/// it stays in L1 while every column block of x and t passes over it.
const STRIP_BYTES: usize = 16 << 10;

/// The code paths, best first.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kernel {
    Avx512,
    Avx2,
    Plain,
}

impl Kernel {
    /// Those this CPU can run (the tests run each).
    #[cfg(test)]
    fn available() -> Vec<Kernel> {
        [Kernel::Avx512, Kernel::Avx2, Kernel::Plain].into_iter().filter(|k| k.runs_here()).collect()
    }

    /// The best this CPU can run (the result checks pick their code by it too).
    pub(super) fn best() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2].into_iter().find(|k| k.runs_here()).unwrap_or(Kernel::Plain)
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

/// Adds A·x into `y` and |A|·t into `s` (each m × width, column-major),
/// summed in T.
pub(super) fn add_products<T: Lane>(operands: &Operands<'_, T>, y: &mut [T], s: &mut [T]) {
    add_products_with(Kernel::best(), operands, y, s)
}

#[allow(unsafe_code)]
fn add_products_with<T: Lane>(kernel: Kernel, operands: &Operands<'_, T>, y: &mut [T], s: &mut [T]) {
    let Operands { m, lda, a, xt, tt, width } = *operands;
    assert!(width % COLUMN_BLOCK == 0 && xt.len() == tt.len() && xt.len() % width.max(1) == 0);
    assert!(y.len() == m * width && s.len() == m * width, "y and s are m × width");
    if m == 0 || width == 0 || xt.is_empty() {
        return;
    }
    let k = xt.len() / width;
    assert!(lda >= m && a.len() >= (k - 1) * lda + m, "A is m × k, its columns lda apart; x is k × width");
    assert!(kernel.runs_here(), "{kernel:?} needs what this CPU lacks");
    match kernel {
        // SAFETY: `runs_here` (asserted above) found the CPU features each of these is compiled for.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { products_avx512(operands, y, s) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { products_avx2(operands, y, s) },
        _ => {
            let fma = |a, b, c| a * b + c;
            panels::<T, 4, 4>(operands, y, s, fma, |_| {}, |v, xt, tt, w, f, y, s, m| block::<T, 4, 4>(v, xt, tt, w, f, y, s, m, fma))
        }
    }
}

/// Three registers of rows by 8 columns, written with intrinsics (see
/// [`avx512`]). The next panel is left to the hardware prefetcher: software
/// prefetches stalled on it, and without them the precompute took 47.5 ms
/// instead of 60 at n=4096 in f64 (medians of 8, alternating), and 20.9
/// instead of 26 in f32 (medians of 6).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(unsafe_code)]
fn products_avx512<T: Lane>(operands: &Operands<'_, T>, y: &mut [T], s: &mut [T]) {
    // SAFETY: this function is compiled for AVX-512F and runs only where it is.
    let strip = |v: &[T], xt: &[T], tt: &[T], w, f, y: &mut [T], s: &mut [T], m| unsafe { T::strip_avx512(v, xt, tt, w, f, y, s, m) };
    if size_of::<T>() == 4 {
        panels::<T, 48, 8>(operands, y, s, T::mul_add, |_| {}, strip);
    } else {
        panels::<T, 24, 8>(operands, y, s, T::mul_add, |_| {}, strip);
    }
}

/// The strips for AVX-512, in intrinsics: three registers of rows by 8
/// columns, 24 accumulators, enough to keep both FMA units busy through
/// their latency, with 11 loads per 24 multiply-adds (with two registers,
/// 10 per 16, the f32 preparation took 15% longer; f64 moved within the
/// noise: half of its time is reading A and B). The compiler does not
/// vectorize the generic code at that size: it kept a third as many.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    macro_rules! strip {
        ($name:ident, $t:ty, $lanes:literal, $zero:ident, $load:ident, $store:ident, $set1:ident, $fmadd:ident, $abs:ident, $add:ident) => {
            /// y[g·m + r] += Σ_p v[p·R + r]·xt[p·width + first + g] for the
            /// strip's R = 3·lanes rows and g < 8, with v = |strip| if ABS.
            #[target_feature(enable = "avx512f")]
            pub(super) fn $name<const ABS: bool>(strip: &[$t], xt: &[$t], width: usize, first: usize, y: &mut [$t], m: usize) {
                const R: usize = 3 * $lanes;
                assert!(first + 8 <= width && strip.len().is_multiple_of(R) && strip.len() / R * width <= xt.len() && y.len() >= 7 * m + R);
                let mut acc = [[$zero(); 3]; 8];
                for (values, xs) in strip.chunks_exact(R).zip(xt.chunks_exact(width)) {
                    // SAFETY: `values` holds R = 3·lanes elements.
                    let mut v = unsafe { [0, 1, 2].map(|r| $load(values.as_ptr().add(r * $lanes))) };
                    if ABS {
                        v = v.map(|v| $abs(v));
                    }
                    let xs = &xs[first..first + 8];
                    for g in 0..8 {
                        let x = $set1(xs[g]);
                        for r in 0..3 {
                            acc[g][r] = $fmadd(v[r], x, acc[g][r]);
                        }
                    }
                }
                for (g, sums) in acc.into_iter().enumerate() {
                    let out = &mut y[g * m..g * m + R];
                    // SAFETY: `out` holds R = 3·lanes elements.
                    unsafe {
                        let p = out.as_mut_ptr();
                        for (r, sum) in sums.into_iter().enumerate() {
                            $store(p.add(r * $lanes), $add($load(p.add(r * $lanes)), sum));
                        }
                    }
                }
            }
        };
    }

    strip!(strip_f64, f64, 8, _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_abs_pd, _mm512_add_pd);
    strip!(strip_f32, f32, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_abs_ps, _mm512_add_ps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn products_avx2<T: Lane>(operands: &Operands<'_, T>, y: &mut [T], s: &mut [T]) {
    if size_of::<T>() == 4 {
        panels::<T, 8, 8>(operands, y, s, T::mul_add, prefetch_l2, |v, xt, tt, w, f, y, s, m| block::<T, 8, 8>(v, xt, tt, w, f, y, s, m, T::mul_add));
    } else {
        panels::<T, 4, 8>(operands, y, s, T::mul_add, prefetch_l2, |v, xt, tt, w, f, y, s, m| block::<T, 4, 8>(v, xt, tt, w, f, y, s, m, T::mul_add));
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

/// Panel by panel: a panel is a band of rows of A by the columns that make
/// a strip of [`STRIP_BYTES`], as many rows as make [`PANEL_BYTES`]. Each
/// strip's sums stay in registers over all its columns, and y and s are read
/// and written once per panel: for a band, not for all of A's rows (which,
/// for a tall A, fell out of cache at every panel). Pack the panel's strips
/// of R rows, run `strip` over each for every block of C columns (as
/// [`block`] does), then the rows left over one at a time.
#[inline(always)]
fn panels<T: Lane, const R: usize, const C: usize>(
    operands: &Operands<'_, T>,
    y: &mut [T],
    s: &mut [T],
    fma: impl Fn(T, T, T) -> T + Copy,
    prefetch: impl Fn(&[T]),
    strip: impl Fn(&[T], &[T], &[T], usize, usize, &mut [T], &mut [T], usize),
) {
    let Operands { m, lda, a, xt, tt, width } = *operands;
    let k = xt.len() / width;
    let column = |c: usize| &a[c * lda..c * lda + m];
    let elements = PANEL_BYTES / size_of::<T>();
    let depth = (STRIP_BYTES / size_of::<T>() / R).clamp(1, k);
    // Rows per panel: all of them if they fit, else a multiple of R.
    let band = if m * depth <= elements { m } else { (elements / depth / R * R).max(R) };
    let panels: Vec<(usize, usize)> = (0..m).step_by(band).flat_map(|r0| (0..k).step_by(depth).map(move |c0| (r0, c0))).collect();
    let rows_and_columns = |(r0, c0): (usize, usize)| (r0..(r0 + band).min(m), c0..(c0 + depth).min(k));
    let mut packed = vec![T::default(); band / R * R * depth];
    let mut single = vec![T::default(); depth];
    for (i, &panel) in panels.iter().enumerate() {
        let (rows, cols) = rows_and_columns(panel);
        let (whole, kp) = (rows.len() - rows.len() % R, cols.len());
        let (xt, tt) = (&xt[cols.start * width..cols.end * width], &tt[cols.start * width..cols.end * width]);
        let packed = &mut packed[..whole * kp];
        for (out, row) in packed.chunks_exact_mut(R * kp).zip(rows.clone().step_by(R)) {
            for (values, column) in out.chunks_exact_mut(R).zip(cols.clone().map(column)) {
                values.copy_from_slice(&column[row..row + R]);
            }
        }
        // The next panel's columns, fetched into cache a few per strip while this one is computed.
        let (next_rows, mut ahead) = panels.get(i + 1).map_or((0..0, 0..0), |&next| rows_and_columns(next));
        let share = ahead.len().div_ceil((whole / R).max(1));
        for (values, row) in packed.chunks_exact(R * kp).zip(rows.clone().step_by(R)) {
            ahead.by_ref().take(share).for_each(|col| prefetch(&column(col)[next_rows.clone()]));
            for first in (0..width).step_by(C) {
                strip(values, xt, tt, width, first, &mut y[first * m + row..], &mut s[first * m + row..], m);
            }
        }
        for row in rows.start + whole..rows.end {
            let single = &mut single[..kp];
            single.iter_mut().zip(cols.clone().map(column)).for_each(|(v, column)| *v = column[row]);
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
    match Kernel::best() {
        // SAFETY: `best` found the CPU features each of these is compiled for.
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

/// Columns of B weighed together: x and t (each k long, in f64) are read and
/// written once per block rather than once per column, which made the pass
/// bound by their traffic, not by B's.
const WEIGH_BLOCK: usize = 8;

#[inline(always)]
fn weigh_columns<T: Element>(b: &[T], k: usize, depth: Range<usize>, weights: &[f64], x: &mut [f64], t: &mut [f64]) {
    if k == 0 {
        return; // an empty depth range: nothing to add
    }
    let whole = weights.len() / WEIGH_BLOCK * WEIGH_BLOCK;
    weigh_blocks::<T, WEIGH_BLOCK>(&b[..whole * k], k, depth.clone(), &weights[..whole], x, t);
    weigh_blocks::<T, 1>(&b[whole * k..], k, depth, &weights[whole..], x, t);
}

/// [`weigh_columns`] for `N` columns at a time (the columns must come in whole blocks).
#[inline(always)]
fn weigh_blocks<T: Element, const N: usize>(b: &[T], k: usize, depth: Range<usize>, weights: &[f64], x: &mut [f64], t: &mut [f64]) {
    for (block, r) in b.chunks_exact(k * N).zip(weights.chunks_exact(N)) {
        let columns: [&[T]; N] = std::array::from_fn(|j| &block[j * k + depth.start..j * k + depth.end]);
        assert!(columns.iter().all(|c| c.len() == x.len()));
        for (p, (xp, tp)) in x.iter_mut().zip(t.iter_mut()).enumerate() {
            let (mut xs, mut ts) = (0.0, 0.0);
            for (column, &r) in columns.iter().zip(r) {
                let v = column[p].to_f64() * r;
                xs += v;
                ts += v.abs();
            }
            *xp += xs;
            *tp += ts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pass over B, against the plain definition, on a depth range inside k.
    #[test]
    fn weighing_matches_the_definition() {
        // Fewer columns than a block, a block and some, and blocks exactly.
        for cols in [5, WEIGH_BLOCK + 3, 2 * WEIGH_BLOCK] {
            let (k, depth) = (37, 3..30);
            let b: Vec<f32> = (0..k * cols).map(|i| ((i * 29 % 13) as f32 - 6.0) / 8.0).collect();
            let weights: Vec<f64> = (0..cols).map(|j| [1.5, -2.0, 1.25, -1.0, 1.75][j % 5]).collect();
            let (mut x, mut t) = (vec![0.5; depth.len()], vec![0.25; depth.len()]);
            weigh(&b, k, depth.clone(), &weights, &mut x, &mut t);
            for (i, p) in depth.clone().enumerate() {
                let terms = (0..cols).map(|j| f64::from(b[j * k + p]) * weights[j]);
                assert_eq!(x[i], 0.5 + terms.clone().sum::<f64>(), "{cols} columns");
                assert_eq!(t[i], 0.25 + terms.map(f64::abs).sum::<f64>(), "{cols} columns");
            }
        }
    }

    /// Against the plain definition, on shapes with ragged rows and several
    /// panels, in both dtypes, through every kernel this CPU can run: all of
    /// A's rows, and a band of them (its columns m apart, as A is read).
    #[test]
    fn both_products_match_the_definition() {
        // The last two span several bands of rows, and 3001 × 300 several panels per band.
        for (m, k) in [(1, 5), (7, 3), (8, 5), (9, 5), (33, 2), (150, 4), (40_000, 9), (3_001, 300)] {
            let width = 2 * COLUMN_BLOCK;
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 11) as f64 - 5.0) / 4.0).collect();
            let xt: Vec<f64> = (0..k * width).map(|i| ((i * 13 % 7) as f64 - 3.0) / 2.0).collect();
            let tt: Vec<f64> = xt.iter().map(|v| v.abs() + 0.25).collect();
            let narrow = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (a32, xt32, tt32) = (narrow(&a), narrow(&xt), narrow(&tt));
            for (first, rows) in [(0, m), (m / 3, m.div_ceil(2))] {
                for kernel in Kernel::available() {
                    // Added to what y and s hold.
                    let (mut y, mut s) = (vec![0.5; rows * width], vec![0.5; rows * width]);
                    let (mut y32, mut s32) = (vec![0.5; rows * width], vec![0.5; rows * width]);
                    add_products_with(kernel, &Operands { m: rows, lda: m, a: &a[first..], xt: &xt, tt: &tt, width }, &mut y, &mut s);
                    add_products_with(kernel, &Operands { m: rows, lda: m, a: &a32[first..], xt: &xt32, tt: &tt32, width }, &mut y32, &mut s32);
                    for g in 0..width {
                        for (i, row) in (first..first + rows).enumerate() {
                            let want_y: f64 = 0.5 + (0..k).map(|p| a[p * m + row] * xt[p * width + g]).sum::<f64>();
                            let want_s: f64 = 0.5 + (0..k).map(|p| a[p * m + row].abs() * tt[p * width + g]).sum::<f64>();
                            // Quarters and halves: every sum here is exact in both dtypes.
                            assert_eq!((y[g * rows + i], s[g * rows + i]), (want_y, want_s), "m={m} row {row} ({g}) {kernel:?}");
                            let got32 = (f64::from(y32[g * rows + i]), f64::from(s32[g * rows + i]));
                            assert_eq!(got32, (want_y, want_s), "m={m} f32 row {row} ({g}) {kernel:?}");
                        }
                    }
                }
            }
        }
    }
}
