//! Checking a worker's tile before it is assembled.
//!
//! A tile is the product A[I, K]·B[K, J]: C[I, J] itself, or one partial sum
//! of it when K is not all of k. An honest computation of element (i, j), in
//! any order of summation, with or without fused multiply-adds, errs by at
//! most γ_k·s_ij + k·tiny, where s = |A||B| (over K), k = |K|,
//! γ_k = k·u/(1 − k·u), u is the unit roundoff of the job's dtype and tiny its
//! smallest subnormal (for underflow). That covers every kernel we ship:
//! matrixmultiply's AVX-512/AVX2/FMA kernels, columns split over threads, the
//! wasm f64x2 kernel, f32, and K-partials (each checked as its own tile). The
//! check never rejects an honest result. It rejects a tile with an element
//! off by 10 times that bound, with room to spare (stage 1 flags its row; in
//! tests every lie of 6 times is caught), and holds every element of a
//! flagged row to c = 2 times it (stage 2). Integer jobs are checked exactly.
//!
//! # Stage 1: Freivalds over groups of columns
//!
//! Each column j of C has a secret random weight r_j, never sent. A tile's
//! columns are cut into groups of at most G = max(k/16, 16) columns, each
//! group its own check. Once per job, for every distinct (depth range,
//! group), the master computes x = B[K, g]·r and t = |B[K, g]|·|r| in one
//! pass over B, then y = A[:, K]·x and Ŝ = |A[:, K]|·t for all rows at once,
//! in the job's dtype, in one pass over A per distinct depth range (see
//! `skinny`: each element of A is read once for both products). A shell
//! may prepare this before the plan is known, for [`whole_depth_tiles`] (even
//! while A is still arriving, band by band: [`Preparing`]), and give the
//! plan's tiles to [`Verifier::retile`] once it is. At
//! n = 4096 groups are 256 columns wide: the precompute is two products of
//! A by 16 columns. A plan that splits k checks each slice's
//! partial sums; the whole blocks those add up to are checked too only when
//! a checkpoint is restored (`Job::restorable_tiles`), which costs a second
//! pass over A.
//!
//! A claimed tile costs one pass over itself: for each group and row,
//! z_i = Σ_j c_ij·r_j in f64, and d_i = z_i − y_i, where S_i = Σ_j |r_j|·s_ij is
//! the row's scale, held to two allowances:
//!
//! - (a) rigorous: the worker's worst case γ_k·S_i, plus ours (γ_{k+w+2}·S_i
//!   for y; for z, Wilkinson's running error bound 3·u_f64·√(w·walk_i), where
//!   walk_i sums the squares of the partial sums of z_i), plus underflow. A
//!   row beyond it is certainly wrong: the tile is rejected at once.
//! - (b) probabilistic: λ·u·(√(k+1) + √(k+w+1))·S_i/√w + λ·u_f64·√(5·walk_i),
//!   with λ = 5 and w the group's width. Under Higham and Mary's model
//!   (rounding errors independent, of mean zero, each at most u times what it
//!   rounds) the worker's weighted error Σ_j r_j·e_ij stays within
//!   λ·√(k+1)·u·√(Σ_j r_j²·s_ij²) except with probability 2·exp(−λ²/2), and
//!   S_i/√w ≤ √(Σ_j r_j²·s_ij²): using it errs towards flagging. Our own error
//!   in y is bounded the same way, and in z by the squares of what we
//!   rounded (each product is at most the sum of two partial sums). A row
//!   beyond (b) is *flagged*, not rejected: it may be an honest row that the
//!   model does not fit (data whose rounding errors do not look random), so
//!   it goes to stage 2.
//!
//! Why G = k/16: an element off by δ shows up in d_i as δ·r_j, while (b) is
//! about 2λ·√k·u·S_i/√w, and for entries of one magnitude S_i ≈ 1.5·w·s_ij.
//! A lie of 10·k·u·s_ij (|r_j| ≥ 1) then exceeds (b) by a factor of about
//! 3.2·√(k/w)/λ ≥ 2.6 when w ≤ k/16, whatever k. Measured over 1000 random
//! trials each (k = 256, 1024 and 4096, f64 and f32, uniform and all-positive
//! entries), stage 1 flags every lie of 6 times the bound and 99.9% or more
//! of those of 5 times. Wider groups would miss 10× lies at k = 256 (with
//! k/8, some 7× lies already pass); narrower ones cost precompute and memory
//! (y and Ŝ are m × 2n/G values). When magnitudes
//! within a row of a group differ widely, a lie in a small element hides
//! below the large ones; it is still caught once it stands out of S_i.
//!
//! # Stage 2: flagged rows, element by element
//!
//! Each flagged row of a group is recomputed with the kernel in f64: the
//! reference A[i, K]·B[K, g] and its scale |A[i, K]|·|B[K, g]| (a few rows
//! with dot products straight off B, more in batches of 256 rows through
//! the kernel, so a flood costs about two f64 products of the tile, a few
//! times its own compute, in bounded memory). For f32 jobs the reference
//! is exact to f64 rounding, far below f32's. For f64 jobs it errs by up to
//! γ_k·s_ij itself: an element within (c−1)·γ_k·s_ij of it passes, one beyond
//! (c+1)·γ_k·s_ij fails, and one in between is recomputed with Dot2
//! (Ogita–Rump–Oishi: error u·|c_ij| + γ_k²·s_ij, products by fma, sums by
//! TwoSum) and held to c·γ_k·s_ij exactly, while a budget of 1/1024 of the
//! tile's multiply-adds lasts. Honest elements are essentially never in
//! between (their errors are far below the worst case). Compensated dot
//! products for every flagged element would be exact but cost about 100
//! times the kernel, which a liar could make the master pay for a whole tile.
//!
//! So a tile passes only if every element checked in stage 2 is within
//! c·γ_k·s_ij, or, beyond the Dot2 budget, (c+2)·γ_k·s_ij (f64) of the truth.
//! A liar can make the master pay stage 2 for a whole tile, about 2–4 times
//! the tile's own compute, without being rejected, by lying within that
//! bound; one who lies beyond it is rejected at its first bad row, and banned
//! after 3 strikes. Elements whose scale could overflow the dtype are not
//! checked (an honest result may be infinite or NaN there), nor are any
//! whose inputs are not finite.
//!
//! # Integer jobs
//!
//! When every entry of A and B is an integer and the weights are small
//! integers, every honest result is an integer (a finite one that is not is
//! rejected at once), and while S_i stays below 2^24 (f32) or 2^53 (f64)
//! every sum on both sides is exact: then d_i must be exactly 0 and, in
//! stage 2, every element exactly right.

