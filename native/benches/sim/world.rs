//! One simulated run: the real core scheduler (pool and job) and real worker
//! sessions, on a virtual clock, with links and compute times modelled.
//!
//! The matrices are scaled down so that they fit in memory: the same grid of
//! tiles, with bands of two rows, columns or depth. Every size that costs time
//! is taken from the full-size plan instead: a panel's bytes and a tile's
//! product and flops, looked up by their place in the grid. Each worker's
//! memory budget is scaled by the ratio of one tile's working set at the two
//! scales, so as many tiles fit in it. The grid is the same at both scales, so
//! the scheduler makes the decisions it would make on the real job; and the
//! small matrices are real, so every result is verified and C is checked.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colonnade_core::codec;
use colonnade_core::job::Job;
use colonnade_core::plan::Plan;
use colonnade_core::protocol::{Message, WorkerKind};
use colonnade_core::scheduler::{Event, Input, Output, Scheduler, SchedulerConfig, WorkerId};
use colonnade_core::verify::Verifier;
use colonnade_core::worker::{WorkerConfig, WorkerSession};
use colonnade_core::{DenseMatrix, Matrix};

use crate::link::{Link, Transfer};

/// Bytes of a message's header, on the wire.
const HEADER: f64 = 32.0;

/// One simulated worker.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub kind: WorkerKind,
    /// Kernel speed, flop/s.
    pub flops: f64,
    /// Its own link, bytes/s each way.
    pub link: f64,
    /// One-way latency to the master, seconds.
    pub latency: f64,
    /// Memory budget, bytes.
    pub memory: u64,
    pub join_at: f64,
    pub leave_at: Option<f64>,
    /// Adds 1 to an element of every result.
    pub liar: bool,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The plan, at full scale.
    pub plan: Plan,
    /// The master's link, bytes/s: out, and in.
    pub master_link: f64,
    pub master_ingress: f64,
    pub workers: Vec<WorkerSpec>,
    /// A panel another worker already holds comes from that worker (over its
    /// uplink) rather than from the master: the relay, evaluated on paper.
    pub relay: bool,
    /// Give up after this much virtual time.
    pub horizon: f64,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub makespan: f64,
    pub complete: bool,
    /// Bytes out of and into the master's link, at full scale.
    pub egress: f64,
    pub ingress: f64,
    /// Bytes that went worker to worker (relay only).
    pub relayed: f64,
    pub leases: u64,
    pub rejected: u64,
    /// Copies of stragglers' tiles.
    pub speculated: u64,
    /// Scheduler inputs handled (messages, timeouts, joins and leaves).
    pub inputs: u64,
    /// Real CPU time spent inside the scheduler, per lease issued and per input.
    pub cpu_per_task: Duration,
    pub cpu_per_input: Duration,
    /// The part of it spent on results and hand-backs (and what they set
    /// off), per lease issued; the rest is the upkeep of connections: joins,
    /// hellos, heartbeats, leaves and timers, which grows with the pool and
    /// the makespan rather than with the tasks.
    pub cpu_on_results_per_task: Duration,
    pub upkeep_inputs: u64,
    /// The upkeep's CPU per second a worker was connected: what a crowd costs
    /// the master while it waits, whatever the tasks.
    pub upkeep_per_worker_second: Duration,
    /// Connected workers, summed over the makespan's seconds.
    pub worker_seconds: f64,
    pub events: u64,
    pub correct: bool,
    /// Seconds the master's egress was carrying something.
    pub egress_busy: f64,
    /// Seconds of computing, summed over the workers.
    pub computing: f64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Happening {
    Join(usize),
    Leave(WorkerId),
    ToWorker(WorkerId, Vec<u8>),
    ToMaster(WorkerId, Vec<u8>),
    Computed(WorkerId, u64),
    WorkerWake(WorkerId),
    MasterWake,
    /// The next message on the master's outgoing (or incoming) link may have crossed.
    EgressDone(u64),
    IngressDone(u64),
}

