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
//! With a [`Verifier`], every result is checked before
//! it is assembled. A wrong one is discarded, its block goes to another worker,
//! and its sender gets a strike; at `max_strikes` the sender is closed and its
//! address banned.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::codec::{self, CodecError};
use crate::job::{Finished, Job, LeaseConfig, Order, Unplanned};
use crate::kernel::flops;
use crate::liveness::Heartbeat;
use crate::payload::PayloadError;
use crate::plan::PanelId;
use crate::pool::{Bench, Held, Hello, Pool};
use crate::protocol::{Frame, JobId, LeaseId, Message, WorkerKind, DEFAULT_CHUNK};
use crate::verify::Verifier;

#[cfg(feature = "fuzzing")]
pub mod fuzz;
#[cfg(test)]
mod tests;

pub use crate::job::{JobError, PayloadStats, RestoreError};
pub use crate::pool::{Access, PeerAddr, Refusal, WorkerId, WorkerInfo};

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
    /// A job waiting for its plan is planned once the pool has had no newcomer
    /// for this long, so workers starting together are planned for together;
    /// and a verifier on its way ([`Unplanned::verifier_coming`]) is waited
    /// for at most this long.
    pub settle: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            leases: LeaseConfig::default(),
            max_chunk: DEFAULT_CHUNK,
            max_slots: DEFAULT_MAX_SLOTS,
            max_strikes: 3,
            heartbeat: Heartbeat::default(),
            access: Access::default(),
            settle: Duration::from_millis(150),
        }
    }
}

/// What the shell tells the scheduler.
#[derive(Debug)]
pub enum Input<'a> {
    /// A connection opened (from `addr`, if known); its first message must be Hello.
    Connected { worker: WorkerId, addr: Option<PeerAddr> },
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
    /// The job's tiles are chosen: [`Scheduler::job`] now has it.
    JobPlanned { job: JobId },
    LeaseExpired { job: JobId, worker: WorkerId, tile: usize },
    Speculated { job: JobId, worker: WorkerId, tile: usize },
    /// A tile was verified and is in C; `block` of C is complete if `block_done`.
    TileDone { job: JobId, worker: WorkerId, tile: usize, block: usize, block_done: bool },
    /// A result failed verification and was discarded; its tile is re-issued.
    Rejected { job: JobId, worker: WorkerId, tile: usize, reason: String, strikes: u32 },
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

