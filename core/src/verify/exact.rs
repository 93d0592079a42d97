//! Error-free transformations and Dot2 (Ogita, Rump and Oishi, "Accurate
//! sum and dot product", SISC 2005), and the weighted row sums of stage 1.

use crate::matrix::Element;

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
/// f64, column after column: z_i = Σ_j c_ij·r_j, z_abs_i = Σ_j |c_ij·r_j|,
/// and walk_i = Σ_j (p_ij² + z_ij²), the squares of every product p_ij and
/// partial sum z_ij we rounded. Our error in z_i is then at most γ_w·z_abs_i
/// in the worst case, and λ·u·√walk_i under the probabilistic model (each
/// rounding errs by at most u times what it rounds). The three outputs are
/// overwritten.
pub(super) fn weighted_rows<T: Element>(c: &[T], rows: usize, weights: &[f64], z: &mut [f64], z_abs: &mut [f64], walk: &mut [f64]) {
    debug_assert!(c.len() == rows * weights.len() && z.len() == rows && z_abs.len() == rows && walk.len() == rows);
    z.fill(0.0);
    z_abs.fill(0.0);
    walk.fill(0.0);
    // A block of rows at a time, so the three sums stay in L1 across the columns.
    const BLOCK: usize = 256;
    for start in (0..rows).step_by(BLOCK) {
        let end = (start + BLOCK).min(rows);
        let (z, z_abs, walk) = (&mut z[start..end], &mut z_abs[start..end], &mut walk[start..end]);
        for (column, &r) in c.chunks_exact(rows).zip(weights) {
            for (((&v, zi), ai), wi) in column[start..end].iter().zip(z.iter_mut()).zip(z_abs.iter_mut()).zip(walk.iter_mut()) {
                let p = v.to_f64() * r;
                *zi += p;
                *ai += p.abs();
                *wi += p * p + *zi * *zi;
            }
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

    #[test]
    fn weighted_rows_sum_and_walk() {
        let rows = 2;
        let c = [1.0f32, 2.0, 3.0, -4.0];
        let w = [2.0, 0.5];
        let (mut z, mut a, mut walk) = (vec![9.0; rows], vec![9.0; rows], vec![9.0; rows]);
        weighted_rows(&c, rows, &w, &mut z, &mut a, &mut walk);
        assert_eq!(z, [3.5, 2.0]);
        assert_eq!(a, [3.5, 6.0]);
        assert_eq!(walk, [4.0 + 4.0 + 2.25 + 3.5 * 3.5, 16.0 + 16.0 + 4.0 + 4.0]);
    }
}