mod bound;
mod exact;
mod preparing;
mod skinny;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::kernel;
use crate::matrix::{DenseMatrix, Dtype, Element, Matrix};
use crate::plan::Tile;

use bound::{within, Precision, F64, LAMBDA, SLACK};
pub use preparing::{Preparing, Stored};

/// Flagged rows recomputed per kernel call in stage 2.
const ROW_BATCH: usize = 256;

/// Up to this many flagged rows of a group are recomputed without copying B.
const DIRECT_ROWS: usize = 4;

/// Stage 2 may spend this fraction of the tile's multiply-adds on Dot2.
const DOT2_BUDGET_DIVISOR: usize = 1024;

/// What a rejected tile got wrong, in C's coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Row of C (of the partial sum, for a tile over part of k).
    pub row: usize,
    /// The element, or the columns whose weighted sum was compared.
    pub at: At,
    /// The depth range of the tile: which partial sum of C.
    pub depth: Range<usize>,
    /// What the worker sent: the element, or C·r over the columns.
    pub got: f64,
    /// What it should be, within the master's own small error.
    pub want: f64,
    /// The largest difference allowed (0 when checked exactly).
    pub tolerance: f64,
}

/// Where a [`Mismatch`] was found.
#[derive(Debug, Clone, PartialEq)]
pub enum At {
    /// One element, in column `col` of C.
    Element { col: usize },
    /// The row's sum over columns `cols` of C, weighted by the secret weights.
    Weighted { cols: Range<usize> },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (row, depth) = (self.row, &self.depth);
        match &self.at {
            At::Element { col } => write!(f, "C[{row}, {col}] over k {depth:?} is {:e} where A·B gives {:e}", self.got, self.want)?,
            At::Weighted { cols } => write!(
                f,
                "row {row} of C over columns {cols:?} and k {depth:?}, weighted by the secret r: C·r is {:e} where A·(B·r) gives {:e}",
                self.got, self.want
            )?,
        }
        let off = (self.got - self.want).abs();
        if self.tolerance == 0.0 {
            write!(f, ", off by {off:.3e}; the job is all integers, so it must be exact")
        } else {
            write!(f, ", off by {off:.3e}, more than the {:.3e} an honest computation could be", self.tolerance)
        }
    }
}

impl std::error::Error for Mismatch {}

/// A check's verdict and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub verdict: Result<(), Mismatch>,
    /// Rows of column groups that stage 1 flagged and stage 2 recomputed.
    pub flagged_rows: usize,
    /// Elements stage 2 resolved with Dot2.
    pub refined: usize,
}

/// One distinct (depth range, group of columns): one secret check vector.
#[derive(Debug, Clone)]
struct Group {
    /// Index into `Verifier::depths`.
    depth: usize,
    cols: Range<usize>,
    /// Σ_j |r_j| over the group.
    weight_sum: f64,
}

/// Checks worker results: see the module docs.
pub struct Verifier {
    a: Arc<DenseMatrix>,
    b: Arc<DenseMatrix>,
    /// The worker's arithmetic (the job's dtype).
    precision: Precision,
    /// Integer job with integer weights: exact checks where sums cannot round.
    exact: bool,
    /// One per column of C.
    weights: Vec<f64>,
    tiles: Vec<Tile>,
    /// Per tile, its groups (indices into `groups`), in column order.
    tile_groups: Vec<Vec<usize>>,
    /// Sorted by depth, so each depth's groups are contiguous.
    groups: Vec<Group>,
    depths: Vec<Range<usize>>,
    /// Per group, for every row of A: y = A[:, K]·(B[K, g]·r_g) and
    /// Ŝ = |A[:, K]|·(|B[K, g]|·|r_g|). m × groups, column-major.
    y: Vec<f64>,
    scale: Vec<f64>,
    /// The shell's clock, if it gave one, and the checks' time by it so far.
    meter: Option<Clock>,
    checking_nanos: AtomicU64,
}

