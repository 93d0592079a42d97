//! The scheduler driven on a virtual clock by simulated workers that run the
//! real worker session and kernel, with no sockets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::job::{Job, LeaseConfig, Unplanned};
use crate::plan::CostModel;
use crate::kernel::tests::naive;
use crate::matrix::{DenseMatrix, Matrix};
use crate::plan::Plan;
use crate::protocol::{Operand, Token, WorkerKind, PROTOCOL_VERSION};
use crate::verify::Verifier;
use crate::worker::{WorkerConfig, WorkerSession};

#[derive(Debug)]
struct SimWorker {
    session: WorkerSession,
    /// Adds 1 to one element of every result it computes.
    liar: bool,
    to_worker: VecDeque<Vec<u8>>,
    to_master: VecDeque<Vec<u8>>,
}

const JOB: JobId = 42;

#[derive(Debug)]
struct Sim {
    sched: Scheduler,
    workers: BTreeMap<WorkerId, SimWorker>,
    now: Duration,
    /// When the scheduler last asked to be woken.
    wake: Option<Duration>,
    next_id: WorkerId,
    expected: Matrix<f64>,
    events: Vec<Event>,
    /// Connections the scheduler closed: (worker, reason, ban).
    closed: Vec<(WorkerId, String, bool)>,
    /// Frames each worker received, by kind, for counting.
    received: BTreeMap<WorkerId, Vec<Message>>,
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn quick_config() -> SchedulerConfig {
    let leases = LeaseConfig { initial: ms(1000), min: ms(1000), ..LeaseConfig::default() };
    SchedulerConfig { leases, max_chunk: 64, ..SchedulerConfig::default() }
}

/// Small integers: every blocked product is exact, so equality is exact.
fn operands(m: usize, k: usize, n: usize) -> (Matrix<f64>, Matrix<f64>) {
    let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0);
    (a, b)
}

impl Sim {
    fn new(m: usize, k: usize, n: usize, width: usize, config: SchedulerConfig) -> Self {
        Self::with_job(Plan::columns(m, k, n, width), config, |job| job)
    }

    /// A sim whose job is first passed through `prepare` (to add a verifier, restore blocks).
    fn with_job(plan: Plan, config: SchedulerConfig, prepare: impl FnOnce(Job) -> Job) -> Self {
        let (a, b) = operands(plan.m, plan.k, plan.n);
        let expected = naive(&a, &b);
        let job = Job::new(JOB, DenseMatrix::from(a), DenseMatrix::from(b), plan, config.leases.clone(), config.max_chunk).unwrap();
        let mut sched = Scheduler::new(config);
        sched.add_job(prepare(job), Duration::ZERO);
        let mut sim = Self {
            sched,
            workers: BTreeMap::new(),
            now: Duration::ZERO,
            wake: None,
            next_id: 1,
            expected,
            events: Vec::new(),
            closed: Vec::new(),
            received: BTreeMap::new(),
        };
        sim.pump();
        sim
    }

    fn join(&mut self, slots: u32) -> WorkerId {
        self.join_with(WorkerConfig { slots, ..WorkerConfig::new(WorkerKind::Native, "w") })
    }

    fn join_with(&mut self, config: WorkerConfig) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        let mut session = WorkerSession::new(WorkerConfig { name: format!("w{id}"), ..config }, self.now);
        let hello = codec::encode_frame(&session.poll_transmit().unwrap());
        self.workers.insert(id, SimWorker { session, liar: false, to_worker: VecDeque::new(), to_master: VecDeque::from([hello]) });
        self.sched.handle_input(Input::Connected { worker: id, addr: None }, self.now);
        self.deliver_to_master(id, 1);
        id
    }

    /// Carries out every output, as the shell would.
    fn pump(&mut self) {
        loop {
            match self.sched.poll_output() {
                Output::Send { to, frame } => {
                    if let Some(w) = self.workers.get_mut(&to) {
                        self.received.entry(to).or_default().push(frame.message.clone());
                        w.to_worker.push_back(codec::encode_frame(&frame));
                    }
                }
                Output::Close { worker, reason, ban } => {
                    self.workers.remove(&worker);
                    self.closed.push((worker, reason.to_string(), ban));
                }
                Output::Event(e) => self.events.push(e),
                Output::Wake(at) => {
                    self.wake = at;
                    if let Some(w) = self.sched.benched_but_wanted() {
                        panic!("worker {w} is benched, though a job would give it work now");
                    }
                    return;
                }
            }
        }
    }

    fn closed_reason(&self, worker: WorkerId) -> Option<&str> {
        self.closed.iter().find(|(w, ..)| *w == worker).map(|(_, reason, _)| reason.as_str())
    }

    fn deliver_to_master(&mut self, id: WorkerId, count: usize) {
        for _ in 0..count {
            let Some(bytes) = self.workers.get_mut(&id).and_then(|w| w.to_master.pop_front()) else { break };
            self.sched.handle_input(Input::Message { worker: id, bytes: &bytes }, self.now);
            self.pump();
            assert_eq!(self.closed_reason(id), None, "honest workers break no rule");
        }
    }

    /// As [`Self::deliver_to_master`], for workers that may break rules.
    fn deliver_to_master_as_is(&mut self, id: WorkerId, count: usize) {
        for _ in 0..count {
            let Some(bytes) = self.workers.get_mut(&id).and_then(|w| w.to_master.pop_front()) else { break };
            self.sched.handle_input(Input::Message { worker: id, bytes: &bytes }, self.now);
            self.pump();
        }
    }

    fn deliver_to_worker(&mut self, id: WorkerId, count: usize) {
        let now = self.now;
        let Some(w) = self.workers.get_mut(&id) else { return };
        for _ in 0..count {
            let Some(bytes) = w.to_worker.pop_front() else { break };
            w.session.handle_message(&bytes, now).expect("the master breaks no rule");
        }
        while let Some(f) = w.session.poll_transmit() {
            w.to_master.push_back(codec::encode_frame(&f));
        }
    }

    /// The worker computes one ready task, if it has one.
    fn compute(&mut self, id: WorkerId) -> bool {
        let Some(w) = self.workers.get_mut(&id) else { return false };
        let Some(task) = w.session.next_task() else { return false };
        let mut c = task.compute();
        if w.liar {
            c.as_bytes_mut()[..8].copy_from_slice(&1e6f64.to_le_bytes());
        }
        w.session.complete(task.lease, c, ms(1));
        while let Some(f) = w.session.poll_transmit() {
            w.to_master.push_back(codec::encode_frame(&f));
        }
        true
    }

    fn leave(&mut self, id: WorkerId) {
        if self.workers.remove(&id).is_some() {
            self.sched.handle_input(Input::Disconnected { worker: id }, self.now);
            self.pump();
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.wake.is_some_and(|t| t <= self.now) {
            self.sched.handle_input(Input::Timeout, self.now);
            self.pump();
        }
        // Workers beat too; one that hears nothing from the master hangs up.
        let mut hung_up = Vec::new();
        for (&id, w) in &mut self.workers {
            if w.session.poll_timeout() <= self.now {
                match w.session.handle_timeout(self.now) {
                    Ok(()) => w.to_master.extend(std::iter::from_fn(|| w.session.poll_transmit()).map(|f| codec::encode_frame(&f))),
                    Err(_) => hung_up.push(id),
                }
            }
        }
        for id in hung_up {
            self.leave(id);
        }
    }

    fn job(&self) -> &Job {
        self.sched.job(JOB).expect("the sim's job")
    }

    fn is_complete(&self) -> bool {
        self.job().is_complete()
    }

    fn tiles_done(&self, worker: WorkerId) -> usize {
        self.sched.pool().info(worker).map_or(0, |i| i.tiles_done)
    }

    /// Every worker serves everything it can, round after round, while time passes.
    fn run_to_completion(&mut self) -> Matrix<f64> {
        for _ in 0..10_000 {
            if self.is_complete() {
                break;
            }
            let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
            for id in ids {
                self.deliver_to_worker(id, usize::MAX);
                while self.compute(id) {}
                self.deliver_to_master(id, usize::MAX);
            }
            self.advance(ms(10));
        }
        let mut job = self.sched.remove_job(JOB, self.now).expect("the sim's job");
        self.pump();
        match job.take_result().expect("the job completes") {
            DenseMatrix::F64(c) => c,
            DenseMatrix::F32(_) => unreachable!(),
        }
    }

    fn count(&self, id: WorkerId, pred: impl Fn(&Message) -> bool) -> usize {
        self.received.get(&id).map_or(0, |v| v.iter().filter(|m| pred(m)).count())
    }
}

