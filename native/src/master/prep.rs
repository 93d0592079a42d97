//! The verifier's preparation: what a build costs ([`PrepCost`]), a build
//! on every core ([`build_verifier`]), and for `master multiply`, for groups
//! of columns cut from column 0 over the whole depth: done while A is read,
//! band by band ([`WhileReading`]), or else started as soon as the job is
//! in, while the scheduler holds the plan back for it a while if those
//! groups will serve the plan (the cores are otherwise idle then); the
//! scheduler fits it to the plan. It is prepared again for the plan only
//! when those groups do not serve it (k split, or columns cut elsewhere).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use colonnade_core::job::Job;
use colonnade_core::plan::{Plan, Tile};
use colonnade_core::verify::{serves, Preparing, Runner, Verifier};
use colonnade_core::DenseMatrix;
use tokio::task::JoinHandle;

use super::VerifierRecipe;
use crate::io::Filled;

/// What building a verifier took.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrepCost {
    pub wall: Duration,
    /// CPU time of the threads that built it (None where it cannot be read).
    pub cpu: Option<Duration>,
}

impl PrepCost {
    /// Runs `work`, lending it a scoped thread for each piece it hands its
    /// [`Runner`], and says what it took: the wall time, and the CPU time of
    /// this thread and of the pieces'.
    pub(crate) fn of<R>(work: impl FnOnce(Runner<'_>) -> R) -> (R, PrepCost) {
        let (started, cpu) = (Instant::now(), crate::procstats::thread_cpu_time());
        let pieces_cpu = std::sync::atomic::AtomicU64::new(0);
        let in_parallel = |pieces: Vec<Box<dyn FnOnce() + Send + '_>>| {
            std::thread::scope(|scope| {
                for piece in pieces {
                    let pieces_cpu = &pieces_cpu;
                    scope.spawn(move || {
                        let before = crate::procstats::thread_cpu_time();
                        piece();
                        let took = before.zip(crate::procstats::thread_cpu_time()).map_or(Duration::ZERO, |(b, a)| a.saturating_sub(b));
                        pieces_cpu.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                    });
                }
            });
        };
        let result = work(&in_parallel);
        let cpu = cpu.zip(crate::procstats::thread_cpu_time()).map(|(before, after)| after.saturating_sub(before) + Duration::from_nanos(pieces_cpu.into_inner()));
        (result, PrepCost { wall: started.elapsed(), cpu })
    }

    /// Both costs, summed.
    pub(crate) fn plus(self, other: PrepCost) -> PrepCost {
        PrepCost { wall: self.wall + other.wall, cpu: self.cpu.zip(other.cpu).map(|(a, b)| a + b) }
    }
}

/// Builds a verifier for `tiles`, its pass over A on every core, its checks
/// timed, and says what it took.
pub(crate) fn build_verifier(recipe: VerifierRecipe, tiles: &[Tile]) -> (Verifier, PrepCost) {
    let VerifierRecipe { a, b, weights, integer } = recipe;
    let parts = crate::compute::available_cores();
    let (verifier, cost) = PrepCost::of(|run| Verifier::new_in_parts(a, b, tiles, weights, integer, parts, run));
    (verifier.metered(crate::procstats::thread_cpu_time), cost)
}

/// A verifier, what preparing it took, and when that was.
pub(crate) type Built = (Verifier, PrepCost, Range<Instant>);

type Build = JoinHandle<Built>;

/// The verifier's preparation while A is read: begun once B is in, each of
/// A's bands added as it arrives, on every core but the reader's.
#[derive(Debug)]
pub(crate) struct WhileReading {
    preparing: Preparing,
    cost: PrepCost,
    span: Range<Instant>,
}

impl WhileReading {
    /// Weighs B for an `m`-row A: see [`Preparing::new`].
    pub fn start(m: usize, b: &DenseMatrix, weights: Vec<f64>, integer: bool) -> Self {
        let started = Instant::now();
        let (preparing, cost) = PrepCost::of(|_| Preparing::new(m, b, weights, integer));
        Self { preparing, cost, span: started..Instant::now() }
    }

    /// Adds a band of A just read, on every core but the one reading the
    /// next (on all for the last).
    pub fn add(&mut self, filled: &Filled<'_>) {
        let (m, k) = filled.shape;
        let last = filled.rows.end == m && filled.cols.end == k;
        let cores = crate::compute::available_cores();
        let parts = if last { cores } else { cores.saturating_sub(1).max(1) };
        let ((), took) = PrepCost::of(|run| self.preparing.add(filled.stored, filled.rows.clone(), filled.cols.clone(), parts, run));
        self.cost = self.cost.plus(took);
        self.span.end = Instant::now();
    }

