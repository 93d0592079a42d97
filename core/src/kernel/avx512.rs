//! Our AVX-512 kernel for x86-64, f64 and f32, in the usual blocked form
//! (Goto and van de Geijn): B is packed KC rows by NC columns at a time, in
//! slivers NR columns wide; A is packed MC rows by KC columns, in slivers MR
//! rows tall; a micro-kernel keeps an MR × NR block of C in registers while
//! it runs down KC. matrixmultiply's AVX-512 micro-kernel is 8 × 8 in f64,
//! 8 accumulators fed by 9 loads per 8 fused multiply-adds; ours is 24 × 8,
//! 24 accumulators fed by 11 loads per 24 (three registers of A, and each
//! broadcast of B shared by three multiply-adds), which keeps the
//! multiply-add units rather than the load ports busy. Any order of summation is within the bounds the verifier
//! holds results to.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, __m512d, _mm512_add_pd, _mm512_add_ps, _mm512_fmadd_pd, _mm512_fmadd_ps, _mm512_load_pd, _mm512_load_ps, _mm512_loadu_pd, _mm512_loadu_ps,
    _mm512_set1_pd, _mm512_set1_ps, _mm512_setzero_pd, _mm512_setzero_ps, _mm512_storeu_pd, _mm512_storeu_ps, _mm_prefetch, _MM_HINT_T0,
};

/// Rows of A per packed block: MC × KC (480 KiB) stays in L2; a multiple of
/// both types' MR.
const MC: usize = 240;
/// Columns of B per packed block.
const NC: usize = 2048;
/// Columns of B per micro-kernel call, for both types.
const NR: usize = 8;

/// Whether this CPU runs this kernel.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether an m-row product is worth this kernel: on this CPU, at least
/// `T::MIN_ROWS` rows, and they fill the slivers to within 1/32. Where
/// padding wastes more (256 rows of f32 pad to 288), and for fewer rows,
/// matrixmultiply's smaller blocks measured as fast or faster.
pub(super) fn suits<T: Micro>(m: usize) -> bool {
    m >= T::MIN_ROWS && (m / MC * MC + (m % MC).next_multiple_of(T::MR)) * 32 <= m * 33 && available()
}

/// An element type with a micro-kernel.
pub(super) trait Micro: Copy + Default + std::ops::Add<Output = Self> {
    /// Rows of C per micro-kernel call: 3 registers.
    const MR: usize;
    /// Depth of a packed block: a sliver of B (KC × NR, 16 KiB) stays in L1.
    /// (f32 at 512 measured a tenth faster than at 256; f64 at 512 no faster.)
    const KC: usize;
    /// Fewest rows of A this kernel takes (see [`suits`]). In f32, tiles of
    /// 512 rows ran at 0.95–1.14× matrixmultiply's speed alone, and jobs of
    /// such tiles on two workers sharing 2 cores took longer (1.14 s against
    /// 1.00 s at n=4096, medians of 6); at 4096 rows, 1.01–1.25×.
    const MIN_ROWS: usize;

    /// `C[0..MR, 0..NR] (+)= Ap · Bp` over `kc`, where `a` is an MR-row
    /// sliver and `b` an NR-column sliver, both packed by depth, and C has
    /// leading dimension `ldc`; adds to C when `accumulate`, else overwrites.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds kc·MR elements aligned to 64 bytes,
    /// `b` kc·NR, and C an MR × NR block at `c` with leading dimension `ldc`.
    unsafe fn micro(kc: usize, a: *const Self, b: *const Self, c: *mut Self, ldc: usize, accumulate: bool);
}

