//! A shared link, as TCP connections share one: each worker's messages go in
//! order (one connection each), and the connections with something to send
//! share the link's capacity max-min fairly, each also capped by its worker's
//! own link.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use colonnade_core::scheduler::WorkerId;

/// A message crossing the link.
#[derive(Debug)]
pub struct Transfer<T> {
    pub bytes: f64,
    /// The worker's own link rate, bytes/s: this flow never goes faster.
    pub cap: f64,
    pub payload: T,
}

#[derive(Debug)]
struct Flow<T> {
    left: f64,
    head: Transfer<T>,
    queue: VecDeque<Transfer<T>>,
}

#[derive(Debug)]
pub struct Link<T> {
    capacity: f64,
    flows: BTreeMap<WorkerId, Flow<T>>,
    /// The active flows' caps, in increasing order (the bits of a positive
    /// f64 order as the number does).
    by_cap: BTreeSet<(u64, WorkerId)>,
    /// When `left` was last brought up to date.
    at: f64,
    /// Bumped on every change: a completion computed before it is stale.
    pub version: u64,
    /// Seconds during which something was crossing.
    pub busy: f64,
}

impl<T> Link<T> {
    pub fn new(capacity: f64) -> Self {
        Self { capacity, flows: BTreeMap::new(), by_cap: BTreeSet::new(), at: 0.0, version: 0, busy: 0.0 }
    }

    /// The max-min fair level: each active flow gets `min(its cap, level)`.
    fn level(&self) -> f64 {
        fair_level(self.capacity, self.flows.len(), self.by_cap.iter().map(|&(cap, _)| f64::from_bits(cap)))
    }

    /// Brings every flow's progress up to `now`.
    fn advance(&mut self, now: f64) {
        let elapsed = (now - self.at).max(0.0);
        if elapsed > 0.0 && !self.flows.is_empty() {
            self.busy += elapsed;
            let level = self.level();
            for flow in self.flows.values_mut() {
                flow.left = (flow.left - flow.head.cap.min(level) * elapsed).max(0.0);
            }
        }
        self.at = now.max(self.at);
    }

    /// Queues `transfer` on `worker`'s connection at `now`.
    pub fn send(&mut self, now: f64, worker: WorkerId, transfer: Transfer<T>) {
        self.advance(now);
        self.version += 1;
        match self.flows.get_mut(&worker) {
            Some(flow) => flow.queue.push_back(transfer),
            None => {
                self.by_cap.insert((transfer.cap.to_bits(), worker));
                self.flows.insert(worker, Flow { left: transfer.bytes, head: transfer, queue: VecDeque::new() });
            }
        }
    }

    /// Roughly when `bytes` sent now to `worker` (capped at `cap`) would have
    /// crossed: after what its connection has queued, at its flow's rate now
    /// (or a new flow's, if it has none).
    pub fn estimate(&self, now: f64, worker: WorkerId, bytes: f64, cap: f64) -> f64 {
        let (rate, ahead) = match self.flows.get(&worker) {
            Some(flow) => (flow.head.cap.min(self.level()), flow.left + flow.queue.iter().map(|t| t.bytes).sum::<f64>()),
            None => {
                let mut caps: Vec<f64> = self.by_cap.iter().map(|&(c, _)| f64::from_bits(c)).collect();
                caps.insert(caps.partition_point(|&c| c < cap), cap);
                (cap.min(fair_level(self.capacity, caps.len(), caps.into_iter())), 0.0)
            }
        };
        now.max(self.at) + (ahead + bytes) / rate
    }

    /// When the next message finishes crossing, and on whose connection.
    pub fn next_done(&self) -> Option<(f64, WorkerId)> {
        let level = self.level();
        self.flows.iter().map(|(&w, f)| (self.at + f.left / f.head.cap.min(level).max(1e-9), w)).min_by(|x, y| x.0.total_cmp(&y.0))
    }

    /// The message on `worker`'s connection has crossed at `now`: returns it,
    /// and starts the next.
    pub fn finish(&mut self, now: f64, worker: WorkerId) -> Option<Transfer<T>> {
        self.advance(now);
        self.version += 1;
        let mut flow = self.flows.remove(&worker)?;
        self.by_cap.remove(&(flow.head.cap.to_bits(), worker));
        let done = flow.head;
        if let Some(next) = flow.queue.pop_front() {
            flow.left = next.bytes;
            flow.head = next;
            self.by_cap.insert((flow.head.cap.to_bits(), worker));
            self.flows.insert(worker, flow);
        }
        Some(done)
    }

    /// Drops everything queued for `worker` (it left).
    pub fn forget(&mut self, now: f64, worker: WorkerId) {
        self.advance(now);
        self.version += 1;
        if let Some(flow) = self.flows.remove(&worker) {
            self.by_cap.remove(&(flow.head.cap.to_bits(), worker));
        }
    }
}

/// The max-min fair level of `count` flows whose caps come in increasing
/// order: the caps fill the link until the next one's fair share of what is
/// left is below its cap; every flow from there on gets that share.
fn fair_level(capacity: f64, count: usize, sorted_caps: impl Iterator<Item = f64>) -> f64 {
    let (mut left, mut count) = (capacity, count);
    for cap in sorted_caps {
        let share = left / count as f64;
        if cap >= share {
            return share;
        }
        left -= cap;
        count -= 1;
    }
    f64::INFINITY
}

/// The link's arithmetic on a case worked by hand; the simulator checks it
/// before every run (a bench target's own tests would never run).
pub fn self_check() {
    {
        let mut link: Link<u8> = Link::new(100.0);
        link.send(0.0, 1, Transfer { bytes: 100.0, cap: 1000.0, payload: 1 });
        link.send(0.0, 2, Transfer { bytes: 100.0, cap: 20.0, payload: 2 });
        // Worker 2 is capped at 20, so worker 1 gets 80: done at 1.25 s.
        let (t, w) = link.next_done().unwrap();
        assert_eq!(w, 1);
        assert!((t - 1.25).abs() < 1e-9, "{t}");
        assert_eq!(link.finish(t, 1).unwrap().payload, 1);
        // Worker 2 had 100 - 25 left, at 20/s.
        let (t, w) = link.next_done().unwrap();
        assert!((t - (1.25 + 75.0 / 20.0)).abs() < 1e-9 && w == 2, "{t}");
        // A new flow beside worker 2's (capped at 20) would get 80; more for
        // worker 2 waits for its 75 left, at 20.
        assert!((link.estimate(1.25, 3, 160.0, 1000.0) - (1.25 + 2.0)).abs() < 1e-9);
        assert!((link.estimate(1.25, 2, 25.0, 20.0) - (1.25 + 5.0)).abs() < 1e-9);
    }
}
