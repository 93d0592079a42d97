use super::*;
use crate::kernel::{multiply, multiply_into};
use crate::matrix::Dtype;
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
    fn sign(&mut self) -> f64 {
        if self.next() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }
    fn weight(&mut self) -> f64 {
        self.sign() * (1.0 + self.unit())
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn weights(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| rng.weight()).collect()
}

fn tiles_of(plan: &Plan) -> Vec<Tile> {
    (0..plan.tiles()).map(|i| plan.tile(i)).collect()
}

/// The operands of a tile, as matrices of their own.
fn parts<T: Element>(a: &Matrix<T>, b: &Matrix<T>, tile: &Tile) -> (Matrix<T>, Matrix<T>) {
    let (a_part, b_part) = (rows_of(a, tile.rows.clone(), tile.depth.clone()), rows_of(b, tile.depth.clone(), tile.cols.clone()));
    (a_part, b_part)
}

/// x[rows, cols] as a matrix of its own.
fn rows_of<T: Element>(x: &Matrix<T>, rows: Range<usize>, cols: Range<usize>) -> Matrix<T> {
    let mut data = Vec::with_capacity(rows.len() * cols.len());
    for column in x.columns(cols.clone()).chunks_exact(x.rows().max(1)) {
        data.extend_from_slice(&column[rows.clone()]);
    }
    Matrix::from_col_major(rows.len(), cols.len(), data).unwrap()
}

/// The ways an honest worker computes a tile.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// `kernel::multiply` (matrixmultiply) on the whole tile.
    Whole,
    /// The tile's columns cut into this many ranges, each multiplied on its
    /// own, as native workers do on several threads (native/src/compute.rs).
    Split(usize),
}

fn compute<T: Element>(a: &Matrix<T>, b: &Matrix<T>, tile: &Tile, kernel: Kernel) -> Matrix<T> {
    let (a_part, b_part) = parts(a, b, tile);
    if tile.depth.is_empty() {
        return Matrix::zeros(tile.rows.len(), tile.cols.len()).unwrap();
    }
    match kernel {
        Kernel::Whole => multiply(&a_part, b_part.as_slice()),
        Kernel::Split(threads) => {
            let (m, k, n) = (a_part.rows(), a_part.cols(), b_part.cols());
            let mut c = Matrix::zeros(m, n).unwrap();
            let per = n.div_ceil(threads).max(1);
            for (c_part, b_cols) in c.as_mut_slice().chunks_mut(m * per).zip(b_part.as_slice().chunks(k * per)) {
                multiply_into(&a_part, b_cols, c_part);
            }
            c
        }
    }
}

/// (|A||B|)_ij in f64, for sizing lies.
fn scale_of(a: &DenseMatrix, b: &DenseMatrix, row: usize, col: usize, depth: Range<usize>) -> f64 {
    depth.map(|p| (a.get_f64(row, p) * b.get_f64(p, col)).abs()).sum()
}

fn check_f64(v: &Verifier, tile: usize, c: &Matrix<f64>) -> Result<(), Mismatch> {
    v.check(tile, &c.clone().into())
}

// ---------------------------------------------------------------------------
// Small random shapes: honest results pass, lies of each kind are caught.

struct Job {
    a: Matrix<f64>,
    b: Matrix<f64>,
    tiles: Vec<Tile>,
    verifier: Verifier,
}

fn job(m: usize, k: usize, n: usize, width: usize, rng: &mut Rng, value: impl Fn(&mut Rng) -> f64, integer: bool) -> Job {
    let a = Matrix::from_fn(m, k, |_, _| value(rng));
    let b = Matrix::from_fn(k, n, |_, _| value(rng));
    let tiles = tiles_of(&Plan::columns(m, k, n, width));
    let weights = (0..n)
        .map(|_| if integer { (rng.below(8) + 1) as f64 * rng.sign() } else { rng.weight() })
        .collect();
    let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, weights, integer);
    Job { a, b, tiles, verifier }
}

fn honest(job: &Job, tile: usize) -> Matrix<f64> {
    compute(&job.a, &job.b, &job.tiles[tile], Kernel::Whole)
}

/// Values spanning 1e-150..1e150 with mixed signs: the hard case for a bound.
fn wild(rng: &mut Rng) -> f64 {
    rng.sign() * 10f64.powf(rng.unit() * 300.0 - 150.0)
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
        for tile in 0..j.tiles.len() {
            assert_eq!(check_f64(&j.verifier, tile, &honest(&j, tile)), Ok(()), "{m}x{k}x{n} tile {tile}");
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
    let tiles = tiles_of(&Plan::columns(8, 64, 16, 4));
    let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, weights(16, &mut rng), false);
    for (i, tile) in tiles.iter().enumerate() {
        assert_eq!(check_f64(&verifier, i, &compute(&a, &b, tile, Kernel::Whole)), Ok(()));
    }
}

