//! The master's state machine: a [`Pool`] of workers and the [`Job`]s it runs.
//!
//! One input type goes in ([`Scheduler::handle_input`], with `now`), one
//! output type comes out ([`Scheduler::poll_output`]): a frame to send, a
//! connection to close (with the reason, and whether to ban its address), an
//! event, or, once nothing else is pending, when to wake it next. It never
//! reads a clock or touches a socket, so tests drive it on a virtual clock; the
//! shell only carries out its verdicts. (The shape follows quinn-proto's
//! Endpoint and Connection, and str0m's `handle_input`/`poll_output`.)
//!
//! Work is pull-based: a worker holds up to its slots in tasks, and gets a new
//! one each time it returns a result, so fast workers take more. Every task is
//! a lease with a deadline. A block is re-queued when its worker leaves, hands
//! it back or lets the lease expire; at the tail, a straggler's block is given
//! to an idle worker too, and the first result wins.
//!
//! Every worker's liveness is watched: the master sends a heartbeat every few
//! seconds and gives up on a worker silent for longer than the heartbeat
//! timeout (or twice its own measured task time, if longer: a browser tab
//! cannot speak while it computes). Silence and rule-breaking end the same way:
//! an [`Output::Close`], with the worker's blocks re-queued at once.
//!
//! With a [`Verifier`](crate::verify::Verifier), every result is checked before
//! it is assembled. A wrong one is discarded, its block goes to another worker,
//! and its sender gets a strike; at `max_strikes` the sender is closed and its
//! address banned.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::codec::{self, CodecError};
use crate::job::{Finished, Job, LeaseConfig, Taker};
use crate::liveness::Heartbeat;
use crate::payload::PayloadError;
use crate::pool::{Hello, Pool};
use crate::protocol::{Frame, JobId, LeaseId, Message, WorkerKind, MAX_CHUNK};

#[cfg(feature = "fuzzing")]
pub mod fuzz;
#[cfg(test)]
mod tests;

pub use crate::job::{JobError, PayloadStats, RestoreError};
pub use crate::pool::{Access, Refusal, WorkerId, WorkerInfo};

/// Default tasks one worker may hold, whatever it asks for.
pub const DEFAULT_MAX_SLOTS: u32 = 4;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub leases: LeaseConfig,
    /// Largest body per message.
    pub max_chunk: usize,
    /// Cap on the tasks one worker may hold, whatever it asks for.
    pub max_slots: u32,
    /// Wrong results a worker may send before it is closed and its address banned.
    pub max_strikes: u32,
    pub heartbeat: Heartbeat,
    pub access: Access,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            leases: LeaseConfig::default(),
            max_chunk: MAX_CHUNK,
            max_slots: DEFAULT_MAX_SLOTS,
            max_strikes: 3,
            heartbeat: Heartbeat::default(),
            access: Access::default(),
        }
    }
}

/// What the shell tells the scheduler.
#[derive(Debug)]
pub enum Input<'a> {
    /// A connection opened (from `addr`, if known); its first message must be Hello.
    Connected { worker: WorkerId, addr: Option<IpAddr> },
    /// A WebSocket binary message arrived.
    Message { worker: WorkerId, bytes: &'a [u8] },
    /// The connection is gone.
    Disconnected { worker: WorkerId },
    /// The time asked for by [`Output::Wake`] has come.
    Timeout,
}

/// What the scheduler tells the shell.
#[derive(Debug)]
pub enum Output {
    Send { to: WorkerId, frame: Frame },
    /// Close this connection (after sending what is queued for it). The
    /// scheduler has already forgotten the worker and re-queued its blocks;
    /// with `ban`, its address is refused from now on.
    Close { worker: WorkerId, reason: CloseReason, ban: bool },
    Event(Event),
    /// Nothing else to do until this time (or an input); `None`: until an input.
    Wake(Option<Duration>),
}

/// Something the shell may want to log or show.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    WorkerJoined { worker: WorkerId, kind: WorkerKind, name: String },
    WorkerLeft { worker: WorkerId, requeued: usize },
    LeaseExpired { job: JobId, worker: WorkerId, block: usize },
    Speculated { job: JobId, worker: WorkerId, block: usize },
    BlockDone { job: JobId, worker: WorkerId, block: usize },
    /// A result failed verification and was discarded; its block is re-issued.
    Rejected { job: JobId, worker: WorkerId, block: usize, reason: String, strikes: u32 },
    JobComplete { job: JobId },
}