/// A clock the shell may lend to time the checks (natively, the thread's CPU
/// time); core reads no clock of its own.
pub type Clock = fn() -> Option<Duration>;

/// Does pieces of work that share nothing, at once where it can: the shell's
/// way to lend threads ([`Verifier::new_in_parts`]).
pub type Runner<'r> = &'r dyn for<'a> Fn(Vec<Box<dyn FnOnce() + Send + 'a>>);

/// A [`Runner`] without threads.
pub fn one_after_another(work: Vec<Box<dyn FnOnce() + Send + '_>>) {
    work.into_iter().for_each(|piece| piece());
}

/// `Verifier::checking_nanos` before the clock gave any reading.
const UNTIMED: u64 = u64::MAX;

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("a", &self.a.shape_string())
            .field("b", &self.b.shape_string())
            .field("dtype", &self.a.dtype())
            .field("exact", &self.exact)
            .field("tiles", &self.tiles.len())
            .field("groups", &self.groups.len())
            .field("depths", &self.depths)
            .finish_non_exhaustive()
    }
}

/// Multiply-adds the verifier's preparation takes for a plan's tiles: for
/// every distinct (depth slice, group of columns), two products of A[:, K] by
/// one column (y and Ŝ). Splitting k multiplies them: each slice's groups are
/// narrower. The plan's model weighs this as the master's work.
pub fn preparation_multiply_adds(plan: &crate::plan::Plan) -> f64 {
    let groups_per_slice = |depth: usize| -> f64 {
        let width = bound::group_width(depth);
        (0..plan.cols.parts).map(|c| plan.cols.range(c).len().div_ceil(width) as f64).sum()
    };
    (0..plan.depth.parts).map(|s| plan.depth.range(s).len()).map(|depth| 2.0 * plan.m as f64 * depth as f64 * groups_per_slice(depth)).sum()
}

/// One tile per group of columns of the whole depth: a verifier built for
/// these (while the pool gathers, before the plan) serves any plan that keeps
/// k whole and cuts C's columns where these groups do, by
/// [`Verifier::retile`]; e.g. at n = k = 4096 (groups of 256), every plan
/// whose tiles are a multiple of 256 columns wide.
pub fn whole_depth_tiles(m: usize, k: usize, n: usize) -> Vec<Tile> {
    bound::split(0..n, bound::group_width(k)).map(|cols| Tile { rows: 0..m, cols, depth: 0..k }).collect()
}

/// Whether a verifier built for `prepared` checks `tiles` too, by
/// [`Verifier::retile`]: every group of theirs is one of its groups.
pub fn serves(prepared: &[Tile], tiles: &[Tile]) -> bool {
    let groups: std::collections::HashSet<_> = prepared.iter().flat_map(groups_of).collect();
    tiles.iter().flat_map(groups_of).all(|g| groups.contains(&g))
}

fn fits(tile: &Tile, m: usize, k: usize, n: usize) -> bool {
    let within = |r: &Range<usize>, len: usize| r.start <= r.end && r.end <= len;
    within(&tile.rows, m) && within(&tile.cols, n) && within(&tile.depth, k)
}

/// The (depth, columns) groups a tile is checked by.
fn groups_of(tile: &Tile) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
    bound::split(tile.cols.clone(), bound::group_width(tile.depth.len())).map(|cols| (tile.depth.clone(), cols))
}

/// # Panics
/// If A and B cannot be multiplied or differ in dtype, or if there is not one
/// weight per column of C or one is below 1 in magnitude.
fn check_operands(a: &DenseMatrix, b: &DenseMatrix, weights: &[f64]) {
    assert_eq!(b.rows(), a.cols(), "A is {} but B is {}", a.shape_string(), b.shape_string());
    assert_eq!(a.dtype(), b.dtype(), "A and B differ in dtype");
    check_weights(weights, b.cols());
}

/// # Panics
/// If there is not one weight per column of C (`n`) or one is below 1 in magnitude.
fn check_weights(weights: &[f64], n: usize) {
    assert_eq!(weights.len(), n, "one weight per column of C");
    assert!(weights.iter().all(|w| w.abs() >= 1.0 && w.is_finite()), "weights must be finite and at least 1 in magnitude");
}

/// The distinct (depth, columns) groups that check `tiles`, sorted by depth
/// so each depth's are contiguous, and the distinct depth ranges.
fn groups_for(tiles: &[Tile], weights: &[f64]) -> (Vec<Group>, Vec<Range<usize>>) {
    let mut keys: Vec<(Range<usize>, Range<usize>)> = tiles.iter().flat_map(groups_of).collect();
    keys.sort_by_key(|(depth, cols)| (depth.start, depth.end, cols.start, cols.end));
    keys.dedup();
    let mut depths: Vec<Range<usize>> = keys.iter().map(|(depth, _)| depth.clone()).collect();
    depths.dedup();
    let groups = keys
        .into_iter()
        .map(|(depth, cols)| {
            let weight_sum = weights[cols.clone()].iter().map(|w| w.abs()).sum();
            Group { depth: depths.iter().position(|d| *d == depth).expect("listed above"), cols, weight_sum }
        })
        .collect();
    (groups, depths)
}