/// A job in the scheduler: waiting for its plan, or running.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per job
enum Entry {
    Unplanned(Unplanned),
    Running(Job),
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: Pool,
    jobs: BTreeMap<JobId, Entry>,
    next_lease: LeaseId,
    /// When the latest worker joined.
    last_join: Duration,
    outputs: VecDeque<Output>,
    /// Shares of the pool, for jobs given more than one ([`Self::set_weight`]).
    weights: BTreeMap<JobId, u32>,
    /// When the last timeout was handled: what was due by then has been looked at.
    last_timeout: Duration,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let pool = Pool::new(config.access.clone(), config.heartbeat, config.max_slots, config.max_strikes);
        Self { config, pool, jobs: BTreeMap::new(), next_lease: 1, last_join: Duration::ZERO, outputs: VecDeque::new(), weights: BTreeMap::new(), last_timeout: Duration::ZERO }
    }

    /// The chunk size jobs should be built with.
    pub fn max_chunk(&self) -> usize {
        self.config.max_chunk
    }

    pub fn lease_config(&self) -> LeaseConfig {
        self.config.leases.clone()
    }

    /// Starts running `job`, planned already, on the pool.
    pub fn add_job(&mut self, job: Job, now: Duration) {
        self.pool.unbench(Bench::UntilPlanChanges);
        let id = job.id();
        let complete = job.is_complete();
        self.jobs.insert(id, Entry::Running(job));
        if complete {
            self.job_complete(id);
        }
        self.assign(now);
    }

    /// Queues a job to be planned for the pool ([`Event::JobPlanned`] says when).
    pub fn add_unplanned(&mut self, mut job: Unplanned, now: Duration) {
        self.pool.unpark_all();
        job.queued = now;
        self.jobs.insert(job.id(), Entry::Unplanned(job));
        self.assign(now);
    }

    /// A running job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        match self.jobs.get(&id) {
            Some(Entry::Running(job)) => Some(job),
            _ => None,
        }
    }

    /// A job's shape, planned or not.
    pub fn problem(&self, id: JobId) -> Option<crate::plan::model::Problem> {
        match self.jobs.get(&id)? {
            Entry::Unplanned(job) => Some(job.problem()),
            Entry::Running(job) => {
                let plan = job.plan();
                Some(crate::plan::model::Problem { m: plan.m, k: plan.k, n: plan.n, elem: job.dtype().size() })
            }
        }
    }

    fn running(&self) -> impl Iterator<Item = (JobId, &Job)> {
        self.jobs.iter().filter_map(|(&id, e)| if let Entry::Running(j) = e { Some((id, j)) } else { None })
    }

    /// Hands a job the verifier it was waiting for; results held meanwhile
    /// are judged now. A job not planned yet keeps it for its plan, and is
    /// planned without waiting longer for it (if its groups do not serve the
    /// plan, the planned job awaits another: [`Job::awaits_verifier`]).
    /// Returns false if the job is planned and the verifier's groups do not
    /// serve its plan (it still waits for one), or there is no such job.
    pub fn set_verifier(&mut self, id: JobId, verifier: Verifier, now: Duration) -> bool {
        let job = match self.jobs.get_mut(&id) {
            Some(Entry::Running(job)) => job,
            Some(Entry::Unplanned(job)) => {
                job.set_verifier(verifier);
                self.assign(now);
                return true;
            }
            None => return false,
        };
        let Some(judged) = job.set_verifier(verifier, now) else { return false };
        for (worker, lease, finished) in judged {
            if let Err(reason) = self.settle(id, worker, lease, finished, now) {
                if self.pool.is_member(worker) {
                    self.close(worker, reason, false, now);
                }
            }
        }
        self.assign(now);
        true
    }

    /// Gives job `id` `weight` shares of the pool (at least 1, the default):
    /// running jobs hold leases in proportion to their weights.
    pub fn set_weight(&mut self, id: JobId, weight: u32) {
        self.weights.insert(id, weight.max(1));
    }

    /// Workers holding tasks of job `id` now.
    pub fn workers_on(&self, id: JobId) -> usize {
        self.pool.workers.values().filter(|w| w.leases.values().any(|h| h.job == id)).count()
    }

    /// Removes a job, complete or not, withdrawing its tasks and panels from the workers.
    pub fn remove_job(&mut self, id: JobId, now: Duration) -> Option<Job> {
        self.weights.remove(&id);
        let job = match self.jobs.remove(&id)? {
            Entry::Running(job) => job,
            Entry::Unplanned(_) => return None,
        };
        let ids: Vec<WorkerId> = self.pool.workers.keys().copied().collect();
        for worker in ids {
            let leases: Vec<LeaseId> = self.pool.workers[&worker].leases.iter().filter(|(_, h)| h.job == id).map(|(&l, _)| l).collect();
            for lease in leases {
                self.pool.end_lease(worker, lease);
                self.pool.workers.get_mut(&worker).expect("listed").cancelled.insert(lease);
                self.outputs.push_back(Output::Send { to: worker, frame: Frame::new(Message::Cancel { lease }) });
            }
            let w = self.pool.workers.get_mut(&worker).expect("listed");
            w.ahead.retain(|&(j, ..)| j != id);
            if w.jobs.remove(&id) {
                w.cache.drop_job(id);
                self.outputs.push_back(Output::Send { to: worker, frame: Frame::new(Message::JobDone { job: id }) });
            }
        }
        self.assign(now);
        Some(job)
    }

    /// Forgets the workers that have left (see `Pool::forget_departed`).
    pub fn forget_departed(&mut self) {
        self.pool.forget_departed();
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
                Message::Hello { protocol, kind, slots, name, token, memory, flops, .. } => {
                    self.on_hello(worker, Hello { protocol, kind, slots, name, token, memory, flops }, now)
                }
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
                    let held = self.pool.end_lease(worker, lease);
                    if let Some(Entry::Running(job)) = held.and_then(|h| self.jobs.get_mut(&h.job)) {
                        job.drop_lease(lease);
                    }
                }
                self.pool.unpark_all();
                self.assign(now);
                Ok(())
            }
            Message::Welcome { .. } => Err(Violation::Unexpected("Welcome").into()),
            Message::Refused { .. } => Err(Violation::Unexpected("Refused").into()),
            Message::Job { .. } => Err(Violation::Unexpected("Job").into()),
            Message::Panel { .. } => Err(Violation::Unexpected("Panel").into()),
            Message::PanelChunk { .. } => Err(Violation::Unexpected("PanelChunk").into()),
            Message::Evict { .. } => Err(Violation::Unexpected("Evict").into()),
            Message::Task { .. } => Err(Violation::Unexpected("Task").into()),
            Message::Cancel { .. } => Err(Violation::Unexpected("Cancel").into()),
            Message::Accepted { .. } => Err(Violation::Unexpected("Accepted").into()),
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
                self.last_join = now;
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
        let Some(&Held { job: job_id, .. }) = w.leases.get(&lease) else {
            if w.cancelled.contains(&lease) {
                return Ok(()); // another copy already won
            }
            return Err(Violation::UnknownLease(lease).into());
        };
        let Some(Entry::Running(job)) = self.jobs.get_mut(&job_id) else { unreachable!("leases of removed jobs are withdrawn") };
        let finished = job.result_chunk(worker, lease, offset, body, compute, now).map_err(|source| Violation::Payload { lease, source })?;
        let Some(finished) = finished else { return Ok(()) };
        self.pool.answered(worker);
        self.settle(job_id, worker, lease, finished, now)?;
        self.assign(now);
        Ok(())
    }

    /// Acts on what became of a finished lease.
    fn settle(&mut self, job_id: JobId, worker: WorkerId, lease: LeaseId, finished: Finished, now: Duration) -> Result<(), CloseReason> {
        self.pool.end_lease(worker, lease);
        let Some(Entry::Running(job)) = self.jobs.get_mut(&job_id) else { return Ok(()) };
        match finished {
            Finished::Accepted { tile, took, compute, losers, done, block_done, complete } => {
                // A quicker result shortens the threshold: leases may be copyable now.
                if job.new_straggler(now) {
                    self.pool.unpark_all();
                }
                let t = job.plan().tile(tile);
                let block = job.plan().block_of(tile);
                let (done, total) = (done as u64, job.plan().tiles() as u64);
                self.pool.credit(worker, flops(t.rows.len(), t.depth.len(), t.cols.len()), compute, took);
                self.outputs.push_back(Output::Event(Event::TileDone { job: job_id, worker, tile, block, block_done }));
                self.send(worker, Frame::new(Message::Accepted { lease, done, total }));
                for (loser, lease) in losers {
                    if self.pool.end_lease(loser, lease).is_some() {
                        self.pool.workers.get_mut(&loser).expect("a member").cancelled.insert(lease);
                    }
                    self.send(loser, Frame::new(Message::Cancel { lease }));
                }
                if complete {
                    self.job_complete(job_id);
                }
            }
            Finished::Rejected { tile, reason } => {
                self.pool.unpark_all();
                let (strikes, out) = self.pool.strike(worker);
                self.outputs.push_back(Output::Event(Event::Rejected { job: job_id, worker, tile, reason, strikes }));
                if out {
                    return Err(CloseReason::TooManyStrikes(strikes));
                }
            }
            Finished::Held | Finished::Duplicate => {}
        }
        Ok(())
    }

    /// Tells the workers that know the job that it is over.
    fn job_complete(&mut self, job: JobId) {
        self.outputs.push_back(Output::Event(Event::JobComplete { job }));
        for (&id, w) in &mut self.pool.workers {
            w.ahead.retain(|&(j, ..)| j != job);
            if w.jobs.remove(&job) {
                w.cache.drop_job(job);
                self.outputs.push_back(Output::Send { to: id, frame: Frame::new(Message::JobDone { job }) });
            }
        }
    }

    /// The worker is gone: its tiles go back in the queue. The parked workers
    /// are offered work again only if that freed some (the benched, only if
    /// it freed a region or opened a plan to all): in a crowd most who leave
    /// held nothing, and offering to every idle worker on each departure
    /// would cost the master O(pool) per departure.
    fn leave(&mut self, worker: WorkerId, now: Duration) {
        let Some(w) = self.pool.leave(worker) else { return };
        let mut freed = !w.ahead.is_empty() || !w.leases.is_empty();
        for &(job, tile, _) in &w.ahead {
            if let Some(Entry::Running(job)) = self.jobs.get_mut(&job) {
                job.unreserve(tile, true);
            }
        }
        let (mut requeued, mut opened) = (0, false);
        for (lease, held) in w.leases {
            if let Some(Entry::Running(job)) = self.jobs.get_mut(&held.job) {
                requeued += usize::from(job.drop_lease(lease));
            }
        }
        for entry in self.jobs.values_mut() {
            if let Entry::Running(job) = entry {
                freed |= job.forget(worker);
                let plan = job.plan();
                if !job.is_complete() && !plan.spread && !self.pool.workers.keys().any(|&w| self.pool.speed(w, job.assumed_flops()) >= plan.min_speed) {
                    job.open_to_all();
                    opened = true;
                }
            }
        }
        self.outputs.push_back(Output::Event(Event::WorkerLeft { worker, requeued }));
        if opened {
            self.pool.unbench(Bench::UntilPlanChanges);
        } else if freed {
            self.pool.unpark_all();
        }
        self.assign(now);
    }

    /// Closes `worker` for `reason`: its tiles are re-queued now, and the
    /// shell is told to close the connection (banning its address if `ban`).
    fn close(&mut self, worker: WorkerId, reason: CloseReason, ban: bool, now: Duration) {
        let ban = ban || matches!(reason, CloseReason::TooManyStrikes(_));
        self.outputs.push_back(Output::Close { worker, reason, ban });
        self.leave(worker, now);
    }

    /// Time has reached `now`: send heartbeats, close silent workers, expire
    /// overdue leases and give stragglers' tiles to idle workers.
    fn on_timeout(&mut self, now: Duration) {
        self.last_timeout = now;
        let (beats, silent) = self.pool.due(now, self.typical_task_time());
        for worker in beats {
            self.send(worker, Frame::new(Message::Heartbeat));
        }
        for (worker, silent_for) in silent {
            self.close(worker, CloseReason::Silent(silent_for), false, now);
        }
        if self.ask_every_running(|job| job.new_straggler(now)) {
            self.pool.unpark_all();
        }
        for (&id, entry) in &mut self.jobs {
            let Entry::Running(job) = entry else { continue };
            for (worker, tile) in job.expire(now) {
                self.outputs.push_back(Output::Event(Event::LeaseExpired { job: id, worker, tile }));
                self.pool.unpark_all();
            }
        }
        self.assign(now);
    }

    /// The longest typical task time among running jobs.
    fn typical_task_time(&self) -> Option<Duration> {
        self.running().filter_map(|(_, j)| j.task_time()).max()
    }

    // ---- outputs ----

    /// The next thing for the shell to do; [`Output::Wake`] once there is nothing else.
    pub fn poll_output(&mut self) -> Output {
        self.outputs.pop_front().unwrap_or_else(|| Output::Wake(self.next_wake()))
    }

    fn next_wake(&self) -> Option<Duration> {
        let idle = self.pool.someone_has_room();
        let jobs = self.running().filter_map(|(_, j)| j.next_wake(idle, self.last_timeout));
        let planning = self.jobs.values().filter_map(|e| if let Entry::Unplanned(j) = e { self.planning_due(j) } else { None }).min();
        jobs.chain(self.pool.next_wake()).chain(planning).min()
    }

    /// When a waiting job may be planned: once there are workers and no
    /// newcomer for a while, and once its verifier has come, or it has
    /// waited that long for one (it is prepared meanwhile on cores otherwise
    /// idle; past that, the plan's results wait for it instead).
    fn planning_due(&self, job: &Unplanned) -> Option<Duration> {
        let verifier = if job.wants_verifier() { job.queued + self.config.settle } else { Duration::ZERO };
        self.settled_at().map(|settled| settled.max(verifier))
    }

    /// When the pool has had no newcomer for `settle`, if it has workers.
    fn settled_at(&self) -> Option<Duration> {
        (!self.pool.workers.is_empty()).then_some(self.last_join + self.config.settle)
    }

    fn send(&mut self, to: WorkerId, frame: Frame) {
        self.outputs.push_back(Output::Send { to, frame });
    }

    // ---- assignment ----

    /// Plans waiting jobs when it is time, then fills free slots, one task per
    /// worker per round, so work spreads evenly.
    fn assign(&mut self, now: Duration) {
        let settled = self.settled_at().filter(|&settled| now >= settled);
        if settled.is_some() {
            for entry in self.jobs.values_mut() {
                if let Entry::Unplanned(job) = entry {
                    job.give_up_on_a_verifier_that_will_not_serve(&self.pool);
                }
            }
        }
        let due: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Unplanned(j) if self.planning_due(j).is_some_and(|due| now >= due)))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(Entry::Unplanned(job)) = self.jobs.remove(&id) else { unreachable!("listed above") };
            self.jobs.insert(id, Entry::Running(job.plan(&self.pool, settled.expect("a job is due only once the pool settled"), now)));
            self.pool.unbench(Bench::UntilPlanChanges);
            self.outputs.push_back(Output::Event(Event::JobPlanned { job: id }));
        }
        // The last worker woken for a free region: each is woken once per call.
        let mut woken = None;
        loop {
            self.unbench_for_freed_regions(&mut woken);
            let mut gave = false;
            let mut after = None;
            while let Some(place) = self.pool.next_with_room(after) {
                after = Some(place);
                let worker = place.1;
                // The rest stay listed with room, for the next work: offering
                // to every idle worker of a crowd for one tile costs O(pool).
                if !self.running().any(|(_, j)| j.has_work(now)) {
                    return;
                }
                if self.offer(worker, now) {
                    gave = true;
                } else if let Some(until) = self.left_out(worker) {
                    self.pool.bench(worker, until);
                } else {
                    self.pool.park(worker);
                }
            }
            // Offers may have freed a region (tiles set aside, given back).
            if !gave && !self.unbench_for_freed_regions(&mut woken) {
                return;
            }
        }
    }

    /// Offers the free regions to as many workers benched until one frees as
    /// there are free regions, in their order after `woken` (the first to
    /// claim one takes it, and the rest would be benched again: a crowd's fast
    /// newcomers wait there), and to the parked workers if a region has freed
    /// since last asked. Returns whether it offered to anyone again.
    fn unbench_for_freed_regions(&mut self, woken: &mut Option<(bool, WorkerId)>) -> bool {
        let freed = self.ask_every_running(Job::take_region_freed);
        if freed {
            self.pool.unpark_all();
        }
        let free: usize = self.running().map(|(_, job)| job.free_regions()).sum();
        if free == 0 {
            return freed; // the common case: no lookup in the bench
        }
        let last = self.pool.unbench_next(Bench::UntilRegionFrees, *woken, free);
        *woken = last.or(*woken);
        freed || last.is_some()
    }

    /// Whether `ask` holds for any running job, asking each of them (the
    /// question updates what each remembers having said).
    fn ask_every_running(&mut self, mut ask: impl FnMut(&mut Job) -> bool) -> bool {
        let mut any = false;
        for entry in self.jobs.values_mut() {
            if let Entry::Running(job) = entry {
                any |= ask(job);
            }
        }
        any
    }

    /// Whether every running job's plan leaves `worker` out, whatever comes
    /// back to its queue, and until when ([`Job::leaves_out`]).
    fn left_out(&self, worker: WorkerId) -> Option<Bench> {
        let mut until = None;
        for (id, job) in self.running().filter(|(_, j)| !j.is_complete()) {
            let job_until = self.left_out_of(worker, id, job)?;
            until = Some(until.map_or(job_until, |u: Bench| u.min(job_until)));
        }
        until
    }

    fn left_out_of(&self, worker: WorkerId, id: JobId, job: &Job) -> Option<Bench> {
        let w = &self.pool.workers[&worker];
        let holds_panels = w.cache.panels_of(id).next().is_some() || w.ahead.iter().any(|&(j, ..)| j == id);
        job.leaves_out(worker, holds_panels, self.pool.speed(worker, job.assumed_flops()), self.pool.is_proven(worker))
    }

    /// A benched worker that a running job no longer leaves out, if any:
    /// for tests, which expect none between inputs.
    #[cfg(test)]
    pub(crate) fn benched_but_wanted(&self) -> Option<WorkerId> {
        let wanted = |w: WorkerId| self.running().any(|(id, job)| !job.is_complete() && self.left_out_of(w, id, job).is_none());
        self.pool.benched().find(|&w| wanted(w))
    }

    /// Gives `worker` one task, from the running job with the fewest leases
    /// out for its weight (so jobs share the pool in proportion), preferring a
    /// job whose panels it holds; if one fits in its memory. Returns whether
    /// it got one.
    fn offer(&mut self, worker: WorkerId, now: Duration) -> bool {
        let w = &self.pool.workers[&worker];
        let weight = |id: JobId| u64::from(self.weights.get(&id).copied().unwrap_or(1));
        let mut order: Vec<(u64, bool, JobId)> = self
            .running()
            .filter(|(_, j)| !j.is_complete())
            .map(|(id, j)| (j.leases_out() as u64 * 1_000_000 / weight(id), !w.jobs.contains(&id), id))
            .collect();
        order.sort_unstable();
        let order = order.into_iter().map(|(.., id)| id);
        for id in order {
            if self.offer_from(worker, id, now) {
                return true;
            }
        }
        false
    }

    /// Gives `worker` a tile of job `id`: one set aside for it if there is one,
    /// else the queue's next (evicting what it must, and sending the job's
    /// header and the panels it lacks), then the task; then sets tiles aside
    /// ahead.
    fn offer_from(&mut self, worker: WorkerId, id: JobId, now: Duration) -> bool {
        self.steal_ahead(worker, id);
        let Some(Entry::Running(job)) = self.jobs.get_mut(&id) else { return false };
        let (speed, proven) = (self.pool.speed(worker, job.assumed_flops()), self.pool.is_proven(worker));
        let w = self.pool.workers.get_mut(&worker).expect("a member");
        let mut frames = Vec::new();
        let held: Vec<PanelId> = w.cache.panels_of(id).collect();
        let next = job.next_order(worker, &held, speed, proven, now);
        // A tile whose panels it has (or has on the way) comes before one set
        // aside: those were chosen for the panels they bring, and the worker
        // computes whatever is ready first.
        let at_hand = next.is_some_and(|o| !o.speculative && job.panels_of(o.tile).iter().all(|p| held.contains(p)));
        let ahead = if at_hand { None } else { w.ahead.iter().position(|&(j, ..)| j == id) };
        let (order, panels, product) = match ahead {
            Some(at) => {
                // Its panels are there or on the way, pinned since it was set aside.
                let (_, tile, panels) = w.ahead[at];
                let product = job.product_size(tile);
                let Some(evicted) = w.cache.make_room(product) else {
                    // It cannot take even one of them now: others may.
                    release_ahead(w, job, id);
                    return false;
                };
                w.ahead.remove(at);
                job.unreserve(tile, false);
                frames.extend(evictions(evicted));
                (Order { tile, speculative: false }, panels, product)
            }
            None => {
                let Some(order) = next else { return false };
                let product = job.product_size(order.tile);
                let Some(panels) = send_panels(w, job, id, order.tile, product, &mut frames) else { return false };
                (order, panels, product)
            }
        };
        w.cache.reserve(product);
        let lease = self.next_lease;
        self.next_lease += 1;
        frames.push(job.issue(worker, w.task_time, order, lease, now));
        self.pool.add_lease(worker, lease, Held { job: id, panels, product });
        if order.speculative {
            self.outputs.push_back(Output::Event(Event::Speculated { job: id, worker, tile: order.tile }));
        }
        self.outputs.extend(frames.into_iter().map(|frame| Output::Send { to: worker, frame }));
        self.look_ahead(worker, id, speed);
        true
    }

    /// Sets tiles of job `id` aside for `worker` and sends their panels now,
    /// while its memory allows, until it has [`AHEAD`] tiles to go on with:
    /// set aside, or queued with every panel held. So the master's link
    /// carries the panels of its next tiles while it computes this one, and
    /// no sooner than needed: a task queues behind the panels sent before it.
    /// Not near the tail, where a tile set aside for a slow worker would wait
    /// while others idle; and only for a worker with a verified record, or
    /// holding the master's token, so a taker that never answers cannot hoard
    /// tiles this way.
    fn look_ahead(&mut self, worker: WorkerId, id: JobId, speed: f64) {
        if !self.pool.is_proven(worker) && !self.pool.is_trusted(worker) {
            return;
        }
        let pool_size = self.pool.workers.len();
        let Some(Entry::Running(job)) = self.jobs.get_mut(&id) else { return };
        if job.pending() <= AHEAD * pool_size {
            return;
        }
        let w = self.pool.workers.get_mut(&worker).expect("a member");
        loop {
            let wanted = AHEAD.saturating_sub(w.ahead.len());
            if wanted == 0 {
                return;
            }
            let held: Vec<PanelId> = w.cache.panels_of(id).collect();
            if job.ready(&held, wanted) >= wanted {
                return;
            }
            let Some(tile) = job.next_ahead(worker, &held, speed) else { return };
            let mut frames = Vec::new();
            let Some(panels) = send_panels(w, job, id, tile, 0, &mut frames) else { return };
            job.reserve(tile);
            w.ahead.push_back((id, tile, panels));
            self.outputs.extend(frames.into_iter().map(|frame| Output::Send { to: worker, frame }));
        }
    }
}