#[test]
fn integer_jobs_are_checked_exactly() {
    let mut rng = Rng(3);
    let j = job(20, 30, 24, 6, &mut rng, |r| (r.below(200) as f64) - 100.0, true);
    for tile in 0..j.tiles.len() {
        assert_eq!(check_f64(&j.verifier, tile, &honest(&j, tile)), Ok(()));
        let mut off_by_one = honest(&j, tile);
        off_by_one.as_mut_slice()[rng.below(20 * 6)] += 1.0;
        let err = check_f64(&j.verifier, tile, &off_by_one).unwrap_err();
        assert_eq!(err.tolerance, 0.0);
        // Off by a fraction: not an integer, so certainly wrong, and said so.
        let mut half = honest(&j, tile);
        let at = rng.below(20 * 6);
        half.as_mut_slice()[at] += 0.5;
        let err = check_f64(&j.verifier, tile, &half).unwrap_err();
        assert_eq!((err.row, err.at.clone(), err.tolerance), (at % 20, At::Element { col: j.tiles[tile].cols.start + at / 20 }, 0.0));
        assert_eq!(err.got - err.want, 0.5, "{err}");
    }
}

#[test]
fn integer_jobs_in_f32_are_exact_only_where_f32_is() {
    // Values near 2^12: products near 2^24 and sums beyond it round in f32, honestly.
    let mut rng = Rng(31);
    let a = Matrix::from_fn(16, 64, |_, _| (4000 + rng.below(96)) as f32);
    let b = Matrix::from_fn(64, 32, |_, _| (4000 + rng.below(96)) as f32);
    let tiles = tiles_of(&Plan::columns(16, 64, 32, 8));
    let w = (0..32).map(|_| (rng.below(8) + 1) as f64 * rng.sign()).collect();
    let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, w, true);
    for (i, tile) in tiles.iter().enumerate() {
        let c = compute(&a, &b, tile, Kernel::Whole);
        assert_eq!(verifier.check(i, &c.clone().into()), Ok(()));
        let mut wrong = c;
        wrong.as_mut_slice()[rng.below(16 * 8)] *= 1.001;
        assert!(verifier.check(i, &wrong.into()).is_err());
    }
}

/// Each kind of lie a worker might tell, on 1000 random blocks each: all caught.
#[test]
fn every_lie_is_caught_a_thousand_times() {
    let mut rng = Rng(4);
    let mut caught = [0usize; 3];
    for _ in 0..1000 {
        let (m, k, n) = (2 + rng.below(40), 2 + rng.below(60), 4 + rng.below(40));
        let j = job(m, k, n, 2 + rng.below(n / 2), &mut rng, |r| r.unit() * 2.0 - 1.0, false);
        let tile = rng.below(j.tiles.len() - 1); // not the last: it may be narrower
        let good = honest(&j, tile);
        let scale = good.as_slice().iter().fold(0.0f64, |x, v| x.max(v.abs()));
        // One element off by a relative 1e-6 of the block's magnitude.
        let mut flipped = good.clone();
        flipped.as_mut_slice()[rng.below(good.as_slice().len())] += 1e-6 * scale;
        caught[0] += usize::from(check_f64(&j.verifier, tile, &flipped).is_err());
        // All zeros.
        caught[1] += usize::from(check_f64(&j.verifier, tile, &Matrix::zeros(m, good.cols()).unwrap()).is_err());
        // The right numbers for a different block of the same width.
        let other = (tile + 1 + rng.below(j.tiles.len() - 1)) % j.tiles.len();
        let theirs = honest(&j, other);
        if theirs.cols() == good.cols() && theirs != good {
            caught[2] += usize::from(check_f64(&j.verifier, tile, &theirs).is_err());
        } else {
            caught[2] += 1; // same block or width: not this lie (counted as caught by the size check)
        }
    }
    assert_eq!(caught, [1000, 1000, 1000]);
}