#[derive(Debug)]
struct SimWorker {
    spec: WorkerSpec,
    session: WorkerSession,
    /// When its uplink is next free, for the panels it relays.
    up_free: f64,
    /// The product being computed, and when it is done.
    computing: Option<(u64, DenseMatrix, f64)>,
    wake_at: f64,
}

/// Time as an ordered integer (nanoseconds), for the event queue.
fn ns(t: f64) -> u64 {
    (t * 1e9).round() as u64
}

pub fn run(setup: &Setup) -> Outcome {
    let plan = &setup.plan;
    let (pr, pc, pk) = plan.shape();
    // The same grid and layout, and the same say on who waits (spread,
    // min_speed), with tiles of the same proportions: the scheduler weighs
    // A's panels against B's by their elements.
    let [sr, sd, sc] = small_tile([plan.rows.largest(), plan.depth.largest(), plan.cols.largest()]);
    let small = Plan { min_speed: plan.min_speed, ..Plan::grid(sr * pr, sd * pk, sc * pc, pr, pc, pk).laid_out(plan.layout).spread_to(plan.spread) };
    let mut sizes = Sizes::new(plan, &small);
    let a = Matrix::from_fn(small.m, small.k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let b = Matrix::from_fn(small.k, small.n, |i, j| ((i * 5 + j * 13) % 9) as f64 - 4.0);
    let expected = colonnade_core::kernel::multiply(&a, b.as_slice());
    let (a, b) = (Arc::new(DenseMatrix::from(a)), Arc::new(DenseMatrix::from(b)));
    let weights = (0..small.n).map(|j| [3.0, -1.0, 2.0, -5.0, 1.0, 4.0][j % 6]).collect();
    let verifier = Verifier::new(Arc::clone(&a), Arc::clone(&b), &Job::verified_tiles(&small), weights, true);
    let config = SchedulerConfig { settle: Duration::ZERO, ..SchedulerConfig::default() };
    let job = Job::new(1, a, b, small.clone(), config.leases.clone(), config.max_chunk).expect("a valid job").with_verifier(verifier);
    let mut sched = Scheduler::new(config);
    sched.add_job(job, Duration::ZERO);

    let mut out = Outcome::default();
    let mut queue: BinaryHeap<Reverse<(u64, u64, Happening)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<Reverse<(u64, u64, Happening)>>, at: f64, what: Happening| {
        seq += 1;
        queue.push(Reverse((ns(at), seq, what)));
    };
    for (i, w) in setup.workers.iter().enumerate() {
        push(&mut queue, w.join_at, Happening::Join(i));
    }
    let mut workers: BTreeMap<WorkerId, SimWorker> = BTreeMap::new();
    let mut spec_of: HashMap<WorkerId, usize> = HashMap::new();
    // Out: each message, and when it may arrive at the earliest (a relayed
    // panel: when its relay delivers it; it keeps its place in the stream).
    let mut egress: Link<(WorkerId, Vec<u8>, f64)> = Link::new(setup.master_link);
    let mut ingress: Link<(WorkerId, Vec<u8>)> = Link::new(setup.master_ingress);
    let mut master_wake: Option<f64> = None;
    // Who has received which panel, for the relay.
    let mut holders: HashMap<(u64, u32), Vec<WorkerId>> = HashMap::new();
    // When the last message to each worker arrived: they arrive in order, as
    // on one stream, relayed panels included (a task must not come before its
    // panel, nor a panel before the eviction that makes room for it).
    let mut delivered_until: HashMap<WorkerId, f64> = HashMap::new();
    // The scheduler's CPU time: on results and hand-backs, and on upkeep.
    let (mut on_results, mut upkeep) = (Duration::ZERO, Duration::ZERO);
    let mut next_id: WorkerId = 1;

    let mut last_event = 0.0;
    while let Some(Reverse((at, _, happening))) = queue.pop() {
        let now = at as f64 / 1e9;
        if now > setup.horizon {
            break;
        }
        out.worker_seconds += workers.len() as f64 * (now - last_event);
        last_event = now;
        out.events += 1;
        if out.events % 1_000_000 == 0 && std::env::var_os("SIM_TRACE").is_some() {
            let done = sched.job(1).map_or(0, |j| j.tiles_done());
            let what = match &happening {
                Happening::Join(_) => "join", Happening::Leave(_) => "leave", Happening::ToWorker(..) => "to worker", Happening::ToMaster(..) => "to master",
                Happening::Computed(..) => "computed", Happening::WorkerWake(_) => "worker wake", Happening::MasterWake => "master wake",
                Happening::EgressDone(_) => "egress", Happening::IngressDone(_) => "ingress",
            };
            eprintln!("{now:.3} s: {} events, {done} tiles done, {} workers; now: {what}", out.events, workers.len());
        }
        let now_d = Duration::from_nanos(at);
        let mut touched_master = true;
        let mut task_input = false;
        match happening {
            Happening::Join(i) => {
                let spec = setup.workers[i].clone();
                let id = next_id;
                next_id += 1;
                let config = WorkerConfig { memory: sizes.memory(spec.memory), flops: spec.flops as u64, ..WorkerConfig::new(spec.kind, format!("sim-{i}")) };
                let session = WorkerSession::new(config, now_d);
                if let Some(leave) = spec.leave_at {
                    push(&mut queue, leave.max(now), Happening::Leave(id));
                }
                spec_of.insert(id, i);
                workers.insert(id, SimWorker { spec, session, up_free: now, computing: None, wake_at: f64::INFINITY });
                timed(&mut upkeep, || sched.handle_input(Input::Connected { worker: id, addr: None }, now_d));
                flush_worker(id, now, &mut workers, &mut queue, &mut push, &mut ingress, &mut sizes, &mut out);
            }
            Happening::Leave(id) => {
                if workers.remove(&id).is_some() {
                    egress.forget(now, id);
                    ingress.forget(now, id);
                    schedule(&egress, &mut queue, &mut push, Happening::EgressDone);
                    schedule(&ingress, &mut queue, &mut push, Happening::IngressDone);
                    timed(&mut upkeep, || sched.handle_input(Input::Disconnected { worker: id }, now_d));
                    for list in holders.values_mut() {
                        list.retain(|&w| w != id);
                    }
                }
            }
            Happening::ToMaster(id, bytes) => {
                if workers.contains_key(&id) {
                    task_input = matches!(codec::decode(&bytes), Ok((Message::ResultChunk { .. } | Message::Release { .. }, _)));
                    let cpu = if task_input { &mut on_results } else { &mut upkeep };
                    timed(cpu, || sched.handle_input(Input::Message { worker: id, bytes: &bytes }, now_d));
                }
            }
            Happening::MasterWake => {
                if master_wake.is_some_and(|w| ns(w) == at) {
                    master_wake = None;
                    timed(&mut upkeep, || sched.handle_input(Input::Timeout, now_d));
                }
            }
            Happening::ToWorker(id, bytes) => {
                touched_master = false;
                let Some(w) = workers.get_mut(&id) else { continue };
                if std::env::var_os("SIM_TRACE").is_some() {
                    match codec::decode(&bytes).map(|d| d.0) {
                        Ok(Message::Panel { panel, .. }) => eprintln!("{now:.3} worker {id} has panel {panel}"),
                        Ok(Message::Task { lease, a, b, .. }) => eprintln!("{now:.3} worker {id} has task {lease} (panels {a}, {b})"),
                        _ => {}
                    }
                }
                if let (true, Ok((Message::Panel { job, panel, .. }, _))) = (setup.relay, codec::decode(&bytes)) {
                    holders.entry((job, panel)).or_default().push(id);
                }
                if w.session.handle_message(&bytes, now_d).is_err() {
                    continue; // e.g. a master gone silent: the session would reconnect; the sim ignores it
                }
                start_compute(id, now, &mut workers, &mut queue, &mut push, &sizes);
                flush_worker(id, now, &mut workers, &mut queue, &mut push, &mut ingress, &mut sizes, &mut out);
            }
            Happening::Computed(id, lease) => {
                touched_master = false;
                let Some(w) = workers.get_mut(&id) else { continue };
                let Some((l, c, took)) = w.computing.take() else { continue };
                debug_assert_eq!(l, lease);
                out.computing += took;
                w.session.complete(lease, c, Duration::from_secs_f64(took));
                start_compute(id, now, &mut workers, &mut queue, &mut push, &sizes);
                flush_worker(id, now, &mut workers, &mut queue, &mut push, &mut ingress, &mut sizes, &mut out);
            }
            Happening::EgressDone(version) => {
                touched_master = false;
                if version != egress.version {
                    continue;
                }
                let (_, to) = egress.next_done().expect("a pending completion");
                if let Some(done) = egress.finish(now, to) {
                    let (to, bytes, relayed_at) = done.payload;
                    let latency = workers.get(&to).map_or(0.0, |w| w.spec.latency);
                    let last = delivered_until.entry(to).or_insert(0.0);
                    *last = last.max(now + latency).max(relayed_at);
                    push(&mut queue, *last, Happening::ToWorker(to, bytes));
                }
                schedule(&egress, &mut queue, &mut push, Happening::EgressDone);
            }
            Happening::IngressDone(version) => {
                touched_master = false;
                if version != ingress.version {
                    continue;
                }
                let (_, from) = ingress.next_done().expect("a pending completion");
                if let Some(done) = ingress.finish(now, from) {
                    let (from, bytes) = done.payload;
                    let latency = workers.get(&from).map_or(0.0, |w| w.spec.latency);
                    push(&mut queue, now + latency, Happening::ToMaster(from, bytes));
                }
                schedule(&ingress, &mut queue, &mut push, Happening::IngressDone);
            }
            Happening::WorkerWake(id) => {
                touched_master = false;
                let Some(w) = workers.get_mut(&id) else { continue };
                if ns(w.wake_at) != at {
                    continue;
                }
                w.wake_at = f64::INFINITY;
                if w.session.handle_timeout(now_d).is_err() {
                    continue;
                }
                flush_worker(id, now, &mut workers, &mut queue, &mut push, &mut ingress, &mut sizes, &mut out);
            }
        }
        if !touched_master {
            continue;
        }
        out.inputs += 1;
        out.upkeep_inputs += u64::from(!task_input);
        let cpu = if task_input { &mut on_results } else { &mut upkeep };
        // Carry out what the scheduler asks.
        loop {
            match timed(cpu, || sched.poll_output()) {
                Output::Send { to, frame } => {
                    if !workers.contains_key(&to) {
                        continue;
                    }
                    let size = HEADER + sizes.sent(&frame.message);
                    let bytes = codec::encode_frame(&frame);
                    // A native holder relays (a tab cannot accept connections):
                    // the one that would deliver first, if sooner than the master would.
                    let to_link = workers[&to].spec.link;
                    let relay_from = match (&frame.message, setup.relay) {
                        (Message::Panel { job, panel, .. }, true) => holders.get(&(*job, *panel)).and_then(|h| {
                            let natives =
                                h.iter().filter(|&&r| r != to).filter_map(|&r| workers.get(&r).filter(|w| w.spec.kind == WorkerKind::Native).map(|w| (r, w)));
                            natives.map(|(r, w)| (r, w.up_free.max(now) + size / w.spec.link.min(to_link))).min_by(|x, y| x.1.total_cmp(&y.1))
                        }),
                        _ => None,
                    };
                    let from_master = egress.estimate(now, to, size, to_link);
                    match relay_from.filter(|&(_, done)| done < from_master) {
                        Some((r, done)) => {
                            workers.get_mut(&r).expect("listed").up_free = done;
                            out.relayed += size;
                            // No bytes on the master's link, but its place in the worker's stream.
                            let relayed_at = done + workers[&to].spec.latency;
                            egress.send(now, to, Transfer { bytes: 0.0, cap: to_link, payload: (to, bytes, relayed_at) });
                            schedule(&egress, &mut queue, &mut push, Happening::EgressDone);
                        }
                        None => {
                            out.egress += size;
                            egress.send(now, to, Transfer { bytes: size, cap: to_link, payload: (to, bytes, 0.0) });
                            schedule(&egress, &mut queue, &mut push, Happening::EgressDone);
                        }
                    }
                }
                Output::Close { worker, .. } => {
                    workers.remove(&worker);
                }
                Output::Event(Event::JobComplete { .. }) => {
                    out.complete = true;
                    out.makespan = now;
                }
                Output::Event(Event::Rejected { .. }) => out.rejected += 1,
                Output::Event(Event::Speculated { .. }) => out.speculated += 1,
                Output::Event(_) => {}
                Output::Wake(at) => {
                    if let Some(at) = at {
                        let at = (at.as_secs_f64()).max(now);
                        if master_wake.is_none_or(|w| w > at) {
                            master_wake = Some(at);
                            push(&mut queue, at, Happening::MasterWake);
                        }
                    }
                    break;
                }
            }
        }
        if out.complete {
            break;
        }
    }
    if let Some(mut job) = sched.remove_job(1, Duration::ZERO) {
        out.leases = job.stats().leases_issued;
        out.correct = job.take_result().is_some_and(|c| c == DenseMatrix::from(expected));
    }
    out.egress_busy = egress.busy;
    let cpu = on_results + upkeep;
    out.cpu_per_task = cpu / out.leases.max(1) as u32;
    out.cpu_per_input = cpu / out.inputs.max(1) as u32;
    out.upkeep_per_worker_second = upkeep.div_f64(out.worker_seconds.max(1.0));
    out.cpu_on_results_per_task = on_results / out.leases.max(1) as u32;
    out
}

/// Runs `f`, adding the CPU time it took to `cpu`: the scheduler's time
/// alone, not the simulated links' and workers' around it.
fn timed<R>(cpu: &mut Duration, f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = f();
    *cpu += started.elapsed();
    result
}

type Push<'a> = dyn FnMut(&mut BinaryHeap<Reverse<(u64, u64, Happening)>>, f64, Happening) + 'a;

/// Wakes the loop when the link's next message will have crossed.
fn schedule<T>(link: &Link<T>, queue: &mut BinaryHeap<Reverse<(u64, u64, Happening)>>, push: &mut Push<'_>, event: fn(u64) -> Happening) {
    if let Some((at, _)) = link.next_done() {
        push(queue, at, event(link.version));
    }
}

/// Starts the worker's next task if it is idle and one is ready.
fn start_compute(id: WorkerId, now: f64, workers: &mut BTreeMap<WorkerId, SimWorker>, queue: &mut BinaryHeap<Reverse<(u64, u64, Happening)>>, push: &mut Push<'_>, sizes: &Sizes) {
    let w = workers.get_mut(&id).expect("a live worker");
    if w.computing.is_some() {
        return;
    }
    let Some(task) = w.session.next_task() else { return };
    let mut c = task.compute();
    if w.spec.liar {
        let bytes = c.as_bytes_mut();
        let first = f64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        bytes[..8].copy_from_slice(&(first + 1.0).to_le_bytes());
    }
    let took = sizes.flops(task.lease) / w.spec.flops;
    if std::env::var_os("SIM_TRACE").is_some() {
        eprintln!("{now:.3} worker {id} computes lease {} for {took:.3} s", task.lease);
    }
    w.computing = Some((task.lease, c, took));
    push(queue, now + took, Happening::Computed(id, task.lease));
}

/// Sends what the worker's session has queued, over its uplink and the
/// master's ingress, and schedules its next timer.
#[allow(clippy::too_many_arguments)]
fn flush_worker(
    id: WorkerId,
    now: f64,
    workers: &mut BTreeMap<WorkerId, SimWorker>,
    queue: &mut BinaryHeap<Reverse<(u64, u64, Happening)>>,
    push: &mut Push<'_>,
    ingress: &mut Link<(WorkerId, Vec<u8>)>,
    sizes: &mut Sizes,
    out: &mut Outcome,
) {
    let w = workers.get_mut(&id).expect("a live worker");
    let mut sent = false;
    while let Some(frame) = w.session.poll_transmit() {
        let size = HEADER + sizes.received(&frame.message);
        out.ingress += size;
        ingress.send(now, id, Transfer { bytes: size, cap: w.spec.link, payload: (id, codec::encode_frame(&frame)) });
        sent = true;
    }
    if sent {
        schedule(ingress, queue, push, Happening::IngressDone);
    }
    let wake = w.session.poll_timeout().as_secs_f64().max(now);
    if wake < w.wake_at {
        w.wake_at = wake;
        push(queue, wake, Happening::WorkerWake(id));
    }
}

/// A tile's sides at the small scale: the shortest 2, the others in
/// proportion (at most 32, to keep the small job small).
fn small_tile(full: [usize; 3]) -> [usize; 3] {
    let shortest = full[0].min(full[1]).min(full[2]).max(1) as f64;
    full.map(|side| ((2.0 * side as f64 / shortest).round() as usize).clamp(2, 32))
}

/// Full-size bytes and flops of what travels and what is computed.
#[derive(Debug)]
struct Sizes {
    full: Plan,
    /// Each lease's tile, from the tasks sent.
    leases: HashMap<u64, usize>,
    /// One tile's working set (panels and product), full size over small.
    memory_ratio: f64,
}

impl Sizes {
    fn new(full: &Plan, small: &Plan) -> Self {
        let working_set = |p: &Plan| (p.largest_tile_elements() * 8) as f64;
        Self { full: full.clone(), leases: HashMap::new(), memory_ratio: working_set(small) / working_set(full) }
    }

    /// A worker's memory at the small scale.
    fn memory(&self, full: u64) -> u64 {
        ((full as f64 * self.memory_ratio) as u64).max(1)
    }

    /// Bytes of a message the master sends, at full size (bodies only), noting tasks' tiles.
    fn sent(&mut self, message: &Message) -> f64 {
        match message {
            Message::Panel { panel, .. } => (self.full.panel(*panel).elements() * 8) as f64,
            Message::Task { lease, a, b, .. } => {
                let (pk, pc) = (self.full.depth.parts, self.full.cols.parts);
                let (r, s) = (*a as usize / pk, *a as usize % pk);
                let c = (*b as usize - self.full.rows.parts * pk) % pc;
                self.leases.insert(*lease, self.full.index(r, c, s));
                0.0
            }
            _ => 0.0,
        }
    }

    /// Bytes of a message a worker sends, at full size (bodies only).
    fn received(&self, message: &Message) -> f64 {
        match message {
            Message::ResultChunk { lease, offset: 0, .. } => self.leases.get(lease).map_or(0.0, |&t| {
                let tile = self.full.tile(t);
                (tile.rows.len() * tile.cols.len() * 8) as f64
            }),
            _ => 0.0,
        }
    }

    fn flops(&self, lease: u64) -> f64 {
        let tile = self.full.tile(self.leases[&lease]);
        colonnade_core::kernel::flops(tile.rows.len(), tile.depth.len(), tile.cols.len())
    }
}