/// Tiles a worker may have ready to go on with (set aside, or whose panels
/// it holds), beyond those it holds as tasks.
const AHEAD: usize = 2;

impl Scheduler {
    /// At the tail, when the queue of job `id` is empty but other workers have
    /// tiles of it set aside, `thief` takes one back into the queue rather
    /// than idle while they wait their turn.
    fn steal_ahead(&mut self, thief: WorkerId, id: JobId) {
        let Some(Entry::Running(job)) = self.jobs.get_mut(&id) else { return };
        // Nothing set aside anywhere: no need to look through every worker.
        if job.pending() > 0 || job.set_aside() == 0 || self.pool.workers.get(&thief).is_none_or(|w| w.ahead.iter().any(|&(j, ..)| j == id)) {
            return;
        }
        let victim = self.pool.workers.iter_mut().filter(|(&v, _)| v != thief).find_map(|(_, w)| {
            let at = w.ahead.iter().rposition(|&(j, ..)| j == id)?;
            Some((w, at))
        });
        if let Some((w, at)) = victim {
            let (_, tile, panels) = w.ahead.remove(at).expect("found");
            give_back(&mut w.cache, job, id, tile, panels);
        }
    }
}

/// Gives back every tile of job `id` set aside for `w`.
fn release_ahead(w: &mut crate::pool::Worker, job: &mut Job, id: JobId) {
    let crate::pool::Worker { ahead, cache, .. } = w;
    ahead.retain(|&(j, tile, panels)| {
        if j != id {
            return true;
        }
        give_back(cache, job, id, tile, panels);
        false
    });
}