proptest! {
    #[test]
    fn f32_jobs_pass_when_honest(m in 1usize..20, k in 1usize..80, n in 1usize..20, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let a = Matrix::from_fn(m, k, |_, _| (rng.unit() * 2.0 - 1.0) as f32);
        let b = Matrix::from_fn(k, n, |_, _| (rng.unit() * 2.0 - 1.0) as f32);
        let tiles = tiles_of(&Plan::columns(m, k, n, 3));
        let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, weights(n, &mut rng), false);
        for (i, tile) in tiles.iter().enumerate() {
            let c = compute(&a, &b, tile, Kernel::Whole);
            prop_assert_eq!(verifier.check(i, &c.into()), Ok(()));
        }
    }

    #[test]
    fn general_tiles_pass_when_honest(m in 1usize..24, k in 1usize..90, n in 1usize..24, seed in any::<u64>()) {
        // Tiles with row ranges and depth ranges, overlapping, in any order.
        let mut rng = Rng(seed);
        let a = Matrix::from_fn(m, k, |_, _| rng.unit() * 2.0 - 1.0);
        let b = Matrix::from_fn(k, n, |_, _| rng.unit() * 2.0 - 1.0);
        let range = |len: usize, rng: &mut Rng| { let s = rng.below(len + 1); s..s + rng.below(len - s + 1) };
        let tiles: Vec<Tile> = (0..6).map(|_| Tile { rows: range(m, &mut rng), cols: range(n, &mut rng), depth: range(k, &mut rng) }).collect();
        let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, weights(n, &mut rng), false);
        for (i, tile) in tiles.iter().enumerate() {
            let c = compute(&a, &b, tile, Kernel::Whole);
            prop_assert_eq!(verifier.check(i, &c.clone().into()), Ok(()));
            if !c.as_slice().is_empty() && !tile.depth.is_empty() {
                let mut wrong = c;
                wrong.as_mut_slice()[0] += 1.0;
                prop_assert!(verifier.check(i, &wrong.into()).is_err());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tight verification at realistic sizes.

/// Value distributions for the statistical tests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Uniform in [-1, 1].
    Uniform,
    /// 1e-150..1e150 (f64) or 1e-19..1e17 (f32, whose products then reach
    /// down into the subnormals), mixed signs.
    Wild,
    /// Rows of A alternate ±1e10 along k, B's rows come in near-equal pairs:
    /// C is a tiny remainder of huge products.
    Cancelling,
    /// All positive, of one magnitude: honest errors are as large as they get
    /// for random data (the hard case for statistical bounds).
    Positive,
}

fn operands(kind: Kind, dtype: Dtype, m: usize, k: usize, n: usize, rng: &mut Rng) -> (DenseMatrix, DenseMatrix) {
    let f32 = dtype == Dtype::F32;
    let value = |rng: &mut Rng, p: usize, is_a: bool| match kind {
        Kind::Uniform => rng.unit() * 2.0 - 1.0,
        Kind::Wild if f32 => rng.sign() * 10f64.powf(rng.unit() * 36.0 - 19.0),
        Kind::Wild => wild(rng),
        Kind::Cancelling if is_a => (if p.is_multiple_of(2) { 1e10 } else { -1e10 }) * (1.0 + 1e-6 * rng.unit()),
        Kind::Cancelling => 1.0 + (p / 2) as f64 * 1e-7 + rng.unit() * 1e-9,
        Kind::Positive => 1.0 + rng.unit(),
    };
    let a = Matrix::from_fn(m, k, |_, p| value(rng, p, true));
    let b = Matrix::from_fn(k, n, |p, _| value(rng, p, false));
    if f32 {
        let narrow = |x: Matrix<f64>| DenseMatrix::F32(DenseMatrix::F64(x).into_f32());
        (narrow(a), narrow(b))
    } else {
        (a.into(), b.into())
    }
}

fn compute_dense(a: &DenseMatrix, b: &DenseMatrix, tile: &Tile, kernel: Kernel) -> DenseMatrix {
    match (a, b) {
        (DenseMatrix::F64(a), DenseMatrix::F64(b)) => compute(a, b, tile, kernel).into(),
        (DenseMatrix::F32(a), DenseMatrix::F32(b)) => compute(a, b, tile, kernel).into(),
        _ => unreachable!(),
    }
}

/// Adds `delta` to element `at` of `c`, in c's own precision.
fn nudge(c: &mut DenseMatrix, at: usize, delta: f64) {
    match c {
        DenseMatrix::F64(c) => c.as_mut_slice()[at] += delta,
        DenseMatrix::F32(c) => c.as_mut_slice()[at] = (f64::from(c.as_slice()[at]) + delta) as f32,
    }
}

fn unit_roundoff(dtype: Dtype) -> f64 {
    Precision::of(dtype).u
}

/// One element off by 10 times the worst-case error an honest computation of
/// it could make, 10·k·u·(|A||B|)_ij, at a random element of a random tile,
/// either sign: caught every time.
fn ten_times_the_bound_is_caught(dtype: Dtype, k: usize) {
    let (m, n, width) = (64, 1024, 256);
    let mut rng = Rng(7 + k as u64);
    let (mut caught, mut trials) = (0, 0);
    for (job, kind) in [Kind::Uniform, Kind::Positive, Kind::Uniform, Kind::Positive].into_iter().enumerate() {
        let (a, b) = operands(kind, dtype, m, k, n, &mut rng);
        let tiles = tiles_of(&Plan::columns(m, k, n, width));
        let verifier = Verifier::new(a.clone(), b.clone(), &tiles, weights(n, &mut rng), false);
        let honest: Vec<DenseMatrix> = tiles.iter().map(|t| compute_dense(&a, &b, t, Kernel::Whole)).collect();
        for (i, c) in honest.iter().enumerate() {
            assert_eq!(verifier.check(i, c), Ok(()), "{dtype} k={k} job {job} tile {i}");
        }
        for _ in 0..250 {
            let tile = rng.below(tiles.len());
            let at = rng.below(m * width);
            let (row, col) = (at % m, tiles[tile].cols.start + at / m);
            let delta = rng.sign() * 10.0 * k as f64 * unit_roundoff(dtype) * scale_of(&a, &b, row, col, 0..k);
            let mut lie = honest[tile].clone();
            nudge(&mut lie, at, delta);
            match verifier.check(tile, &lie) {
                Err(mismatch) => {
                    caught += 1;
                    assert_eq!(mismatch.row, row, "{mismatch}");
                }
                Ok(()) => eprintln!("missed: {dtype} k={k} {kind:?} tile {tile} ({row}, {col}) by {delta:e}"),
            }
            trials += 1;
        }
    }
    assert_eq!((caught, trials), (1000, 1000), "{dtype} k={k}");
}

#[test]
fn ten_times_the_bound_is_caught_f64_k256() {
    ten_times_the_bound_is_caught(Dtype::F64, 256);
}
#[test]
fn ten_times_the_bound_is_caught_f64_k1024() {
    ten_times_the_bound_is_caught(Dtype::F64, 1024);
}
#[test]
fn ten_times_the_bound_is_caught_f64_k4096() {
    ten_times_the_bound_is_caught(Dtype::F64, 4096);
}
#[test]
fn ten_times_the_bound_is_caught_f32_k256() {
    ten_times_the_bound_is_caught(Dtype::F32, 256);
}
#[test]
fn ten_times_the_bound_is_caught_f32_k1024() {
    ten_times_the_bound_is_caught(Dtype::F32, 1024);
}
#[test]
fn ten_times_the_bound_is_caught_f32_k4096() {
    ten_times_the_bound_is_caught(Dtype::F32, 4096);
}

/// 1000 honest tiles of 8 rows × 256 columns (row blocks × column blocks of
/// one job; for K-partials, each split into `parts` depth ranges, each
/// checked as a tile of its own): none may be rejected. Returns the rows
/// flagged for stage 2.
///
/// Each column block (and depth range) is multiplied for all rows at once
/// and cut into row blocks: the kernel computes each row the same way
/// whatever the others, and B is packed once instead of 125 times.
fn no_false_rejections(kind: Kind, dtype: Dtype, k: usize, kernel: Kernel, parts: usize) -> usize {
    let (rows, width, n) = (8, 256, 2048);
    let row_blocks = 1000usize.div_ceil(parts * n / width);
    let m = row_blocks * rows;
    let mut rng = Rng(11 + k as u64 + parts as u64);
    let (a, b) = operands(kind, dtype, m, k, n, &mut rng);
    let mut tiles = Vec::new();
    for cols in (0..n).step_by(width).map(|c| c..c + width) {
        for depth in (0..parts).map(|p| p * k / parts..(p + 1) * k / parts) {
            for r in (0..m).step_by(rows) {
                tiles.push(Tile { rows: r..r + rows, cols: cols.clone(), depth: depth.clone() });
            }
        }
    }
    let verifier = Verifier::new(a.clone(), b.clone(), &tiles, weights(n, &mut rng), false);
    let (mut flagged, mut checked) = (0, 0);
    for first in (0..tiles.len()).step_by(row_blocks) {
        let whole = compute_dense(&a, &b, &Tile { rows: 0..m, ..tiles[first].clone() }, kernel);
        for (i, tile) in tiles.iter().enumerate().skip(first).take(row_blocks.min(1000 - checked)) {
            let c = match &whole {
                DenseMatrix::F64(c) => DenseMatrix::from(rows_of(c, tile.rows.clone(), 0..width)),
                DenseMatrix::F32(c) => DenseMatrix::from(rows_of(c, tile.rows.clone(), 0..width)),
            };
            let report = verifier.check_report(i, &c);
            assert_eq!(report.verdict, Ok(()), "{kind:?} {dtype} k={k} {kernel:?} parts={parts} tile {tile:?}");
            flagged += report.flagged_rows;
            checked += 1;
        }
    }
    assert_eq!(checked, 1000);
    flagged
}

fn no_false_rejections_at(k: usize) {
    for dtype in [Dtype::F64, Dtype::F32] {
        for kind in [Kind::Uniform, Kind::Wild, Kind::Cancelling, Kind::Positive] {
            for (kernel, parts) in [(Kernel::Whole, 1), (Kernel::Split(3), 1), (Kernel::Whole, 2 + k % 3)] {
                let flagged = no_false_rejections(kind, dtype, k, kernel, parts);
                println!("k={k} {dtype} {kind:?} {kernel:?} parts={parts}: 1000 honest tiles pass, {flagged} rows flagged");
            }
        }
    }
}

#[test]
fn no_false_rejections_k256() {
    no_false_rejections_at(256);
}
#[test]
fn no_false_rejections_k1024() {
    no_false_rejections_at(1024);
}
#[test]
fn no_false_rejections_k4096() {
    no_false_rejections_at(4096);
}

// ---------------------------------------------------------------------------
// The second stage, overflow, and what a rejection says.

#[test]
fn a_lie_between_two_and_three_times_the_bound_is_settled_exactly() {
    // f64: the kernel's reference errs by up to γ_k·s itself, so 2.5× is
    // ambiguous against it and decided with Dot2. (Stage 1 flags the row for
    // the other, larger lie further along the row.)
    let (m, k, n) = (16, 1024, 256);
    let mut rng = Rng(21);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    let tiles = tiles_of(&Plan::columns(m, k, n, n));
    let verifier = Verifier::new(a.clone(), b.clone(), &tiles, weights(n, &mut rng), false);
    let mut lie = compute_dense(&a, &b, &tiles[0], Kernel::Whole);
    let bound = |col: usize| k as f64 * F64.u * scale_of(&a, &b, 3, col, 0..k);
    nudge(&mut lie, 10 * m + 3, 2.5 * bound(10));
    nudge(&mut lie, 50 * m + 3, 20.0 * bound(50)); // the same group of 64 columns
    let report = verifier.check_report(0, &lie);
    let err = report.verdict.unwrap_err();
    assert_eq!((err.row, err.at), (3, At::Element { col: 10 }));
    assert_eq!(report.refined, 1);
}

#[test]
fn a_flood_of_small_lies_costs_a_bounded_recheck() {
    // Every element off by 1.5× the bound: within c = 2, so it passes, but
    // every row is flagged and the exact decisions stop at the budget.
    let (m, k, n) = (64, 512, 256);
    let mut rng = Rng(22);
    let (a, b) = operands(Kind::Positive, Dtype::F64, m, k, n, &mut rng);
    let tiles = tiles_of(&Plan::columns(m, k, n, n));
    let verifier = Verifier::new(a.clone(), b.clone(), &tiles, weights(n, &mut rng), false);
    let mut lie = compute_dense(&a, &b, &tiles[0], Kernel::Whole);
    for at in 0..m * n {
        // (signed like the secret weights, so every row's lies add up)
        let sign = verifier.weights[at / m].signum();
        nudge(&mut lie, at, sign * 1.5 * k as f64 * F64.u * scale_of(&a, &b, at % m, at / m, 0..k));
    }
    let report = verifier.check_report(0, &lie);
    assert_eq!(report.verdict, Ok(()));
    assert_eq!(report.flagged_rows, m * 8, "every row of the 8 groups of 32 columns");
    assert!(report.refined <= (m * n / DOT2_BUDGET_DIVISOR).max(16), "{report:?}");
}

#[test]
fn overflow_and_non_finite_values() {
    // f32 products beyond f32::MAX: an honest worker gets infinities there,
    // which pass; elsewhere a NaN or an infinity is a lie.
    let (m, k, n) = (4, 8, 6);
    let a = Matrix::from_fn(m, k, |i, _| if i == 0 { 1e30f32 } else { 1.5 });
    let b = Matrix::from_fn(k, n, |_, j| if j == 0 { 1e30f32 } else { -0.5 });
    let tiles = tiles_of(&Plan::columns(m, k, n, 3));
    let mut rng = Rng(23);
    let verifier = Verifier::new(DenseMatrix::from(a.clone()), DenseMatrix::from(b.clone()), &tiles, weights(n, &mut rng), false);
    let c = compute(&a, &b, &tiles[0], Kernel::Whole);
    assert!(c.get(0, 0).is_infinite());
    assert_eq!(verifier.check(0, &c.clone().into()), Ok(()));
    let mut anything = c.clone();
    anything.as_mut_slice()[0] = f32::NAN; // (0, 0) overflows honestly: not checked
    assert_eq!(verifier.check(0, &anything.into()), Ok(()));
    for bad in [f32::NAN, f32::INFINITY] {
        let mut lie = c.clone();
        lie.as_mut_slice()[m + 2] = bad; // (2, 1): 8 · 1.5 · 1e30, fine in f32
        let err = verifier.check(0, &lie.into()).unwrap_err();
        assert_eq!(err.row, 2, "{err}");
    }
}

#[test]
fn a_mismatch_says_where_and_by_how_much_in_one_line() {
    let (m, k, n) = (16, 300, 64);
    let mut rng = Rng(24);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    let tiles = vec![Tile { rows: 8..16, cols: 32..64, depth: 100..300 }];
    let verifier = Verifier::new(a.clone(), b.clone(), &tiles, weights(n, &mut rng), false);
    let good = compute_dense(&a, &b, &tiles[0], Kernel::Whole);
    assert_eq!(verifier.check(0, &good), Ok(()));
    // Far off: stage 1 rejects the row.
    let mut lie = good.clone();
    nudge(&mut lie, 2 * 8 + 5, 1.0);
    let text = verifier.check(0, &lie).unwrap_err().to_string();
    assert!(text.starts_with("row 13 of C over columns 32..48 and k 100..300"), "{text}");
    assert!(text.contains("off by 1.") && !text.contains('\n'), "{text}");
    // Slightly off: stage 2 names the element.
    let mut lie = good;
    nudge(&mut lie, 2 * 8 + 5, 10.0 * 200.0 * F64.u * scale_of(&a, &b, 13, 34, 100..300));
    let err = verifier.check(0, &lie).unwrap_err();
    assert_eq!((err.row, &err.at, &err.depth), (13, &At::Element { col: 34 }, &(100..300)));
    let text = err.to_string();
    assert!(text.starts_with("C[13, 34] over k 100..300 is "), "{text}");
    assert!(text.contains("more than the") && !text.contains('\n'), "{text}");
}

#[test]
fn tiles_that_share_columns_and_depth_share_checks() {
    let (m, k, n) = (32, 64, 64);
    let mut rng = Rng(25);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    let tiles = vec![
        Tile { rows: 0..16, cols: 0..32, depth: 0..64 },
        Tile { rows: 16..32, cols: 0..32, depth: 0..64 },
        Tile { rows: 0..32, cols: 0..32, depth: 0..32 },
        Tile { rows: 0..32, cols: 0..32, depth: 32..64 },
    ];
    let verifier = Verifier::new(a.clone(), b.clone(), &tiles, weights(n, &mut rng), false);
    assert_eq!(verifier.groups.len(), 3 * 2, "16-column groups, one set per depth range");
    assert_eq!(verifier.depths.len(), 3);
    for (i, tile) in tiles.iter().enumerate() {
        assert_eq!(verifier.check(i, &compute_dense(&a, &b, tile, Kernel::Whole)), Ok(()));
    }
}

#[test]
fn a_verifier_prepared_before_the_plan_checks_any_plan_its_groups_serve() {
    // k = 512: groups of 32 columns.
    let (m, k, n) = (64, 512, 256);
    let mut rng = Rng(27);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    let r = weights(n, &mut rng);
    let mut early = Verifier::new(a.clone(), b.clone(), &whole_depth_tiles(m, k, n), r.clone(), false);
    assert_eq!(early.groups.len(), n / 32);
    for plan in [Plan::columns(m, k, n, 64), Plan::grid(m, k, n, 4, 2, 1), Plan::columns(m, k, n, 32)] {
        let tiles = tiles_of(&plan);
        assert!(serves(&whole_depth_tiles(m, k, n), &tiles));
        assert!(early.retile(&tiles), "{:?}", plan.shape());
        let fresh = Verifier::new(a.clone(), b.clone(), &tiles, r.clone(), false);
        for (i, tile) in tiles.iter().enumerate() {
            let mut c = compute_dense(&a, &b, tile, Kernel::Whole);
            assert_eq!(early.check(i, &c), Ok(()), "honest tile {i} of {:?}", plan.shape());
            let bound = k as f64 * unit_roundoff(Dtype::F64) * scale_of(&a, &b, tile.rows.start, tile.cols.start, tile.depth.clone());
            nudge(&mut c, 0, 10.0 * bound);
            assert!(early.check(i, &c).is_err() && fresh.check(i, &c).is_err(), "a lie of 10 times the bound in tile {i}");
        }
    }
}

#[test]
fn a_plan_its_groups_do_not_serve_leaves_the_verifier_as_it_was() {
    let (m, k, n) = (16, 512, 128);
    let mut rng = Rng(28);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    let mut early = Verifier::new(a.clone(), b.clone(), &whole_depth_tiles(m, k, n), weights(n, &mut rng), false);
    let before = early.tiles.clone();
    // Columns cut off the groups' edges, k split, and a tile outside C.
    for plan in [Plan::columns(m, k, n, 48), Plan::grid(m, k, n, 1, 2, 2)] {
        assert!(!serves(&whole_depth_tiles(m, k, n), &tiles_of(&plan)));
        assert!(!early.retile(&tiles_of(&plan)), "{:?}", plan.shape());
    }
    assert!(!early.retile(&[Tile { rows: 0..m, cols: 96..160, depth: 0..k }]));
    assert_eq!(early.tiles, before);
    assert_eq!(early.check(1, &compute_dense(&a, &b, &before[1], Kernel::Whole)), Ok(()));
}

#[test]
fn a_preparation_in_parts_sums_what_one_pass_does() {
    for dtype in [Dtype::F64, Dtype::F32] {
        // Group counts on and off the skinny kernel's blocks of 8 columns.
        for (m, k, n) in [(40, 300, 128), (33, 1000, 900)] {
            let mut rng = Rng(29);
            let (a, b) = operands(Kind::Uniform, dtype, m, k, n, &mut rng);
            let (tiles, r) = (whole_depth_tiles(m, k, n), weights(n, &mut rng));
            let whole = Verifier::new(a.clone(), b.clone(), &tiles, r.clone(), false);
            let parts = Verifier::new_in_parts(a.clone(), b.clone(), &tiles, r, false, 3, &one_after_another);
            for (one, three) in whole.y.iter().zip(&parts.y).chain(whole.scale.iter().zip(&parts.scale)) {
                assert!((one - three).abs() <= 1e-4 * one.abs().max(1.0), "{dtype:?} {m}x{k}x{n}: {one} against {three}");
            }
            for (i, tile) in tiles.iter().enumerate() {
                let mut c = compute_dense(&a, &b, tile, Kernel::Whole);
                assert_eq!(parts.check(i, &c), Ok(()));
                let bound = k as f64 * unit_roundoff(dtype) * scale_of(&a, &b, 0, tile.cols.start, 0..k);
                nudge(&mut c, 0, 10.0 * bound);
                assert!(parts.check(i, &c).is_err(), "{dtype:?}: a lie of 10 times the bound in tile {i}");
            }
        }
    }
}

#[test]
fn a_preparation_band_by_band_is_the_preparation_at_once() {
    for dtype in [Dtype::F64, Dtype::F32] {
        // Bands of every height (one row, a ragged last one, some gathered), group counts on and off the kernel's blocks of 8.
        let shapes = [((40, 300, 128), 1), ((40, 300, 128), 7), ((33, 1000, 900), 16), ((100, 64, 70), 100), ((600, 40, 64), 100), ((0, 8, 8), 4), ((5, 0, 3), 2)];
        for ((m, k, n), band) in shapes {
            let mut rng = Rng(30);
            let (a, b) = operands(Kind::Uniform, dtype, m, k, n, &mut rng);
            let (tiles, r) = (whole_depth_tiles(m, k, n), weights(n, &mut rng));
            let whole = Verifier::new(a.clone(), b.clone(), &tiles, r.clone(), false);
            let mut by_rows = Preparing::new(m, &b, r.clone(), false);
            for rows in (0..m).step_by(band).map(|r0| r0..(r0 + band).min(m)) {
                assert!(!by_rows.complete() || k == 0);
                by_rows.add(Stored::of_matrix(&a), rows, 0..k, 2, &one_after_another);
            }
            assert!(by_rows.complete());
            // Column bands lend only the storage read so far.
            let read_so_far = |end: usize| match Stored::of_matrix(&a) {
                Stored::F64(v) => Stored::F64(&v[..end]),
                Stored::F32(v) => Stored::F32(&v[..end]),
            };
            // In one piece (added in place) or in three.
            let parts = if band % 2 == 0 { 1 } else { 3 };
            let mut by_columns = Preparing::new(m, &b, r, false);
            for cols in (0..k).step_by(band).map(|c0| c0..(c0 + band).min(k)) {
                let end = cols.end * m;
                by_columns.add(read_so_far(end), 0..m, cols, parts, &one_after_another);
            }
            assert!(by_columns.complete());
            let banded = by_rows.finish(Arc::new(a.clone()), Arc::new(b.clone()));
            let by_columns = by_columns.finish(Arc::new(a.clone()), Arc::new(b.clone()));
            assert_eq!((banded.tiles.len(), banded.groups.len()), (whole.tiles.len(), whole.groups.len()));
            for (one, other) in whole.y.iter().zip(&banded.y).chain(whole.scale.iter().zip(&banded.scale)) {
                assert!((one - other).abs() <= 1e-12 * one.abs().max(1e-300), "{dtype:?} {m}x{k}x{n} in bands of {band} rows: {one} against {other}");
            }
            // Partial sums over columns, added in f64, round otherwise.
            for (one, other) in whole.y.iter().zip(&by_columns.y).chain(whole.scale.iter().zip(&by_columns.scale)) {
                assert!((one - other).abs() <= 1e-4 * one.abs().max(1.0), "{dtype:?} {m}x{k}x{n} in bands of {band} columns: {one} against {other}");
            }
            for (i, tile) in tiles.iter().enumerate().filter(|(_, t)| m > 0 && k > 0 && !t.cols.is_empty()) {
                let mut c = compute_dense(&a, &b, tile, Kernel::Whole);
                assert_eq!((banded.check(i, &c), by_columns.check(i, &c)), (Ok(()), Ok(())), "{dtype:?}: honest tile {i}");
                let bound = k as f64 * unit_roundoff(dtype) * scale_of(&a, &b, m - 1, tile.cols.start, 0..k);
                nudge(&mut c, m - 1, 10.0 * bound);
                assert!(banded.check(i, &c).is_err(), "{dtype:?}: a lie of 10 times the bound in tile {i}, last row");
                assert!(by_columns.check(i, &c).is_err(), "{dtype:?}: a lie of 10 times the bound in tile {i}, last row, by columns");
            }
        }
    }
}

#[test]
#[should_panic(expected = "are not the next")]
fn a_preparation_takes_bands_in_order() {
    let mut rng = Rng(31);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, 8, 8, 8, &mut rng);
    let mut preparing = Preparing::new(8, &b, weights(8, &mut rng), false);
    preparing.add(Stored::of_matrix(&a), 0..4, 0..8, 1, &one_after_another);
    preparing.add(Stored::of_matrix(&a), 0..8, 4..8, 1, &one_after_another);
}

