//! One job: C = A·B split as its plan says, with a lease for every block in
//! flight, a queue of blocks waiting, speculation at the tail, verification of
//! every result, and C's assembly.
//!
//! A job never talks to a worker itself. [`crate::scheduler`] offers it a
//! worker with room, and it answers with the frames of one task; results come
//! back through [`Job::result_chunk`]. Workers' admission, liveness and strikes
//! are the pool's business ([`crate::pool`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::assembly::{Accepted, Assembly};
use crate::matrix::{DenseMatrix, Dtype, ShapeError};
use crate::payload::{Incoming, PayloadError};
use crate::plan::Plan;
use crate::pool::{smooth, WorkerId};
use crate::protocol::{chunk_ranges, Frame, JobId, LeaseId, MatrixBytes, Message};
use crate::verify::Verifier;

/// How long leases last and when stragglers are copied.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease length before any task has finished, when there is nothing to go by.
    pub initial: Duration,
    /// Later leases last this many times the typical task time…
    pub factor: f64,
    /// …but never less than this.
    pub min: Duration,
    /// At the tail, a block whose only lease has run this many times the
    /// typical task time is also given to an idle worker.
    pub straggler_factor: f64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self { initial: Duration::from_secs(300), factor: 8.0, min: Duration::from_secs(20), straggler_factor: 2.0 }
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
}

/// Payload bytes moved, by kind (headers excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadStats {
    pub operand_bytes: u64,
    pub task_bytes: u64,
    pub result_bytes: u64,
    pub leases_issued: u64,
}

#[derive(Debug)]
struct Lease {
    block: usize,
    worker: WorkerId,
    issued: Duration,
    deadline: Duration,
    expired: bool,
    result: Option<Incoming>,
}

/// A lease's result, complete, and what became of it.
#[derive(Debug)]
pub(crate) enum Finished {
    /// Verified and assembled; the other copies of its block are to be cancelled.
    Accepted { block: usize, took: Duration, losers: Vec<(WorkerId, LeaseId)> },
    /// Failed verification; its block goes to someone else.
    Rejected { block: usize, reason: String },
    /// Another copy won first.
    Duplicate,
}

/// A worker as the job sees it when issuing a task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taker {
    pub id: WorkerId,
    /// Whether it already holds this job's A.
    pub holds_a: bool,
    /// Its own measured task time, if any.
    pub task_time: Option<Duration>,
}

#[derive(Debug)]
pub struct Job {
    id: JobId,
    leases_config: LeaseConfig,
    max_chunk: usize,
    dtype: Dtype,
    plan: Plan,
    a: Bytes,
    b: Bytes,
    assembly: Assembly,
    result: Option<DenseMatrix>,
    leases: BTreeMap<LeaseId, Lease>,
    block_leases: Vec<Vec<LeaseId>>,
    queued: Vec<bool>,
    pending: VecDeque<usize>,
    /// Smoothed time from issuing a lease to its result.
    task_time: Option<Duration>,
    stats: PayloadStats,
    verifier: Option<Verifier>,
    /// Workers whose result for a block was wrong: they do not get it again.
    rejected_by: Vec<Vec<WorkerId>>,
}

impl Job {
    /// A job C = A·B split as `plan` says. A and B may be shared (with a
    /// [`Verifier`]); the job only reads their bytes. Bodies go out in chunks
    /// of at most `max_chunk` bytes.
    pub fn new(
        id: JobId,
        a: impl Into<std::sync::Arc<DenseMatrix>>,
        b: impl Into<std::sync::Arc<DenseMatrix>>,
        plan: Plan,
        leases_config: LeaseConfig,
        max_chunk: usize,
    ) -> Result<Self, JobError> {
        let (a, b) = (a.into(), b.into());
        JobError::check_inner(&a, &b)?;
        if a.dtype() != b.dtype() {
            return Err(JobError::Dtype { a: a.dtype(), b: b.dtype() });
        }
        if (plan.m, plan.k, plan.n) != (a.rows(), a.cols(), b.cols()) {
            return Err(JobError::PlanMismatch {
                plan: format!("{}x{} by {}x{}", plan.m, plan.k, plan.k, plan.n),
                actual: format!("{} by {}", a.shape_string(), b.shape_string()),
            });
        }
        let dtype = a.dtype();
        let blocks = plan.blocks();
        Ok(Self {
            id,
            leases_config,
            max_chunk: max_chunk.max(1),
            assembly: Assembly::new(plan.clone(), dtype)?,
            dtype,
            plan,
            a: MatrixBytes::into_bytes(a),
            b: MatrixBytes::into_bytes(b),
            result: None,
            leases: BTreeMap::new(),
            block_leases: vec![Vec::new(); blocks],
            queued: vec![true; blocks],
            pending: (0..blocks).collect(),
            task_time: None,
            stats: PayloadStats::default(),
            verifier: None,
            rejected_by: vec![Vec::new(); blocks],
        })
    }