#[test]
fn one_worker_computes_everything_and_gets_a_once() {
    let mut sim = Sim::new(5, 6, 17, 3, quick_config());
    let w = sim.join(2);
    let c = sim.run_to_completion();
    assert_eq!(c, sim.expected);
    // A is 5*6*8 = 240 bytes: one panel in four 64-byte chunks, sent once; and
    // six panels of B of 6*3*8 = 144 bytes (the last 6*2*8), each in chunks.
    assert_eq!(sim.count(w, |m| matches!(m, Message::Job { .. })), 1);
    assert_eq!(sim.count(w, |m| matches!(m, Message::Panel { operand: Operand::A, .. })), 1);
    assert_eq!(sim.count(w, |m| matches!(m, Message::Panel { operand: Operand::B, .. })), 6);
    assert_eq!(sim.count(w, |m| matches!(m, Message::PanelChunk { .. })), 3 + 5 * 2 + 1);
    assert_eq!(sim.count(w, |m| matches!(m, Message::Task { .. })), 6);
    assert_eq!(sim.count(w, |m| matches!(m, Message::Accepted { .. })), 6);
    assert_eq!(sim.count(w, |m| matches!(m, Message::JobDone { .. })), 1);
    assert!(sim.events.contains(&Event::JobComplete { job: JOB }));
    assert_eq!(sim.tiles_done(w), 6);
}

/// Delivers, computes one task and returns its result, `rounds` times.
fn serve(sim: &mut Sim, w: WorkerId, rounds: usize) {
    for _ in 0..rounds {
        sim.deliver_to_worker(w, usize::MAX);
        sim.compute(w);
        sim.deliver_to_master(w, usize::MAX);
    }
    sim.deliver_to_worker(w, usize::MAX);
}

#[test]
fn credit_starts_at_one_task_and_grows_with_verified_results_to_the_slots() {
    let mut sim = Sim::new(4, 4, 40, 2, quick_config());
    let w = sim.join(2);
    sim.deliver_to_worker(w, usize::MAX);
    assert_eq!(sim.workers[&w].session.in_flight(), 1, "a stranger holds one task");
    assert_eq!(sim.wake, Some(ms(1000)), "the lease's deadline");
    serve(&mut sim, w, 1);
    assert_eq!(sim.workers[&w].session.in_flight(), 2, "one result, one more task of credit");
    serve(&mut sim, w, 5);
    assert_eq!(sim.workers[&w].session.in_flight(), 2, "never more than it asked for");
}

#[test]
fn a_worker_holding_the_masters_token_starts_with_its_slots_and_panels_ahead() {
    let access = Access { token: Some(Token::new("open sesame")), ..Access::default() };
    let mut sim = Sim::new(4, 4, 40, 2, SchedulerConfig { access, ..quick_config() });
    let own = sim.join_with(WorkerConfig { slots: 3, token: Token::new("open sesame"), ..WorkerConfig::new(WorkerKind::Native, "w") });
    let tab = sim.join_with(WorkerConfig { slots: 3, ..WorkerConfig::new(WorkerKind::Browser, "w") });
    sim.deliver_to_worker(own, usize::MAX);
    sim.deliver_to_worker(tab, usize::MAX);
    assert_eq!(sim.workers[&own].session.in_flight(), 3, "the operator's own worker holds its slots at once");
    assert_eq!(sim.workers[&tab].session.in_flight(), 1, "a tab, which holds no token, holds one");
    // A and its 3 tasks' B panels, and 2 more tiles' B panels sent ahead; the tab gets its one task's.
    let panels = |sim: &Sim, w| sim.count(w, |m| matches!(m, Message::Panel { .. }));
    assert_eq!((panels(&sim, own), panels(&sim, tab)), (6, 2));
}

#[test]
fn the_masters_own_workers_are_trusted_whether_or_not_it_has_a_token() {
    for token in [None, Some(Token::new("open sesame"))] {
        let access = Access { token, own: Some(Token::new("in-process")), ..Access::default() };
        let mut sim = Sim::new(4, 4, 40, 2, SchedulerConfig { access, ..quick_config() });
        let local = sim.join_with(WorkerConfig { slots: 3, token: Token::new("in-process"), ..WorkerConfig::new(WorkerKind::Native, "local-1") });
        let tab = sim.join_with(WorkerConfig { slots: 3, ..WorkerConfig::new(WorkerKind::Browser, "w") });
        sim.deliver_to_worker(local, usize::MAX);
        sim.deliver_to_worker(tab, usize::MAX);
        assert_eq!(sim.workers[&local].session.in_flight(), 3, "the master's own worker holds its slots at once");
        assert_eq!(sim.workers[&tab].session.in_flight(), 1, "a tab holds one");
        let trusted = |w| sim.sched.pool().info(w).map(|i| i.trusted);
        assert_eq!((trusted(local), trusted(tab)), (Some(true), Some(false)));
    }
}

#[test]
fn a_worker_gets_no_more_credit_than_the_master_grants() {
    let mut sim = Sim::new(4, 4, 40, 2, SchedulerConfig { max_slots: 3, ..quick_config() });
    let greedy = sim.join(1000);
    sim.deliver_to_worker(greedy, usize::MAX);
    assert_eq!(sim.count(greedy, |m| matches!(m, Message::Welcome { slots: 3, .. })), 1, "told its most");
    serve(&mut sim, greedy, 6);
    assert_eq!(sim.workers[&greedy].session.in_flight(), 3);
}