/// The impl for one type: its micro-kernel holds 3 registers of `$lanes`
/// lanes (so MR = 3·lanes) by NR columns, written with that type's
/// intrinsics.
macro_rules! micro {
    ($t:ty, $reg:ty, $lanes:expr, kc: $kc:expr, min_rows: $min_rows:expr, $zero:ident, $load:ident, $set1:ident, $fmadd:ident, $loadu:ident, $add:ident, $storeu:ident) => {
        impl Micro for $t {
            const MR: usize = 3 * $lanes;
            const KC: usize = $kc;
            const MIN_ROWS: usize = $min_rows;

            #[inline(always)]
            unsafe fn micro(kc: usize, a: *const $t, b: *const $t, c: *mut $t, ldc: usize, accumulate: bool) {
                #[target_feature(enable = "avx512f")]
                unsafe fn kernel(kc: usize, a: *const $t, b: *const $t, c: *mut $t, ldc: usize, accumulate: bool) {
                    const L: usize = $lanes;
                    let mut acc: [[$reg; 3]; NR] = [[$zero(); 3]; NR];
                    // SAFETY: the caller's contract covers every access below.
                    unsafe {
                        // C's block is written last: ask for it now (f32 measured 5% faster).
                        for j in 0..NR {
                            for r in 0..3 {
                                _mm_prefetch::<_MM_HINT_T0>(c.add(j * ldc + r * L).cast());
                            }
                        }
                        let (mut a, mut b) = (a, b);
                        for _ in 0..kc {
                            let a0 = $load(a);
                            let a1 = $load(a.add(L));
                            let a2 = $load(a.add(2 * L));
                            for (j, acc) in acc.iter_mut().enumerate() {
                                let bj = $set1(*b.add(j));
                                acc[0] = $fmadd(a0, bj, acc[0]);
                                acc[1] = $fmadd(a1, bj, acc[1]);
                                acc[2] = $fmadd(a2, bj, acc[2]);
                            }
                            a = a.add(3 * L);
                            b = b.add(NR);
                        }
                        for (j, acc) in acc.iter().enumerate() {
                            for (r, &v) in acc.iter().enumerate() {
                                let p = c.add(j * ldc + r * L);
                                $storeu(p, if accumulate { $add($loadu(p), v) } else { v });
                            }
                        }
                    }
                }
                // SAFETY: forwarded from the caller's contract.
                unsafe { kernel(kc, a, b, c, ldc, accumulate) }
            }
        }
    };
}

micro!(f64, __m512d, 8, kc: 256, min_rows: 256, _mm512_setzero_pd, _mm512_load_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_add_pd, _mm512_storeu_pd);
micro!(f32, __m512, 16, kc: 512, min_rows: 1024, _mm512_setzero_ps, _mm512_load_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_add_ps, _mm512_storeu_ps);

const _: () = assert!(MC.is_multiple_of(<f64 as Micro>::MR) && MC.is_multiple_of(<f32 as Micro>::MR));

/// A zeroed buffer of `len` elements whose start is aligned to 64 bytes.
struct Aligned<T> {
    storage: Vec<T>,
    offset: usize,
}

impl<T: Copy + Default> Aligned<T> {
    fn new(len: usize) -> Self {
        let storage = vec![T::default(); len + 64 / size_of::<T>()];
        let offset = storage.as_ptr().align_offset(64);
        Self { storage, offset }
    }

    fn slice(&mut self, len: usize) -> &mut [T] {
        &mut self.storage[self.offset..self.offset + len]
    }
}