/// x = B[K, g]·r and t = |B[K, g]|·|r| for `groups` (all of depth range
/// `depth`), as |K| × groups matrices (column-major, in f64), in one pass over B.
fn weigh(b: &DenseMatrix, depth: Range<usize>, groups: &[Group], weights: &[f64], precision: Precision) -> (Vec<f64>, Vec<f64>) {
    let kd = depth.len();
    let mut x = vec![0.0; kd * groups.len()];
    let mut t = vec![0.0; kd * groups.len()];
    for (g, group) in groups.iter().enumerate() {
        let (xg, tg) = (&mut x[g * kd..(g + 1) * kd], &mut t[g * kd..(g + 1) * kd]);
        let weights = &weights[group.cols.clone()];
        match b {
            DenseMatrix::F64(b) => skinny::weigh(b.columns(group.cols.clone()), b.rows(), depth.clone(), weights, xg, tg),
            DenseMatrix::F32(b) => skinny::weigh(b.columns(group.cols.clone()), b.rows(), depth.clone(), weights, xg, tg),
        }
        // Where t_p is tiny, x_p (in f64, or narrowed to f32) may have lost
        // up to w·tiny (or f32's tiny) to underflow, which |a_ip| could
        // magnify. Raising such t_p by that loss over u puts it inside the
        // worker's γ_k·S_i term, and keeps Ŝ an upper bound.
        let (threshold, raise) = precision.small_t(group.cols.len());
        for tp in tg.iter_mut().filter(|tp| **tp > 0.0 && **tp < threshold) {
            *tp += raise;
        }
    }
    (x, t)
}

enum RowVerdict {
    Pass,
    Flag,
    Reject(Mismatch),
}

impl Verifier {
    /// Precomputes the checks of `tiles`. `weights` holds one secret random
    /// weight per column of C, at least 1 in magnitude, best at most 2 (the
    /// tiles that share a column share its weight); for an integer job (`integer`:
    /// every entry of A and B an integer) use small integers, so the check is
    /// exact. A and B are kept (shared, not copied) for stage 2.
    ///
    /// # Panics
    /// If A and B cannot be multiplied or differ in dtype, if there is not
    /// one weight per column of C or one is below 1 in magnitude, or if a tile
    /// reaches outside C or A·B.
    pub fn new(a: impl Into<Arc<DenseMatrix>>, b: impl Into<Arc<DenseMatrix>>, tiles: &[Tile], weights: Vec<f64>, integer: bool) -> Self {
        Self::new_in_parts(a, b, tiles, weights, integer, 1, &one_after_another)
    }

    /// As [`Self::new`], with the pass over A cut into up to `parts` slices of
    /// its columns, handed to `run` to do at once where the shell can (core
    /// starts no threads); their partial sums are then added.
    #[allow(clippy::too_many_arguments)]
    pub fn new_in_parts(
        a: impl Into<Arc<DenseMatrix>>,
        b: impl Into<Arc<DenseMatrix>>,
        tiles: &[Tile],
        weights: Vec<f64>,
        integer: bool,
        parts: usize,
        run: Runner<'_>,
    ) -> Self {
        let (a, b) = (a.into(), b.into());
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        check_operands(&a, &b, &weights);
        for tile in tiles {
            assert!(fits(tile, m, k, n), "tile {tile:?} reaches outside the {m}x{k} by {k}x{n} product");
        }
        let (groups, depths) = groups_for(tiles, &weights);
        let count = groups.len();
        let mut verifier = Self::assemble(a, b, weights, integer, groups, depths, vec![0.0; m * count], vec![0.0; m * count]);
        assert!(verifier.retile(tiles), "every tile's groups were made above");
        for d in 0..verifier.depths.len() {
            verifier.precompute(d, parts, run);
        }
        verifier
    }

