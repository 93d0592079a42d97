//! Error-free transformations and Dot2 (Ogita, Rump and Oishi, "Accurate
//! sum and dot product", SISC 2005), and the weighted row sums of stage 1.

use crate::matrix::Element;

use super::skinny::Kernel;

/// a + b = s + e exactly (Knuth's TwoSum), barring overflow.
#[inline]
pub(super) fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let z = s - a;
    (s, (a - (s - z)) + (b - z))
}

/// a·b = p + e exactly, barring underflow and overflow; `mul_add` is fused by
/// contract (in software where the hardware has no FMA).
#[inline]
pub(super) fn two_product(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    (p, a.mul_add(b, -p))
}

/// Dot2: Σ_p x_p·y_p as if computed in twice the working precision, and
/// Σ_p |x_p·y_p|. The result's error is at most u·|xᵀy| + γ_n²·|x|ᵀ|y|, plus
/// a few smallest subnormals per term if products underflow.
pub(super) fn dot2(pairs: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    let (mut sum, mut compensation, mut magnitude) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        let (p, product_error) = two_product(x, y);
        let (s, sum_error) = two_sum(sum, p);
        sum = s;
        compensation += product_error + sum_error;
        magnitude += p.abs();
    }
    (sum + compensation, magnitude)
}

/// For each row i of the column-major `rows × weights.len()` block `c`, in
/// f64, column after column: z_i = Σ_j c_ij·r_j, and walk_i = Σ_j z_ij², the
/// squares of the partial sums after each column. Each product p_ij and each
/// partial sum was rounded once, and |p_ij| ≤ |z_ij| + |z_i,j−1| (to first
/// order), so our error in z_i is at most u·Σ_j (|p_ij| + |z_ij|) ≤
/// 3u·√(w·walk_i) in the worst case (Wilkinson's running error bound and
/// Cauchy–Schwarz), and λ·u·√(5·walk_i) under the probabilistic model. Both
/// outputs are overwritten.
pub(super) fn weighted_rows<T: Element>(c: &[T], rows: usize, weights: &[f64], z: &mut [f64], walk: &mut [f64]) {
    assert!(c.len() == rows * weights.len() && z.len() == rows && walk.len() == rows);
    match Kernel::best() {
        // SAFETY: `best` found the CPU features each of these is compiled for.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx512 => unsafe { weighted_rows_avx512(c, rows, weights, z, walk) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx2 => unsafe { weighted_rows_avx2(c, rows, weights, z, walk) },
        _ => weighted_rows_plain(c, rows, weights, z, walk),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weighted_rows_avx512<T: Element>(c: &[T], rows: usize, weights: &[f64], z: &mut [f64], walk: &mut [f64]) {
    weighted_rows_plain(c, rows, weights, z, walk);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn weighted_rows_avx2<T: Element>(c: &[T], rows: usize, weights: &[f64], z: &mut [f64], walk: &mut [f64]) {
    weighted_rows_plain(c, rows, weights, z, walk);
}

/// Columns summed together: each row's z and walk stay in registers across
/// them, where column by column they went through memory for every column.
/// Each row still takes its columns in order, one rounding at a time (never
/// fused), so the sums are bit for bit those of a column-by-column loop.
const COLUMNS: usize = 8;

#[inline(always)]
fn weighted_rows_plain<T: Element>(c: &[T], rows: usize, weights: &[f64], z: &mut [f64], walk: &mut [f64]) {
    z.fill(0.0);
    walk.fill(0.0);
    if rows == 0 {
        return;
    }
    let whole = weights.len() / COLUMNS * COLUMNS;
    add_weighted_rows::<T, COLUMNS>(&c[..whole * rows], rows, &weights[..whole], z, walk);
    add_weighted_rows::<T, 1>(&c[whole * rows..], rows, &weights[whole..], z, walk);
}

/// [`weighted_rows_plain`]'s sums, `N` columns at a time (the columns must
/// come in whole blocks), added to `z` and `walk`.
#[inline(always)]
fn add_weighted_rows<T: Element, const N: usize>(c: &[T], rows: usize, weights: &[f64], z: &mut [f64], walk: &mut [f64]) {
    for (block, r) in c.chunks_exact(rows * N).zip(weights.chunks_exact(N)) {
        let columns: [&[T]; N] = std::array::from_fn(|j| &block[j * rows..(j + 1) * rows]);
        for (i, (zi, wi)) in z.iter_mut().zip(walk.iter_mut()).enumerate() {
            let (mut sum, mut squares) = (*zi, *wi);
            for (column, &r) in columns.iter().zip(r) {
                sum += column[i].to_f64() * r;
                squares += sum * sum;
            }
            (*zi, *wi) = (sum, squares);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformations_are_error_free() {
        let (s, e) = two_sum(1.0, 1e-20);
        assert_eq!((s, e), (1.0, 1e-20));
        let x = 1.0 + f64::EPSILON;
        let (p, e) = two_product(x, x);
        assert_eq!(p, 1.0 + 2.0 * f64::EPSILON);
        assert_eq!(e, f64::EPSILON * f64::EPSILON);
    }

    #[test]
    fn dot2_survives_cancellation() {
        // 1e16 + 1 − 1e16 = 1 is lost in plain f64, kept by Dot2.
        let x = [1e16, 1.0, -1e16];
        let (v, mag) = dot2(x.iter().map(|&v| (v, 1.0)));
        assert_eq!(v, 1.0);
        assert_eq!(mag, 2e16 + 1.0);
    }

    /// Column blocks and the columns left over sum exactly as one column after another.
    #[test]
    fn weighted_rows_are_those_of_a_plain_loop() {
        for (rows, cols) in [(1, 1), (5, COLUMNS - 1), (37, COLUMNS), (37, 2 * COLUMNS + 3)] {
            let c: Vec<f64> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f64 - 500.0) / 3.7).collect();
            let w: Vec<f64> = (0..cols).map(|j| 1.0 + j as f64 / 9.0).collect();
            let (mut z, mut walk) = (vec![1.0; rows], vec![1.0; rows]);
            weighted_rows(&c, rows, &w, &mut z, &mut walk);
            for i in 0..rows {
                let (mut sum, mut squares) = (0.0f64, 0.0f64);
                for j in 0..cols {
                    sum += c[j * rows + i] * w[j];
                    squares += sum * sum;
                }
                assert_eq!((z[i].to_bits(), walk[i].to_bits()), (sum.to_bits(), squares.to_bits()), "{rows}x{cols}, row {i}");
            }
        }
    }

    #[test]
    fn weighted_rows_sum_and_walk() {
        let rows = 2;
        let c = [1.0f32, 2.0, 3.0, -4.0];
        let w = [2.0, 0.5];
        let (mut z, mut walk) = (vec![9.0; rows], vec![9.0; rows]);
        weighted_rows(&c, rows, &w, &mut z, &mut walk);
        assert_eq!(z, [3.5, 2.0]);
        assert_eq!(walk, [4.0 + 3.5 * 3.5, 16.0 + 4.0]);
    }
}