    /// Checks every result with `verifier` before assembling it.
    pub fn with_verifier(mut self, verifier: Verifier) -> Self {
        self.verifier = Some(verifier);
        self
    }

    pub fn id(&self) -> JobId {
        self.id
    }

    /// Puts a block computed earlier (e.g. read from a checkpoint) into C,
    /// after the same verification a worker's result gets.
    pub fn restore(&mut self, block: usize, bytes: &[u8]) -> Result<(), RestoreError> {
        let blocks = self.plan.blocks();
        if block >= blocks {
            return Err(RestoreError::NoSuchBlock { block, blocks });
        }
        let mut incoming = self.incoming(block);
        let want = incoming.total();
        if bytes.len() != want || incoming.add(0, bytes) != Ok(true) {
            return Err(RestoreError::Length { block, got: bytes.len(), want });
        }
        let c = incoming.into_matrix();
        if let Some(Err(mismatch)) = self.verifier.as_ref().map(|v| v.check(block, &c)) {
            return Err(RestoreError::Mismatch { block, reason: mismatch.to_string() });
        }
        if self.assembly.accept(block, c.as_bytes()) == Ok(Accepted::New) && self.assembly.is_complete() {
            self.complete();
        }
        Ok(())
    }

    fn incoming(&self, block: usize) -> Incoming {
        let cols = self.plan.columns(block).len();
        Incoming::new(self.dtype, self.plan.m, cols).expect("a block of C is no larger than C")
    }

    // ---- results ----

    /// A chunk of `lease`'s result arrived from `worker`. Returns what became
    /// of the lease once its result is complete.
    pub(crate) fn result_chunk(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
        offset: u64,
        body: &[u8],
        now: Duration,
    ) -> Result<Option<Finished>, PayloadError> {
        let (m, dtype) = (self.plan.m, self.dtype);
        let Some(l) = self.leases.get_mut(&lease).filter(|l| l.worker == worker) else {
            return Ok(Some(Finished::Duplicate)); // the block was won by another copy meanwhile
        };
        let cols = self.plan.columns(l.block).len();
        let incoming = l.result.get_or_insert_with(|| Incoming::new(dtype, m, cols).expect("a block of C is no larger than C"));
        let complete = incoming.add(offset, body)?;
        self.stats.result_bytes += body.len() as u64;
        Ok(complete.then(|| self.finish(lease, now)))
    }

    fn finish(&mut self, lease: LeaseId, now: Duration) -> Finished {
        let l = self.remove_lease(lease).expect("caller checked the lease exists");
        let c = l.result.expect("a finished lease has a result").into_matrix();
        if let Some(Err(mismatch)) = self.verifier.as_ref().map(|v| v.check(l.block, &c)) {
            self.rejected_by[l.block].push(l.worker);
            self.requeue(l.block);
            return Finished::Rejected { block: l.block, reason: mismatch.to_string() };
        }
        match self.assembly.accept(l.block, c.as_bytes()) {
            Ok(Accepted::New) => {}
            // Sizes were fixed by `Incoming`; a duplicate means another copy won.
            Ok(Accepted::Duplicate) | Err(_) => return Finished::Duplicate,
        }
        let took = now.saturating_sub(l.issued);
        self.task_time = Some(smooth(self.task_time, took));
        let losers = std::mem::take(&mut self.block_leases[l.block])
            .into_iter()
            .filter_map(|other| self.remove_lease(other).map(|o| (o.worker, other)))
            .collect();
        if self.assembly.is_complete() {
            self.complete();
        }
        Finished::Accepted { block: l.block, took, losers }
    }

    fn complete(&mut self) {
        self.result = self.assembly.take();
        self.pending.clear();
    }

    // ---- leases ----

    /// `worker` gave up `lease` (it left, or handed it back): its block goes
    /// back in the queue if nobody else holds it. Returns whether it did.
    pub(crate) fn drop_lease(&mut self, lease: LeaseId) -> bool {
        match self.remove_lease(lease) {
            Some(l) => self.requeue(l.block),
            None => false,
        }
    }

    fn remove_lease(&mut self, lease: LeaseId) -> Option<Lease> {
        let l = self.leases.remove(&lease)?;
        self.block_leases[l.block].retain(|&x| x != lease);
        Some(l)
    }

    /// Puts `block` at the front of the queue unless it is done, queued, or
    /// still held by a lease that has not expired. Returns whether it queued it.
    fn requeue(&mut self, block: usize) -> bool {
        let held = self.block_leases[block].iter().any(|id| !self.leases[id].expired);
        if self.assembly.is_done(block) || self.queued[block] || held || self.result.is_some() {
            return false;
        }
        self.queued[block] = true;
        self.pending.push_front(block);
        true
    }