    /// A verifier with its groups and their y and Ŝ, checking no tiles yet.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        a: Arc<DenseMatrix>,
        b: Arc<DenseMatrix>,
        weights: Vec<f64>,
        integer: bool,
        groups: Vec<Group>,
        depths: Vec<Range<usize>>,
        y: Vec<f64>,
        scale: Vec<f64>,
    ) -> Self {
        Self {
            precision: Precision::of(a.dtype()),
            exact: integer && weights.iter().all(|w| w.fract() == 0.0 && w.abs() <= 1024.0),
            a,
            b,
            weights,
            tiles: Vec::new(),
            tile_groups: Vec::new(),
            y,
            scale,
            groups,
            depths,
            meter: None,
            checking_nanos: AtomicU64::new(UNTIMED),
        }
    }

    /// Checks `tiles` from now on, numbered anew, if the groups prepared
    /// already serve every one of them (e.g. a verifier built from
    /// [`whole_depth_tiles`] before the plan was known); otherwise returns
    /// false and changes nothing. A tile's rows may be any of A's.
    pub fn retile(&mut self, tiles: &[Tile]) -> bool {
        let (m, k, n) = (self.a.rows(), self.a.cols(), self.b.cols());
        let index: HashMap<(Range<usize>, Range<usize>), usize> =
            self.groups.iter().enumerate().map(|(g, group)| ((self.depths[group.depth].clone(), group.cols.clone()), g)).collect();
        let tile_groups: Option<Vec<Vec<usize>>> =
            tiles.iter().map(|tile| fits(tile, m, k, n).then(|| groups_of(tile).map(|key| index.get(&key).copied()).collect()).flatten()).collect();
        let Some(tile_groups) = tile_groups else { return false };
        self.tiles = tiles.to_vec();
        self.tile_groups = tile_groups;
        true
    }

    /// y and Ŝ for the groups of depth range `d`, the pass over A in up to
    /// `parts` slices of its columns, done by `run`.
    fn precompute(&mut self, d: usize, parts: usize, run: Runner<'_>) {
        let depth = self.depths[d].clone();
        let (m, kd) = (self.a.rows(), depth.len());
        let first = self.groups.iter().position(|g| g.depth == d).expect("every depth range has a group");
        let count = self.groups[first..].iter().take_while(|g| g.depth == d).count();
        if m == 0 || kd == 0 {
            return; // an empty product: y = Ŝ = 0
        }
        let (x, t) = weigh(&self.b, depth.clone(), &self.groups[first..first + count], &self.weights, self.precision);
        let (y, scale) = (&mut self.y[first * m..(first + count) * m], &mut self.scale[first * m..(first + count) * m]);
        let slices: Vec<Range<usize>> = bound::split(0..kd, kd.div_ceil(parts.max(1))).collect();
        // The first slice sums into y and Ŝ, each other into its own; all are then added.
        let a = &*self.a;
        let mut partial: Vec<(Vec<f64>, Vec<f64>)> = (1..slices.len()).map(|_| (vec![0.0; m * count], vec![0.0; m * count])).collect();
        let outputs = std::iter::once((y, scale)).chain(partial.iter_mut().map(|(py, ps)| (py.as_mut_slice(), ps.as_mut_slice())));
        let work: Vec<Box<dyn FnOnce() + Send + '_>> = slices
            .iter()
            .zip(outputs)
            .map(|(slice, (y, scale))| {
                let (xs, ts) = (depth_rows(&x, kd, slice), depth_rows(&t, kd, slice));
                let columns = depth.start + slice.start..depth.start + slice.end;
                Box::new(move || products_of(Stored::of_matrix(a), m, 0..m, columns, &xs, &ts, y, scale)) as Box<dyn FnOnce() + Send + '_>
            })
            .collect();
        run(work);
        let (y, scale) = (&mut self.y[first * m..(first + count) * m], &mut self.scale[first * m..(first + count) * m]);
        for (py, ps) in partial {
            y.iter_mut().zip(py).for_each(|(o, v)| *o += v);
            scale.iter_mut().zip(ps).for_each(|(o, v)| *o += v);
        }
    }

    /// How many tiles it checks.
    pub fn tiles(&self) -> usize {
        self.tiles.len()
    }

    /// Times every check by `clock` from now on ([`Self::check_time`]).
    pub fn metered(self, clock: Clock) -> Self {
        Self { meter: Some(clock), ..self }
    }

    /// What the checks took so far, by the clock given to [`Self::metered`]
    /// (`None` without one, or while it has given no reading).
    pub fn check_time(&self) -> Option<Duration> {
        let nanos = self.checking_nanos.load(Ordering::Relaxed);
        (nanos != UNTIMED).then(|| Duration::from_nanos(nanos))
    }

    /// Checks a claimed tile `c` (|rows| × |cols|, column-major) of tile `tile`.
    ///
    /// # Panics
    /// If there is no such tile or `c` has another shape (the scheduler checks
    /// sizes first).
    pub fn check(&self, tile: usize, c: &DenseMatrix) -> Result<(), Mismatch> {
        self.check_report(tile, c).verdict
    }

    /// As [`check`](Self::check), with what the check cost.
    ///
    /// # Panics
    /// As [`check`](Self::check).
    pub fn check_report(&self, tile: usize, c: &DenseMatrix) -> Report {
        let started = self.meter.and_then(|clock| clock());
        let mut report = Report { verdict: Ok(()), flagged_rows: 0, refined: 0 };
        report.verdict = self.check_into(tile, c, &mut report);
        if let Some(took) = started.zip(self.meter.and_then(|clock| clock())).map(|(before, after)| after.saturating_sub(before)) {
            let took = took.as_nanos() as u64;
            let _ = self.checking_nanos.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(if t == UNTIMED { took } else { t + took }));
        }
        report
    }

    fn check_into(&self, tile: usize, c: &DenseMatrix, report: &mut Report) -> Result<(), Mismatch> {
        let t = &self.tiles[tile];
        let (rows, width) = (t.rows.len(), t.cols.len());
        assert_eq!((c.rows(), c.cols()), (rows, width), "tile {tile} is {rows}x{width}");
        if rows == 0 || width == 0 {
            return Ok(());
        }
        if self.exact {
            self.integers_only(t, c)?;
        }
        let m = self.a.rows();
        let (mut z, mut walk) = (vec![0.0; rows], vec![0.0; rows]);
        let mut flagged: Vec<(usize, Vec<usize>)> = Vec::new();
        for &g in &self.tile_groups[tile] {
            let group = &self.groups[g];
            let local = group.cols.start - t.cols.start..group.cols.end - t.cols.start;
            let weights = &self.weights[group.cols.clone()];
            match c {
                DenseMatrix::F64(c) => exact::weighted_rows(c.columns(local), rows, weights, &mut z, &mut walk),
                DenseMatrix::F32(c) => exact::weighted_rows(c.columns(local), rows, weights, &mut z, &mut walk),
            }
            let mut rows_flagged = Vec::new();
            for (i, row) in t.rows.clone().enumerate() {
                match self.row_verdict(group, row, z[i], walk[i], self.y[g * m + row], self.scale[g * m + row]) {
                    RowVerdict::Pass => {}
                    RowVerdict::Flag => rows_flagged.push(i),
                    RowVerdict::Reject(mismatch) => return Err(mismatch),
                }
            }
            if !rows_flagged.is_empty() {
                report.flagged_rows += rows_flagged.len();
                flagged.push((g, rows_flagged));
            }
        }
        let mut budget = (rows.saturating_mul(width).saturating_mul(t.depth.len()) / DOT2_BUDGET_DIVISOR).max(16 * t.depth.len());
        for (g, rows_flagged) in flagged {
            self.recheck(t, g, &rows_flagged, c, &mut budget, report)?;
        }
        Ok(())
    }

    /// Stage 1 for one row of one group: see the module docs. `z` and `walk`
    /// come from [`exact::weighted_rows`]; `want` and `s_hat` are y and Ŝ
    /// from the precompute.
    fn row_verdict(&self, group: &Group, row: usize, z: f64, walk: f64, want: f64, s_hat: f64) -> RowVerdict {
        // The worker's arithmetic, which is also ours for y; z is ours in f64.
        let (p, k, w) = (self.precision, self.depths[group.depth].len(), group.cols.len());
        let reject = |tolerance: f64| {
            RowVerdict::Reject(Mismatch {
                row,
                at: At::Weighted { cols: group.cols.clone() },
                depth: self.depths[group.depth].clone(),
                got: z,
                want,
                tolerance,
            })
        };
        // Our underflow: products in y, Ŝ and z (x's is inside Ŝ, see `precompute`).
        let underflow = p.underflow(4.0 * (k + w + 1) as f64);
        // S_i ≥ Σ_j |r_j|·s_ij, the row's scale.
        let s_up = s_hat * (1.0 + p.gamma(k + w + 4)) + underflow;
        if !within(s_up, p.max / 4.0) {
            return RowVerdict::Flag; // an honest result may overflow (or inputs are not finite): element by element
        }
        let diff = (z - want).abs();
        if self.exact && s_up < p.exact_below && walk < 2f64.powi(104) {
            // Every partial sum and product on both sides is an integer below 2^53.
            return if diff == 0.0 { RowVerdict::Pass } else { reject(0.0) };
        }
        // An honest row has every partial sum of z within 2·S_i, so walk ≤ 4w·S_i²:
        // the cap changes nothing for it, and keeps a liar's huge values from
        // widening the tolerance.
        let walk = walk.min(4.0 * w as f64 * s_up * s_up);
        let worker_underflow = p.underflow(k as f64 * group.weight_sum);
        // Worst cases: the worker's, ours in y (and Ŝ), ours in z (3u·√(w·walk),
        // with room for second-order terms).
        let z_error = 4.0 * F64.u * (w as f64 * walk).sqrt();
        let rigorous = (p.gamma(k) * s_up + p.gamma(k + w + 2) * s_up + z_error + worker_underflow + underflow) * (1.0 + 1e-6);
        if !within(diff, rigorous) {
            return reject(rigorous); // NaN too
        }
        // Probabilistic: the worker's and ours in y, over S_i/√w ≤ √(Σ_j r_j²·s_ij²);
        // ours in z (√(5·walk), with room).
        let spread = p.u * (((k + 1) as f64).sqrt() + ((k + w + 1) as f64).sqrt());
        let statistical = LAMBDA * (spread * s_up / (w as f64).sqrt() + F64.u * (6.0 * walk).sqrt()) + worker_underflow + underflow;
        if diff <= statistical {
            RowVerdict::Pass
        } else {
            RowVerdict::Flag
        }
    }

    /// Stage 2: rows `local_rows` (of the tile) of group `g`, element by element.
    fn recheck(&self, t: &Tile, g: usize, local_rows: &[usize], c: &DenseMatrix, budget: &mut usize, report: &mut Report) -> Result<(), Mismatch> {
        let group = &self.groups[g];
        let depth = self.depths[group.depth].clone();
        let (kd, w) = (depth.len(), group.cols.len());
        let col0 = group.cols.start - t.cols.start;
        // Rows `local` of A[:, K], as a |local| × kd matrix in f64.
        let rows_of_a = |local: &[usize]| -> Vec<f64> {
            let rows: Vec<usize> = local.iter().map(|&i| t.rows.start + i).collect();
            match &*self.a {
                DenseMatrix::F64(a) => gather_rows(a, &rows, depth.clone()),
                DenseMatrix::F32(a) => gather_rows(a, &rows, depth.clone()),
            }
        };
        if local_rows.len() <= DIRECT_ROWS {
            // A few rows: dot products straight off B's columns, nothing copied.
            for &i in local_rows {
                let a_row = rows_of_a(&[i]);
                for (jj, col) in group.cols.clone().enumerate() {
                    let (reference, scale) = match &*self.b {
                        DenseMatrix::F64(b) => dot_and_scale(&a_row, &b.columns(col..col + 1)[depth.clone()]),
                        DenseMatrix::F32(b) => dot_and_scale(&a_row, &b.columns(col..col + 1)[depth.clone()]),
                    };
                    let got = c.get_f64(i, col0 + jj);
                    self.element_verdict(t.rows.start + i, col, &depth, got, reference, scale, budget, report)?;
                }
            }
            return Ok(());
        }
        // Many rows: B[K, g] and |B[K, g]| in f64, then the kernel, in batches.
        let b_values: Vec<f64> = match &*self.b {
            DenseMatrix::F64(b) => gather_columns(b, depth.clone(), group.cols.clone()),
            DenseMatrix::F32(b) => gather_columns(b, depth.clone(), group.cols.clone()),
        };
        let b_abs: Vec<f64> = b_values.iter().map(|v| v.abs()).collect();
        for batch in local_rows.chunks(ROW_BATCH) {
            let nb = batch.len();
            let (mut reference, mut scale) = (vec![0.0; nb * w], vec![0.0; nb * w]);
            if kd > 0 {
                let mut a_rows = rows_of_a(batch);
                kernel::gemm_into(nb, &a_rows, &b_values, &mut reference);
                a_rows.iter_mut().for_each(|v| *v = v.abs());
                kernel::gemm_into(nb, &a_rows, &b_abs, &mut scale);
            }
            for jj in 0..w {
                for (f, &i) in batch.iter().enumerate() {
                    let got = c.get_f64(i, col0 + jj);
                    let (row, col) = (t.rows.start + i, group.cols.start + jj);
                    self.element_verdict(row, col, &depth, got, reference[jj * nb + f], scale[jj * nb + f], budget, report)?;
                }
            }
        }
        Ok(())
    }

    /// Stage 2 for one element: see the module docs.
    #[allow(clippy::too_many_arguments)]
    fn element_verdict(
        &self,
        row: usize,
        col: usize,
        depth: &Range<usize>,
        got: f64,
        reference: f64,
        s_hat: f64,
        budget: &mut usize,
        report: &mut Report,
    ) -> Result<(), Mismatch> {
        let (p, k) = (self.precision, depth.len());
        let mismatch = |want: f64, tolerance: f64| Mismatch { row, at: At::Element { col }, depth: depth.clone(), got, want, tolerance };
        let underflow = F64.underflow(2.0 * (k + 1) as f64);
        let s_up = s_hat * (1.0 + F64.gamma(k + 1)) + underflow;
        if !within(s_up * (1.0 + p.gamma(k)), p.max / 2.0) {
            return Ok(()); // an honest result may overflow, or inputs are not finite: nothing to hold it to
        }
        if self.exact && s_up < p.exact_below {
            // Every sum on both sides is exact.
            return if got == reference { Ok(()) } else { Err(mismatch(reference, 0.0)) };
        }
        let ours = F64.dot_error(k, s_up) + underflow;
        let allowed = SLACK * p.dot_error(k, s_up);
        let diff = (got - reference).abs();
        if !within(diff, allowed + ours) {
            return Err(mismatch(reference, allowed + ours)); // NaN too
        }
        if diff <= allowed - ours || *budget < k {
            return Ok(());
        }
        // In between: decide exactly.
        *budget -= k;
        report.refined += 1;
        let exact = self.dot2(row, col, depth);
        let error = 2.0 * F64.u * exact.abs() + 2.0 * F64.gamma(k).powi(2) * s_up + 4.0 * underflow;
        if (got - exact).abs() <= allowed + error {
            Ok(())
        } else {
            Err(mismatch(exact, allowed + error))
        }
    }

    /// A[row, K]·B[K, col] with Dot2.
    fn dot2(&self, row: usize, col: usize, depth: &Range<usize>) -> f64 {
        exact::dot2(depth.clone().map(|p| (self.a.get_f64(row, p), self.b.get_f64(p, col)))).0
    }

    /// In an exact job every honest result is an integer (sums of integers,
    /// rounded or not, are integers): the first finite one that is not is wrong.
    fn integers_only(&self, t: &Tile, c: &DenseMatrix) -> Result<(), Mismatch> {
        let found = match c {
            DenseMatrix::F64(c) => c.as_slice().iter().position(|v| v.is_finite() && v.fract() != 0.0),
            DenseMatrix::F32(c) => c.as_slice().iter().position(|v| v.is_finite() && v.fract() != 0.0),
        };
        let Some(at) = found else { return Ok(()) };
        let rows = t.rows.len();
        let (row, col) = (t.rows.start + at % rows, t.cols.start + at / rows);
        Err(Mismatch {
            row,
            at: At::Element { col },
            depth: t.depth.clone(),
            got: c.get_f64(at % rows, at / rows),
            want: self.dot2(row, col, &t.depth),
            tolerance: 0.0,
        })
    }
}

