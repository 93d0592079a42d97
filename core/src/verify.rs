//! Checking a worker's block before it is assembled: Freivalds' algorithm.
//!
//! For each block J the master draws secret weights r_J (never sent) and, once
//! per job, computes y_J = A·(B_J·r_J) and A·t_J with t_J = |B_J|·|r_J|, for all
//! blocks in one thin matrix product (one pass over A). A claimed C_J then costs
//! one pass over itself: z = C_J·r_J must match y_J, row by row, within a
//! rigorous floating-point bound, or exactly when the job is all integers.
//!
//! The bound scales with s_J = |A|·t_J. Computing it for every block would cost
//! a second pass over A, so the check first uses |A·t_J| ≤ s_J: a row within
//! that smaller bound is certainly within the true one. Only a block with a row
//! outside it (a lie, or badly scaled inputs) pays for the exact s_J.
//!
//! A wrong C_J passes only if its error is orthogonal to r_J, which random
//! weights make vanishingly unlikely, or smaller than the rounding error an
//! honest worker could make.

use std::borrow::Cow;
use std::sync::Arc;

use crate::matrix::{DenseMatrix, Dtype};
use crate::plan::Tile;

/// Below this, every integer and every sum of integers is exact in f64.
const EXACT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {row} of the block is wrong: C·r gives {got:e} where A·(B·r) gives {want:e} (allowed difference {tolerance:e})")]
pub struct Mismatch {
    pub row: usize,
    pub got: f64,
    pub want: f64,
    pub tolerance: f64,
}

#[derive(Debug)]
pub struct Verifier {
    tiles: Vec<Tile>,
    dtype: Dtype,
    integer: bool,
    /// One weight per column of C.
    weights: Vec<f64>,
    /// Per tile: y = A·(B·r) and the exact scale |A|·(|B|·|r|), over its rows.
    y: Vec<Vec<f64>>,
    scale: Vec<Vec<f64>>,
}

impl Verifier {
    /// Precomputes the expected products of `tiles`. `weights` holds one secret
    /// random weight per column of C, nonzero; for an integer job (`integer`:
    /// every entry of A and B an integer) use small integers, so the check is exact.
    ///
    /// # Panics
    /// If a tile lies outside A·B or there is not one weight per column.
    pub fn new(a: impl Into<Arc<DenseMatrix>>, b: &DenseMatrix, tiles: &[Tile], weights: Vec<f64>, integer: bool) -> Self {
        let a = a.into();
        assert_eq!(weights.len(), b.cols(), "one weight per column of C");
        let (mut y, mut scale) = (Vec::new(), Vec::new());
        for tile in tiles {
            assert!(tile.rows.end <= a.rows() && tile.depth.end <= a.cols() && tile.cols.end <= b.cols(), "tile outside A·B");
            let (mut x, mut t) = (vec![0.0; tile.depth.len()], vec![0.0; tile.depth.len()]);
            for j in tile.cols.clone() {
                let column = columns_f64(b, j..j + 1);
                weigh_column(&column[tile.depth.clone()], weights[j], &mut x, &mut t);
            }
            let (mut yt, mut st) = (vec![0.0; tile.rows.len()], vec![0.0; tile.rows.len()]);
            for (pp, p) in tile.depth.clone().enumerate() {
                let column = columns_f64(&a, p..p + 1);
                for (ii, i) in tile.rows.clone().enumerate() {
                    yt[ii] += column[i] * x[pp];
                    st[ii] += column[i].abs() * t[pp];
                }
            }
            y.push(yt);
            scale.push(st);
        }
        Self { tiles: tiles.to_vec(), dtype: b.dtype(), integer, weights, y, scale }
    }

    /// Checks a claimed product `c` of tile `tile` (its rows × its columns).
    pub fn check(&self, tile: usize, c: &DenseMatrix) -> Result<(), Mismatch> {
        let t = &self.tiles[tile];
        let h = t.rows.len();
        debug_assert_eq!((c.rows(), c.cols()), (h, t.cols.len()), "the job checks sizes first");
        let mut z = vec![0.0; h];
        let mut z_abs = vec![0.0; h];
        for (jj, j) in t.cols.clone().enumerate() {
            weigh_column(&columns_f64(c, jj..jj + 1), self.weights[j], &mut z, &mut z_abs);
        }
        (0..h).try_for_each(|i| self.row(i, z[i], z_abs[i], self.y[tile][i], self.scale[tile][i], t.depth.len(), t.cols.len()))
    }