#[test]
fn fast_workers_take_more() {
    let mut sim = Sim::new(4, 4, 60, 2, quick_config());
    let fast = sim.join(1);
    let slow = sim.join(1);
    for _ in 0..200 {
        if sim.is_complete() {
            break;
        }
        for _ in 0..3 {
            sim.deliver_to_worker(fast, usize::MAX);
            sim.compute(fast);
            sim.deliver_to_master(fast, usize::MAX);
        }
        sim.deliver_to_worker(slow, usize::MAX);
        sim.compute(slow);
        sim.deliver_to_master(slow, usize::MAX);
        sim.advance(ms(1));
    }
    let (fast_done, slow_done) = (sim.tiles_done(fast), sim.tiles_done(slow));
    assert!(fast_done >= 2 * slow_done, "{fast_done} vs {slow_done}");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn squatters_that_take_tasks_and_never_answer_cost_the_honest_worker_little() {
    let mut sim = Sim::new(4, 4, 96, 1, quick_config());
    let squatters: Vec<WorkerId> = (0..64).map(|_| sim.join(4)).collect();
    for &s in &squatters {
        sim.deliver_to_worker(s, usize::MAX); // they take their task, and only ever beat
    }
    let honest = sim.join(2);
    for _ in 0..2000 {
        if sim.is_complete() {
            break;
        }
        sim.deliver_to_worker(honest, usize::MAX);
        while sim.compute(honest) {}
        sim.deliver_to_master(honest, usize::MAX);
        for &s in &squatters {
            sim.deliver_to_master(s, usize::MAX); // heartbeats only
        }
        sim.advance(ms(10));
    }
    assert!(sim.is_complete(), "{} of 96 tiles after {:?}", sim.job().tiles_done(), sim.now);
    assert!(sim.now < ms(5000), "{:?}", sim.now);
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn when_the_workers_a_plan_chose_have_left_the_ones_it_left_waiting_take_over() {
    // Planned for one fast worker (as with a known link): slower ones wait.
    let plan = Plan { spread: false, min_speed: 1e11, ..Plan::columns(4, 4, 40, 2) };
    let mut sim = Sim::with_job(plan, quick_config(), |job| job);
    let fast = sim.join_with(WorkerConfig { flops: 1_000_000_000_000, ..WorkerConfig::new(WorkerKind::Native, "fast") });
    let slow = sim.join_with(WorkerConfig { flops: 1_000_000_000, ..WorkerConfig::new(WorkerKind::Native, "slow") });
    serve(&mut sim, fast, 3);
    serve(&mut sim, slow, 3);
    assert_eq!(sim.tiles_done(slow), 0, "the slow worker waits while the fast one works");
    sim.leave(fast);
    assert_eq!(sim.run_to_completion(), sim.expected);
    assert!(sim.tiles_done(slow) > 0);
}

#[test]
fn a_fast_worker_left_waiting_takes_the_region_its_owner_leaves_while_a_slow_one_still_waits() {
    // One region, for one fast worker: a second fast one waits for a region
    // to free, a slow one for the plan to open to all.
    let plan = Plan { spread: false, min_speed: 1e11, ..Plan::columns(4, 4, 40, 2) };
    let mut sim = Sim::with_job(plan, quick_config(), |job| job);
    let fast = |name| WorkerConfig { flops: 1_000_000_000_000, ..WorkerConfig::new(WorkerKind::Native, name) };
    let owner = sim.join_with(fast("owner"));
    let spare = sim.join_with(fast("spare"));
    let slow = sim.join_with(WorkerConfig { flops: 1_000_000_000, ..WorkerConfig::new(WorkerKind::Native, "slow") });
    serve(&mut sim, owner, 3);
    serve(&mut sim, spare, 3);
    serve(&mut sim, slow, 3);
    assert_eq!((sim.tiles_done(spare), sim.tiles_done(slow)), (0, 0), "both wait while the owner works");
    assert_eq!(sim.sched.pool.benched_until(spare), Some(Bench::UntilRegionFrees));
    assert_eq!(sim.sched.pool.benched_until(slow), Some(Bench::UntilPlanChanges));
    sim.leave(owner);
    serve(&mut sim, spare, 3);
    serve(&mut sim, slow, 3);
    assert!(sim.tiles_done(spare) > 0, "the spare took the region its owner left");
    assert_eq!(sim.tiles_done(slow), 0, "a fast worker is left: the slow one still waits");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn a_region_owner_that_sent_a_wrong_result_gives_its_region_to_a_worker_left_waiting() {
    // One region, for one fast worker; it lies once (not enough strikes to be
    // cut off) and may not redo that tile: the one left waiting must take it.
    let plan = Plan { spread: false, min_speed: 1e11, ..Plan::columns(6, 5, 24, 2) };
    let verifier = verifier_for(&plan, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
    let fast = |name| WorkerConfig { flops: 1_000_000_000_000, ..WorkerConfig::new(WorkerKind::Native, name) };
    let owner = sim.join_with(fast("owner"));
    let spare = sim.join_with(fast("spare"));
    sim.workers.get_mut(&owner).unwrap().liar = true;
    sim.deliver_to_worker(owner, usize::MAX);
    sim.compute(owner);
    sim.workers.get_mut(&owner).unwrap().liar = false;
    sim.deliver_to_master(owner, usize::MAX);
    assert!(sim.events.iter().any(|e| matches!(e, Event::Rejected { worker, .. } if *worker == owner)));
    assert_eq!(sim.run_to_completion(), sim.expected);
    assert!(sim.tiles_done(spare) > 0);
}

#[test]
fn a_vanished_workers_blocks_are_requeued() {
    let mut sim = Sim::new(6, 5, 20, 4, quick_config());
    let doomed = sim.join(2);
    sim.deliver_to_worker(doomed, usize::MAX);
    sim.leave(doomed);
    assert!(sim.events.contains(&Event::WorkerLeft { worker: doomed, requeued: 1 }));
    let heir = sim.join(2);
    let c = sim.run_to_completion();
    assert_eq!(c, sim.expected);
    assert_eq!(sim.tiles_done(heir), 5);
}

#[test]
fn an_expired_lease_is_reissued_and_the_late_result_is_harmless() {
    let mut sim = Sim::new(3, 3, 6, 3, quick_config());
    let silent = sim.join(1);
    sim.deliver_to_worker(silent, usize::MAX);
    sim.compute(silent); // computed, but its result is held back
    sim.advance(ms(1001));
    assert!(sim.events.iter().any(|e| matches!(e, Event::LeaseExpired { worker, .. } if *worker == silent)));
    let helper = sim.join(2);
    // The helper finishes everything, including the expired block.
    for _ in 0..10 {
        sim.deliver_to_worker(helper, usize::MAX);
        while sim.compute(helper) {}
        sim.deliver_to_master(helper, usize::MAX);
    }
    // Now the silent worker's late result arrives: ignored, no violation.
    sim.deliver_to_master(silent, usize::MAX);
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn a_straggler_is_duplicated_at_the_tail_and_the_first_result_wins() {
    let mut config = quick_config();
    config.leases.initial = ms(60_000);
    let mut sim = Sim::new(4, 4, 8, 2, config);
    let fast = sim.join(1);
    let slow = sim.join(1);
    sim.deliver_to_worker(slow, usize::MAX); // the slow worker holds one block and never answers
    for _ in 0..10 {
        sim.deliver_to_worker(fast, usize::MAX);
        sim.compute(fast);
        sim.deliver_to_master(fast, usize::MAX);
        sim.advance(ms(10));
    }
    assert!(sim.events.iter().any(|e| matches!(e, Event::Speculated { worker, .. } if *worker == fast)));
    assert!(sim.is_complete(), "the fast worker finished the straggler's block");
    assert_eq!(sim.count(slow, |m| matches!(m, Message::Cancel { .. })), 1, "the losing copy is cancelled");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn a_straggler_offered_then_made_to_wait_by_a_slower_result_is_offered_again_when_its_moment_comes() {
    let mut config = quick_config();
    config.leases = LeaseConfig { initial: ms(60_000), min: ms(60_000), straggler_factor: 2.0, ..config.leases };
    let mut sim = Sim::new(4, 4, 8, 2, config); // four tiles
    let copier = sim.join(2);
    sim.advance(ms(2));
    serve(&mut sim, copier, 1); // took 2 ms: the threshold is 4 ms; it now holds two tiles
    sim.advance(ms(8));
    let silent = sim.join(1); // its tile, issued at 10 ms, is never computed
    let stranger = sim.join(1); // idle, but may not copy without a verified record
    sim.advance(ms(4));
    // At 14 ms every lease out is copyable, and was offered: to no one who may take it.
    sim.advance(ms(2));
    sim.compute(copier);
    sim.deliver_to_master(copier, usize::MAX);
    // That took 14 ms: the threshold is now 8.8 ms, and the silent worker's
    // lease (6 ms old) waits again. The copier, idle beside its other lease,
    // which is copyable but its own, is offered nothing.
    assert!(!sim.events.iter().any(|e| matches!(e, Event::Speculated { .. })));
    sim.advance(ms(3));
    let tile = sim.sched.job(JOB).unwrap().plan().tiles() - 1;
    assert!(sim.events.contains(&Event::Speculated { job: JOB, worker: copier, tile }), "at 9 ms old it is copied, long before it expires");
    assert_eq!(sim.tiles_done(stranger), 0);
    assert_eq!(sim.tiles_done(silent), 0);
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn wrong_results_are_caught_reissued_elsewhere_and_their_sender_is_cut_off() {
    let (m, k, n, width) = (6, 5, 24, 2);
    let (a, b) = operands(m, k, n);
    let weights = (0..n).map(|j| [3.0, -1.0, 2.0, -5.0][j % 4]).collect();
    let plan = Plan::columns(m, k, n, width);
    let verifier = Verifier::new(DenseMatrix::from(a), DenseMatrix::from(b), &Job::restorable_tiles(&plan), weights, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
    let liar = sim.join(2);
    sim.workers.get_mut(&liar).unwrap().liar = true;
    let honest = sim.join(2);
    for _ in 0..100 {
        if sim.is_complete() {
            break;
        }
        for id in [liar, honest] {
            sim.deliver_to_worker(id, usize::MAX);
            while sim.compute(id) {}
            if id == liar {
                // The liar's results go in directly: delivering checks that no rule is broken.
                while let Some(bytes) = sim.workers.get_mut(&liar).and_then(|w| w.to_master.pop_front()) {
                    sim.sched.handle_input(Input::Message { worker: liar, bytes: &bytes }, sim.now);
                    sim.pump();
                }
            } else {
                sim.deliver_to_master(id, usize::MAX);
            }
        }
        sim.advance(ms(10));
    }
    assert_eq!(sim.closed, vec![(liar, "sent 3 wrong results".to_owned(), true)], "closed and banned");
    let rejected = sim.events.iter().filter(|e| matches!(e, Event::Rejected { worker, .. } if *worker == liar)).count();
    assert_eq!(rejected, 3);
    assert_eq!(sim.run_to_completion(), sim.expected, "only verified blocks were assembled");
    assert_eq!(sim.tiles_done(liar), 0);
}

#[test]
fn a_silent_worker_is_dropped_and_its_blocks_reissued() {
    let mut patient = quick_config();
    patient.leases = LeaseConfig { initial: ms(600_000), min: ms(600_000), ..LeaseConfig::default() };
    let mut sim = Sim::new(4, 4, 12, 2, patient);
    let frozen = sim.join(2);
    let alive = sim.join(1);
    sim.deliver_to_worker(frozen, usize::MAX); // it takes two tasks, then is never heard again
    sim.deliver_to_worker(alive, usize::MAX);
    for _ in 0..30 {
        sim.advance(ms(1000));
        sim.deliver_to_worker(alive, usize::MAX);
        sim.deliver_to_master(alive, usize::MAX); // heartbeats only: it computes nothing yet
    }
    assert_eq!(sim.closed, vec![(frozen, "silent for 16 s".to_owned(), false)], "closed at the first check past 15 s, and only the frozen one");
    assert!(sim.events.contains(&Event::WorkerLeft { worker: frozen, requeued: 1 }));
    assert!(sim.count(alive, |m| matches!(m, Message::Heartbeat)) >= 5, "the master beats too");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn leases_and_patience_follow_each_workers_measured_speed() {
    let mut sim = Sim::new(4, 4, 40, 2, quick_config());
    let slow = sim.join(1);
    // One task takes the slow worker 12 s (its heartbeats keep arriving meanwhile).
    sim.deliver_to_worker(slow, usize::MAX);
    for _ in 0..12 {
        sim.advance(ms(1000));
        sim.deliver_to_master(slow, usize::MAX);
    }
    sim.compute(slow);
    sim.deliver_to_master(slow, usize::MAX);
    assert_eq!(sim.job().lease_span(slow), Some(ms(96_000)), "8 times its own task time");
    let pool = sim.sched.pool();
    assert_eq!(pool.silence_limit(&pool.workers[&slow], None), ms(24_000), "twice its task time, above the 15 s heartbeat timeout");
}

#[test]
fn restored_blocks_are_verified_and_never_recomputed() {
    let (m, k, n, width) = (6, 5, 12, 2);
    let (a, b) = operands(m, k, n);
    let c = DenseMatrix::from(naive(&a, &b));
    let weights = (0..n).map(|j| [2.0, -3.0][j % 2]).collect();
    let plan = Plan::columns(m, k, n, width);
    let verifier = Verifier::new(DenseMatrix::from(a), DenseMatrix::from(b), &Job::restorable_tiles(&plan), weights, true);
    let block = |j: usize| c.as_bytes()[j * 2 * m * 8..(j + 1) * 2 * m * 8].to_vec();
    let (good, mut bad) = (block(1), block(4));
    bad[3] ^= 0x40;
    let mut sim = Sim::with_job(plan, quick_config(), |job| {
        let mut job = job.with_verifier(verifier);
        job.restore(1, &good).unwrap();
        assert_eq!(job.block_bytes(1).as_deref(), Some(&good[..]));
        assert!(matches!(job.restore(4, &bad), Err(RestoreError::Mismatch { block: 4, .. })));
        assert!(matches!(job.restore(2, &good[8..]), Err(RestoreError::Length { block: 2, .. })));
        assert!(matches!(job.restore(6, &good), Err(RestoreError::NoSuchBlock { .. })));
        job
    });
    let w = sim.join(2);
    assert_eq!(sim.run_to_completion(), sim.expected);
    assert_eq!(sim.count(w, |msg| matches!(msg, Message::Task { .. })), 5, "every block but the restored one");
}

#[test]
fn whole_blocks_of_a_depth_split_plan_are_restored_only_by_a_verifier_built_for_it() {
    let (m, k, n) = (6, 8, 4);
    let (a, b) = operands(m, k, n);
    let c = DenseMatrix::from(naive(&a, &b));
    let weights: Vec<f64> = (0..n).map(|j| [2.0, -3.0][j % 2]).collect();
    let plan = Plan::grid(m, k, n, 1, 2, 2);
    let block = c.as_bytes()[2 * m * 8..4 * m * 8].to_vec();
    let (a, b) = (Arc::new(DenseMatrix::from(a)), Arc::new(DenseMatrix::from(b)));
    let job = |tiles: Vec<crate::plan::Tile>| {
        let verifier = Verifier::new(Arc::clone(&a), Arc::clone(&b), &tiles, weights.clone(), true);
        Job::new(1, Arc::clone(&a), Arc::clone(&b), plan.clone(), LeaseConfig::default(), usize::MAX).unwrap().with_verifier(verifier)
    };
    assert_eq!(Job::restorable_tiles(&plan).len(), plan.tiles() + plan.blocks());
    let mut restorable = job(Job::restorable_tiles(&plan));
    restorable.restore(1, &block).unwrap();
    assert_eq!(restorable.block_bytes(1).as_deref(), Some(&block[..]));
    let mut wrong = block.clone();
    wrong[3] ^= 0x40;
    assert!(matches!(restorable.restore(0, &wrong), Err(RestoreError::Mismatch { block: 0, .. })));
    // One built for the workers' tiles alone says so instead of checking the wrong thing.
    let mut workers_only = job(Job::verified_tiles(&plan));
    let Err(RestoreError::Mismatch { reason, .. }) = workers_only.restore(1, &block) else {
        panic!("restored without a check")
    };
    assert!(reason.contains("whole blocks"), "{reason}");
}

fn hello(kind: WorkerKind, token: &str) -> Vec<u8> {
    let hello = Message::Hello { protocol: PROTOCOL_VERSION, kind, threads: 1, slots: 1, name: "w".into(), token: Token::new(token), memory: 1 << 20, flops: 0 };
    codec::encode(&hello, &[])
}

#[test]
fn a_refused_worker_is_told_why_and_closed() {
    let access = Access { token: Some(Token::new("open sesame")), browsers: false, own: None };
    let mut sim = Sim::new(2, 2, 2, 1, SchedulerConfig { access, ..quick_config() });
    for (id, kind, token) in [(1, WorkerKind::Native, ""), (2, WorkerKind::Browser, ""), (3, WorkerKind::Native, "open sesame")] {
        sim.sched.handle_input(Input::Connected { worker: id, addr: None }, sim.now);
        sim.sched.handle_input(Input::Message { worker: id, bytes: &hello(kind, token) }, sim.now);
    }
    let mut refused = Vec::new();
    loop {
        match sim.sched.poll_output() {
            Output::Send { to, frame: Frame { message: Message::Refused { reason }, .. } } => refused.push((to, reason)),
            Output::Close { worker, reason, ban } => {
                assert!(!ban && refused.last().is_some_and(|(to, _)| *to == worker), "told why before the close");
                assert!(reason.to_string().starts_with("refused: "), "{reason}");
            }
            Output::Wake(_) => break,
            _ => {}
        }
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].1.contains("requires a token") && refused[1].1.contains("browser"), "{refused:?}");
    assert!(sim.sched.pool().is_member(3));
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let (message, _) = codec::decode(&hello(WorkerKind::Native, "open sesame")).unwrap();
    let config = SchedulerConfig { access: Access { token: Some(Token::new("open sesame")), ..Access::default() }, ..quick_config() };
    for text in [format!("{message:?}"), format!("{config:?}")] {
        assert!(!text.contains("open sesame") && text.contains("<redacted>"), "{text}");
    }
}

#[test]
fn protocol_violations_close_the_connection() {
    let mut sim = Sim::new(2, 2, 2, 1, quick_config());
    let close = |sim: &mut Sim, id: WorkerId, bytes: Vec<u8>| {
        if !sim.sched.pool().is_member(id) {
            sim.sched.handle_input(Input::Connected { worker: id, addr: None }, sim.now);
        }
        sim.sched.handle_input(Input::Message { worker: id, bytes: &bytes }, sim.now);
        sim.pump();
        sim.closed_reason(id).map(str::to_owned)
    };
    let junk = codec::encode(&Message::ResultChunk { lease: 999, offset: 0, compute_us: 0 }, &[1]);
    assert_eq!(close(&mut sim, 99, junk.clone()).as_deref(), Some("the first message was not Hello"));
    let w = sim.join(1);
    assert_eq!(close(&mut sim, w, junk).as_deref(), Some("sent a result for lease 999, which it does not hold"));
    let w = sim.join(1);
    let done = codec::encode(&Message::JobDone { job: 1 }, &[]);
    assert_eq!(close(&mut sim, w, done).as_deref(), Some("sent JobDone, which only a master sends"));
    let old = codec::encode(&Message::Hello { protocol: 0, kind: WorkerKind::Native, threads: 1, slots: 1, name: String::new(), token: Token::default(), memory: 0, flops: 0 }, &[]);
    assert!(close(&mut sim, 77, old).unwrap().contains("protocol"));
    // The lease is real but the chunk is out of order.
    let w = sim.join(1);
    let lease = sim.received[&w].iter().find_map(|m| if let Message::Task { lease, .. } = m { Some(*lease) } else { None }).unwrap();
    let skip = codec::encode(&Message::ResultChunk { lease, offset: 8, compute_us: 0 }, &[0; 8]);
    assert!(close(&mut sim, w, skip).unwrap().contains("out of order"));
    // Whatever a closed connection still had in flight is ignored.
    sim.sched.handle_input(Input::Message { worker: w, bytes: &hello(WorkerKind::Native, "") }, sim.now);
    sim.pump();
    assert!(!sim.sched.pool().is_member(w));
}

#[test]
fn mismatched_inputs_are_refused() {
    let a = Matrix::<f64>::zeros(3, 4).unwrap();
    let b = Matrix::<f64>::zeros(5, 2).unwrap();
    let err = Job::new(1, DenseMatrix::from(a), DenseMatrix::from(b), Plan::columns(3, 4, 2, 1), LeaseConfig::default(), 64).unwrap_err();
    assert_eq!(err.to_string(), "A is 3x4 but B is 5x2: A's columns must equal B's rows");
}

fn verifier_for(plan: &Plan, integer_weights: bool) -> Verifier {
    let (a, b) = operands(plan.m, plan.k, plan.n);
    let weights = (0..plan.n).map(|j| if integer_weights { [3.0, -1.0, 2.0, -5.0][j % 4] } else { 1.0 + (j % 7) as f64 / 7.0 }).collect();
    Verifier::new(DenseMatrix::from(a), DenseMatrix::from(b), &Job::verified_tiles(plan), weights, true)
}

#[test]
fn split_k_tiles_sum_to_the_product_and_each_input_byte_goes_out_once() {
    let (m, k, n) = (6, 8, 10);
    let plan = Plan::grid(m, k, n, 2, 2, 2).laid_out((1, 1, 2));
    let verifier = verifier_for(&plan, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
    let (w1, w2) = (sim.join(1), sim.join(1));
    assert_eq!(sim.run_to_completion(), sim.expected);
    assert_eq!((sim.tiles_done(w1), sim.tiles_done(w2)), (4, 4));
    // Each worker got one depth slice: half of A and half of B, and nothing twice.
    let sent: usize = [w1, w2].iter().map(|&w| sim.count(w, |m| matches!(m, Message::Panel { .. }))).sum();
    assert_eq!(sent, 8, "4 panels of A and 4 of B, each once");
}

#[test]
fn a_worker_with_little_memory_gets_panels_in_turn_and_finishes() {
    // Panels of A are 4x8 (256 bytes), of B 8x2 (128), products 4x2 (64):
    // 600 bytes hold one tile's panels, one more panel and a product, not all 12 panels.
    let plan = Plan::grid(8, 8, 10, 2, 5, 1);
    let verifier = verifier_for(&plan, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
    let w = sim.join_with(WorkerConfig { slots: 1, memory: 600, ..WorkerConfig::new(WorkerKind::Browser, "tab") });
    assert_eq!(sim.run_to_completion(), sim.expected, "the worker's session checks every panel fits");
    assert!(sim.count(w, |m| matches!(m, Message::Evict { .. })) > 0);
    assert!(sim.sched.pool().info(w).unwrap().memory == 600);
}

#[test]
fn panels_go_ahead_only_while_the_worker_lacks_tiles_it_could_compute_next() {
    // A 4x4 grid of tiles, each needing one panel of A and one of B.
    let plan = Plan::grid(8, 8, 8, 4, 4, 1);
    let verifier = verifier_for(&plan, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
    let w = sim.join(1);
    let panels = |sim: &Sim| sim.count(w, |m| matches!(m, Message::Panel { .. }));
    assert_eq!((panels(&sim), sim.job().set_aside()), (2, 0), "a stranger gets its first tile's panels, nothing ahead");
    serve(&mut sim, w, 1);
    // Proven, it gets a tile needing one new panel, and a tile is set aside
    // with another. Its 2x2 panels then make a tile ready: with the one set
    // aside, enough to compute while the next panel would travel.
    assert_eq!((panels(&sim), sim.job().set_aside()), (4, 1));
    serve(&mut sim, w, 1);
    assert_eq!((panels(&sim), sim.job().set_aside()), (5, 2), "the ready tile was issued: none is ready now, so a panel more goes ahead");
    assert_eq!(sim.run_to_completion(), sim.expected);
    assert_eq!(panels(&sim), 8, "each panel once");
}

#[test]
fn a_worker_too_small_for_any_tile_is_given_none() {
    let plan = Plan::columns(8, 8, 4, 4);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job);
    let tiny = sim.join_with(WorkerConfig { memory: 100, ..WorkerConfig::new(WorkerKind::Browser, "tiny") });
    sim.advance(ms(10));
    assert_eq!(sim.count(tiny, |m| matches!(m, Message::Task { .. })), 0);
    sim.join(2);
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn jobs_are_planned_for_the_pool_once_it_settles() {
    let mut config = quick_config();
    config.settle = ms(50);
    let mut sim = Sim::new(1, 1, 1, 1, config.clone());
    sim.join(2);
    sim.run_to_completion();
    let unplanned = |id| {
        let (a, b) = operands(16, 16, 16);
        let model = CostModel { min_task_seconds: 0.0, ..CostModel::default() };
        Unplanned::new(id, DenseMatrix::from(a), DenseMatrix::from(b), model, config.leases.clone(), 64).unwrap()
    };
    let workers = |sim: &Sim, id| {
        let (wr, wc, wk) = sim.sched.job(id).unwrap().plan().layout;
        wr * wc * wk
    };
    sim.advance(ms(100));
    sim.sched.add_unplanned(unplanned(7), sim.now);
    sim.pump();
    assert!(sim.events.contains(&Event::JobPlanned { job: 7 }), "the pool is settled: planned at once");
    assert_eq!(workers(&sim, 7), 1);
    sim.join(2);
    sim.sched.add_unplanned(unplanned(8), sim.now);
    sim.pump();
    sim.advance(ms(40));
    assert!(!sim.events.contains(&Event::JobPlanned { job: 8 }), "a worker joined 40 ms ago");
    sim.advance(ms(20));
    assert!(sim.events.contains(&Event::JobPlanned { job: 8 }));
    assert_eq!(workers(&sim, 8), 2, "laid out for both workers");
}

/// A verifier for A·B (the sim's operands) prepared for `tiles`, integer weights.
fn verifier_for_tiles(m: usize, k: usize, n: usize, tiles: &[crate::plan::Tile]) -> Verifier {
    let (a, b) = operands(m, k, n);
    let weights = (0..n).map(|j| [3.0, -1.0, 2.0, -5.0][j % 4]).collect();
    Verifier::new(DenseMatrix::from(a), DenseMatrix::from(b), tiles, weights, true)
}

/// A pool of two settled 100 ms ago (its settling pause 50 ms), and a way to
/// make unplanned m × k by k × n jobs for it.
fn settled_pool(m: usize, k: usize, n: usize) -> (Sim, impl Fn(JobId) -> Unplanned) {
    let mut config = quick_config();
    config.settle = ms(50);
    let mut sim = Sim::new(1, 1, 1, 1, config.clone());
    sim.join(2);
    sim.run_to_completion();
    sim.advance(ms(100));
    let unplanned = move |id| {
        let (a, b) = operands(m, k, n);
        let model = CostModel { min_task_seconds: 0.0, ..CostModel::default() };
        Unplanned::new(id, DenseMatrix::from(a), DenseMatrix::from(b), model, config.leases.clone(), 64).unwrap()
    };
    (sim, unplanned)
}

#[test]
fn a_settled_pool_waits_a_while_for_a_verifier_on_its_way_and_no_longer() {
    let (m, k, n) = (16, 256, 512);
    let (mut sim, job) = settled_pool(m, k, n);
    let whole_depth = crate::verify::whole_depth_tiles(m, k, n);
    let unplanned = |id, coming: Vec<crate::plan::Tile>| job(id).verifier_coming(coming);
    // It comes 20 ms after the job: the job is planned then, and checked by it.
    sim.sched.add_unplanned(unplanned(7, whole_depth.clone()), sim.now);
    sim.pump();
    sim.advance(ms(20));
    assert!(!sim.events.contains(&Event::JobPlanned { job: 7 }), "the pool is settled, but the verifier is on its way");
    assert!(sim.sched.set_verifier(7, verifier_for_tiles(m, k, n, &whole_depth), sim.now));
    sim.pump();
    assert!(sim.events.contains(&Event::JobPlanned { job: 7 }), "planned once it came");
    let job = sim.sched.job(7).unwrap();
    assert_eq!(job.plan_waited_for_verifier(), ms(20));
    assert!(!job.awaits_verifier(), "its groups serve the plan ({:?})", job.plan().shape());
    // One whose groups cover half of k would not serve: not waited for.
    sim.sched.add_unplanned(unplanned(9, vec![crate::plan::Tile { rows: 0..m, cols: 0..n, depth: 0..k / 2 }]), sim.now);
    sim.pump();
    assert!(sim.events.contains(&Event::JobPlanned { job: 9 }), "planned at once");
    assert!(sim.sched.job(9).unwrap().awaits_verifier());
    // None comes: planned after the settling pause all the same, its results to wait for one.
    sim.sched.add_unplanned(unplanned(8, whole_depth.clone()), sim.now);
    sim.pump();
    sim.advance(ms(40));
    assert!(!sim.events.contains(&Event::JobPlanned { job: 8 }));
    sim.advance(ms(10));
    assert!(sim.events.contains(&Event::JobPlanned { job: 8 }), "no longer than the pause");
    assert!(sim.sched.job(8).unwrap().awaits_verifier());
    assert_eq!(sim.sched.job(8).unwrap().plan_waited_for_verifier(), ms(50));
}

#[test]
fn a_job_queued_with_its_verifier_ready_is_planned_without_waiting_and_checked_by_it() {
    let (m, k, n) = (16, 256, 512);
    let (mut sim, job) = settled_pool(m, k, n);
    let unplanned = |id, prepared: &[crate::plan::Tile]| job(id).with_verifier(verifier_for_tiles(m, k, n, prepared));
    sim.sched.add_unplanned(unplanned(7, &crate::verify::whole_depth_tiles(m, k, n)), sim.now);
    sim.pump();
    assert!(sim.events.contains(&Event::JobPlanned { job: 7 }), "the pool is settled and the verifier there: planned at once");
    let job = sim.sched.job(7).unwrap();
    assert_eq!(job.plan_waited_for_verifier(), Duration::ZERO);
    assert!(!job.awaits_verifier(), "its groups serve the plan ({:?})", job.plan().shape());
    // One whose groups do not serve the plan: results wait for the shell's.
    sim.sched.add_unplanned(unplanned(9, &[crate::plan::Tile { rows: 0..m, cols: 0..n, depth: 0..k / 2 }]), sim.now);
    sim.pump();
    assert!(sim.events.contains(&Event::JobPlanned { job: 9 }));
    assert!(sim.sched.job(9).unwrap().awaits_verifier());
}

#[test]
fn a_running_job_takes_a_verifier_prepared_before_its_plan_only_if_its_groups_serve() {
    // k = 256: groups of 16 columns from column 0; tiles 32 wide are two of them.
    let (m, k, n) = (8, 256, 64);
    let plan = Plan::columns(m, k, n, 32);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.awaiting_verifier());
    let half_depth = [crate::plan::Tile { rows: 0..m, cols: 0..n, depth: 0..k / 2 }];
    assert!(!sim.sched.set_verifier(JOB, verifier_for_tiles(m, k, n, &half_depth), sim.now), "its groups cover half of k");
    assert!(sim.job().awaits_verifier());
    assert!(sim.sched.set_verifier(JOB, verifier_for_tiles(m, k, n, &crate::verify::whole_depth_tiles(m, k, n)), sim.now));
    assert!(!sim.job().awaits_verifier());
    sim.join(2);
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn results_wait_for_a_verifier_that_comes_late() {
    let plan = Plan::columns(6, 5, 12, 3);
    let verifier = verifier_for(&plan, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.awaiting_verifier());
    let liar = sim.join(1);
    sim.workers.get_mut(&liar).unwrap().liar = true;
    for _ in 0..5 {
        sim.deliver_to_worker(liar, usize::MAX);
        sim.compute(liar);
        sim.deliver_to_master(liar, usize::MAX);
    }
    assert_eq!(sim.job().tiles_done(), 0, "nothing is assembled unverified");
    assert_eq!(sim.job().held_for_verifier(), 4, "each result held, and counted");
    assert_eq!(sim.count(liar, |m| matches!(m, Message::Task { .. })), 4, "its slot is free again each time");
    sim.sched.set_verifier(JOB, verifier, sim.now);
    sim.pump();
    assert_eq!(sim.closed, vec![(liar, "sent 3 wrong results".to_owned(), true)]);
    sim.join(2);
    assert_eq!(sim.run_to_completion(), sim.expected);
}

/// A clock that moves 1 ms each time it is read.
fn ticking_clock() -> Option<Duration> {
    static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Some(ms(READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

#[test]
fn a_verifier_that_comes_after_every_result_is_what_the_job_waited_for() {
    let plan = Plan::columns(6, 5, 12, 3);
    let tiles = plan.tiles() as u64;
    let verifier = verifier_for(&plan, true).metered(ticking_clock);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.awaiting_verifier());
    let w = sim.join(4);
    let mut last_result = Duration::ZERO;
    for _ in 0..100 {
        if sim.job().held_for_verifier() == tiles {
            break;
        }
        sim.advance(ms(10));
        sim.deliver_to_worker(w, usize::MAX);
        while sim.compute(w) {}
        sim.deliver_to_master(w, usize::MAX);
        last_result = sim.now;
    }
    assert_eq!(sim.job().held_for_verifier(), tiles, "every result came before the verifier");
    assert_eq!(sim.job().check_time(), None, "no verifier yet");
    sim.advance(ms(35));
    sim.sched.set_verifier(JOB, verifier, sim.now);
    sim.pump();
    assert!(sim.is_complete());
    assert_eq!(sim.job().verifier_stall(), sim.now - last_result, "from the last result to the verifier");
    assert_eq!(sim.job().verifier_stall(), ms(35));
    // Each check reads the clock twice, 1 ms apart.
    assert_eq!(sim.job().check_time(), Some(ms(tiles)));
}

#[test]
fn a_verifier_ready_before_the_last_result_stalls_nothing() {
    let plan = Plan::columns(6, 5, 12, 3);
    let verifier = verifier_for(&plan, true);
    let mut sim = Sim::with_job(plan, quick_config(), |job| job.awaiting_verifier());
    let w = sim.join(1);
    sim.deliver_to_worker(w, usize::MAX);
    while sim.compute(w) {}
    sim.deliver_to_master(w, usize::MAX);
    assert_eq!(sim.job().held_for_verifier(), 1);
    sim.advance(ms(50));
    sim.sched.set_verifier(JOB, verifier, sim.now);
    sim.pump();
    for _ in 0..100 {
        if sim.is_complete() {
            break;
        }
        sim.deliver_to_worker(w, usize::MAX);
        while sim.compute(w) {}
        sim.deliver_to_master(w, usize::MAX);
        sim.advance(ms(10));
    }
    assert!(sim.is_complete());
    assert_eq!(sim.job().verifier_stall(), Duration::ZERO, "results still came after it");
}

#[derive(Clone, Debug)]
enum Action {
    Join(u32),
    Leave(usize),
    ToWorker(usize, usize),
    Compute(usize),
    ToMaster(usize, usize),
    Advance(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        1 => (1u32..4).prop_map(Action::Join),
        1 => (0usize..8).prop_map(Action::Leave),
        4 => (0usize..8, 1usize..6).prop_map(|(w, n)| Action::ToWorker(w, n)),
        3 => (0usize..8).prop_map(Action::Compute),
        4 => (0usize..8, 1usize..6).prop_map(|(w, n)| Action::ToMaster(w, n)),
        2 => (0u64..1500).prop_map(Action::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the grid, the workers' memories, and the joins, leaves, delays,
    /// expiries and late or duplicate results, the job ends in exactly the
    /// serial product, with every tile assembled once.
    #[test]
    fn any_history_ends_in_the_serial_product(
        (m, k, n) in (1usize..9, 1usize..9, 1usize..25),
        (pr, pc, pk) in (1usize..4, 1usize..6, 1usize..4),
        memories in proptest::collection::vec(prop_oneof![Just(u64::MAX / 4), 300u64..2000], 1..4),
        actions in proptest::collection::vec(action(), 0..80),
    ) {
        let plan = Plan::grid(m, k, n, pr, pc, pk).laid_out((1, 2, 1));
        let tiles = plan.tiles();
        let verifier = verifier_for(&plan, true);
        let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
        let mut joined = 0;
        for action in actions {
            let pick = |sim: &Sim, i: usize| sim.workers.keys().nth(i % sim.workers.len().max(1)).copied();
            match action {
                Action::Join(slots) => {
                    let memory = memories[joined % memories.len()];
                    joined += 1;
                    sim.join_with(WorkerConfig { slots, memory, ..WorkerConfig::new(WorkerKind::Native, "w") });
                }
                Action::Leave(i) => if let Some(id) = pick(&sim, i) { sim.leave(id) },
                Action::ToWorker(i, n) => if let Some(id) = pick(&sim, i) { sim.deliver_to_worker(id, n) },
                Action::Compute(i) => if let Some(id) = pick(&sim, i) { sim.compute(id); },
                Action::ToMaster(i, n) => if let Some(id) = pick(&sim, i) { sim.deliver_to_master(id, n) },
                Action::Advance(t) => sim.advance(ms(t)),
            }
        }
        sim.join(1); // one worker with room for any tile
        let c = sim.run_to_completion();
        prop_assert_eq!(c, sim.expected.clone());
        let done: usize = sim.sched.pool().infos().map(|(_, i)| i.tiles_done).sum();
        prop_assert_eq!(done, tiles, "each tile counted once");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// On plans that leave slow workers out, whatever happens, no worker stays
    /// benched once a job would give it work (`Sim::pump` checks after each input).
    #[test]
    fn no_history_leaves_a_wanted_worker_benched(
        (m, k, n) in (1usize..9, 1usize..9, 1usize..25),
        (pr, pc, pk) in (1usize..4, 1usize..6, 1usize..4),
        layout in (1usize..3, 1usize..3, 1usize..2),
        memories in proptest::collection::vec(prop_oneof![Just(u64::MAX / 4), 300u64..2000], 1..4),
        actions in proptest::collection::vec((action(), any::<bool>()), 0..120),
    ) {
        let plan = Plan { spread: false, min_speed: 1e11, ..Plan::grid(m, k, n, pr, pc, pk).laid_out(layout) };
        let verifier = verifier_for(&plan, true);
        let mut sim = Sim::with_job(plan, quick_config(), |job| job.with_verifier(verifier));
        let mut joined = 0;
        for (action, fast) in actions {
            let pick = |sim: &Sim, i: usize| sim.workers.keys().nth(i % sim.workers.len().max(1)).copied();
            match action {
                Action::Join(slots) => {
                    let memory = memories[joined % memories.len()];
                    joined += 1;
                    let flops = if fast { 1_000_000_000_000 } else { 1_000_000_000 };
                    sim.join_with(WorkerConfig { slots, memory, flops, ..WorkerConfig::new(WorkerKind::Native, "w") });
                }
                Action::Leave(i) => if let Some(id) = pick(&sim, i) { sim.leave(id) },
                Action::ToWorker(i, n) => if let Some(id) = pick(&sim, i) { sim.deliver_to_worker(id, n) },
                Action::Compute(i) => if let Some(id) = pick(&sim, i) {
                    sim.workers.get_mut(&id).unwrap().liar = !fast; // some results are wrong
                    sim.compute(id);
                },
                Action::ToMaster(i, n) => if let Some(id) = pick(&sim, i) { sim.deliver_to_master_as_is(id, n) },
                Action::Advance(t) => sim.advance(ms(t)),
            }
        }
    }
}

#[test]
fn running_jobs_share_the_pool_by_weight() {
    let mut sim = Sim::new(8, 8, 64, 1, quick_config());
    let (a, b) = operands(8, 8, 64);
    let config = quick_config();
    let heavy = Job::new(JOB + 1, DenseMatrix::from(a), DenseMatrix::from(b), Plan::columns(8, 8, 64, 1), config.leases, config.max_chunk).unwrap();
    sim.sched.set_weight(JOB + 1, 3);
    sim.sched.add_job(heavy, sim.now);
    sim.pump();
    for _ in 0..4 {
        sim.join(1);
    }
    let out = |id| sim.sched.job(id).unwrap().leases_out();
    assert_eq!((out(JOB), out(JOB + 1)), (1, 3), "four one-task workers, weights 1 and 3");
    assert_eq!(sim.sched.workers_on(JOB) + sim.sched.workers_on(JOB + 1), 4);
}

#[test]
fn a_straggler_no_idle_worker_may_copy_does_not_wake_the_master_again_at_once() {
    let mut sim = Sim::new(4, 4, 2, 1, quick_config());
    let fast = sim.join(1);
    // It proves itself on one tile, then sits on the other (beating, never answering).
    sim.deliver_to_worker(fast, usize::MAX);
    sim.compute(fast);
    sim.deliver_to_master(fast, usize::MAX);
    sim.deliver_to_worker(fast, usize::MAX);
    // A newcomer, idle: it may not take copies before it has a verified result.
    let _new = sim.join(1);
    for _ in 0..200 {
        sim.advance(ms(50));
        sim.deliver_to_master(fast, usize::MAX);
        sim.deliver_to_worker(fast, usize::MAX);
        assert!(sim.wake.is_none_or(|t| t > sim.now), "woken for {:?} at {:?}: a busy loop", sim.wake, sim.now);
    }
    assert!(!sim.is_complete());
}
