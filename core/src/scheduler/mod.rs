//! The master's scheduler: a sans-IO state machine.
//!
//! Inputs are `handle_*(…, now)`; outputs are frames to send ([`Scheduler::poll_transmit`]),
//! things that happened ([`Scheduler::poll_event`]) and when to wake it next
//! ([`Scheduler::poll_timeout`]). It never reads a clock or touches a socket,
//! so tests drive it on a virtual clock.
//!
//! Work is pull-based: a worker holds up to `slots` tasks, and gets a new one
//! each time it returns a result, so fast workers take more. Every task is a
//! lease with a deadline. A block is re-queued when its worker leaves, hands it
//! back or lets the lease expire; at the tail, a straggler's block is given to
//! an idle worker too, and the first result wins.
//!
//! Every worker's liveness is watched: the master sends a heartbeat every few
//! seconds and gives up on a worker silent for longer than the heartbeat
//! timeout (or twice its own measured task time, if longer: a browser tab
//! cannot speak while it computes). Its blocks are re-queued at once.
//!
//! With a [`Verifier`], every result is checked before it is assembled. A wrong
//! one is discarded, its block goes to another worker, and its sender gets a
//! strike; at `max_strikes` the sender is disconnected for good.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::assembly::{Accepted, Assembly};
use crate::codec::{self, CodecError};
use crate::liveness::{Heartbeat, Liveness};
use crate::matrix::{DenseMatrix, Dtype, ShapeError};
use crate::payload::{Incoming, PayloadError};
use crate::plan::Plan;
use crate::protocol::{chunk_ranges, Frame, JobId, LeaseId, MatrixBytes, Message, Token, WorkerKind, MAX_CHUNK, PROTOCOL_VERSION};
use crate::verify::Verifier;

pub mod fuzz;
#[cfg(test)]
mod tests;

/// The shell's name for a connection.
pub type WorkerId = u64;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Lease length before any task has finished, when there is nothing to go by.
    pub initial_lease: Duration,
    /// Later leases last this many times the typical task time…
    pub lease_factor: f64,
    /// …but never less than this.
    pub min_lease: Duration,
    /// At the tail, a block whose only lease has run this many times the
    /// typical task time is also given to an idle worker.
    pub straggler_factor: f64,
    /// Largest body per message.
    pub max_chunk: usize,
    /// Cap on the tasks one worker may hold, whatever it asks for.
    pub max_slots: u32,
    /// Wrong results a worker may send before it is disconnected for good.
    pub max_strikes: u32,
    pub heartbeat: Heartbeat,
    pub access: Access,
}

/// Who may join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// If set, native workers must present this token.
    pub token: Option<Token>,
    /// Whether browser volunteers (who have no token) may join.
    pub browsers: bool,
}

impl Default for Access {
    fn default() -> Self {
        Self { token: None, browsers: true }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            initial_lease: Duration::from_secs(300),
            lease_factor: 8.0,
            min_lease: Duration::from_secs(20),
            straggler_factor: 2.0,
            max_chunk: MAX_CHUNK,
            max_slots: 4,
            max_strikes: 3,
            heartbeat: Heartbeat::default(),
            access: Access::default(),
        }
    }
}

/// Something the shell may want to log or show.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    WorkerJoined { worker: WorkerId, kind: WorkerKind, name: String },
    WorkerLeft { worker: WorkerId, requeued: usize },
    LeaseExpired { worker: WorkerId, block: usize },
    /// The worker said nothing for `silent_for`: it is dropped (the shell should
    /// close its connection), and a `WorkerLeft` follows.
    WorkerSilent { worker: WorkerId, silent_for: Duration },
    Speculated { worker: WorkerId, block: usize },
    BlockDone { worker: WorkerId, block: usize },
    /// A result failed verification and was discarded; its block is re-issued.
    Rejected { worker: WorkerId, block: usize, reason: String, strikes: u32 },
    JobComplete,
}