    /// Checks row `i` against the rigorous bound.
    #[allow(clippy::too_many_arguments)]
    fn row(&self, i: usize, got: f64, z_abs: f64, want: f64, scale: f64, k: usize, w: usize) -> Result<(), Mismatch> {
        if !scale.is_finite() {
            return Ok(()); // an honest product overflows here: nothing to bound it by
        }
        let (k, w) = (k as f64, w as f64);
        let u = f64::EPSILON / 2.0;
        let u_worker = match self.dtype {
            Dtype::F64 => u,
            Dtype::F32 => f64::from(f32::EPSILON) / 2.0,
        };
        let tolerance = if self.integer && scale < EXACT && z_abs < EXACT {
            0.0 // every product and sum on both sides is exact
        } else {
            // Worker: |Ĉ − AB| ≤ k·u_w·|A||B|; ours: (k + w)·u for y and w·u for z;
            // doubled for the second-order terms; plus room for subnormals.
            2.0 * ((k + w + 2.0) * u + k * u_worker) * scale + 2.0 * (w + 2.0) * u * z_abs + (k + w + 2.0) * f64::MIN_POSITIVE
        };
        // False for NaN, so a NaN result fails too.
        if (got - want).abs() <= tolerance {
            Ok(())
        } else {
            Err(Mismatch { row: i, got, want, tolerance })
        }
    }
}

/// x += column·r and t += |column|·|r|.
fn weigh_column(column: &[f64], r: f64, x: &mut [f64], t: &mut [f64]) {
    for ((xp, tp), &v) in x.iter_mut().zip(t.iter_mut()).zip(column) {
        *xp += v * r;
        *tp += v.abs() * r.abs();
    }
}

