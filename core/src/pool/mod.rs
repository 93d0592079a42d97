//! The workers a master serves, whatever jobs it runs: who may join, who is
//! still alive, how much work each may hold, what each already holds, and who
//! has lied too often.
//!
//! The pool outlives jobs (a service master runs many on one pool), so what it
//! learns of a worker (its speed, its strikes) carries from one job to the next.
//! It decides nothing about tasks: [`crate::scheduler`] asks it questions and
//! tells it what happened.

mod cache;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use crate::liveness::{Heartbeat, Liveness};
use crate::plan::model::Capacity;
use crate::plan::PanelId;
use crate::protocol::{JobId, LeaseId, Token, WorkerKind, PROTOCOL_VERSION};
pub(crate) use cache::Cache;

/// The shell's name for a connection.
pub type WorkerId = u64;

/// Who may join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// If set, native workers must present this token.
    pub token: Option<Token>,
    /// Whether browser volunteers (who have no token) may join.
    pub browsers: bool,
    /// A secret only the master's own in-process workers hold: they are
    /// admitted and trusted as holders of `token` are, whether it is set or not.
    pub own: Option<Token>,
}

impl Default for Access {
    fn default() -> Self {
        Self { token: None, browsers: true, own: None }
    }
}

/// Why a worker may not join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this master speaks protocol {PROTOCOL_VERSION}, the worker speaks {0}; run matching versions")]
    Version(u32),
    #[error("this master requires a token, and the worker presented none")]
    TokenRequired,
    #[error("wrong token: the worker's token is not the master's")]
    WrongToken,
    #[error("this master does not take browser volunteers")]
    NoBrowsers,
    #[error("this address sent too many wrong results")]
    Banned,
}

impl Refusal {
    /// The refusal whose wording is `reason`, as sent in a `Refused` message:
    /// so a worker's shell can add its own advice (such as which flag to pass).
    /// That message stays a plain string, readable by workers of any version.
    pub fn recognize(reason: &str) -> Option<Refusal> {
        [Refusal::TokenRequired, Refusal::WrongToken, Refusal::NoBrowsers, Refusal::Banned].into_iter().find(|r| r.to_string() == reason)
    }
}

/// What the pool needs of a worker's Hello.
#[derive(Debug)]
pub struct Hello {
    pub protocol: u32,
    pub kind: WorkerKind,
    pub slots: u32,
    pub name: String,
    pub token: Token,
    /// Bytes of panels and products it can hold.
    pub memory: u64,
    /// The speed it measured itself at, flop/s (0: unknown).
    pub flops: u64,
}

/// A worker's network address, as the shell saw it: IPv6 octets, an IPv4
/// address mapped into them (::ffff:a.b.c.d). Core only compares addresses
/// (to ban one) and asks whether one is loopback (the worker shares the
/// master's machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr(pub [u8; 16]);

impl PeerAddr {
    /// An IPv4 address, mapped.
    pub fn v4(octets: [u8; 4]) -> Self {
        let mut mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
        mapped[12..].copy_from_slice(&octets);
        Self(mapped)
    }

    /// ::1, or 127.0.0.0/8 mapped.
    pub fn is_loopback(&self) -> bool {
        let (head, v4) = self.0.split_at(12);
        let mapped = head[..10].iter().all(|&b| b == 0) && head[10..] == [0xff, 0xff];
        (mapped && v4[0] == 127) || self.0 == u128::to_be_bytes(1)
    }
}

/// What is known of a worker, kept after it leaves.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerInfo {
    pub kind: WorkerKind,
    pub name: String,
    pub addr: Option<PeerAddr>,
    /// Memory it announced for panels and products, and its own speed measure.
    pub memory: u64,
    pub announced_flops: u64,
    pub tiles_done: usize,
    /// Compute time the worker reported for its accepted tiles, and their flops.
    pub compute: Duration,
    pub flops: f64,
    /// Results that failed verification.
    pub strikes: u32,
    pub connected: bool,
    /// It holds the master's token, or is the master's own in-process worker:
    /// trusted from the start (full credit, panels sent ahead).
    pub trusted: bool,
}

/// The last leases cancelled under one worker. Late chunks come within a
/// round trip of the Cancel, so the last `Cancelled::KEEP` are plenty, and a
/// worker that stays up for many jobs does not grow this without bound.
#[derive(Debug, Default)]
pub struct Cancelled {
    order: VecDeque<LeaseId>,
    set: HashSet<LeaseId>,
}

