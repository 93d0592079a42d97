//! One job: C = A·B cut into tiles as its plan says, with a lease for every
//! tile in flight, a queue of tiles waiting (laid out in regions, one per
//! worker), speculation at the tail, verification of every result, and C's
//! assembly.
//!
//! A job never talks to a worker itself. [`crate::scheduler`] offers it a
//! worker with room, and it answers with a tile and the frames of its task;
//! results come back through `Job::result_chunk`. Workers' admission,
//! liveness, strikes and caches are the pool's business ([`crate::pool`]).

mod panels;
mod queue;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::assembly::{Accepted, Assembly};
use crate::kernel::flops;
use crate::matrix::{DenseMatrix, Dtype, ShapeError};
use crate::payload::{Incoming, PayloadError};
use crate::plan::model::Problem;
use crate::plan::{CostModel, PanelId, Plan, Tile};
use crate::pool::{smooth, Bench, WorkerId};
use crate::protocol::{chunk_ranges, Frame, JobId, LeaseId, Message};
use crate::verify::Verifier;
use panels::Panels;
use queue::Queue;

/// How long leases last and when stragglers are copied.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease length before any task has finished, when there is nothing to go by.
    pub initial: Duration,
    /// Later leases last this many times the typical task time…
    pub factor: f64,
    /// …but never less than this.
    pub min: Duration,
    /// At the tail, a tile whose only lease has run this many times the
    /// typical task time is also given to an idle worker.
    pub straggler_factor: f64,
    /// A worker's speed before anything is known of it, flop/s.
    pub assumed_flops: f64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self { initial: Duration::from_secs(300), factor: 8.0, min: Duration::from_secs(20), straggler_factor: 2.0, assumed_flops: CostModel::default().assumed_flops_per_second }
    }
}

/// Why a block from a checkpoint was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("block {block} does not exist (the plan has {blocks})")]
    NoSuchBlock { block: usize, blocks: usize },
    #[error("block {block} has {got} bytes, not {want}")]
    Length { block: usize, got: usize, want: usize },
    #[error("block {block} fails verification: {reason}")]
    Mismatch { block: usize, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("A is {a} but B is {b}: A's columns must equal B's rows")]
    InnerDimension { a: String, b: String },
    #[error("A and B must have the same element type (A is {a}, B is {b})")]
    Dtype { a: Dtype, b: Dtype },
    #[error("the plan is for {plan}, but A·B is {actual}")]
    PlanMismatch { plan: String, actual: String },
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

impl JobError {
    /// The one rule for whether A·B can be formed.
    pub fn check_inner(a: &DenseMatrix, b: &DenseMatrix) -> Result<(), JobError> {
        if a.cols() != b.rows() {
            return Err(JobError::InnerDimension { a: a.shape_string(), b: b.shape_string() });
        }
        Ok(())
    }

    /// A job's operands: A·B can be formed, and both have one element type.
    fn check_operands(a: &DenseMatrix, b: &DenseMatrix) -> Result<(), JobError> {
        Self::check_inner(a, b)?;
        if a.dtype() != b.dtype() {
            return Err(JobError::Dtype { a: a.dtype(), b: b.dtype() });
        }
        Ok(())
    }
}

/// Payload bytes moved, by kind (headers excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadStats {
    /// Panels of A and B sent to workers.
    pub panel_bytes: u64,
    /// Products received from workers (duplicates and rejected ones included).
    pub result_bytes: u64,
    pub leases_issued: u64,
}

#[derive(Debug)]
struct Lease {
    tile: usize,
    worker: WorkerId,
    issued: Duration,
    deadline: Duration,
    expired: bool,
    result: Option<Incoming>,
}

/// A lease's result, complete, and what became of it.
#[derive(Debug)]
pub(crate) enum Finished {
    /// Verified and assembled; the other copies of its tile are to be cancelled.
    /// `took` is the time from issue to result, `compute` what the worker
    /// reported; then the job's state right after it: tiles done, whether the
    /// tile's block is complete, and whether the job is.
    Accepted { tile: usize, took: Duration, compute: Duration, losers: Vec<(WorkerId, LeaseId)>, done: usize, block_done: bool, complete: bool },
    /// Complete, and held until the verifier is ready.
    Held,
    /// Failed verification; its tile goes to someone else.
    Rejected { tile: usize, reason: String },
    /// Another copy won first.
    Duplicate,
}

/// A result complete before the verifier was ready.
#[derive(Debug)]
struct Unverified {
    tile: usize,
    worker: WorkerId,
    lease: LeaseId,
    issued: Duration,
    compute: Duration,
    c: DenseMatrix,
}

