//! An f64x2 (simd128) dgemm for WebAssembly, where matrixmultiply has only a
//! portable f64 path. Classic packed GEMM: B is packed into panels of NR
//! columns and A into panels of MR rows for each KC-deep slice, and a 4×4
//! register micro-kernel accumulates C in eight f64x2 vectors.

use core::arch::wasm32::{f64x2_add, f64x2_extract_lane, f64x2_mul, f64x2_splat, v128, v128_load, v128_load64_splat};

const MR: usize = 4;
const NR: usize = 4;
const KC: usize = 256;
const MC: usize = 64;

/// c = a · b, column-major: a is m×k, b is k×n, c is m×n.
pub fn dgemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    c.fill(0.0);
    let n_panels = n.div_ceil(NR);
    let mut b_pack = vec![0.0; n_panels * NR * KC];
    let mut a_pack = vec![0.0; MC.div_ceil(MR) * MR * KC];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        pack_b(b, k, n, pc, kc, &mut b_pack);
        for ic in (0..m).step_by(MC) {
            let mc = MC.min(m - ic);
            pack_a(a, m, ic, mc, pc, kc, &mut a_pack);
            for jp in 0..n_panels {
                let b_panel = &b_pack[jp * kc * NR..(jp + 1) * kc * NR];
                for ip in 0..mc.div_ceil(MR) {
                    let a_panel = &a_pack[ip * kc * MR..(ip + 1) * kc * MR];
                    let tile = micro_kernel(kc, a_panel, b_panel);
                    add_tile(c, m, ic + ip * MR, jp * NR, m.min(ic + mc) - (ic + ip * MR), n - jp * NR, &tile);
                }
            }
        }
    }
}

/// b_pack[(jp*kc + p)*NR + jj] = B[pc+p, jp*NR+jj], zero past the last column.
fn pack_b(b: &[f64], k: usize, n: usize, pc: usize, kc: usize, b_pack: &mut [f64]) {
    for jp in 0..n.div_ceil(NR) {
        let panel = &mut b_pack[jp * kc * NR..(jp + 1) * kc * NR];
        for jj in 0..NR {
            let j = jp * NR + jj;
            if j < n {
                let col = &b[j * k + pc..j * k + pc + kc];
                for (p, &v) in col.iter().enumerate() {
                    panel[p * NR + jj] = v;
                }
            } else {
                for p in 0..kc {
                    panel[p * NR + jj] = 0.0;
                }
            }
        }
    }
}

/// a_pack[(ip*kc + p)*MR + ii] = A[ic+ip*MR+ii, pc+p], zero past the last row.
fn pack_a(a: &[f64], m: usize, ic: usize, mc: usize, pc: usize, kc: usize, a_pack: &mut [f64]) {
    for ip in 0..mc.div_ceil(MR) {
        let panel = &mut a_pack[ip * kc * MR..(ip + 1) * kc * MR];
        let row0 = ic + ip * MR;
        let rows = MR.min(ic + mc - row0);
        for p in 0..kc {
            let col = &a[(pc + p) * m + row0..(pc + p) * m + row0 + rows];
            let dst = &mut panel[p * MR..p * MR + MR];
            dst[..rows].copy_from_slice(col);
            dst[rows..].fill(0.0);
        }
    }
}

/// The MR×NR tile of A_panel · B_panel, as [column][row pair] vectors.
/// Eight accumulators, two A vectors and one B splat fit V8's x64 registers;
/// a wider tile spills and runs slower.
#[allow(unsafe_code)]
fn micro_kernel(kc: usize, a: &[f64], b: &[f64]) -> [[v128; 2]; NR] {
    assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    let zero = f64x2_splat(0.0);
    let (mut c00, mut c10, mut c01, mut c11) = (zero, zero, zero, zero);
    let (mut c02, mut c12, mut c03, mut c13) = (zero, zero, zero, zero);
    let (mut a_ptr, mut b_ptr) = (a.as_ptr(), b.as_ptr());
    for _ in 0..kc {
        // SAFETY: each step reads MR values of `a` and NR of `b`, kc steps in
        // all, within the lengths asserted above; loads need no alignment.
        unsafe {
            let a0 = v128_load(a_ptr.cast());
            let a1 = v128_load(a_ptr.add(2).cast());
            let b0 = v128_load64_splat(b_ptr.cast());
            c00 = f64x2_add(c00, f64x2_mul(a0, b0));
            c10 = f64x2_add(c10, f64x2_mul(a1, b0));
            let b1 = v128_load64_splat(b_ptr.add(1).cast());
            c01 = f64x2_add(c01, f64x2_mul(a0, b1));
            c11 = f64x2_add(c11, f64x2_mul(a1, b1));
            let b2 = v128_load64_splat(b_ptr.add(2).cast());
            c02 = f64x2_add(c02, f64x2_mul(a0, b2));
            c12 = f64x2_add(c12, f64x2_mul(a1, b2));
            let b3 = v128_load64_splat(b_ptr.add(3).cast());
            c03 = f64x2_add(c03, f64x2_mul(a0, b3));
            c13 = f64x2_add(c13, f64x2_mul(a1, b3));
            a_ptr = a_ptr.add(MR);
            b_ptr = b_ptr.add(NR);
        }
    }
    [[c00, c10], [c01, c11], [c02, c12], [c03, c13]]
}

/// Adds the top-left rows×cols of `tile` into C at (row0, col0).
fn add_tile(c: &mut [f64], m: usize, row0: usize, col0: usize, rows: usize, cols: usize, tile: &[[v128; 2]; NR]) {
    for (jj, column) in tile.iter().enumerate().take(cols.min(NR)) {
        let lanes: [f64; MR] = [
            f64x2_extract_lane::<0>(column[0]),
            f64x2_extract_lane::<1>(column[0]),
            f64x2_extract_lane::<0>(column[1]),
            f64x2_extract_lane::<1>(column[1]),
        ];
        let dst = &mut c[(col0 + jj) * m + row0..];
        for (d, v) in dst.iter_mut().zip(&lanes[..rows.min(MR)]) {
            *d += v;
        }
    }
}