impl Cancelled {
    const KEEP: usize = 1024;

    pub fn insert(&mut self, lease: LeaseId) {
        if self.set.insert(lease) {
            self.order.push_back(lease);
            if self.order.len() > Self::KEEP {
                let oldest = self.order.pop_front().expect("over KEEP");
                self.set.remove(&oldest);
            }
        }
    }

    pub fn contains(&self, lease: &LeaseId) -> bool {
        self.set.contains(lease)
    }
}

/// What would let a benched worker ([`Pool::bench`]) get work: each
/// includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Bench {
    /// A region nobody owns gains work: a fast worker that never had one may claim it.
    UntilRegionFrees,
    /// A job is planned, or its plan opens to all.
    UntilPlanChanges,
}

/// A lease as its worker's record keeps it: what it pins in the cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub job: JobId,
    pub panels: [PanelId; 2],
    /// Bytes reserved for its product.
    pub product: u64,
}

/// A connected, welcomed worker.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Tasks it may hold at most.
    pub slots: usize,
    /// Tasks it may hold now: one at first, one more for each result it sends
    /// back, up to `slots`; so a stranger that takes tasks and never answers
    /// holds one. A trusted worker starts with all its slots: its second task
    /// does not wait for its first result.
    pub credit: usize,
    /// It holds the master's token, or is one of the master's in-process
    /// workers: the operator's own, given from the start what others earn by
    /// their results (full credit, panels sent ahead).
    pub trusted: bool,
    /// Its leases.
    pub leases: BTreeMap<LeaseId, Held>,
    /// Leases cancelled because another copy won, or their job was removed;
    /// their late chunks are ignored.
    pub cancelled: Cancelled,
    /// Jobs it has been told of.
    pub jobs: BTreeSet<JobId>,
    /// Tiles set aside for it, whose panels are sent ahead of their tasks (and
    /// pinned in its cache), so the link works while it computes.
    pub ahead: VecDeque<(JobId, usize, [PanelId; 2])>,
    /// What it holds, exactly as it holds it.
    pub cache: Cache,
    pub liveness: Liveness,
    /// When its liveness check is listed for (in `Pool::checks`).
    check_at: Duration,
    /// Smoothed time from issuing one of its leases to the result.
    pub task_time: Option<Duration>,
}

impl Worker {
    pub fn has_room(&self) -> bool {
        self.leases.len() < self.credit
    }
}

#[derive(Debug)]
pub struct Pool {
    access: Access,
    heartbeat: Heartbeat,
    max_slots: u32,
    max_strikes: u32,
    /// Connections not yet welcomed (or refused), by address.
    connecting: BTreeMap<WorkerId, Option<PeerAddr>>,
    pub(crate) workers: BTreeMap<WorkerId, Worker>,
    /// Workers with room for another task: those with a verified result first
    /// (preferred when work is short), then newcomers. A worker offered
    /// nothing is parked until something changes ([`Pool::unpark_all`]).
    room: BTreeSet<(bool, WorkerId)>,
    /// Keyed as in `room`, so that unparking is one merge.
    parked: BTreeSet<(bool, WorkerId)>,
    /// Parked workers that every running job's plan leaves out, whatever
    /// comes back to its queue, by what would change that ([`Bench`]). A
    /// crowd's idle tabs wait here, so work coming back is not offered to
    /// each of them in turn.
    benched: [BTreeSet<(bool, WorkerId)>; 2],
    /// Each worker's next liveness check (a heartbeat due, or its silence
    /// limit), earliest first. Kept lazily: hearing from a worker does not move
    /// its check; a check that finds nothing due sets the next one.
    checks: BTreeSet<(Duration, WorkerId)>,
    /// Connected workers by kind: native, browser.
    headcount: [usize; 2],
    infos: BTreeMap<WorkerId, WorkerInfo>,
    /// Addresses that sent too many wrong results: refused for the pool's life.
    banned: BTreeSet<PeerAddr>,
}