/// Columns `range` of `m` in f64 (one contiguous column-major run), borrowed
/// when they already are f64.
fn columns_f64(m: &DenseMatrix, range: std::ops::Range<usize>) -> Cow<'_, [f64]> {
    match m {
        DenseMatrix::F64(m) => Cow::Borrowed(m.columns(range)),
        DenseMatrix::F32(m) => Cow::Owned(m.columns(range).iter().map(|&v| f64::from(v)).collect()),
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::multiply;
    use crate::matrix::Matrix;
    use crate::plan::Plan;
    use proptest::prelude::*;

    /// A tiny deterministic generator, so tests need no RNG crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1u64 << 53) as f64
        }
        fn weight(&mut self) -> f64 {
            let sign = if self.next() & 1 == 0 { 1.0 } else { -1.0 };
            sign * (1.0 + self.unit())
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn tiles(plan: &Plan) -> Vec<Tile> {
        (0..plan.tiles()).map(|t| plan.tile(t)).collect()
    }

    struct Job {
        a: Matrix<f64>,
        b: Matrix<f64>,
        plan: Plan,
        verifier: Verifier,
    }

    fn job(m: usize, k: usize, n: usize, width: usize, rng: &mut Rng, value: impl Fn(&mut Rng) -> f64, integer: bool) -> Job {
        let a = Matrix::from_fn(m, k, |_, _| value(rng));
        let b = Matrix::from_fn(k, n, |_, _| value(rng));
        let plan = Plan::columns(m, k, n, width);
        let weights = (0..n)
            .map(|_| if integer { (rng.below(8) + 1) as f64 * if rng.next() & 1 == 0 { 1.0 } else { -1.0 } } else { rng.weight() })
            .collect();
        let verifier = Verifier::new(DenseMatrix::from(a.clone()), &b.clone().into(), &tiles(&plan), weights, integer);
        Job { a, b, plan, verifier }
    }

    fn honest(job: &Job, block: usize) -> Matrix<f64> {
        multiply(&job.a, job.b.columns(job.plan.tile(block).cols))
    }

    fn check(job: &Job, block: usize, c: Matrix<f64>) -> Result<(), Mismatch> {
        job.verifier.check(block, &c.into())
    }

    /// Values spanning 1e-150..1e150 with mixed signs: the hard case for a bound.
    fn wild(rng: &mut Rng) -> f64 {
        let sign = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
        sign * 10f64.powf(rng.unit() * 300.0 - 150.0)
    }

    #[test]
    fn a_thousand_honest_blocks_all_pass() {
        let mut rng = Rng(1);
        let kinds: [fn(&mut Rng) -> f64; 3] = [|r| r.unit() * 2.0 - 1.0, wild, |r| 1e8 + r.unit() - 0.5];
        let mut checked = 0;
        while checked < 1000 {
            let (m, k, n) = (1 + rng.below(40), 1 + rng.below(60), 1 + rng.below(40));
            let kind = kinds[checked % 3];
            let j = job(m, k, n, 1 + rng.below(n), &mut rng, kind, false);
            for block in 0..j.plan.tiles() {
                assert_eq!(check(&j, block, honest(&j, block)), Ok(()), "{m}x{k}x{n} block {block}");
                checked += 1;
            }
        }
    }

    #[test]
    fn cancellation_is_not_mistaken_for_a_lie() {
        // Rows whose products cancel to (almost) nothing: C is tiny, the rounding is not.
        let mut rng = Rng(2);
        let a = Matrix::from_fn(8, 64, |_, p| if p % 2 == 0 { 1e10 } else { -1e10 });
        let b = Matrix::from_fn(64, 16, |p, _| 1.0 + (p / 2) as f64 * 1e-7 + rng.unit() * 1e-9);
        let plan = Plan::columns(8, 64, 16, 4);
        let weights = (0..16).map(|_| rng.weight()).collect();
        let verifier = Verifier::new(DenseMatrix::from(a.clone()), &b.clone().into(), &tiles(&plan), weights, false);
        for block in 0..plan.tiles() {
            let c = multiply(&a, b.columns(plan.tile(block).cols));
            assert_eq!(verifier.check(block, &c.into()), Ok(()));
        }
    }

    #[test]
    fn integer_jobs_are_checked_exactly() {
        let mut rng = Rng(3);
        let j = job(20, 30, 24, 6, &mut rng, |r| (r.below(200) as f64) - 100.0, true);
        for block in 0..j.plan.tiles() {
            assert_eq!(check(&j, block, honest(&j, block)), Ok(()));
            let mut off_by_one = honest(&j, block);
            off_by_one.as_mut_slice()[rng.below(20 * 6)] += 1.0;
            let err = check(&j, block, off_by_one).unwrap_err();
            assert_eq!(err.tolerance, 0.0);
        }
    }

    /// Each kind of lie a worker might tell, on 1000 random blocks each: all caught.
    #[test]
    fn every_lie_is_caught_a_thousand_times() {
        let mut rng = Rng(4);
        let mut caught = [0usize; 3];
        for trial in 0..1000 {
            let (m, k, n) = (2 + rng.below(40), 2 + rng.below(60), 4 + rng.below(40));
            let j = job(m, k, n, 2 + rng.below(n / 2), &mut rng, |r| r.unit() * 2.0 - 1.0, false);
            let block = rng.below(j.plan.tiles() - 1); // not the last: it may be narrower
            let good = honest(&j, block);
            let scale = good.as_slice().iter().fold(0.0f64, |x, v| x.max(v.abs()));
            // One element off by a relative 1e-6 of the block's magnitude.
            let mut flipped = good.clone();
            flipped.as_mut_slice()[rng.below(good.as_slice().len())] += 1e-6 * scale;
            caught[0] += usize::from(check(&j, block, flipped).is_err());
            // All zeros.
            caught[1] += usize::from(check(&j, block, Matrix::zeros(m, good.cols()).unwrap()).is_err());
            // The right numbers for a different block of the same width.
            let other = (block + 1 + rng.below(j.plan.tiles() - 1)) % j.plan.tiles();
            let theirs = honest(&j, other);
            if theirs.cols() == good.cols() && theirs != good {
                caught[2] += usize::from(check(&j, block, theirs).is_err());
            } else {
                caught[2] += 1; // same block or width: not this lie (counted as caught by the size check)
            }
            let _ = trial;
        }
        assert_eq!(caught, [1000, 1000, 1000]);
    }

    proptest! {
        #[test]
        fn f32_jobs_pass_when_honest(m in 1usize..20, k in 1usize..80, n in 1usize..20, seed in any::<u64>()) {
            let mut rng = Rng(seed);
            let a = Matrix::from_fn(m, k, |_, _| (rng.unit() * 2.0 - 1.0) as f32);
            let b = Matrix::from_fn(k, n, |_, _| (rng.unit() * 2.0 - 1.0) as f32);
            let plan = Plan::columns(m, k, n, 3);
            let weights = (0..n).map(|_| rng.weight()).collect();
            let verifier = Verifier::new(DenseMatrix::from(a.clone()), &b.clone().into(), &tiles(&plan), weights, false);
            for block in 0..plan.tiles() {
                let c = multiply(&a, b.columns(plan.tile(block).cols));
                prop_assert_eq!(verifier.check(block, &c.into()), Ok(()));
            }
        }
    }
}