/// A tile set aside goes back in the queue; its panels are unpinned (they
/// stay cached).
fn give_back(cache: &mut crate::pool::Cache, job: &mut Job, id: JobId, tile: usize, panels: [PanelId; 2]) {
    for p in panels {
        cache.unpin(id, p);
    }
    job.unreserve(tile, true);
}

/// Makes room in `w`'s cache for `tile`'s panels and `product` more bytes,
/// queues the frames that evict what must go, announce the job if `w` is new
/// to it, and carry the panels it lacks; pins the tile's panels. Returns them,
/// or `None` (changing nothing) if they cannot fit now.
fn send_panels(w: &mut crate::pool::Worker, job: &mut Job, id: JobId, tile: usize, product: u64, frames: &mut Vec<Frame>) -> Option<[PanelId; 2]> {
    let panels = job.panels_of(tile);
    let missing: Vec<PanelId> = panels.into_iter().filter(|&p| !w.cache.holds(id, p)).collect();
    let need = missing.iter().map(|&p| job.panel_size(p)).sum::<u64>() + product;
    // Pin what it holds, so making room cannot evict it.
    for &p in &panels {
        w.cache.pin(id, p);
    }
    let Some(evicted) = w.cache.make_room(need) else {
        for &p in &panels {
            w.cache.unpin(id, p);
        }
        return None;
    };
    frames.extend(evictions(evicted));
    if w.jobs.insert(id) {
        frames.push(job.announce());
    }
    for &p in &missing {
        w.cache.insert(id, p, job.panel_size(p));
        w.cache.pin(id, p);
        frames.extend(job.panel_frames(p));
    }
    Some(panels)
}

/// The Evict messages for panels a worker must drop, one per job.
fn evictions(evicted: Vec<(JobId, PanelId)>) -> Vec<Frame> {
    let mut by_job: BTreeMap<JobId, Vec<PanelId>> = BTreeMap::new();
    for (job, panel) in evicted {
        by_job.entry(job).or_default().push(panel);
    }
    by_job.into_iter().map(|(job, panels)| Frame::new(Message::Evict { job, panels })).collect()
}