/// A worker broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the first message was not Hello")]
    NoHello,
    #[error("sent Hello twice")]
    DuplicateHello,
    #[error("asked for zero task slots")]
    NoSlots,
    #[error("sent {0}, which only a master sends")]
    Unexpected(&'static str),
    #[error("sent a result for lease {0}, which it does not hold")]
    UnknownLease(LeaseId),
    #[error("result for lease {lease}: {source}")]
    Payload { lease: LeaseId, source: PayloadError },
}

/// Why the scheduler closes a connection.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("silent for {:.0} s", .0.as_secs_f64())]
    Silent(Duration),
    #[error("sent {0} wrong results")]
    TooManyStrikes(u32),
}

/// Workers connected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headcount {
    pub native: usize,
    pub browser: usize,
}

impl Headcount {
    pub fn total(&self) -> usize {
        self.native + self.browser
    }
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: Pool,
    jobs: BTreeMap<JobId, Job>,
    next_lease: LeaseId,
    outputs: VecDeque<Output>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let pool = Pool::new(config.access.clone(), config.heartbeat, config.max_slots, config.max_strikes);
        Self { config, pool, jobs: BTreeMap::new(), next_lease: 1, outputs: VecDeque::new() }
    }

    /// The chunk size jobs should be built with.
    pub fn max_chunk(&self) -> usize {
        self.config.max_chunk
    }

    pub fn lease_config(&self) -> LeaseConfig {
        self.config.leases.clone()
    }

    /// Starts running `job` on the pool.
    pub fn add_job(&mut self, job: Job, now: Duration) {
        let id = job.id();
        let complete = job.is_complete();
        self.jobs.insert(id, job);
        if complete {
            self.job_complete(id);
        }
        self.assign(now);
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Removes a job, complete or not, withdrawing its tasks from the workers.
    pub fn remove_job(&mut self, id: JobId, now: Duration) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        for (&worker, w) in &mut self.pool.workers {
            let leases: Vec<LeaseId> = w.leases.iter().filter(|(_, &j)| j == id).map(|(&l, _)| l).collect();
            for lease in leases {
                w.leases.remove(&lease);
                w.cancelled.insert(lease);
                self.outputs.push_back(Output::Send { to: worker, frame: Frame::new(Message::Cancel { lease }) });
            }
            w.holds.remove(&id);
        }
        self.assign(now);
        Some(job)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn headcount(&self) -> Headcount {
        Headcount { native: self.pool.connected(WorkerKind::Native), browser: self.pool.connected(WorkerKind::Browser) }
    }

    // ---- inputs ----

    pub fn handle_input(&mut self, input: Input<'_>, now: Duration) {
        match input {
            Input::Connected { worker, addr } => {
                if let Err(refusal) = self.pool.connect(worker, addr) {
                    self.refuse(worker, refusal);
                }
            }
            Input::Message { worker, bytes } => {
                if let Err(reason) = self.on_message(worker, bytes, now) {
                    self.close(worker, reason, false, now);
                }
            }
            Input::Disconnected { worker } => self.leave(worker, now),
            Input::Timeout => self.on_timeout(now),
        }
    }

    fn on_message(&mut self, worker: WorkerId, bytes: &[u8], now: Duration) -> Result<(), CloseReason> {
        if !self.pool.is_member(worker) && !self.pool.is_connecting(worker) {
            return Ok(()); // closed already: its last words are ignored
        }
        let (message, body) = codec::decode(bytes).map_err(Violation::from)?;
        if !self.pool.is_member(worker) {
            return match message {
                Message::Hello { protocol, kind, slots, name, token, .. } => self.on_hello(worker, Hello { protocol, kind, slots, name, token }, now),
                _ => Err(Violation::NoHello.into()),
            };
        }
        self.pool.heard(worker, now);
        match message {
            Message::Hello { .. } => Err(Violation::DuplicateHello.into()),
            Message::Heartbeat => Ok(()),
            Message::ResultChunk { lease, offset, compute_us } => {
                self.on_result_chunk(worker, lease, offset, body, Duration::from_micros(compute_us), now)
            }
            Message::Release { leases } => {
                for lease in leases {
                    let job = self.pool.workers.get_mut(&worker).and_then(|w| w.leases.remove(&lease));
                    if let Some(job) = job.and_then(|j| self.jobs.get_mut(&j)) {
                        job.drop_lease(lease);
                    }
                }
                self.assign(now);
                Ok(())
            }
            Message::Welcome { .. } => Err(Violation::Unexpected("Welcome").into()),
            Message::Refused { .. } => Err(Violation::Unexpected("Refused").into()),
            Message::Job { .. } => Err(Violation::Unexpected("Job").into()),
            Message::OperandChunk { .. } => Err(Violation::Unexpected("OperandChunk").into()),
            Message::Task { .. } => Err(Violation::Unexpected("Task").into()),
            Message::TaskChunk { .. } => Err(Violation::Unexpected("TaskChunk").into()),
            Message::Cancel { .. } => Err(Violation::Unexpected("Cancel").into()),
            Message::JobDone { .. } => Err(Violation::Unexpected("JobDone").into()),
        }
    }

    fn on_hello(&mut self, worker: WorkerId, hello: Hello, now: Duration) -> Result<(), CloseReason> {
        if hello.slots == 0 {
            return Err(Violation::NoSlots.into());
        }
        let (kind, name) = (hello.kind, hello.name.clone());
        match self.pool.admit(worker, hello, now) {
            Ok(slots) => {
                let welcome = Message::Welcome { worker, slots, max_chunk: self.config.max_chunk as u64 };
                self.send(worker, Frame::new(welcome));
                self.outputs.push_back(Output::Event(Event::WorkerJoined { worker, kind, name }));
                self.assign(now);
                Ok(())
            }
            Err(refusal) => {
                self.refuse(worker, refusal);
                Ok(())
            }
        }
    }

    /// Tells a connection why it may not join, and closes it.
    fn refuse(&mut self, worker: WorkerId, refusal: Refusal) {
        self.send(worker, Frame::new(Message::Refused { reason: refusal.to_string() }));
        self.outputs.push_back(Output::Close { worker, reason: CloseReason::Refused(refusal), ban: false });
    }

    fn on_result_chunk(&mut self, worker: WorkerId, lease: LeaseId, offset: u64, body: &[u8], compute: Duration, now: Duration) -> Result<(), CloseReason> {
        let w = self.pool.workers.get(&worker).expect("a member");
        let Some(&job_id) = w.leases.get(&lease) else {
            if w.cancelled.contains(&lease) {
                return Ok(()); // another copy already won
            }
            return Err(Violation::UnknownLease(lease).into());
        };
        let job = self.jobs.get_mut(&job_id).expect("leases of removed jobs are withdrawn");
        let finished = job.result_chunk(worker, lease, offset, body, now).map_err(|source| Violation::Payload { lease, source })?;
        let Some(finished) = finished else { return Ok(()) };
        if let Some(w) = self.pool.workers.get_mut(&worker) {
            w.leases.remove(&lease);
        }
        match finished {
            Finished::Accepted { block, took, losers } => {
                self.pool.credit(worker, compute, took);
                self.outputs.push_back(Output::Event(Event::BlockDone { job: job_id, worker, block }));
                for (loser, lease) in losers {
                    if let Some(w) = self.pool.workers.get_mut(&loser) {
                        w.leases.remove(&lease);
                        w.cancelled.insert(lease);
                    }
                    self.send(loser, Frame::new(Message::Cancel { lease }));
                }
                if self.jobs[&job_id].is_complete() {
                    self.job_complete(job_id);
                }
            }
            Finished::Rejected { block, reason } => {
                let (strikes, out) = self.pool.strike(worker);
                self.outputs.push_back(Output::Event(Event::Rejected { job: job_id, worker, block, reason, strikes }));
                if out {
                    return Err(CloseReason::TooManyStrikes(strikes));
                }
            }
            Finished::Duplicate => {}
        }
        self.assign(now);
        Ok(())
    }

    /// Tells the workers holding the job's operands that it is over.
    fn job_complete(&mut self, job: JobId) {
        self.outputs.push_back(Output::Event(Event::JobComplete { job }));
        for (&id, w) in &mut self.pool.workers {
            if w.holds.remove(&job) {
                self.outputs.push_back(Output::Send { to: id, frame: Frame::new(Message::JobDone { job }) });
            }
        }
    }

    /// The worker is gone: its blocks go back in the queue.
    fn leave(&mut self, worker: WorkerId, now: Duration) {
        let Some(w) = self.pool.leave(worker) else { return };
        let mut requeued = 0;
        for (lease, job) in w.leases {
            if let Some(job) = self.jobs.get_mut(&job) {
                requeued += usize::from(job.drop_lease(lease));
            }
        }
        self.outputs.push_back(Output::Event(Event::WorkerLeft { worker, requeued }));
        self.assign(now);
    }

    /// Closes `worker` for `reason`: its blocks are re-queued now, and the
    /// shell is told to close the connection (banning its address if `ban`).
    fn close(&mut self, worker: WorkerId, reason: CloseReason, ban: bool, now: Duration) {
        let ban = ban || matches!(reason, CloseReason::TooManyStrikes(_));
        self.outputs.push_back(Output::Close { worker, reason, ban });
        self.leave(worker, now);
    }

    /// Time has reached `now`: send heartbeats, close silent workers, expire
    /// overdue leases and give stragglers' blocks to idle workers.
    fn on_timeout(&mut self, now: Duration) {
        for worker in self.pool.beats_due(now) {
            self.send(worker, Frame::new(Message::Heartbeat));
        }
        for (worker, silent_for) in self.pool.silent(now, self.typical_task_time()) {
            self.close(worker, CloseReason::Silent(silent_for), false, now);
        }
        for (&id, job) in &mut self.jobs {
            for (worker, block) in job.expire(now) {
                self.outputs.push_back(Output::Event(Event::LeaseExpired { job: id, worker, block }));
            }
        }
        self.assign(now);
    }

    /// The longest typical task time among running jobs.
    fn typical_task_time(&self) -> Option<Duration> {
        self.jobs.values().filter_map(Job::task_time).max()
    }

    // ---- outputs ----

    /// The next thing for the shell to do; [`Output::Wake`] once there is nothing else.
    pub fn poll_output(&mut self) -> Output {
        self.outputs.pop_front().unwrap_or_else(|| Output::Wake(self.next_wake()))
    }

    fn next_wake(&self) -> Option<Duration> {
        let idle = self.pool.workers.values().any(|w| w.has_room());
        let jobs = self.jobs.values().filter_map(|j| j.next_wake(idle));
        jobs.chain(self.pool.next_wake(self.typical_task_time())).min()
    }

    fn send(&mut self, to: WorkerId, frame: Frame) {
        self.outputs.push_back(Output::Send { to, frame });
    }

    // ---- assignment ----

    /// Fills free slots, one task per worker per round, so work spreads evenly.
    fn assign(&mut self, now: Duration) {
        loop {
            let mut gave = false;
            let hungry: Vec<WorkerId> = self.pool.workers.iter().filter(|(_, w)| w.has_room()).map(|(&id, _)| id).collect();
            for worker in hungry {
                gave |= self.offer(worker, now);
            }
            if !gave {
                return;
            }
        }
    }

    /// Gives `worker` one task, from the running job it holds the fewest
    /// leases of (so jobs share the pool). Returns whether it got one.
    fn offer(&mut self, worker: WorkerId, now: Duration) -> bool {
        let w = &self.pool.workers[&worker];
        let held = |job: JobId| w.leases.values().filter(|&&j| j == job).count();
        let mut order: Vec<JobId> = self.jobs.iter().filter(|(_, j)| !j.is_complete()).map(|(&id, _)| id).collect();
        order.sort_by_key(|&id| held(id));
        for id in order {
            let job = self.jobs.get_mut(&id).expect("listed above");
            let Some((block, speculative)) = job.next_block(worker, now) else { continue };
            let w = self.pool.workers.get_mut(&worker).expect("a member");
            let taker = Taker { id: worker, holds_a: !w.holds.insert(id), task_time: w.task_time };
            let lease = self.next_lease;
            self.next_lease += 1;
            w.leases.insert(lease, id);
            if speculative {
                self.outputs.push_back(Output::Event(Event::Speculated { job: id, worker, block }));
            }
            for frame in job.issue(taker, block, lease, now) {
                self.outputs.push_back(Output::Send { to: worker, frame });
            }
            return true;
        }
        false
    }
}