    pub fn complete(&self) -> bool {
        self.preparing.complete()
    }

    /// What it took so far.
    pub fn cost(&self) -> PrepCost {
        self.cost
    }

    pub fn weights(&self) -> &[f64] {
        self.preparing.weights()
    }

    /// The verifier, once every band is in: `a` and `b` must be what was read.
    pub fn finish(self, a: &Arc<DenseMatrix>, b: &Arc<DenseMatrix>) -> Built {
        let verifier = self.preparing.finish(Arc::clone(a), Arc::clone(b)).metered(crate::procstats::thread_cpu_time);
        (verifier, self.cost, self.span)
    }
}

#[derive(Debug)]
pub(crate) struct Prep {
    recipe: VerifierRecipe,
    building: Option<Build>,
    /// The tiles of the build under way while it is the early one.
    early_tiles: Option<Vec<Tile>>,
    /// Early builds that will not serve the plan, left to finish: their cost counts all the same.
    abandoned: Vec<Build>,
    /// Every build's cost, summed.
    pub cost: PrepCost,
    /// When each build ran.
    spans: Vec<Range<Instant>>,
}

impl Prep {
    /// Starts preparing for `early_tiles` at once, if given (the plan waits
    /// for them: [`colonnade_core::job::Unplanned::verifier_coming`]).
    /// `prepared` is what preparing the job's verifier while A was read took,
    /// and when, if it was.
    pub fn start(recipe: VerifierRecipe, early_tiles: Option<Vec<Tile>>, prepared: Option<(PrepCost, Range<Instant>)>) -> Self {
        let mut prep = Self { recipe, building: None, early_tiles: None, abandoned: Vec::new(), cost: PrepCost::default(), spans: Vec::new() };
        if let Some((cost, span)) = prepared {
            prep.count(cost, span);
        }
        if let Some(tiles) = early_tiles {
            prep.spawn(tiles.clone());
            prep.early_tiles = Some(tiles);
        }
        prep
    }

    fn spawn(&mut self, tiles: Vec<Tile>) {
        let recipe = self.recipe.clone();
        let build = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let (verifier, cost) = build_verifier(recipe, &tiles);
            (verifier, cost, started..Instant::now())
        });
        self.abandoned.extend(self.building.replace(build));
    }

    /// The job was planned without a verifier: prepares one for `plan`,
    /// unless the early build still under way will serve it.
    pub fn planned(&mut self, plan: &Plan) {
        let tiles = Job::verified_tiles(plan);
        match self.early_tiles.take() {
            Some(early) if serves(&early, &tiles) => self.early_tiles = Some(early),
            _ => self.spawn(tiles),
        }
    }

    /// The scheduler refused a finished build: its groups do not serve `plan`.
    pub fn refused(&mut self, plan: &Plan) {
        self.spawn(Job::verified_tiles(plan));
    }

    /// Waits for the build under way (forever if there is none).
    pub async fn built(&mut self) -> anyhow::Result<Verifier> {
        match self.building.as_mut() {
            Some(handle) => {
                let built = handle.await;
                (self.building, self.early_tiles) = (None, None);
                self.record(built)
            }
            None => std::future::pending().await,
        }
    }

    fn record(&mut self, built: Result<Built, tokio::task::JoinError>) -> anyhow::Result<Verifier> {
        let (verifier, took, span) = built.map_err(|e| anyhow::anyhow!("building the verifier failed: {e}"))?;
        self.count(took, span);
        Ok(verifier)
    }

    fn count(&mut self, took: PrepCost, span: Range<Instant>) {
        self.spans.push(span);
        self.cost = match self.spans.len() {
            1 => took,
            _ => self.cost.plus(took),
        };
    }

    /// Waits for the abandoned builds, so their cost is counted.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        for build in std::mem::take(&mut self.abandoned) {
            let built = build.await;
            self.record(built)?;
        }
        Ok(())
    }

    /// How long the builds ran inside `job` (from the first task to the end):
    /// an upper bound on the CPU time they took from it. (Bands prepared
    /// while A was read count by the span from the first to the last.)
    pub fn within(&self, job: Range<Instant>) -> Duration {
        self.spans.iter().map(|s| s.end.min(job.end).saturating_duration_since(s.start.max(job.start))).sum()
    }
}
