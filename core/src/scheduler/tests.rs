//! The scheduler driven on a virtual clock by simulated workers that run the
//! real worker session and kernel, with no sockets.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::kernel::tests::naive;
use crate::matrix::Matrix;
use crate::protocol::WorkerKind;
use crate::worker::{WorkerConfig, WorkerSession};

#[derive(Debug)]
struct SimWorker {
    session: WorkerSession,
    /// Adds 1 to one element of every result it computes.
    liar: bool,
    to_worker: VecDeque<Vec<u8>>,
    to_master: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct Sim {
    sched: Scheduler,
    workers: BTreeMap<WorkerId, SimWorker>,
    now: Duration,
    next_id: WorkerId,
    expected: Matrix<f64>,
    events: Vec<Event>,
    /// Frames each worker received, by kind, for counting.
    received: BTreeMap<WorkerId, Vec<Message>>,
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn quick_config() -> SchedulerConfig {
    SchedulerConfig { initial_lease: ms(1000), min_lease: ms(1000), max_chunk: 64, ..SchedulerConfig::default() }
}

impl Sim {
    fn new(m: usize, k: usize, n: usize, width: usize, config: SchedulerConfig) -> Self {
        // Small integers: every blocked product is exact, so equality is exact.
        let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
        let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0);
        let expected = naive(&a, &b);
        let sched = Scheduler::new(config, 42, DenseMatrix::from(a), DenseMatrix::from(b), Plan::new(m, k, n, width)).unwrap();
        Self { sched, workers: BTreeMap::new(), now: Duration::ZERO, next_id: 1, expected, events: Vec::new(), received: BTreeMap::new() }
    }

    fn join(&mut self, slots: u32) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        let mut session = WorkerSession::new(WorkerConfig { slots, ..WorkerConfig::new(WorkerKind::Native, format!("w{id}")) }, self.now);
        let hello = session.poll_transmit().unwrap().encode();
        self.workers.insert(id, SimWorker { session, liar: false, to_worker: VecDeque::new(), to_master: VecDeque::from([hello]) });
        self.deliver_to_master(id, 1);
        id
    }

    fn pump(&mut self) {
        while let Some((to, frame)) = self.sched.poll_transmit() {
            if let Some(w) = self.workers.get_mut(&to) {
                self.received.entry(to).or_default().push(frame.message.clone());
                w.to_worker.push_back(frame.encode());
            }
        }
        while let Some(e) = self.sched.poll_event() {
            if let Event::WorkerSilent { worker, .. } = e {
                self.workers.remove(&worker); // the shell closes its connection
            }
            self.events.push(e);
        }
    }

    fn deliver_to_master(&mut self, id: WorkerId, count: usize) {
        for _ in 0..count {
            let Some(bytes) = self.workers.get_mut(&id).and_then(|w| w.to_master.pop_front()) else { break };
            self.sched.handle_message(id, &bytes, self.now).expect("honest workers break no rule");
        }
        self.pump();
    }

    fn deliver_to_worker(&mut self, id: WorkerId, count: usize) {
        let now = self.now;
        let Some(w) = self.workers.get_mut(&id) else { return };
        for _ in 0..count {
            let Some(bytes) = w.to_worker.pop_front() else { break };
            w.session.handle_message(&bytes, now).expect("the master breaks no rule");
        }
        while let Some(f) = w.session.poll_transmit() {
            w.to_master.push_back(f.encode());
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
            w.to_master.push_back(f.encode());
        }
        true
    }

    fn leave(&mut self, id: WorkerId) {
        if self.workers.remove(&id).is_some() {
            self.sched.handle_disconnect(id, self.now);
            self.pump();
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.sched.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sched.handle_timeout(self.now);
            self.pump();
        }
        // Workers beat too; one that hears nothing from the master hangs up.
        let mut hung_up = Vec::new();
        for (&id, w) in &mut self.workers {
            if w.session.poll_timeout() <= self.now {
                match w.session.handle_timeout(self.now) {
                    Ok(()) => w.to_master.extend(std::iter::from_fn(|| w.session.poll_transmit()).map(|f| f.encode())),
                    Err(_) => hung_up.push(id),
                }
            }
        }
        for id in hung_up {
            self.leave(id);
        }
    }