/// How results are checked.
#[derive(Debug)]
enum Checks {
    /// Not at all (tests that exercise other things).
    Off,
    /// By a verifier still being prepared: results wait for it.
    Pending(Vec<Unverified>),
    Ready(Box<Verifier>),
}

/// What it takes to send a worker one tile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Order {
    pub tile: usize,
    /// A copy of a straggler's tile.
    pub speculative: bool,
}

/// A job waiting for its plan: the pool it will run on decides its tiles
/// ([`CostModel::plan`]).
#[derive(Debug)]
pub struct Unplanned {
    id: JobId,
    a: Arc<DenseMatrix>,
    b: Arc<DenseMatrix>,
    model: CostModel,
    leases_config: LeaseConfig,
    max_chunk: usize,
    awaiting_verifier: bool,
    /// The tiles the shell prepares a verifier for before the plan, if it does.
    verifier_coming: Option<Vec<Tile>>,
    /// That verifier, once it came: taken if its groups serve the plan.
    verifier: Option<Verifier>,
    /// When it was queued.
    pub(crate) queued: Duration,
    /// The master's link rate, bytes/s, if known.
    link: Option<f64>,
}

impl Unplanned {
    pub fn new(
        id: JobId,
        a: impl Into<Arc<DenseMatrix>>,
        b: impl Into<Arc<DenseMatrix>>,
        model: CostModel,
        leases_config: LeaseConfig,
        max_chunk: usize,
    ) -> Result<Self, JobError> {
        let (a, b) = (a.into(), b.into());
        JobError::check_operands(&a, &b)?;
        Ok(Self { id, a, b, model, leases_config, max_chunk, awaiting_verifier: false, verifier_coming: None, verifier: None, queued: Duration::ZERO, link: None })
    }

    /// Plans knowing the master's link rate (bytes/s), if given.
    pub fn with_link(self, link: Option<f64>) -> Self {
        Self { link, ..self }
    }

    /// Once planned, the job holds results until its verifier comes.
    pub fn awaiting_verifier(self) -> Self {
        Self { awaiting_verifier: true, ..self }
    }

    /// As [`Self::awaiting_verifier`], and the shell is preparing one before
    /// the plan, for `tiles` (e.g. [`crate::verify::whole_depth_tiles`]):
    /// planning waits for it a while if its groups will serve the plan.
    pub fn verifier_coming(self, tiles: Vec<Tile>) -> Self {
        Self { awaiting_verifier: true, verifier_coming: Some(tiles), ..self }
    }

    /// As [`Self::awaiting_verifier`], with the verifier ready already (the
    /// shell prepared it while the inputs were read, e.g. for
    /// [`crate::verify::whole_depth_tiles`]): the plan takes it if its groups
    /// serve the plan.
    pub fn with_verifier(self, verifier: Verifier) -> Self {
        Self { awaiting_verifier: true, verifier: Some(verifier), ..self }
    }

    pub(crate) fn set_verifier(&mut self, verifier: Verifier) {
        self.verifier = Some(verifier);
    }

    /// Whether planning should wait for a verifier still being prepared.
    pub(crate) fn wants_verifier(&self) -> bool {
        self.verifier_coming.is_some() && self.verifier.is_none()
    }

    /// Stops waiting for the verifier on its way if its groups will not serve
    /// the plan the pool would get now (k split, or columns cut elsewhere).
    pub(crate) fn give_up_on_a_verifier_that_will_not_serve(&mut self, pool: &crate::pool::Pool) {
        if let (Some(tiles), None) = (&self.verifier_coming, &self.verifier) {
            if !crate::verify::serves(tiles, &Job::verified_tiles(&self.plan_for(pool))) {
                self.verifier_coming = None;
            }
        }
    }

    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's shape and element size.
    pub fn problem(&self) -> Problem {
        Problem { m: self.a.rows(), k: self.a.cols(), n: self.b.cols(), elem: self.a.dtype().size() }
    }

    /// The plan the pool's workers would get now.
    fn plan_for(&self, pool: &crate::pool::Pool) -> Plan {
        self.model.plan_for(self.problem(), &pool.capacities(self.model.assumed_flops_per_second), self.link)
    }