#[test]
fn the_preparations_count_of_multiply_adds_is_the_verifiers() {
    let (m, k, n) = (48, 1000, 900);
    let mut rng = Rng(26);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    for plan in [Plan::columns(m, k, n, 256), Plan::columns(m, k, n, 40), Plan::grid(m, k, n, 3, 4, 2), Plan::grid(m, k, n, 2, 7, 5)] {
        let verifier = Verifier::new(a.clone(), b.clone(), &tiles_of(&plan), weights(n, &mut rng), false);
        let counted: usize = verifier.groups.iter().map(|g| 2 * m * verifier.depths[g.depth].len()).sum();
        assert_eq!(preparation_multiply_adds(&plan), counted as f64, "{:?}", plan.shape());
    }
}

#[test]
fn empty_tiles_and_empty_depths() {
    let (m, k, n) = (4, 5, 6);
    let mut rng = Rng(26);
    let (a, b) = operands(Kind::Uniform, Dtype::F64, m, k, n, &mut rng);
    let tiles = vec![Tile { rows: 0..0, cols: 0..6, depth: 0..5 }, Tile { rows: 0..4, cols: 2..2, depth: 0..5 }, Tile {
        rows: 0..4,
        cols: 0..6,
        depth: 3..3,
    }];
    let verifier = Verifier::new(a, b, &tiles, weights(n, &mut rng), false);
    assert_eq!(verifier.check(0, &Matrix::<f64>::zeros(0, 6).unwrap().into()), Ok(()));
    assert_eq!(verifier.check(1, &Matrix::<f64>::zeros(4, 0).unwrap().into()), Ok(()));
    assert_eq!(verifier.check(2, &Matrix::<f64>::zeros(4, 6).unwrap().into()), Ok(()));
    let mut not_zero = Matrix::<f64>::zeros(4, 6).unwrap();
    not_zero.as_mut_slice()[7] = 1e-300;
    assert!(verifier.check(2, &not_zero.into()).is_err());
}