    /// Expires overdue leases: their blocks go back in the queue, but the
    /// leases stay, so a late result still counts. Returns (worker, block) of each.
    pub(crate) fn expire(&mut self, now: Duration) -> Vec<(WorkerId, usize)> {
        let overdue: Vec<LeaseId> = self.leases.iter().filter(|(_, l)| !l.expired && l.deadline <= now).map(|(&id, _)| id).collect();
        let mut expired = Vec::new();
        for id in overdue {
            let l = self.leases.get_mut(&id).expect("collected above");
            l.expired = true;
            let (worker, block) = (l.worker, l.block);
            expired.push((worker, block));
            self.requeue(block);
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

    /// When this job next needs a call: a lease deadline, or (if `someone_idle`)
    /// the moment a straggler's block may be copied.
    pub(crate) fn next_wake(&self, someone_idle: bool) -> Option<Duration> {
        if self.result.is_some() {
            return None;
        }
        let expiry = self.leases.values().filter(|l| !l.expired).map(|l| l.deadline).min();
        let straggler = someone_idle
            .then(|| self.straggler_threshold())
            .flatten()
            .and_then(|t| self.leases.values().filter(|l| self.block_leases[l.block].len() == 1).map(|l| l.issued + t).min());
        expiry.into_iter().chain(straggler).min()
    }

    // ---- assignment ----

    /// The next block for `worker`: a queued one, or at the tail a straggler's;
    /// never one whose result from this worker was wrong. The bool says whether
    /// it is a speculative copy.
    pub(crate) fn next_block(&mut self, worker: WorkerId, now: Duration) -> Option<(usize, bool)> {
        if self.result.is_some() {
            return None;
        }
        // Usually the front block; skipping only past blocks this worker got wrong.
        let mut at = 0;
        while let Some(&block) = self.pending.get(at) {
            let done = self.assembly.is_done(block);
            if done || !self.rejected_by[block].contains(&worker) {
                self.pending.remove(at);
                self.queued[block] = false;
                if !done {
                    return Some((block, false));
                }
            } else {
                at += 1;
            }
        }
        let threshold = self.straggler_threshold()?;
        let block = self
            .leases
            .values()
            .filter(|l| l.worker != worker && self.block_leases[l.block].len() == 1 && now >= l.issued + threshold)
            .filter(|l| !self.rejected_by[l.block].contains(&worker))
            .min_by_key(|l| l.issued)?
            .block;
        Some((block, true))
    }

    /// Issues `block` to `taker` as `lease`: the frames to send it, A first if it lacks it.
    pub(crate) fn issue(&mut self, taker: Taker, block: usize, lease: LeaseId, now: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        if !taker.holds_a {
            let (m, k, n) = (self.plan.m as u64, self.plan.k as u64, self.plan.n as u64);
            for range in chunk_ranges(self.a.len(), self.max_chunk) {
                self.stats.operand_bytes += range.len() as u64;
                let message = match range.start {
                    0 => Message::Job { job: self.id, m, k, n, dtype: self.dtype },
                    offset => Message::OperandChunk { job: self.id, offset: offset as u64 },
                };
                frames.push(Frame::with_body(message, self.a.slice(range)));
            }
        }
        let columns = self.plan.columns(block);
        let column_bytes = self.plan.k * self.dtype.size();
        let b_range = columns.start * column_bytes..columns.end * column_bytes;
        for range in chunk_ranges(b_range.len(), self.max_chunk) {
            self.stats.task_bytes += range.len() as u64;
            let body = self.b.slice(b_range.start + range.start..b_range.start + range.end);
            let message = match range.start {
                0 => Message::Task { job: self.id, lease, first_col: columns.start as u64, cols: columns.len() as u64 },
                offset => Message::TaskChunk { lease, offset: offset as u64 },
            };
            frames.push(Frame::with_body(message, body));
        }
        self.stats.leases_issued += 1;
        let deadline = now + self.lease_length(taker.task_time);
        self.leases.insert(lease, Lease { block, worker: taker.id, issued: now, deadline, expired: false, result: None });
        self.block_leases[block].push(lease);
        frames
    }

    // ---- what it has made ----

    pub fn is_complete(&self) -> bool {
        self.result.is_some()
    }

    /// The assembled C, once the job is complete.
    pub fn take_result(&mut self) -> Option<DenseMatrix> {
        self.result.take()
    }

    pub fn blocks_done(&self) -> usize {
        self.plan.blocks() - self.assembly.remaining()
    }

    /// Whether block `block` is in C.
    pub fn block_done(&self, block: usize) -> bool {
        self.assembly.is_done(block)
    }

    /// Block `block`'s bytes in C, once it is in (until C is taken).
    pub fn block_bytes(&self, block: usize) -> Option<&[u8]> {
        match &self.result {
            Some(c) => c.as_bytes().get(c.column_byte_range(self.plan.columns(block))),
            None => self.assembly.block(block),
        }
    }

    pub fn stats(&self) -> PayloadStats {
        self.stats
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    #[cfg(test)]
    pub(crate) fn lease_span(&self, worker: WorkerId) -> Option<Duration> {
        self.leases.values().find(|l| l.worker == worker).map(|l| l.deadline - l.issued)
    }
}