    /// Plans the job for the pool's workers, at `now`; the pool was settled
    /// at `settled`.
    pub(crate) fn plan(self, pool: &crate::pool::Pool, settled: Duration, now: Duration) -> Job {
        let plan = self.plan_for(pool);
        let mut job = Job::new(self.id, self.a, self.b, plan, self.leases_config, self.max_chunk).expect("shapes were checked");
        if self.verifier_coming.is_some() {
            job.plan_waited_for_verifier = now.saturating_sub(settled.max(self.queued));
        }
        let tiles = Job::verified_tiles(job.plan());
        match self.verifier.map(|mut v| (v.retile(&tiles), v)) {
            Some((true, v)) => job.with_verifier(v),
            // None, or one whose groups do not serve the plan: the shell prepares one for it.
            _ if self.awaiting_verifier => job.awaiting_verifier(),
            _ => job,
        }
    }
}

#[derive(Debug)]
pub struct Job {
    id: JobId,
    leases_config: LeaseConfig,
    max_chunk: usize,
    dtype: Dtype,
    plan: Plan,
    panels: Panels,
    assembly: Assembly,
    result: Option<DenseMatrix>,
    leases: BTreeMap<LeaseId, Lease>,
    /// Deadlines of the leases not yet expired, and every lease by issue time:
    /// so neither the next wake-up nor the oldest straggler takes a scan.
    deadlines: BTreeSet<(Duration, LeaseId)>,
    by_issue: BTreeSet<(Duration, LeaseId)>,
    /// The newest lease idle workers were last asked to copy (see [`Self::new_straggler`]).
    copyable_offered: Option<(Duration, LeaseId)>,
    tile_leases: Vec<Vec<LeaseId>>,
    queue: Queue,
    /// Smoothed time from issuing a lease to its result.
    task_time: Option<Duration>,
    stats: PayloadStats,
    /// Flops of the tiles in C (restored blocks included).
    flops_done: f64,
    checks: Checks,
    /// Results that arrived before the verifier was ready, and waited for it.
    held_for_verifier: u64,
    /// When the last of them arrived.
    last_held_at: Duration,
    /// How long the job's end waited for the verifier: from the last result
    /// to the verifier, when the verifier came after every result.
    verifier_stall: Duration,
    /// How long its plan waited for the verifier, past the pool's settling.
    plan_waited_for_verifier: Duration,
    /// Workers whose result for a tile was wrong: they do not get it again.
    rejected_by: Vec<Vec<WorkerId>>,
    /// Tiles set aside for workers, their panels sent ahead.
    reserved: usize,
}

impl Job {
    /// A job C = A·B cut as `plan` says. A and B may be shared (with a
    /// [`Verifier`]); the job only reads their bytes. Bodies go out in chunks
    /// of at most `max_chunk` bytes.
    pub fn new(
        id: JobId,
        a: impl Into<Arc<DenseMatrix>>,
        b: impl Into<Arc<DenseMatrix>>,
        plan: Plan,
        leases_config: LeaseConfig,
        max_chunk: usize,
    ) -> Result<Self, JobError> {
        let (a, b) = (a.into(), b.into());
        JobError::check_operands(&a, &b)?;
        if (plan.m, plan.k, plan.n) != (a.rows(), a.cols(), b.cols()) {
            return Err(JobError::PlanMismatch {
                plan: format!("{}x{} by {}x{}", plan.m, plan.k, plan.k, plan.n),
                actual: format!("{} by {}", a.shape_string(), b.shape_string()),
            });
        }
        let dtype = a.dtype();
        let tiles = plan.tiles();
        Ok(Self {
            id,
            leases_config,
            max_chunk: max_chunk.max(1),
            assembly: Assembly::new(plan.clone(), dtype)?,
            dtype,
            queue: Queue::new(&plan, plan.layout),
            panels: Panels::new(a, b),
            plan,
            result: None,
            leases: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            by_issue: BTreeSet::new(),
            copyable_offered: None,
            tile_leases: vec![Vec::new(); tiles],
            task_time: None,
            stats: PayloadStats::default(),
            flops_done: 0.0,
            checks: Checks::Off,
            held_for_verifier: 0,
            last_held_at: Duration::ZERO,
            verifier_stall: Duration::ZERO,
            plan_waited_for_verifier: Duration::ZERO,
            rejected_by: vec![Vec::new(); tiles],
            reserved: 0,
        })
    }

    /// Checks every result with `verifier` before assembling it. Its tiles are
    /// [`Self::verified_tiles`], or [`Self::restorable_tiles`] for a job that
    /// restores checkpointed blocks.
    pub fn with_verifier(mut self, verifier: Verifier) -> Self {
        self.checks = Checks::Ready(Box::new(verifier));
        self
    }