impl Pool {
    pub fn new(access: Access, heartbeat: Heartbeat, max_slots: u32, max_strikes: u32) -> Self {
        Self {
            access,
            heartbeat,
            max_slots,
            max_strikes,
            connecting: BTreeMap::new(),
            workers: BTreeMap::new(),
            room: BTreeSet::new(),
            parked: BTreeSet::new(),
            benched: [BTreeSet::new(), BTreeSet::new()],
            checks: BTreeSet::new(),
            headcount: [0; 2],
            infos: BTreeMap::new(),
            banned: BTreeSet::new(),
        }
    }

    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat
    }

    /// A connection opened from `addr`; refused at once if that address is banned.
    pub fn connect(&mut self, worker: WorkerId, addr: Option<PeerAddr>) -> Result<(), Refusal> {
        if addr.is_some_and(|a| self.banned.contains(&a)) {
            return Err(Refusal::Banned);
        }
        self.connecting.insert(worker, addr);
        Ok(())
    }

    pub fn is_member(&self, worker: WorkerId) -> bool {
        self.workers.contains_key(&worker)
    }

    /// Connected, and not yet welcomed or refused.
    pub fn is_connecting(&self, worker: WorkerId) -> bool {
        self.connecting.contains_key(&worker)
    }

    /// Admits a worker that said Hello, granting it at most `max_slots` tasks.
    /// Returns the slots granted.
    pub fn admit(&mut self, worker: WorkerId, hello: Hello, now: Duration) -> Result<u32, Refusal> {
        let addr = self.connecting.remove(&worker).flatten();
        if addr.is_some_and(|a| self.banned.contains(&a)) {
            return Err(Refusal::Banned);
        }
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Refusal::Version(hello.protocol));
        }
        self.access_check(hello.kind, &hello.token)?;
        let slots = hello.slots.min(self.max_slots);
        let trusted = self.holds_token(&hello.token);
        let liveness = Liveness::new(now, &self.heartbeat);
        let check_at = liveness.next_wake(self.heartbeat.timeout);
        let w = Worker {
            slots: slots as usize,
            credit: if trusted { slots as usize } else { 1 },
            trusted,
            leases: BTreeMap::new(),
            cancelled: Cancelled::default(),
            jobs: BTreeSet::new(),
            ahead: VecDeque::new(),
            cache: Cache::new(hello.memory),
            liveness,
            check_at,
            task_time: None,
        };
        self.checks.insert((check_at, worker));
        self.room.insert((true, worker));
        self.workers.insert(worker, w);
        self.headcount[kind_index(hello.kind)] += 1;
        let info = WorkerInfo {
            kind: hello.kind,
            name: hello.name,
            addr,
            memory: hello.memory,
            announced_flops: hello.flops,
            tiles_done: 0,
            compute: Duration::ZERO,
            flops: 0.0,
            strikes: 0,
            connected: true,
            trusted,
        };
        self.infos.insert(worker, info);
        Ok(slots)
    }

    /// A token admits anyone; without one, only browsers may join (if browsers
    /// are allowed) or anyone at all (if the master has no token).
    fn access_check(&self, kind: WorkerKind, token: &Token) -> Result<(), Refusal> {
        let access = &self.access;
        match kind {
            _ if self.holds_token(token) => Ok(()),
            WorkerKind::Browser if !access.browsers => Err(Refusal::NoBrowsers),
            WorkerKind::Browser => Ok(()),
            WorkerKind::Native if access.token.is_none() => Ok(()),
            WorkerKind::Native if token.is_empty() => Err(Refusal::TokenRequired),
            WorkerKind::Native => Err(Refusal::WrongToken),
        }
    }

    /// Whether `token` is the master's, or its own workers' (a master with
    /// neither trusts no one this way).
    fn holds_token(&self, token: &Token) -> bool {
        [&self.access.token, &self.access.own].into_iter().flatten().any(|t| t == token)
    }

    /// The worker's connection is gone; returns what it held.
    pub(crate) fn leave(&mut self, worker: WorkerId) -> Option<Worker> {
        self.connecting.remove(&worker);
        let w = self.workers.remove(&worker)?;
        self.unroom(worker);
        self.checks.remove(&(w.check_at, worker));
        if let Some(info) = self.infos.get_mut(&worker) {
            info.connected = false;
            self.headcount[kind_index(info.kind)] -= 1;
        }
        Some(w)
    }

    /// Whether `worker` is new: no verified result yet.
    fn is_new(&self, worker: WorkerId) -> bool {
        self.infos.get(&worker).is_none_or(|i| i.tiles_done == 0)
    }

    /// Whether `worker` has a verified result to its name.
    pub(crate) fn is_proven(&self, worker: WorkerId) -> bool {
        !self.is_new(worker)
    }

    /// Whether `worker` holds the master's token.
    pub(crate) fn is_trusted(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.trusted)
    }

    /// Takes `worker` off the room, parked and benched lists. It is on one at
    /// most, keyed by its standing now ([`Self::credit`] takes it off before
    /// that changes), so this stops at the first list that had it.
    fn unroom(&mut self, worker: WorkerId) {
        let key = (self.is_new(worker), worker);
        let [until_region, until_plan] = &mut self.benched;
        debug_assert!(
            ![&self.room, &self.parked, &*until_region, &*until_plan].iter().any(|list| list.contains(&(!key.0, worker))),
            "listed under its old standing"
        );
        let _ = self.room.remove(&key) || self.parked.remove(&key) || until_region.remove(&key) || until_plan.remove(&key);
    }

    /// Lists `worker` as having room, if it has.
    fn reroom(&mut self, worker: WorkerId) {
        self.unroom(worker);
        self.list_if_room(worker);
    }

    /// Lists `worker`, on no list now, as having room, if it has.
    fn list_if_room(&mut self, worker: WorkerId) {
        if self.workers.get(&worker).is_some_and(Worker::has_room) {
            self.room.insert((self.is_new(worker), worker));
        }
    }

    /// Gives `worker` a lease.
    pub(crate) fn add_lease(&mut self, worker: WorkerId, lease: LeaseId, held: Held) {
        let w = self.workers.get_mut(&worker).expect("a member");
        w.leases.insert(lease, held);
        self.reroom(worker);
    }

    /// `worker` was offered nothing: leave it out until something changes.
    pub(crate) fn park(&mut self, worker: WorkerId) {
        self.unroom(worker);
        self.parked.insert((self.is_new(worker), worker));
    }

    /// Something changed (a worker left, work came back, a job came): offer
    /// to the parked workers again.
    pub(crate) fn unpark_all(&mut self) {
        // Parked workers have room (whatever changes that rerooms them).
        self.room.append(&mut self.parked);
    }

    /// `worker` was offered nothing, and no plan running now will give it
    /// anything until `until`: leave it out till then.
    pub(crate) fn bench(&mut self, worker: WorkerId, until: Bench) {
        self.unroom(worker);
        self.benched[until as usize].insert((self.is_new(worker), worker));
    }

    /// `what` happened: offer to the workers benched until then again, and
    /// to the parked ones (what frees work for the benched may free some for them).
    pub(crate) fn unbench(&mut self, what: Bench) {
        self.unpark_all();
        for until in Bench::UntilRegionFrees as usize..=what as usize {
            self.room.append(&mut self.benched[until]);
        }
    }

    /// Offers to up to `count` workers benched until `until` again: the first
    /// listed after `after` (proven ones first). Returns the last one woken,
    /// to go on after next time.
    pub(crate) fn unbench_next(&mut self, until: Bench, after: Option<(bool, WorkerId)>, count: usize) -> Option<(bool, WorkerId)> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let woken: Vec<(bool, WorkerId)> = self.benched[until as usize].range((from, Bound::Unbounded)).take(count).copied().collect();
        for key in &woken {
            self.benched[until as usize].remove(key);
            self.room.insert(*key);
        }
        woken.last().copied()
    }

    /// The benched workers.
    #[cfg(test)]
    pub(crate) fn benched(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.benched.iter().flatten().map(|&(_, w)| w)
    }

    /// What `worker` is benched until, if it is.
    #[cfg(test)]
    pub(crate) fn benched_until(&self, worker: WorkerId) -> Option<Bench> {
        let listed = |until: Bench| self.benched[until as usize].iter().any(|&(_, w)| w == worker);
        [Bench::UntilRegionFrees, Bench::UntilPlanChanges].into_iter().find(|&until| listed(until))
    }

    /// A lease ended (a result, a cancel, a hand-back): its panels and product are free.
    pub(crate) fn end_lease(&mut self, worker: WorkerId, lease: LeaseId) -> Option<Held> {
        let w = self.workers.get_mut(&worker)?;
        let held = w.leases.remove(&lease)?;
        for panel in held.panels {
            w.cache.unpin(held.job, panel);
        }
        w.cache.release(held.product);
        self.reroom(worker);
        Some(held)
    }

    /// The next worker with room for another task after `after` (from the
    /// first if `None`), those with a verified record first: one at a time,
    /// so that offering stops where the work does.
    /// Returns its place in that order too, for the next call.
    pub(crate) fn next_with_room(&self, after: Option<(bool, WorkerId)>) -> Option<(bool, WorkerId)> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.room.range((from, Bound::Unbounded)).next().copied()
    }

    /// Whether a worker with room may take a straggler's copy: benched ones
    /// may not (they have no verified record).
    pub(crate) fn someone_has_room(&self) -> bool {
        !self.room.is_empty() || !self.parked.is_empty()
    }

    pub fn heard(&mut self, worker: WorkerId, now: Duration) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.liveness.heard(now);
        }
    }

    /// Time has reached `now`: the workers a heartbeat is due to, and those
    /// silent past their limit (with how long), whose checks are then dropped.
    pub(crate) fn due(&mut self, now: Duration, typical: Option<Duration>) -> (Vec<WorkerId>, Vec<(WorkerId, Duration)>) {
        let (mut beats, mut silent) = (Vec::new(), Vec::new());
        while let Some(&(at, id)) = self.checks.first().filter(|&&(at, _)| at <= now) {
            self.checks.remove(&(at, id));
            let limit = self.silence_limit_of(id, typical);
            let w = self.workers.get_mut(&id).expect("checks are of members");
            if w.liveness.beat_due(now, &self.heartbeat) {
                beats.push(id);
            }
            match w.liveness.silent_past(now, limit) {
                Some(quiet) => silent.push((id, quiet)),
                None => {
                    w.check_at = w.liveness.next_wake(limit);
                    self.checks.insert((w.check_at, id));
                }
            }
        }
        (beats, silent)
    }

    fn silence_limit_of(&self, worker: WorkerId, typical: Option<Duration>) -> Duration {
        self.silence_limit(&self.workers[&worker], typical)
    }

    /// Silence allowed before `w` is given up on: a browser tab says nothing
    /// while it computes, so twice its expected task time if that is longer.
    pub(crate) fn silence_limit(&self, w: &Worker, typical: Option<Duration>) -> Duration {
        let computing = w.task_time.or(typical).unwrap_or_default() * 2;
        self.heartbeat.timeout.max(computing)
    }

    /// The next liveness check.
    pub(crate) fn next_wake(&self) -> Option<Duration> {
        self.checks.first().map(|&(at, _)| at)
    }

    /// Records a wrong result; returns the strikes so far and whether that is
    /// too many, in which case its address is banned.
    pub(crate) fn strike(&mut self, worker: WorkerId) -> (u32, bool) {
        let Some(info) = self.infos.get_mut(&worker) else { return (0, false) };
        info.strikes += 1;
        let out = info.strikes >= self.max_strikes;
        if out {
            if let Some(addr) = info.addr {
                self.banned.insert(addr);
            }
        }
        (info.strikes, out)
    }

    /// `worker` sent a whole result (right or wrong, verified yet or not): it
    /// answers, so it may hold one more task, up to its slots.
    pub(crate) fn answered(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.credit = (w.credit + 1).min(w.slots);
        }
        self.reroom(worker);
    }

    /// Records a verified result of `flops`, the compute time the worker
    /// reported, and the time it took from issue to result.
    pub(crate) fn credit(&mut self, worker: WorkerId, flops: f64, compute: Duration, took: Duration) {
        // Off the lists under its old standing: the first result changes it.
        self.unroom(worker);
        if let Some(info) = self.infos.get_mut(&worker) {
            info.tiles_done += 1;
            info.compute += compute;
            info.flops += flops;
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.task_time = Some(smooth(w.task_time, took));
        }
        self.list_if_room(worker);
    }

    /// Every worker that ever joined, connected or not.
    /// Forgets the workers that have left: for a master that stays up, whose
    /// pool would otherwise remember every connection it ever had.
    pub(crate) fn forget_departed(&mut self) {
        self.infos.retain(|_, info| info.connected);
    }

    pub fn infos(&self) -> impl Iterator<Item = (WorkerId, &WorkerInfo)> {
        self.infos.iter().map(|(&id, info)| (id, info))
    }

    pub fn info(&self, worker: WorkerId) -> Option<&WorkerInfo> {
        self.infos.get(&worker)
    }

    /// What the plan needs to know of each connected worker: its memory, and
    /// its speed as measured on verified tiles (or `assumed`).
    pub fn capacities(&self, assumed: f64) -> Vec<Capacity> {
        self.workers
            .iter()
            .map(|(id, w)| {
                let info = &self.infos[id];
                let local = info.addr.is_some_and(|a| a.is_loopback());
                Capacity { memory: w.cache.budget(), flops: self.speed_of(info, assumed), local }
            })
            .collect()
    }

    /// A worker's speed: measured on its verified tiles, or as it announced
    /// (within reason), or `assumed`.
    fn speed_of(&self, info: &WorkerInfo, assumed: f64) -> f64 {
        if info.compute > Duration::ZERO {
            return info.flops / info.compute.as_secs_f64();
        }
        match info.announced_flops {
            0 => assumed,
            // No one is believed faster than a large server, nor slower than a phone.
            f => (f as f64).clamp(1e8, 1e13),
        }
    }

    /// `worker`'s speed, as [`Self::capacities`] counts it.
    pub(crate) fn speed(&self, worker: WorkerId, assumed: f64) -> f64 {
        self.infos.get(&worker).map_or(assumed, |info| self.speed_of(info, assumed))
    }

    /// Connected workers of `kind`.
    pub fn connected(&self, kind: WorkerKind) -> usize {
        self.headcount[kind_index(kind)]
    }
}