/// A[rows, depth] in f64, column-major (|rows| × |depth|).
fn gather_rows<T: Element>(a: &Matrix<T>, rows: &[usize], depth: Range<usize>) -> Vec<f64> {
    let mut out = vec![0.0; rows.len() * depth.len()];
    for (column, chunk) in a.columns(depth).chunks_exact(a.rows().max(1)).zip(out.chunks_exact_mut(rows.len().max(1))) {
        for (o, &r) in chunk.iter_mut().zip(rows) {
            *o = column[r].to_f64();
        }
    }
    out
}

/// B[depth, cols] in f64, column-major.
fn gather_columns<T: Element>(b: &Matrix<T>, depth: Range<usize>, cols: Range<usize>) -> Vec<f64> {
    let k = b.rows();
    let all = b.columns(cols);
    all.chunks_exact(k.max(1)).flat_map(|column| column[depth.clone()].iter().map(|v| v.to_f64())).collect()
}

/// (Σ_p a_p·b_p, Σ_p |a_p·b_p|), in four interleaved sums so it vectorizes
/// (the error bound γ_k holds for any order of summation).
fn dot_and_scale<T: Element>(a: &[f64], b: &[T]) -> (f64, f64) {
    let (mut value, mut scale) = ([0.0; 4], [0.0; 4]);
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail = a4.remainder().iter().zip(b4.remainder());
    for (x, y) in a4.zip(b4) {
        for lane in 0..4 {
            let p = x[lane] * y[lane].to_f64();
            value[lane] += p;
            scale[lane] += p.abs();
        }
    }
    let (mut value, mut scale) = ((value[0] + value[1]) + (value[2] + value[3]), (scale[0] + scale[1]) + (scale[2] + scale[3]));
    for (x, y) in tail {
        let p = x * y.to_f64();
        value += p;
        scale += p.abs();
    }
    (value, scale)
}