    /// Holds every result until [`crate::scheduler::Scheduler::set_verifier`]
    /// brings the verifier, so the job need not wait for its preparation.
    pub fn awaiting_verifier(mut self) -> Self {
        self.checks = Checks::Pending(Vec::new());
        self
    }

    /// Whether results wait for a verifier the shell is to bring.
    pub fn awaits_verifier(&self) -> bool {
        matches!(self.checks, Checks::Pending(_))
    }

    /// Takes the verifier, for the plan's tiles ([`Self::verified_tiles`]),
    /// if its groups serve them (else `None`); results held for it are judged now. Returns what became of each
    /// (worker, lease).
    pub(crate) fn set_verifier(&mut self, mut verifier: Verifier, now: Duration) -> Option<Vec<(WorkerId, LeaseId, Finished)>> {
        if !verifier.retile(&Self::verified_tiles(&self.plan)) {
            return None;
        }
        let Checks::Pending(held) = std::mem::replace(&mut self.checks, Checks::Ready(Box::new(verifier))) else { return Some(Vec::new()) };
        let was_held = !held.is_empty();
        let judged = held.into_iter().map(|u| (u.worker, u.lease, self.judge(u, now))).collect();
        if was_held && self.is_complete() {
            self.verifier_stall = now.saturating_sub(self.last_held_at);
        }
        Some(judged)
    }

    fn verifier(&self) -> Option<&Verifier> {
        match &self.checks {
            Checks::Ready(v) => Some(v),
            _ => None,
        }
    }

    /// The tiles a verifier for this plan checks, in the order [`Self::with_verifier`] expects.
    pub fn verified_tiles(plan: &Plan) -> Vec<crate::plan::Tile> {
        (0..plan.tiles()).map(|t| plan.tile(t)).collect()
    }

    /// As [`Self::verified_tiles`], and then, where tiles are partial sums
    /// over depth slices, each whole block of C: what [`Self::restore`] checks.
    /// Only a job resumed from a checkpoint needs them, and they cost the
    /// verifier's precompute a second pass over A.
    pub fn restorable_tiles(plan: &Plan) -> Vec<crate::plan::Tile> {
        let mut tiles = Self::verified_tiles(plan);
        if plan.depth.parts > 1 {
            tiles.extend((0..plan.blocks()).map(|b| {
                let (rows, cols) = plan.block(b);
                crate::plan::Tile { rows, cols, depth: 0..plan.k }
            }));
        }
        tiles
    }

    pub fn id(&self) -> JobId {
        self.id
    }

    /// Puts a block of C computed earlier (e.g. read from a checkpoint) in
    /// place, after the same verification a worker's result gets.
    pub fn restore(&mut self, block: usize, bytes: &[u8]) -> Result<(), RestoreError> {
        let blocks = self.plan.blocks();
        if block >= blocks {
            return Err(RestoreError::NoSuchBlock { block, blocks });
        }
        let (rows, cols) = self.plan.block(block);
        let want = rows.len() * cols.len() * self.dtype.size();
        if bytes.len() != want {
            return Err(RestoreError::Length { block, got: bytes.len(), want });
        }
        let c = DenseMatrix::from_le_bytes(self.dtype, rows.len(), cols.len(), bytes).expect("length checked");
        let checked = if self.plan.depth.parts > 1 { self.plan.tiles() + block } else { block };
        if matches!(self.checks, Checks::Pending(_)) {
            return Err(RestoreError::Mismatch { block, reason: "the verifier is not ready yet".into() });
        }
        if self.verifier().is_some_and(|v| v.tiles() <= checked) {
            return Err(RestoreError::Mismatch { block, reason: "the verifier was not built to check whole blocks".into() });
        }
        if let Some(Err(mismatch)) = self.verifier().map(|v| v.check(checked, &c)) {
            return Err(RestoreError::Mismatch { block, reason: mismatch.to_string() });
        }
        if self.assembly.accept_block(block, bytes) == Ok(Accepted::New) {
            self.flops_done += flops(rows.len(), self.plan.k, cols.len());
            for t in self.plan.tiles_of(block) {
                self.queue.remove(t);
            }
            if self.assembly.is_complete() {
                self.complete();
            }
        }
        Ok(())
    }

    // ---- results ----