/// A worker broke the protocol; the shell should disconnect it.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the first message was not Hello")]
    NoHello,
    #[error("sent Hello twice")]
    DuplicateHello,
    #[error("speaks protocol {got}, this master speaks {PROTOCOL_VERSION}")]
    Version { got: u32 },
    #[error("asked for zero task slots")]
    NoSlots,
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("sent {0}, which only a master sends")]
    Unexpected(&'static str),
    #[error("sent a result for lease {0}, which it does not hold")]
    UnknownLease(LeaseId),
    #[error("result for lease {lease}: {source}")]
    Payload { lease: LeaseId, source: PayloadError },
    #[error("sent {0} wrong results")]
    TooManyStrikes(u32),
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

/// What is known of a worker, kept after it leaves.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerInfo {
    pub kind: WorkerKind,
    pub name: String,
    pub blocks_done: usize,
    /// Compute time the worker reported for its accepted blocks.
    pub compute: Duration,
    /// Results that failed verification.
    pub strikes: u32,
    pub connected: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub blocks_done: usize,
    pub blocks_total: usize,
    pub native_workers: usize,
    pub browser_workers: usize,
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
struct Worker {
    slots: usize,
    has_a: bool,
    leases: BTreeSet<LeaseId>,
    /// Leases cancelled because another copy won; their late chunks are ignored.
    cancelled: HashSet<LeaseId>,
    liveness: Liveness,
    /// Smoothed time from issuing one of its leases to the result.
    task_time: Option<Duration>,
}

/// A Hello's fields, as the scheduler needs them.
#[derive(Debug)]
struct Hello {
    protocol: u32,
    kind: WorkerKind,
    slots: u32,
    name: String,
    token: Token,
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

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    job: JobId,
    dtype: Dtype,
    plan: Plan,
    a: Bytes,
    b: Bytes,
    assembly: Assembly,
    result: Option<DenseMatrix>,
    workers: BTreeMap<WorkerId, Worker>,
    infos: BTreeMap<WorkerId, WorkerInfo>,
    leases: BTreeMap<LeaseId, Lease>,
    block_leases: Vec<Vec<LeaseId>>,
    queued: Vec<bool>,
    pending: VecDeque<usize>,
    next_lease: LeaseId,
    /// Smoothed time from issuing a lease to its result.
    task_time: Option<Duration>,
    outbox: VecDeque<(WorkerId, Frame)>,
    events: VecDeque<Event>,
    stats: PayloadStats,
    verifier: Option<Verifier>,
    /// Workers whose result for a block was wrong: they do not get it again.
    rejected_by: Vec<Vec<WorkerId>>,
}

impl Scheduler {
    /// A scheduler for one job: C = A·B split as `plan` says. A and B may be
    /// shared (with a [`Verifier`]); the scheduler only reads their bytes.
    pub fn new(
        config: SchedulerConfig,
        job: JobId,
        a: impl Into<std::sync::Arc<DenseMatrix>>,
        b: impl Into<std::sync::Arc<DenseMatrix>>,
        plan: Plan,
    ) -> Result<Self, JobError> {
        let (a, b) = (a.into(), b.into());
        if a.cols() != b.rows() {
            return Err(JobError::InnerDimension { a: a.shape_string(), b: b.shape_string() });
        }
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
            assembly: Assembly::new(plan.clone(), dtype)?,
            config,
            job,
            dtype,
            plan,
            a: MatrixBytes::into_bytes(a),
            b: MatrixBytes::into_bytes(b),
            result: None,
            workers: BTreeMap::new(),
            infos: BTreeMap::new(),
            leases: BTreeMap::new(),
            block_leases: vec![Vec::new(); blocks],
            queued: vec![true; blocks],
            pending: (0..blocks).collect(),
            next_lease: 1,
            task_time: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
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

    // ---- inputs ----

    /// Puts a block computed earlier (e.g. read from a checkpoint) into C,
    /// after the same verification a worker's result gets.
    pub fn restore(&mut self, block: usize, bytes: &[u8]) -> Result<(), RestoreError> {
        let blocks = self.plan.blocks();
        if block >= blocks {
            return Err(RestoreError::NoSuchBlock { block, blocks });
        }
        let cols = self.plan.columns(block).len();
        let mut incoming = Incoming::new(self.dtype, self.plan.m, cols).expect("a block of C is no larger than C");
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

    /// A message arrived from `worker` (which may be new: its first message must be Hello).
    /// On error the shell must disconnect the worker and call [`Self::handle_disconnect`].
    pub fn handle_message(&mut self, worker: WorkerId, bytes: &[u8], now: Duration) -> Result<(), Violation> {
        let (message, body) = codec::decode(bytes)?;
        if !self.workers.contains_key(&worker) {
            return match message {
                Message::Hello { protocol, kind, slots, name, token, .. } => {
                    self.on_hello(worker, Hello { protocol, kind, slots, name, token }, now)
                }
                _ => Err(Violation::NoHello),
            };
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.liveness.heard(now);
        }
        match message {
            Message::Hello { .. } => Err(Violation::DuplicateHello),
            Message::Heartbeat => Ok(()),
            Message::ResultChunk { lease, offset, compute_us } => {
                self.on_result_chunk(worker, lease, offset, body, Duration::from_micros(compute_us), now)
            }
            Message::Release { leases } => {
                for lease in leases {
                    if self.workers[&worker].leases.contains(&lease) {
                        self.drop_lease(lease);
                    }
                }
                self.assign(now);
                Ok(())
            }
            Message::Welcome { .. } => Err(Violation::Unexpected("Welcome")),
            Message::Refused { .. } => Err(Violation::Unexpected("Refused")),
            Message::Job { .. } => Err(Violation::Unexpected("Job")),
            Message::OperandChunk { .. } => Err(Violation::Unexpected("OperandChunk")),
            Message::Task { .. } => Err(Violation::Unexpected("Task")),
            Message::TaskChunk { .. } => Err(Violation::Unexpected("TaskChunk")),
            Message::Cancel { .. } => Err(Violation::Unexpected("Cancel")),
            Message::JobDone { .. } => Err(Violation::Unexpected("JobDone")),
        }
    }

    /// The connection to `worker` is gone; its unfinished blocks go back in the queue.
    pub fn handle_disconnect(&mut self, worker: WorkerId, now: Duration) {
        let Some(w) = self.workers.remove(&worker) else { return };
        let mut requeued = 0;
        for lease in w.leases {
            if let Some(l) = self.leases.remove(&lease) {
                self.block_leases[l.block].retain(|&x| x != lease);
                requeued += usize::from(self.requeue(l.block));
            }
        }
        if let Some(info) = self.infos.get_mut(&worker) {
            info.connected = false;
        }
        self.events.push_back(Event::WorkerLeft { worker, requeued });
        self.assign(now);
    }

    /// Time has reached `now`: send heartbeats, drop silent workers, expire
    /// overdue leases and give stragglers' blocks to idle workers.
    pub fn handle_timeout(&mut self, now: Duration) {
        let heartbeat = self.config.heartbeat;
        let mut silent = Vec::new();
        for (&id, w) in &mut self.workers {
            if w.liveness.beat_due(now, &heartbeat) && self.result.is_none() {
                self.outbox.push_back((id, Frame::new(Message::Heartbeat)));
            }
        }
        for (&id, w) in &self.workers {
            if let Some(silent_for) = w.liveness.silent_past(now, self.silence_limit(w)) {
                silent.push((id, silent_for));
            }
        }
        for (worker, silent_for) in silent {
            self.events.push_back(Event::WorkerSilent { worker, silent_for });
            self.handle_disconnect(worker, now);
        }
        let overdue: Vec<LeaseId> =
            self.leases.iter().filter(|(_, l)| !l.expired && l.deadline <= now).map(|(&id, _)| id).collect();
        for id in overdue {
            let l = self.leases.get_mut(&id).expect("collected above");
            // The worker may still answer, so the lease stays and its result still
            // counts; but the block goes back in the queue for someone else.
            l.expired = true;
            let (worker, block) = (l.worker, l.block);
            self.events.push_back(Event::LeaseExpired { worker, block });
            self.requeue(block);
        }
        self.assign(now);
    }

    // ---- outputs ----

    pub fn poll_transmit(&mut self) -> Option<(WorkerId, Frame)> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next, if anything is waiting on time.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.result.is_some() {
            return None;
        }
        let expiry = self.leases.values().filter(|l| !l.expired).map(|l| l.deadline).min();
        let liveness = self.workers.values().map(|w| w.liveness.next_wake(self.silence_limit(w))).min();
        let straggler = if self.someone_idle() {
            self.straggler_threshold().and_then(|t| {
                self.leases
                    .values()
                    .filter(|l| self.block_leases[l.block].len() == 1)
                    .map(|l| l.issued + t)
                    .min()
            })
        } else {
            None
        };
        expiry.into_iter().chain(liveness).chain(straggler).min()
    }

    pub fn is_complete(&self) -> bool {
        self.result.is_some()
    }

    /// The assembled C, once the job is complete.
    pub fn take_result(&mut self) -> Option<DenseMatrix> {
        self.result.take()
    }

    pub fn progress(&self) -> Progress {
        let live = |kind| self.infos.values().filter(|i| i.connected && i.kind == kind).count();
        Progress {
            blocks_done: self.plan.blocks() - self.assembly.remaining(),
            blocks_total: self.plan.blocks(),
            native_workers: live(WorkerKind::Native),
            browser_workers: live(WorkerKind::Browser),
        }
    }

    /// Every worker that ever joined, connected or not.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, &WorkerInfo)> {
        self.infos.iter().map(|(&id, info)| (id, info))
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

    // ---- message handlers ----

    fn on_hello(&mut self, worker: WorkerId, hello: Hello, now: Duration) -> Result<(), Violation> {
        let Hello { protocol, kind, slots, name, token } = hello;
        if protocol != PROTOCOL_VERSION {
            let reason = format!("this master speaks protocol {PROTOCOL_VERSION}, the worker speaks {protocol}; run matching versions");
            self.outbox.push_back((worker, Frame::new(Message::Refused { reason })));
            return Err(Violation::Version { got: protocol });
        }
        if let Some(why) = self.refusal(kind, &token) {
            self.outbox.push_back((worker, Frame::new(Message::Refused { reason: why.into() })));
            return Err(Violation::Refused(why));
        }
        if slots == 0 {
            return Err(Violation::NoSlots);
        }
        let slots = slots.min(self.config.max_slots) as usize;
        let liveness = Liveness::new(now, &self.config.heartbeat);
        let w = Worker { slots, has_a: false, leases: BTreeSet::new(), cancelled: HashSet::new(), liveness, task_time: None };
        self.workers.insert(worker, w);
        let info = WorkerInfo { kind, name: name.clone(), blocks_done: 0, compute: Duration::ZERO, strikes: 0, connected: true };
        self.infos.insert(worker, info);
        let welcome = Message::Welcome { worker, slots: slots as u32, max_chunk: self.config.max_chunk as u64 };
        self.outbox.push_back((worker, Frame::new(welcome)));
        self.events.push_back(Event::WorkerJoined { worker, kind, name });
        self.assign(now);
        Ok(())
    }

    /// Why a worker may not join, if it may not. A token admits anyone; without
    /// one, only browsers may join (if browsers are allowed) or anyone at all
    /// (if the master has no token).
    fn refusal(&self, kind: WorkerKind, token: &Token) -> Option<&'static str> {
        let access = &self.config.access;
        let holds_token = access.token.as_ref().is_some_and(|t| t == token);
        match kind {
            _ if holds_token => None,
            WorkerKind::Browser if !access.browsers => Some("this master does not take browser volunteers"),
            WorkerKind::Browser => None,
            WorkerKind::Native if access.token.is_none() => None,
            WorkerKind::Native if token.is_empty() => {
                Some("this master requires a token: start the worker with --token-file FILE, FILE holding the master's token")
            }
            WorkerKind::Native => Some("wrong token: the worker's --token-file does not hold the master's token"),
        }
    }

    fn on_result_chunk(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
        offset: u64,
        body: &[u8],
        compute: Duration,
        now: Duration,
    ) -> Result<(), Violation> {
        if self.workers[&worker].cancelled.contains(&lease) {
            return Ok(()); // another copy already won
        }
        let (m, dtype) = (self.plan.m, self.dtype);
        let Some(l) = self.leases.get_mut(&lease).filter(|l| l.worker == worker) else {
            return Err(Violation::UnknownLease(lease));
        };
        let cols = self.plan.columns(l.block).len();
        let incoming = match &mut l.result {
            Some(incoming) => incoming,
            None => l.result.insert(Incoming::new(dtype, m, cols).expect("a block of C is no larger than C")),
        };
        let complete = incoming.add(offset, body).map_err(|source| Violation::Payload { lease, source })?;
        self.stats.result_bytes += body.len() as u64;
        if complete {
            self.finish_lease(lease, compute, now)?;
        }
        Ok(())
    }

    fn finish_lease(&mut self, lease: LeaseId, compute: Duration, now: Duration) -> Result<(), Violation> {
        let l = self.remove_lease(lease).expect("caller checked the lease exists");
        let c = l.result.expect("a finished lease has a result").into_matrix();
        if let Some(Err(mismatch)) = self.verifier.as_ref().map(|v| v.check(l.block, &c)) {
            return self.reject(l.worker, l.block, mismatch.to_string(), now);
        }
        match self.assembly.accept(l.block, c.as_bytes()) {
            Ok(Accepted::New) => {}
            // Sizes were fixed by `Incoming`; a duplicate means another copy won.
            Ok(Accepted::Duplicate) | Err(_) => return Ok(()),
        }
        self.observe_task_time(l.worker, now.saturating_sub(l.issued));
        if let Some(info) = self.infos.get_mut(&l.worker) {
            info.blocks_done += 1;
            info.compute += compute;
        }
        self.events.push_back(Event::BlockDone { worker: l.worker, block: l.block });
        for other in std::mem::take(&mut self.block_leases[l.block]) {
            if let Some(o) = self.remove_lease(other) {
                if let Some(w) = self.workers.get_mut(&o.worker) {
                    w.cancelled.insert(other);
                }
                self.outbox.push_back((o.worker, Frame::new(Message::Cancel { lease: other })));
            }
        }
        if self.assembly.is_complete() {
            self.complete();
        } else {
            self.assign(now);
        }
        Ok(())
    }

    /// Discards a wrong result: its block goes to someone else, its sender gets a strike.
    fn reject(&mut self, worker: WorkerId, block: usize, reason: String, now: Duration) -> Result<(), Violation> {
        self.rejected_by[block].push(worker);
        self.requeue(block);
        let strikes = self.infos.get_mut(&worker).map_or(0, |info| {
            info.strikes += 1;
            info.strikes
        });
        self.events.push_back(Event::Rejected { worker, block, reason, strikes });
        if strikes >= self.config.max_strikes {
            return Err(Violation::TooManyStrikes(strikes));
        }
        self.assign(now);
        Ok(())
    }

    fn complete(&mut self) {
        self.result = self.assembly.take();
        self.pending.clear();
        self.events.push_back(Event::JobComplete);
        for (&id, w) in &self.workers {
            if w.has_a {
                self.outbox.push_back((id, Frame::new(Message::JobDone { job: self.job })));
            }
        }
    }

    // ---- bookkeeping ----

    fn remove_lease(&mut self, lease: LeaseId) -> Option<Lease> {
        let l = self.leases.remove(&lease)?;
        self.block_leases[l.block].retain(|&x| x != lease);
        if let Some(w) = self.workers.get_mut(&l.worker) {
            w.leases.remove(&lease);
        }
        Some(l)
    }

    /// Drops a lease whose worker gave it up, and re-queues its block if needed.
    fn drop_lease(&mut self, lease: LeaseId) {
        if let Some(l) = self.remove_lease(lease) {
            self.requeue(l.block);
        }
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

    fn observe_task_time(&mut self, worker: WorkerId, sample: Duration) {
        let smooth = |old: Option<Duration>| match old {
            None => sample,
            Some(t) => t.mul_f64(0.8) + sample.mul_f64(0.2),
        };
        self.task_time = Some(smooth(self.task_time));
        if let Some(w) = self.workers.get_mut(&worker) {
            w.task_time = Some(smooth(w.task_time));
        }
    }

    /// What a task is expected to take on `w`: its own measured time, else everyone's.
    fn expected_task_time(&self, w: &Worker) -> Option<Duration> {
        w.task_time.or(self.task_time)
    }

    /// A lease lasts `lease_factor` times the worker's expected task time.
    fn lease_length(&self, w: &Worker) -> Duration {
        match self.expected_task_time(w) {
            None => self.config.initial_lease,
            Some(t) => t.mul_f64(self.config.lease_factor).max(self.config.min_lease),
        }
    }

    /// Silence allowed before `w` is given up on: a browser tab says nothing while it computes.
    fn silence_limit(&self, w: &Worker) -> Duration {
        let computing = self.expected_task_time(w).unwrap_or_default() * 2;
        self.config.heartbeat.timeout.max(computing)
    }

    fn straggler_threshold(&self) -> Option<Duration> {
        self.task_time.map(|t| t.mul_f64(self.config.straggler_factor))
    }

    fn someone_idle(&self) -> bool {
        self.workers.values().any(|w| w.leases.len() < w.slots)
    }

    // ---- assignment ----

    /// Fills free slots, one task per worker per round, so work spreads evenly.
    fn assign(&mut self, now: Duration) {
        if self.result.is_some() {
            return;
        }
        loop {
            let mut gave = false;
            let hungry: Vec<WorkerId> =
                self.workers.iter().filter(|(_, w)| w.leases.len() < w.slots).map(|(&id, _)| id).collect();
            for worker in hungry {
                if let Some(block) = self.next_block(worker, now) {
                    self.issue(worker, block, now);
                    gave = true;
                }
            }
            if !gave {
                return;
            }
        }
    }

    /// The next block for `worker`: a queued one, or at the tail a straggler's;
    /// never one whose result from this worker was wrong.
    fn next_block(&mut self, worker: WorkerId, now: Duration) -> Option<usize> {
        // Usually the front block; skipping only past blocks this worker got wrong.
        let mut at = 0;
        while let Some(&block) = self.pending.get(at) {
            let done = self.assembly.is_done(block);
            if done || !self.rejected_by[block].contains(&worker) {
                self.pending.remove(at);
                self.queued[block] = false;
                if !done {
                    return Some(block);
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
        self.events.push_back(Event::Speculated { worker, block });
        Some(block)
    }

    fn issue(&mut self, worker: WorkerId, block: usize, now: Duration) {
        let lease = self.next_lease;
        self.next_lease += 1;
        let columns = self.plan.columns(block);
        let max_chunk = self.config.max_chunk;
        let w = self.workers.get_mut(&worker).expect("assign picks live workers");
        if !w.has_a {
            w.has_a = true;
            let (m, k, n) = (self.plan.m as u64, self.plan.k as u64, self.plan.n as u64);
            for range in chunk_ranges(self.a.len(), max_chunk) {
                self.stats.operand_bytes += range.len() as u64;
                let message = match range.start {
                    0 => Message::Job { job: self.job, m, k, n, dtype: self.dtype },
                    offset => Message::OperandChunk { job: self.job, offset: offset as u64 },
                };
                self.outbox.push_back((worker, Frame::with_body(message, self.a.slice(range))));
            }
        }
        w.leases.insert(lease);
        let column_bytes = self.plan.k * self.dtype.size();
        let b_range = columns.start * column_bytes..columns.end * column_bytes;
        for range in chunk_ranges(b_range.len(), max_chunk) {
            self.stats.task_bytes += range.len() as u64;
            let body = self.b.slice(b_range.start + range.start..b_range.start + range.end);
            let message = match range.start {
                0 => Message::Task { job: self.job, lease, first_col: columns.start as u64, cols: columns.len() as u64 },
                offset => Message::TaskChunk { lease, offset: offset as u64 },
            };
            self.outbox.push_back((worker, Frame::with_body(message, body)));
        }
        self.stats.leases_issued += 1;
        let deadline = now + self.lease_length(&self.workers[&worker]);
        self.leases.insert(lease, Lease { block, worker, issued: now, deadline, expired: false, result: None });
        self.block_leases[block].push(lease);
    }
}
