//! A shared link, as TCP connections share one: each worker's messages go in
//! order (one connection each), and the connections with something to send
//! share the link's capacity max-min fairly, each also capped by its worker's
//! own link.

use std::collections::{BTreeMap, VecDeque};

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
    /// When `left` was last brought up to date.
    at: f64,
    /// Bumped on every change: a completion computed before it is stale.
    pub version: u64,
    /// Seconds during which something was crossing.
    pub busy: f64,
}

impl<T> Link<T> {
    pub fn new(capacity: f64) -> Self {
        Self { capacity, flows: BTreeMap::new(), at: 0.0, version: 0, busy: 0.0 }
    }

    /// Each active flow's rate: max-min fair, within the flows' caps.
    fn rates(&self) -> BTreeMap<WorkerId, f64> {
        let mut caps: Vec<(f64, WorkerId)> = self.flows.iter().map(|(&w, f)| (f.head.cap, w)).collect();
        caps.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (mut left, mut count) = (self.capacity, caps.len());
        let mut rates = BTreeMap::new();
        for (cap, worker) in caps {
            let share = left / count as f64;
            let rate = cap.min(share);
            rates.insert(worker, rate);
            left -= rate;
            count -= 1;
        }
        rates
    }

    /// Brings every flow's progress up to `now`.
    fn advance(&mut self, now: f64) {
        let elapsed = (now - self.at).max(0.0);
        if elapsed > 0.0 && !self.flows.is_empty() {
            self.busy += elapsed;
            for (worker, rate) in self.rates() {
                let flow = self.flows.get_mut(&worker).expect("rates are of flows");
                flow.left = (flow.left - rate * elapsed).max(0.0);
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
                self.flows.insert(worker, Flow { left: transfer.bytes, head: transfer, queue: VecDeque::new() });
            }
        }
    }

    /// When the next message finishes crossing, and on whose connection.
    pub fn next_done(&self) -> Option<(f64, WorkerId)> {
        let rates = self.rates();
        self.flows.iter().map(|(&w, f)| (self.at + f.left / rates[&w].max(1e-9), w)).min_by(|x, y| x.0.total_cmp(&y.0))
    }

    /// The message on `worker`'s connection has crossed at `now`: returns it,
    /// and starts the next.
    pub fn finish(&mut self, now: f64, worker: WorkerId) -> Option<Transfer<T>> {
        self.advance(now);
        self.version += 1;
        let mut flow = self.flows.remove(&worker)?;
        let done = flow.head;
        if let Some(next) = flow.queue.pop_front() {
            flow.left = next.bytes;
            flow.head = next;
            self.flows.insert(worker, flow);
        }
        Some(done)
    }

    /// Drops everything queued for `worker` (it left).
    pub fn forget(&mut self, now: f64, worker: WorkerId) {
        self.advance(now);
        self.version += 1;
        self.flows.remove(&worker);
    }
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
    }
}