    /// A chunk of `lease`'s result arrived from `worker`. Returns what became
    /// of the lease once its result is complete.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn result_chunk(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
        offset: u64,
        body: &[u8],
        compute: Duration,
        now: Duration,
    ) -> Result<Option<Finished>, PayloadError> {
        let Some(l) = self.leases.get_mut(&lease).filter(|l| l.worker == worker) else {
            return Ok(Some(Finished::Duplicate)); // the tile was won by another copy meanwhile
        };
        let tile = self.plan.tile(l.tile);
        let dtype = self.dtype;
        let incoming = l.result.get_or_insert_with(|| Incoming::new(dtype, tile.rows.len(), tile.cols.len()).expect("a tile of C is no larger than C"));
        let complete = incoming.add(offset, body)?;
        self.stats.result_bytes += body.len() as u64;
        if !complete {
            return Ok(None);
        }
        let l = self.remove_lease(lease).expect("found above");
        let c = l.result.expect("complete").into_matrix();
        let result = Unverified { tile: l.tile, worker, lease, issued: l.issued, compute, c };
        if let Checks::Pending(held) = &mut self.checks {
            held.push(result);
            self.held_for_verifier += 1;
            self.last_held_at = now;
            return Ok(Some(Finished::Held));
        }
        Ok(Some(self.judge(result, now)))
    }

    /// Verifies a complete result and, if it is right, puts it in C.
    fn judge(&mut self, result: Unverified, now: Duration) -> Finished {
        let Unverified { tile, worker, issued, compute, c, .. } = result;
        if let Some(Err(mismatch)) = self.verifier().map(|v| v.check(tile, &c)) {
            self.rejected_by[tile].push(worker);
            self.queue.distrust(worker);
            self.requeue(tile);
            return Finished::Rejected { tile, reason: mismatch.to_string() };
        }
        match self.assembly.accept(tile, c) {
            Ok(Accepted::New) => {}
            // Shapes were fixed by `Incoming`; a duplicate means another copy won.
            Ok(Accepted::Duplicate) | Err(_) => return Finished::Duplicate,
        }
        let took = now.saturating_sub(issued);
        self.task_time = Some(smooth(self.task_time, took));
        // A longer threshold makes copyable leases wait again: those offered
        // are news once more when their moment comes (copyable ones are the
        // oldest, so this keeps exactly the offered ones still copyable).
        let threshold = self.straggler_threshold().expect("a task time");
        self.copyable_offered = self.copyable_offered.filter(|&(issued, _)| now >= issued + threshold);
        let t = self.plan.tile(tile);
        self.flops_done += flops(t.rows.len(), t.depth.len(), t.cols.len());
        let losers = std::mem::take(&mut self.tile_leases[tile])
            .into_iter()
            .filter_map(|other| self.remove_lease(other).map(|o| (o.worker, other)))
            .collect();
        if self.assembly.is_complete() {
            self.complete();
        }
        let block_done = self.assembly.is_block_done(self.plan.block_of(tile));
        Finished::Accepted { tile, took, compute, losers, done: self.tiles_done(), block_done, complete: self.is_complete() }
    }

    fn complete(&mut self) {
        self.result = self.assembly.take();
    }

    // ---- leases ----

    /// A lease was given up (its worker left, or handed it back): its tile goes
    /// back in the queue if nobody else holds it. Returns whether it did.
    pub(crate) fn drop_lease(&mut self, lease: LeaseId) -> bool {
        match self.remove_lease(lease) {
            Some(l) => self.requeue(l.tile),
            None => false,
        }
    }

    /// `worker` left the pool: its region is anyone's. Returns whether it had one.
    pub(crate) fn forget(&mut self, worker: WorkerId) -> bool {
        self.queue.forget(worker)
    }

    fn remove_lease(&mut self, lease: LeaseId) -> Option<Lease> {
        let l = self.leases.remove(&lease)?;
        self.tile_leases[l.tile].retain(|&x| x != lease);
        self.deadlines.remove(&(l.deadline, lease));
        self.by_issue.remove(&(l.issued, lease));
        Some(l)
    }

    /// Puts `tile` back in the queue unless it is done, queued, or still held
    /// by a lease that has not expired. Returns whether it queued it.
    fn requeue(&mut self, tile: usize) -> bool {
        let held = self.tile_leases[tile].iter().any(|id| !self.leases[id].expired);
        let waiting = matches!(&self.checks, Checks::Pending(r) if r.iter().any(|u| u.tile == tile));
        if waiting || self.assembly.is_tile_done(tile) || self.queue.is_pending(tile) || held || self.result.is_some() {
            return false;
        }
        self.queue.push(tile);
        true
    }

    /// Expires overdue leases: their tiles go back in the queue, but the
    /// leases stay, so a late result still counts. Returns (worker, tile) of each.
    pub(crate) fn expire(&mut self, now: Duration) -> Vec<(WorkerId, usize)> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first().filter(|&&(at, _)| at <= now) {
            self.deadlines.remove(&(at, id));
            let l = self.leases.get_mut(&id).expect("deadlines are of live leases");
            l.expired = true;
            let (worker, tile) = (l.worker, l.tile);
            expired.push((worker, tile));
            self.requeue(tile);
        }
        expired
    }

    /// The typical task time of this job, once a result has come back.
    pub(crate) fn task_time(&self) -> Option<Duration> {
        self.task_time
    }

    /// A lease lasts `factor` times the worker's expected task time.
    fn lease_length(&self, task_time: Option<Duration>) -> Duration {
        match task_time.or(self.task_time) {
            None => self.leases_config.initial,
            Some(t) => t.mul_f64(self.leases_config.factor).max(self.leases_config.min),
        }
    }

    fn straggler_threshold(&self) -> Option<Duration> {
        self.task_time.map(|t| t.mul_f64(self.leases_config.straggler_factor))
    }

    /// When the job next needs a look: a lease's deadline, or (if a worker is
    /// idle and the queue empty) the next moment a straggler's tile may be
    /// copied after `acted`, when the last look was (those that came by then
    /// were looked at; waking for them again would wake the master again and
    /// again at once, if no idle worker may take the copy).
    pub(crate) fn next_wake(&self, someone_idle: bool, acted: Duration) -> Option<Duration> {
        if self.result.is_some() {
            return None;
        }
        let expiry = self.deadlines.first().map(|&(at, _)| at);
        let straggler = (someone_idle && !self.queue.has_pending()).then(|| self.straggler_threshold()).flatten().and_then(|t| {
            let unseen = self.by_issue.range((acted.saturating_sub(t), 0)..).filter(|&&(issued, _)| issued + t > acted);
            unseen.map(|(_, id)| &self.leases[id]).find(|l| self.is_only_copy(l)).map(|l| l.issued + t)
        });
        expiry.into_iter().chain(straggler).min()
    }

    /// Whether a worker with room could be given something now: a queued
    /// tile, or a straggler's to copy.
    pub(crate) fn has_work(&self, now: Duration) -> bool {
        if self.result.is_some() {
            return false;
        }
        self.queue.has_pending() || self.reserved > 0 || self.straggler_threshold().zip(self.oldest_single()).is_some_and(|(t, l)| now >= l.issued + t)
    }

    /// Whether the queue is empty and a straggler's tile may be copied now
    /// that idle workers were not yet asked to copy: the tail, when they are
    /// worth asking again. Copies may be made of the oldest leases, so what
    /// is new is a lease issued after the newest one offered; asking the
    /// whole idle pool again for the same leases at every tick would cost
    /// O(pool) a tick in a crowd.
    pub(crate) fn new_straggler(&mut self, now: Duration) -> bool {
        if self.result.is_some() || self.queue.has_pending() {
            return false;
        }
        let Some(long_ago) = self.straggler_threshold().and_then(|t| now.checked_sub(t)) else { return false };
        // The newest copyable, looked for from the newest back: at the tail
        // this runs at every tick and result.
        let issued_long_ago = self.by_issue.range(..=(long_ago, LeaseId::MAX)).rev();
        let newest = issued_long_ago.copied().find(|(_, id)| self.is_only_copy(&self.leases[id]));
        let new = newest > self.copyable_offered;
        if new {
            self.copyable_offered = newest;
        }
        new
    }

    /// Whether `lease` is its tile's only copy: only such a lease may be copied.
    fn is_only_copy(&self, lease: &Lease) -> bool {
        self.tile_leases[lease.tile].len() == 1
    }

    /// The leases a copy may be made of at `now`, oldest first: issued at
    /// least `threshold` ago, and their tile's only copy.
    fn copyable(&self, threshold: Duration, now: Duration) -> impl Iterator<Item = (LeaseId, &Lease)> + '_ {
        let issued_long_ago = self.by_issue.iter().take_while(move |&&(issued, _)| now >= issued + threshold);
        issued_long_ago.map(|&(_, id)| (id, &self.leases[&id])).filter(|(_, l)| self.is_only_copy(l))
    }

    /// The oldest lease that is its tile's only copy.
    fn oldest_single(&self) -> Option<&Lease> {
        self.by_issue.iter().map(|(_, id)| &self.leases[id]).find(|l| self.is_only_copy(l))
    }

    // ---- assignment ----

    /// The next tile for `worker`, which holds the panels `held` of this job
    /// (in increasing order): a queued one (see `queue`), or at the tail a
    /// straggler's; never one whose result from this worker was wrong.
    ///
    /// Only a `proven` worker (one with a verified result) gets a copy: a
    /// stranger that never answers must not be able to hold both copies.
    pub(crate) fn next_order(&mut self, worker: WorkerId, held: &[PanelId], speed: f64, proven: bool, now: Duration) -> Option<Order> {
        if self.result.is_some() {
            return None;
        }
        let rejected = &self.rejected_by;
        let fit = speed >= self.plan.min_speed;
        if let Some(tile) = self.queue.next(worker, held, fit, false, |t| rejected[t].contains(&worker)) {
            return Some(Order { tile, speculative: false });
        }
        if !proven {
            return None;
        }
        let threshold = self.straggler_threshold()?;
        let (_, lease) = self.copyable(threshold, now).find(|(_, l)| l.worker != worker && !self.rejected_by[l.tile].contains(&worker))?;
        let tile = lease.tile;
        Some(Order { tile, speculative: true })
    }

    /// Whether the plan leaves `worker` out, whatever comes back to the
    /// queue, and until when: it never owned a region, holds none of the
    /// job's panels (`holds_panels`), has no verified record to copy a
    /// straggler's tile with, and is too slow for a region (until the plan
    /// opens to all) or fast enough but finds none free (until one frees).
    /// [`Self::next_order`] and [`Self::next_ahead`] give it nothing then.
    pub(crate) fn leaves_out(&self, worker: WorkerId, holds_panels: bool, speed: f64, proven: bool) -> Option<Bench> {
        if self.plan.spread || self.queue.is_veteran(worker) || holds_panels || proven {
            return None;
        }
        if speed < self.plan.min_speed {
            Some(Bench::UntilPlanChanges)
        } else {
            (!self.queue.has_free_region()).then_some(Bench::UntilRegionFrees)
        }
    }

    /// Regions nobody owns that have pending tiles: one waiting worker may
    /// claim each.
    pub(crate) fn free_regions(&self) -> usize {
        self.queue.free_regions()
    }

    /// Whether a region nobody owns gained pending tiles since last asked
    /// ([`Bench::UntilRegionFrees`]).
    pub(crate) fn take_region_freed(&mut self) -> bool {
        self.queue.take_region_freed()
    }

    /// The speed assumed of a worker that has not shown one, flop/s.
    pub(crate) fn assumed_flops(&self) -> f64 {
        self.leases_config.assumed_flops
    }

    /// A queued tile for `worker` that needs a panel it lacks, to set aside for
    /// it and send the panels of ahead ([`Self::reserve`]); never a copy.
    pub(crate) fn next_ahead(&mut self, worker: WorkerId, held: &[PanelId], speed: f64) -> Option<usize> {
        if self.result.is_some() {
            return None;
        }
        let rejected = &self.rejected_by;
        let fit = speed >= self.plan.min_speed;
        self.queue.next(worker, held, fit, true, |t| rejected[t].contains(&worker))
    }

    /// Queued tiles whose panels are all in `held` (in increasing order), counted up to `limit`.
    pub(crate) fn ready(&self, held: &[PanelId], limit: usize) -> usize {
        self.queue.ready(held, limit)
    }

    /// The plan left some workers waiting, for the speed of the ones it
    /// chose. When no worker that fast is left, the waiting ones must take
    /// over, or the job would never end: from now on any worker may take a
    /// region.
    pub(crate) fn open_to_all(&mut self) {
        self.plan.spread = true;
        self.plan.min_speed = 0.0;
        self.queue.spread();
    }

    /// Leases out now, copies included.
    pub fn leases_out(&self) -> usize {
        self.leases.len()
    }

    /// Tiles waiting in the queue.
    pub(crate) fn pending(&self) -> usize {
        self.queue.pending()
    }

    /// Tiles set aside for workers now ([`Self::reserve`]).
    pub(crate) fn set_aside(&self) -> usize {
        self.reserved
    }

    /// Sets `tile` aside for a worker: out of the queue, not yet leased.
    pub(crate) fn reserve(&mut self, tile: usize) {
        self.queue.remove(tile);
        self.reserved += 1;
    }

    /// A tile set aside is to be issued now (as a task) or given up.
    pub(crate) fn unreserve(&mut self, tile: usize, requeue: bool) {
        self.reserved = self.reserved.saturating_sub(1);
        if requeue {
            self.requeue(tile);
        }
    }

    /// The panels tile `tile` needs: A's, then B's.
    pub(crate) fn panels_of(&self, tile: usize) -> [PanelId; 2] {
        self.plan.panels_of(tile)
    }

    /// Bytes of panel `id`.
    pub(crate) fn panel_size(&self, id: PanelId) -> u64 {
        (self.plan.panel(id).elements() * self.dtype.size()) as u64
    }

    /// Bytes of tile `tile`'s product.
    pub(crate) fn product_size(&self, tile: usize) -> u64 {
        self.assembly.tile_bytes(tile) as u64
    }

    /// The job's header, for a worker new to it.
    pub(crate) fn announce(&self) -> Frame {
        let (m, k, n) = (self.plan.m as u64, self.plan.k as u64, self.plan.n as u64);
        Frame::new(Message::Job { job: self.id, m, k, n, dtype: self.dtype })
    }

    /// The frames that carry panel `id`.
    pub(crate) fn panel_frames(&mut self, id: PanelId) -> Vec<Frame> {
        let panel = self.plan.panel(id);
        let bytes = self.panels.bytes(&self.plan, id);
        self.stats.panel_bytes += bytes.len() as u64;
        let (rows, cols) = (panel.rows.len() as u64, panel.cols.len() as u64);
        chunk_ranges(bytes.len(), self.max_chunk)
            .map(|range| {
                let message = match range.start {
                    0 => Message::Panel { job: self.id, panel: id, operand: panel.operand, rows, cols },
                    offset => Message::PanelChunk { job: self.id, panel: id, offset: offset as u64 },
                };
                Frame::with_body(message, bytes.slice(range))
            })
            .collect()
    }

    /// Issues `order` to `worker` as `lease` (its panels already sent): the task's frame.
    pub(crate) fn issue(&mut self, worker: WorkerId, task_time: Option<Duration>, order: Order, lease: LeaseId, now: Duration) -> Frame {
        self.queue.remove(order.tile);
        self.stats.leases_issued += 1;
        let deadline = now + self.lease_length(task_time);
        self.leases.insert(lease, Lease { tile: order.tile, worker, issued: now, deadline, expired: false, result: None });
        self.deadlines.insert((deadline, lease));
        self.by_issue.insert((now, lease));
        self.tile_leases[order.tile].push(lease);
        let tile = self.plan.tile(order.tile);
        let [a, b] = self.plan.panels_of(order.tile);
        Frame::new(Message::Task { job: self.id, lease, a, b, row: tile.rows.start as u64, col: tile.cols.start as u64 })
    }

    // ---- what it has made ----

    pub fn is_complete(&self) -> bool {
        self.result.is_some()
    }

    /// The assembled C, once the job is complete.
    pub fn take_result(&mut self) -> Option<DenseMatrix> {
        self.result.take()
    }

    /// Tiles verified and in C, of [`Plan::tiles`].
    pub fn tiles_done(&self) -> usize {
        self.assembly.tiles_done()
    }

    /// Blocks of C complete, of [`Plan::blocks`].
    pub fn blocks_done(&self) -> usize {
        self.plan.blocks() - self.assembly.remaining()
    }

    /// Flops of the tiles in C so far.
    pub fn flops_done(&self) -> f64 {
        self.flops_done
    }

    pub fn block_done(&self, block: usize) -> bool {
        self.assembly.is_block_done(block)
    }

    /// Block `block` of C, column-major, once it is complete (until C is taken).
    pub fn block_bytes(&self, block: usize) -> Option<std::borrow::Cow<'_, [u8]>> {
        match &self.result {
            Some(c) => Some(crate::assembly::block_of(c, &self.plan, block)),
            None => self.assembly.block(block),
        }
    }

    pub fn stats(&self) -> PayloadStats {
        self.stats
    }

    /// How many results waited for the verifier: none, when its precompute
    /// kept ahead of the workers.
    pub fn held_for_verifier(&self) -> u64 {
        self.held_for_verifier
    }

    /// How long the job's end waited for the verifier's preparation: zero
    /// unless every result was in before it.
    pub fn verifier_stall(&self) -> Duration {
        self.verifier_stall
    }

    /// How long the plan, and so the first task, waited for the verifier's
    /// preparation once the pool was settled ([`Unplanned::verifier_coming`]).
    pub fn plan_waited_for_verifier(&self) -> Duration {
        self.plan_waited_for_verifier
    }

    /// What checking the results took, if the verifier was given a clock
    /// ([`Verifier::metered`]).
    pub fn check_time(&self) -> Option<Duration> {
        self.verifier().and_then(Verifier::check_time)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    #[cfg(test)]
    pub(crate) fn lease_span(&self, worker: WorkerId) -> Option<Duration> {
        self.leases.values().find(|l| l.worker == worker).map(|l| l.deadline - l.issued)
    }
}