    /// Every worker serves everything it can, round after round, while time passes.
    fn run_to_completion(&mut self) -> Matrix<f64> {
        for _ in 0..10_000 {
            if self.sched.is_complete() {
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
        match self.sched.take_result().expect("the job completes") {
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
    // A is 5*6*8 = 240 bytes: four 64-byte chunks (the first inside Job), sent once.
    assert_eq!(sim.count(w, |m| matches!(m, Message::Job { .. })), 1);
    assert_eq!(sim.count(w, |m| matches!(m, Message::OperandChunk { .. })), 3);
    assert_eq!(sim.count(w, |m| matches!(m, Message::Task { .. })), 6);
    assert_eq!(sim.count(w, |m| matches!(m, Message::JobDone { .. })), 1);
    assert!(sim.events.contains(&Event::JobComplete));
    assert_eq!(sim.sched.workers().next().unwrap().1.blocks_done, 6);
}

#[test]
fn a_worker_never_holds_more_than_its_slots() {
    let mut sim = Sim::new(4, 4, 40, 2, quick_config());
    let w = sim.join(2);
    sim.deliver_to_worker(w, usize::MAX);
    assert_eq!(sim.workers[&w].session.in_flight(), 2);
    assert_eq!(sim.count(w, |m| matches!(m, Message::Task { .. })), 2);
    assert_eq!(sim.sched.poll_timeout(), Some(ms(1000)), "the leases' deadline");
}

#[test]
fn a_worker_gets_no_more_credit_than_the_master_grants() {
    let mut sim = Sim::new(4, 4, 40, 2, SchedulerConfig { max_slots: 3, ..quick_config() });
    let greedy = sim.join(1000);
    sim.deliver_to_worker(greedy, usize::MAX);
    assert_eq!(sim.count(greedy, |m| matches!(m, Message::Welcome { slots: 3, .. })), 1, "told its credit");
    assert_eq!(sim.count(greedy, |m| matches!(m, Message::Task { .. })), 3);
    assert_eq!(sim.workers[&greedy].session.in_flight(), 3);
}

#[test]
fn fast_workers_take_more() {
    let mut sim = Sim::new(4, 4, 60, 2, quick_config());
    let fast = sim.join(1);
    let slow = sim.join(1);
    for _ in 0..200 {
        if sim.sched.is_complete() {
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
    let done: BTreeMap<_, _> = sim.sched.workers().map(|(id, i)| (id, i.blocks_done)).collect();
    assert!(done[&fast] >= 2 * done[&slow], "{done:?}");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn a_vanished_workers_blocks_are_requeued() {
    let mut sim = Sim::new(6, 5, 20, 4, quick_config());
    let doomed = sim.join(2);
    sim.deliver_to_worker(doomed, usize::MAX);
    sim.leave(doomed);
    assert!(sim.events.contains(&Event::WorkerLeft { worker: doomed, requeued: 2 }));
    let heir = sim.join(2);
    let c = sim.run_to_completion();
    assert_eq!(c, sim.expected);
    assert_eq!(sim.sched.workers().find(|(id, _)| *id == heir).unwrap().1.blocks_done, 5);
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
    let mut sim = Sim::new(4, 4, 8, 2, SchedulerConfig { initial_lease: ms(60_000), ..quick_config() });
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
    assert!(sim.sched.is_complete(), "the fast worker finished the straggler's block");
    assert_eq!(sim.count(slow, |m| matches!(m, Message::Cancel { .. })), 1, "the losing copy is cancelled");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn wrong_results_are_caught_reissued_elsewhere_and_their_sender_is_cut_off() {
    let mut sim = Sim::new(6, 5, 24, 2, quick_config());
    let (m, k, n) = (6, 5, 24);
    let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0);
    let weights = (0..n).map(|j| [3.0, -1.0, 2.0, -5.0][j % 4]).collect();
    let verifier = Verifier::new(DenseMatrix::from(a), &b.into(), &Plan::new(m, k, n, 2), weights, true);
    sim.sched = std::mem::replace(&mut sim.sched, Sim::new(1, 1, 1, 1, quick_config()).sched).with_verifier(verifier);
    let liar = sim.join(2);
    sim.workers.get_mut(&liar).unwrap().liar = true;
    let honest = sim.join(2);
    let mut liar_violation = None;
    for _ in 0..100 {
        if sim.sched.is_complete() {
            break;
        }
        for id in [liar, honest] {
            sim.deliver_to_worker(id, usize::MAX);
            while sim.compute(id) {}
            if id == liar {
                // The liar's results come back through the scheduler directly, to see the violation.
                let Some(w) = sim.workers.get_mut(&liar) else { continue };
                while let Some(bytes) = w.to_master.pop_front() {
                    if let Err(v) = sim.sched.handle_message(liar, &bytes, sim.now) {
                        liar_violation = Some(v.to_string());
                        sim.workers.remove(&liar);
                        sim.sched.handle_disconnect(liar, sim.now);
                        break;
                    }
                }
                sim.pump();
            } else {
                sim.deliver_to_master(id, usize::MAX);
            }
        }
        sim.advance(ms(10));
    }
    assert_eq!(liar_violation.as_deref(), Some("sent 3 wrong results"));
    let rejected = sim.events.iter().filter(|e| matches!(e, Event::Rejected { worker, .. } if *worker == liar)).count();
    assert_eq!(rejected, 3);
    assert_eq!(sim.run_to_completion(), sim.expected, "only verified blocks were assembled");
    let liar_blocks = sim.sched.workers().find(|(id, _)| *id == liar).unwrap().1.blocks_done;
    assert_eq!(liar_blocks, 0);
}

#[test]
fn a_silent_worker_is_dropped_and_its_blocks_reissued() {
    let patient = SchedulerConfig { initial_lease: ms(600_000), min_lease: ms(600_000), ..quick_config() };
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
    let silent: Vec<_> = sim.events.iter().filter_map(|e| if let Event::WorkerSilent { worker, silent_for } = e { Some((*worker, *silent_for)) } else { None }).collect();
    assert_eq!(silent, vec![(frozen, ms(16_000))], "dropped at the first check past 15 s, and only the frozen one");
    assert!(sim.events.contains(&Event::WorkerLeft { worker: frozen, requeued: 2 }));
    assert!(sim.count(alive, |m| matches!(m, Message::Heartbeat)) >= 5, "the master beats too");
    assert_eq!(sim.run_to_completion(), sim.expected);
}

#[test]
fn leases_and_patience_follow_each_workers_measured_speed() {
    let config = SchedulerConfig { min_lease: ms(1000), ..quick_config() };
    let mut sim = Sim::new(4, 4, 40, 2, config);
    let slow = sim.join(1);
    // One task takes the slow worker 12 s (its heartbeats keep arriving meanwhile).
    sim.deliver_to_worker(slow, usize::MAX);
    for _ in 0..12 {
        sim.advance(ms(1000));
        sim.deliver_to_master(slow, usize::MAX);
    }
    sim.compute(slow);
    sim.deliver_to_master(slow, usize::MAX);
    let deadline = sim.sched.leases.values().find(|l| l.worker == slow).map(|l| l.deadline - l.issued);
    assert_eq!(deadline, Some(ms(96_000)), "8 times its own task time");
    let w = &sim.sched.workers[&slow];
    assert_eq!(sim.sched.silence_limit(w), ms(24_000), "twice its task time, above the 15 s heartbeat timeout");
}

#[test]
fn restored_blocks_are_verified_and_never_recomputed() {
    let (m, k, n, width) = (6, 5, 12, 2);
    let mut sim = Sim::new(m, k, n, width, quick_config());
    let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0);
    let weights = (0..n).map(|j| [2.0, -3.0][j % 2]).collect();
    let verifier = Verifier::new(DenseMatrix::from(a), &b.into(), &Plan::new(m, k, n, width), weights, true);
    sim.sched = std::mem::replace(&mut sim.sched, Sim::new(1, 1, 1, 1, quick_config()).sched).with_verifier(verifier);
    let block = |j: usize| DenseMatrix::from(sim.expected.clone()).as_bytes()[j * 2 * m * 8..(j + 1) * 2 * m * 8].to_vec();
    let (good, mut bad) = (block(1), block(4));
    bad[3] ^= 0x40;
    sim.sched.restore(1, &good).unwrap();
    assert_eq!(sim.sched.block_bytes(1), Some(&good[..]));
    assert!(matches!(sim.sched.restore(4, &bad), Err(RestoreError::Mismatch { block: 4, .. })));
    assert!(matches!(sim.sched.restore(2, &good[8..]), Err(RestoreError::Length { block: 2, .. })));
    assert!(matches!(sim.sched.restore(6, &good), Err(RestoreError::NoSuchBlock { .. })));
    let w = sim.join(2);
    assert_eq!(sim.run_to_completion(), sim.expected);
    assert_eq!(sim.count(w, |msg| matches!(msg, Message::Task { .. })), 5, "every block but the restored one");
}

fn hello(kind: WorkerKind, token: &str) -> Vec<u8> {
    let hello = Message::Hello { protocol: PROTOCOL_VERSION, kind, threads: 1, slots: 1, name: "w".into(), token: Token::new(token) };
    codec::encode(&hello, &[])
}

#[test]
fn a_token_admits_native_workers_and_browsers_follow_the_setting() {
    let access = Access { token: Some(Token::new("open sesame")), browsers: false };
    let mut sim = Sim::new(2, 2, 2, 1, SchedulerConfig { access, ..quick_config() });
    let mut refusal = |id, bytes: Vec<u8>| match sim.sched.handle_message(id, &bytes, sim.now) {
        Ok(()) => None,
        Err(Violation::Refused(why)) => {
            let sent = std::iter::from_fn(|| sim.sched.poll_transmit()).any(|(to, f)| to == id && matches!(f.message, Message::Refused { .. }));
            assert!(sent, "the worker is told why");
            Some(why)
        }
        Err(other) => panic!("{other}"),
    };
    assert!(refusal(1, hello(WorkerKind::Native, "")).unwrap().contains("requires a token"));
    assert!(refusal(2, hello(WorkerKind::Native, "open sesamE")).unwrap().starts_with("wrong token"));
    assert!(refusal(3, hello(WorkerKind::Browser, "")).unwrap().contains("does not take browser volunteers"));
    assert_eq!(refusal(4, hello(WorkerKind::Native, "open sesame")), None);
    assert_eq!(refusal(5, hello(WorkerKind::Browser, "open sesame")), None);

    let mut open = Sim::new(2, 2, 2, 1, quick_config());
    for (id, kind) in [(1, WorkerKind::Native), (2, WorkerKind::Browser)] {
        open.sched.handle_message(id, &hello(kind, ""), open.now).expect("no token set: anyone may join");
    }
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let (message, _) = codec::decode(&hello(WorkerKind::Native, "open sesame")).unwrap();
    let config = SchedulerConfig { access: Access { token: Some(Token::new("open sesame")), browsers: true }, ..quick_config() };
    for text in [format!("{message:?}"), format!("{config:?}")] {
        assert!(!text.contains("open sesame") && text.contains("<redacted>"), "{text}");
    }
}

#[test]
fn protocol_violations_are_reported() {
    let mut sim = Sim::new(2, 2, 2, 1, quick_config());
    let junk = codec::encode(&Message::ResultChunk { lease: 999, offset: 0, compute_us: 0 }, &[1]);
    assert!(matches!(sim.sched.handle_message(99, &junk, sim.now), Err(Violation::NoHello)));
    let w = sim.join(1);
    assert!(matches!(sim.sched.handle_message(w, &junk, sim.now), Err(Violation::UnknownLease(999))));
    let job = codec::encode(&Message::JobDone { job: 1 }, &[]);
    assert!(matches!(sim.sched.handle_message(w, &job, sim.now), Err(Violation::Unexpected("JobDone"))));
    let old = codec::encode(&Message::Hello { protocol: 0, kind: WorkerKind::Native, threads: 1, slots: 1, name: String::new(), token: Token::default() }, &[]);
    assert!(matches!(sim.sched.handle_message(77, &old, sim.now), Err(Violation::Version { got: 0 })));
    assert!(matches!(sim.sched.poll_transmit(), Some((77, Frame { message: Message::Refused { .. }, .. }))));
    // The lease is real but the chunk is out of order.
    let lease = sim.received[&w].iter().find_map(|m| if let Message::Task { lease, .. } = m { Some(*lease) } else { None }).unwrap();
    let skip = codec::encode(&Message::ResultChunk { lease, offset: 8, compute_us: 0 }, &[0; 8]);
    assert!(matches!(sim.sched.handle_message(w, &skip, sim.now), Err(Violation::Payload { .. })));
}

#[test]
fn mismatched_inputs_are_refused() {
    let a = Matrix::<f64>::zeros(3, 4).unwrap();
    let b = Matrix::<f64>::zeros(5, 2).unwrap();
    let err = Scheduler::new(SchedulerConfig::default(), 1, DenseMatrix::from(a), DenseMatrix::from(b), Plan::new(3, 4, 2, 1)).unwrap_err();
    assert_eq!(err.to_string(), "A is 3x4 but B is 5x2: A's columns must equal B's rows");
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

    /// Whatever joins, leaves, delays, expiries and late or duplicate results
    /// happen, the job ends in exactly the serial product.
    #[test]
    fn any_history_ends_in_the_serial_product(
        (m, k, n, width) in (1usize..7, 1usize..7, 1usize..25, 1usize..6),
        actions in proptest::collection::vec(action(), 0..80),
    ) {
        let mut sim = Sim::new(m, k, n, width, quick_config());
        for action in actions {
            let pick = |sim: &Sim, i: usize| sim.workers.keys().nth(i % sim.workers.len().max(1)).copied();
            match action {
                Action::Join(slots) => { sim.join(slots); }
                Action::Leave(i) => if let Some(id) = pick(&sim, i) { sim.leave(id) },
                Action::ToWorker(i, n) => if let Some(id) = pick(&sim, i) { sim.deliver_to_worker(id, n) },
                Action::Compute(i) => if let Some(id) = pick(&sim, i) { sim.compute(id); },
                Action::ToMaster(i, n) => if let Some(id) = pick(&sim, i) { sim.deliver_to_master(id, n) },
                Action::Advance(t) => sim.advance(ms(t)),
            }
        }
        if sim.workers.is_empty() {
            sim.join(1);
        }
        let c = sim.run_to_completion();
        prop_assert_eq!(c, sim.expected.clone());
        let done: usize = sim.sched.workers().map(|(_, i)| i.blocks_done).sum();
        prop_assert_eq!(done, Plan::new(m, k, n, width).blocks(), "each block counted once");
    }
}