/// [`products`] for A's dtype: rows `rows` of A, whose columns are `lda` apart in `a`.
#[allow(clippy::too_many_arguments)]
fn products_of(a: Stored<'_>, lda: usize, rows: Range<usize>, depth: Range<usize>, x: &[f64], t: &[f64], y: &mut [f64], scale: &mut [f64]) {
    match a {
        Stored::F64(a) => products(a, lda, rows, depth, x, t, y, scale),
        Stored::F32(a) => products(a, lda, rows, depth, x, t, y, scale),
    }
}

/// y = A[I, K]·x and Ŝ = |A[I, K]|·t for rows I = `rows` of a column-major A
/// whose columns are `lda` apart in `a`, and kd-row matrices x and t
/// (column-major, in f64), computed in the job's dtype in one pass over A (see
/// [`skinny`]), added to `y` and `scale` (|I| × count each).
#[allow(clippy::too_many_arguments)]
fn products<T: Element + skinny::Lane>(a: &[T], lda: usize, rows: Range<usize>, depth: Range<usize>, x: &[f64], t: &[f64], y: &mut [f64], scale: &mut [f64]) {
    let (m, kd) = (rows.len(), depth.len());
    if m == 0 || kd == 0 {
        return;
    }
    let count = x.len() / kd;
    let width = count.next_multiple_of(skinny::COLUMN_BLOCK);
    let (xt, tt) = (by_row::<T>(x, kd, width), by_row::<T>(t, kd, width));
    let operands = skinny::Operands { m, lda, a: &a[depth.start * lda + rows.start..], xt: &xt, tt: &tt, width };
    if T::DTYPE == Dtype::F64 && width == count {
        // Summed where they are kept. For a tall A, y and Ŝ are most of the
        // precompute's memory: at 200000×256 by 256×256, passing them through
        // buffers of their own made it take 303 ms instead of 239.
        return skinny::add_products(&operands, bytemuck::cast_slice_mut(y), bytemuck::cast_slice_mut(scale));
    }
    let (mut y_t, mut scale_t) = (vec![T::default(); m * width], vec![T::default(); m * width]);
    skinny::add_products(&operands, &mut y_t, &mut scale_t);
    for (out, sums) in [(y, y_t), (scale, scale_t)] {
        out.iter_mut().zip(sums).for_each(|(o, v)| *o += v.to_f64());
    }
}

/// Rows `rows` of a kd-row matrix (column-major), such as x or t over part
/// of their depth.
fn depth_rows(v: &[f64], kd: usize, rows: &Range<usize>) -> Vec<f64> {
    v.chunks_exact(kd).flat_map(|column| column[rows.clone()].iter().copied()).collect()
}

/// A kd-row matrix (column-major, in f64) by row, `out[p * width + g]`, in T,
/// with the columns beyond it zero.
fn by_row<T: Element>(source: &[f64], kd: usize, width: usize) -> Vec<T> {
    let mut out = vec![T::default(); kd * width];
    for (g, column) in source.chunks_exact(kd).enumerate() {
        for (p, &v) in column.iter().enumerate() {
            out[p * width + g] = T::from_f64(v);
        }
    }
    out
}