fn kind_index(kind: WorkerKind) -> usize {
    match kind {
        WorkerKind::Native => 0,
        WorkerKind::Browser => 1,
    }
}

/// An exponentially smoothed duration: recent samples weigh a fifth.
pub(crate) fn smooth(old: Option<Duration>, sample: Duration) -> Duration {
    match old {
        None => sample,
        Some(t) => t.mul_f64(0.8) + sample.mul_f64(0.2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(kind: WorkerKind, token: &str) -> Hello {
        Hello { protocol: PROTOCOL_VERSION, kind, slots: 2, name: "w".into(), token: Token::new(token), memory: 1 << 30, flops: 0 }
    }

    #[test]
    fn a_token_admits_native_workers_and_browsers_follow_the_setting() {
        let access = Access { token: Some(Token::new("open sesame")), browsers: false, own: None };
        let mut pool = Pool::new(access, Heartbeat::default(), 4, 3);
        let t0 = Duration::ZERO;
        assert_eq!(pool.admit(1, hello(WorkerKind::Native, ""), t0), Err(Refusal::TokenRequired));
        assert_eq!(pool.admit(2, hello(WorkerKind::Native, "open sesamE"), t0), Err(Refusal::WrongToken));
        assert_eq!(pool.admit(3, hello(WorkerKind::Browser, ""), t0), Err(Refusal::NoBrowsers));
        assert_eq!(pool.admit(4, hello(WorkerKind::Native, "open sesame"), t0), Ok(2));
        assert_eq!(pool.admit(5, hello(WorkerKind::Browser, "open sesame"), t0), Ok(2));
        let mut open = Pool::new(Access::default(), Heartbeat::default(), 1, 3);
        assert_eq!(open.admit(1, hello(WorkerKind::Native, ""), t0), Ok(1), "no token set: anyone may join, within max_slots");
        assert_eq!(open.admit(2, Hello { protocol: 0, ..hello(WorkerKind::Browser, "") }, t0), Err(Refusal::Version(0)));
    }

    #[test]
    fn loopback_addresses_are_known_in_both_families() {
        assert!(PeerAddr::v4([127, 0, 0, 1]).is_loopback() && PeerAddr::v4([127, 3, 2, 1]).is_loopback());
        assert!(PeerAddr(u128::to_be_bytes(1)).is_loopback());
        assert!(!PeerAddr::v4([10, 0, 0, 7]).is_loopback() && !PeerAddr::v4([128, 0, 0, 1]).is_loopback());
        let mut v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(!PeerAddr(v6).is_loopback());
        v6[..12].copy_from_slice(&[0; 12]); // ::127.0.0.1, the old IPv4-compatible form: not loopback
        v6[12] = 127;
        assert!(!PeerAddr(v6).is_loopback());
    }

    #[test]
    fn too_many_strikes_ban_the_address_for_the_pools_life() {
        let mut pool = Pool::new(Access::default(), Heartbeat::default(), 4, 2);
        let addr = PeerAddr::v4([10, 0, 0, 7]);
        pool.connect(1, Some(addr)).unwrap();
        pool.admit(1, hello(WorkerKind::Browser, ""), Duration::ZERO).unwrap();
        assert_eq!(pool.strike(1), (1, false));
        assert_eq!(pool.strike(1), (2, true));
        pool.leave(1);
        assert_eq!(pool.connect(2, Some(addr)), Err(Refusal::Banned));
        assert_eq!(pool.connect(3, Some(PeerAddr::v4([10, 0, 0, 8]))), Ok(()));
    }

    /// Every worker with room, one at a time, proven ones first.
    fn room_order(pool: &Pool) -> Vec<WorkerId> {
        std::iter::successors(pool.next_with_room(None), |&place| pool.next_with_room(Some(place))).map(|(_, id)| id).collect()
    }

    #[test]
    fn parked_workers_come_back_in_order_and_leave_for_good() {
        let mut pool = Pool::new(Access::default(), Heartbeat::default(), 4, 3);
        for id in 1..=4 {
            pool.admit(id, hello(WorkerKind::Native, ""), Duration::ZERO).unwrap();
        }
        pool.credit(3, 1.0, Duration::ZERO, Duration::ZERO);
        assert_eq!(room_order(&pool), [3, 1, 2, 4], "the proven worker first");
        pool.park(1);
        pool.park(3);
        assert_eq!(room_order(&pool), [2, 4]);
        assert!(pool.someone_has_room());
        pool.leave(3);
        pool.unpark_all();
        assert_eq!(room_order(&pool), [1, 2, 4], "a parked worker that left stays gone");
        pool.park(2);
        pool.credit(2, 1.0, Duration::ZERO, Duration::ZERO);
        assert_eq!(room_order(&pool), [2, 1, 4], "news about a parked worker lists it again, under its new standing");
    }

    #[test]
    fn benched_workers_come_back_only_when_what_they_wait_for_happens() {
        let mut pool = Pool::new(Access::default(), Heartbeat::default(), 4, 3);
        for id in 1..=4 {
            pool.admit(id, hello(WorkerKind::Native, ""), Duration::ZERO).unwrap();
        }
        pool.bench(1, Bench::UntilRegionFrees);
        pool.bench(2, Bench::UntilPlanChanges);
        pool.park(3);
        pool.unpark_all();
        assert_eq!(room_order(&pool), [3, 4], "work coming back is not offered to the benched");
        assert!(pool.someone_has_room());
        pool.unbench(Bench::UntilRegionFrees);
        assert_eq!(room_order(&pool), [1, 3, 4]);
        pool.bench(1, Bench::UntilPlanChanges);
        pool.leave(2);
        pool.unbench(Bench::UntilPlanChanges);
        assert_eq!(room_order(&pool), [1, 3, 4], "a benched worker that left stays gone");
    }

    #[test]
    fn a_freed_region_wakes_only_as_many_benched_workers_as_it_can_take() {
        let mut pool = Pool::new(Access::default(), Heartbeat::default(), 4, 3);
        for id in 1..=4 {
            pool.admit(id, hello(WorkerKind::Native, ""), Duration::ZERO).unwrap();
            pool.bench(id, Bench::UntilRegionFrees);
        }
        pool.bench(4, Bench::UntilPlanChanges);
        let last = pool.unbench_next(Bench::UntilRegionFrees, None, 2);
        assert_eq!(last, Some((true, 2)));
        assert_eq!(room_order(&pool), [1, 2], "the first two, in their order");
        assert_eq!(pool.benched_until(3), Some(Bench::UntilRegionFrees), "the third waits on");
        pool.bench(1, Bench::UntilRegionFrees);
        assert_eq!(pool.unbench_next(Bench::UntilRegionFrees, last, 5), Some((true, 3)), "after the last woken: the third, not the first again");
        assert_eq!(pool.benched_until(1), Some(Bench::UntilRegionFrees));
        assert_eq!(pool.benched_until(4), Some(Bench::UntilPlanChanges), "another bench is not touched");
    }
}