/// `c = a · b` for column-major m×k, k×n and m×n slices.
///
/// # Panics
/// If the CPU lacks AVX-512F or the lengths do not match the shapes.
pub(super) fn gemm<T: Micro>(m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
    assert!(available() && a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let (mr, kc_max) = (T::MR, T::KC);
    // Only as large as this product needs: zeroing them is a pass of its own.
    let depth = kc_max.min(k);
    let mut a_pack = Aligned::<T>::new(MC.min(m.next_multiple_of(mr)) * depth);
    let mut b_pack = Aligned::<T>::new(depth * NC.min(n.next_multiple_of(NR)));
    let mut edge = [T::default(); 48 * NR];
    if k == 0 {
        c.fill(T::default());
        return;
    }
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            let bp = b_pack.slice(kc * nc.next_multiple_of(NR));
            pack_b(&b[jc * k..(jc + nc) * k], k, pc, kc, bp);
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let ap = a_pack.slice(mc.next_multiple_of(mr) * kc);
                pack_a(a, m, ic, mc, pc, kc, mr, ap);
                for (jr, b_sliver) in bp.chunks_exact(kc * NR).enumerate() {
                    let nr = NR.min(nc - jr * NR);
                    for (ir, a_sliver) in ap.chunks_exact(kc * mr).enumerate() {
                        let rows = mr.min(mc - ir * mr);
                        let at = ic + ir * mr + (jc + jr * NR) * m;
                        if rows == mr && nr == NR {
                            // SAFETY: AVX-512F is checked above; the slivers hold kc·MR
                            // elements (64-byte aligned: MR elements are 192 bytes) and
                            // kc·NR; C's block at `at` is MR × NR within c, its columns
                            // m apart.
                            unsafe { T::micro(kc, a_sliver.as_ptr(), b_sliver.as_ptr(), c.as_mut_ptr().add(at), m, pc > 0) };
                        } else {
                            // SAFETY: as above, into `edge`, an MR × NR block with leading dimension MR.
                            unsafe { T::micro(kc, a_sliver.as_ptr(), b_sliver.as_ptr(), edge.as_mut_ptr(), mr, false) };
                            for j in 0..nr {
                                let column = &mut c[at + j * m..at + j * m + rows];
                                for (dst, &src) in column.iter_mut().zip(&edge[j * mr..]) {
                                    *dst = if pc > 0 { *dst + src } else { src };
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs rows `ic..ic + mc` of columns `pc..pc + kc` of A (leading dimension
/// `m`) into slivers of `mr` rows, each stored by depth and zero-padded.
#[allow(clippy::too_many_arguments)]
fn pack_a<T: Copy + Default>(a: &[T], m: usize, ic: usize, mc: usize, pc: usize, kc: usize, mr: usize, out: &mut [T]) {
    for (s, sliver) in out.chunks_exact_mut(kc * mr).enumerate() {
        let top = ic + s * mr;
        let rows = mr.min(ic + mc - top);
        for (p, dst) in sliver.chunks_exact_mut(mr).enumerate() {
            let col = (pc + p) * m + top;
            dst[..rows].copy_from_slice(&a[col..col + rows]);
            dst[rows..].fill(T::default());
        }
    }
}

/// Packs rows `pc..pc + kc` of the columns in `b` (leading dimension `k`)
/// into slivers of NR columns, each stored by depth and zero-padded.
fn pack_b<T: Copy + Default>(b: &[T], k: usize, pc: usize, kc: usize, out: &mut [T]) {
    let n = b.len() / k;
    for (s, sliver) in out.chunks_exact_mut(kc * NR).enumerate() {
        let cols = NR.min(n - s * NR);
        for j in 0..NR {
            if j < cols {
                let col = &b[(s * NR + j) * k + pc..][..kc];
                for (p, &v) in col.iter().enumerate() {
                    sliver[p * NR + j] = v;
                }
            } else {
                for p in 0..kc {
                    sliver[p * NR + j] = T::default();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small integers keep every product and sum exact, so any order of
    /// summation gives the same C, and a misplaced element shows.
    fn check<T: Micro + PartialEq + std::fmt::Debug>(m: usize, k: usize, n: usize, from: fn(i32) -> T) {
        let value = |i: usize, j: usize, salt: usize| ((i * 31 + j * 17 + salt) % 7) as i32 - 3;
        let a: Vec<T> = (0..m * k).map(|x| from(value(x % m, x / m, 1))).collect();
        let b: Vec<T> = (0..k * n).map(|x| from(value(x % k, x / k, 2))).collect();
        let expect: Vec<T> = (0..m * n)
            .map(|x| {
                let (i, j) = (x % m, x / m);
                from((0..k).map(|p| value(i, p, 1) * value(p, j, 2)).sum())
            })
            .collect();
        let mut c = vec![from(99); m * n];
        gemm(m, k, n, &a, &b, &mut c);
        assert!(c == expect, "{m}x{k} by {k}x{n}");
    }

    #[test]
    fn taken_only_where_the_rows_fill_its_slivers() {
        let here = available();
        assert_eq!([suits::<f64>(256), suits::<f64>(4096), suits::<f32>(1024), suits::<f32>(4096)], [here; 4]);
        assert!(!suits::<f64>(100) && !suits::<f64>(250) && !suits::<f32>(512) && !suits::<f32>(1010));
    }

    #[test]
    fn matches_the_definition_across_every_block_edge() {
        if !available() {
            eprintln!("this CPU has no AVX-512F: the kernel is not used here");
            return;
        }
        // Rows around MR and MC, depths around both KCs, columns around NR and NC.
        for &(m, k, n) in &[(1, 1, 1), (23, 5, 7), (24, 256, 8), (25, 257, 9), (47, 511, 3), (49, 513, 17), (241, 300, 15), (500, 1100, 33), (3, 2, 2049)] {
            check::<f64>(m, k, n, f64::from);
            check::<f32>(m, k, n, |x| x as f32);
        }
    }
}
