//! Choosing the tile grid from the pool: a communication model.
//!
//! The master holds A and B and is the hub of a star: every byte a worker
//! receives leaves the master's link once, and every partial product comes
//! back over it. So the model counts bytes across that link.
//!
//! **Worker grid.** p workers are laid out as wr × wc × wk boxes of C·k: worker
//! (i, j, l) computes rows I_i, columns J_j and depth slice K_l. It needs A[I_i,
//! K_l] and B[K_l, J_j], and sends back C[I_i, J_j] (a partial sum when wk > 1).
//! With each box's panels fitting in its worker's memory:
//!
//! | shape          | egress (master → workers) | ingress       | memory per worker            |
//! |----------------|---------------------------|---------------|------------------------------|
//! | 1-D (1, p, 1)  | p·|A| + |B|               | |C|           | |A| + |B|/p + |C|/p          |
//! | 2-D (wr, wc, 1)| wc·|A| + wr·|B|           | |C|           | |A|/wr + |B|/wc + |C|/(wr·wc) |
//! | 3-D (wr, wc, wk)| wc·|A| + wr·|B|          | wk·|C|        | (|A|/wc + |B|/wr + |C|·wk)/p  |
//!
//! For square matrices and wr = wc = wk = p^(1/3), egress is p^(1/3)·(|A|+|B|)
//! against (p+1)·|A| for 1-D. Time is modelled as max(egress, ingress) over the
//! link (egress and ingress travel opposite ways on a full-duplex link) against
//! the flops over the pool's speed; compute overlaps transfer once the first
//! tile's panels have arrived.
//!
//! **The master's CPU.** Each byte sent costs the master CPU (framing, the
//! socket), each result byte more (the socket, decoding, the check, adding
//! partial sums), and the checks' preparation grows with the depth slices
//! (`verify::preparation_multiply_adds`). Over a network the link is taken
//! to be the tighter bound. With every worker local (on loopback) and no link
//! rate given, the master's CPU is the cost that matters: it runs on the
//! cores the workers compute on, so time is the compute plus that CPU. Measured at
//! n=4096 f64 with two local one-thread workers (`master multiply
//! --stats-json`): a plan splitting k cost the master 0.93 s of CPU, a column
//! plan 0.58 s, and the column plan was faster.
//!
//! **Memory.** When a worker's box does not fit in its budget M, its panels
//! cannot all stay cached: it holds what part of one operand's box fits and
//! streams the other past it, so that operand crosses the link once per such
//! part. The Irony–Toledo–Tiskin bound says no schedule does much better: a
//! worker doing F multiply-adds with M words of memory must receive at least
//! F / (2·√2·√M) − M words. [`lower_bound`] combines that with the link and
//! the pool's speed; the simulator measures plans against it. With ample
//! memory that bound allows a worker to receive nothing, so [`results_bound`]
//! adds what memory cannot waive (Loomis–Whitney): a worker starts empty, so
//! it receives the panels of its share, and its part of C crosses the link
//! back. Spreading the work over p workers then costs the hub about
//! p^(1/3)·(|A|+|B|+|C|)-worth of traffic, as the 3-D layout moves.
//!
//! **Tiles.** Each worker's box is cut into tiles small enough that `slots`
//! tiles (A panel + B panel + C tile) fit its budget, numerous enough that fast
//! workers can take from slow ones at the end, and large enough that a tile
//! is worth its fixed costs (at least `min_task_seconds` of compute). Depth is
//! cut finer than wk only when rows and columns alone cannot meet the budget,
//! since every extra partial sum crosses the link again.

use super::Plan;
use crate::kernel::flops;

/// What the tile-grid cost model aims at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Work per task worth its fixed costs (messages, a lease, a kernel call).
    pub min_task_seconds: f64,
    /// A conservative per-worker rate, so a slow worker's task still meets the floor.
    pub assumed_flops_per_second: f64,
    /// Tiles per worker box: enough for stealing at the tail and for the first
    /// tile to start early.
    pub tiles_per_worker: usize,
    /// Tiles a worker's budget must hold at once (one computing, the next
    /// arriving). A worker may ask for more tasks than this; it holds them
    /// while its memory allows (the master counts what each one needs).
    pub slots: usize,
    /// Memory assumed for a worker when the pool is empty.
    pub default_budget: u64,
    /// The master's CPU per byte it sends (copying panels into frames, the socket).
    pub master_seconds_per_byte_out: f64,
    /// The master's CPU per result byte it receives (the socket, decoding, the check, assembly).
    pub master_seconds_per_result_byte: f64,
    /// The speed of the verifier's preparation (see `verify::preparation_multiply_adds`).
    pub verifier_multiply_adds_per_second: f64,
}

impl Default for CostModel {
    /// The master's costs per byte are fitted to this project's machine (2
    /// cores, AVX-512): `master multiply --stats-json` at n=4096 f64 with two
    /// local workers, under a column plan and a plan splitting k.
    fn default() -> Self {
        Self {
            min_task_seconds: 0.005,
            assumed_flops_per_second: 50e9,
            tiles_per_worker: 32,
            slots: 2,
            default_budget: 1 << 30,
            master_seconds_per_byte_out: 0.4e-9,
            master_seconds_per_result_byte: 2.6e-9,
            verifier_multiply_adds_per_second: 15e9,
        }
    }
}

/// A job's shape and element size, in what the model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Bytes per element.
    pub elem: usize,
}

impl Problem {
    fn bytes(&self, rows: usize, cols: usize) -> f64 {
        rows as f64 * cols as f64 * self.elem as f64
    }
}

/// Bytes a plan moves, by the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    pub egress: f64,
    pub ingress: f64,
}

impl CostModel {
    /// The tile grid for `problem` on a pool of workers with these memory
    /// budgets (bytes), all planned for. An empty pool is planned as one worker.
    pub fn plan(&self, problem: Problem, budgets: &[u64]) -> Plan {
        let pool: Vec<Capacity> = budgets.iter().map(|&memory| Capacity { memory, flops: self.assumed_flops_per_second, local: false }).collect();
        self.plan_for(problem, &pool, None)
    }

    /// The tile grid for `problem` on `pool`, with `link` the master's link
    /// (bytes/s each way) if known.
    ///
    /// Unknown, the link is taken to be the bottleneck: every worker gets a box
    /// and the layout moving the fewest bytes wins. Known, the model weighs
    /// bytes against flops: it may give boxes to only the fastest p' workers
    /// (the others wait, and take over a box whose worker leaves), when more
    /// boxes would cost more time on the link than their compute saves.
    ///
    /// When the link is unknown and every worker is local (on the master's
    /// machine), no link limits the job: bytes cost CPU, not link time, and
    /// that CPU is taken from the cores the workers compute on. Time is then
    /// the compute plus the master's CPU, so a plan that splits k to save
    /// egress, at the price of twice the results to receive and check, loses
    /// to one that does not.
    pub fn plan_for(&self, problem: Problem, pool: &[Capacity], link: Option<f64>) -> Plan {
        let mut pool = pool.to_vec();
        if pool.is_empty() {
            pool.push(Capacity { memory: self.default_budget, flops: self.assumed_flops_per_second, local: false });
        }
        pool.sort_by(|x, y| y.flops.total_cmp(&x.flops));
        let p = pool.len();
        let local = pool.iter().all(|c| c.local);
        // Fewer regions than workers only to spare a known link: local workers
        // cost the master the same CPU whether they compute or wait.
        let counts: Vec<usize> = if link.is_some() { region_counts(p) } else { vec![p] };
        let work = flops(problem.m, problem.k, problem.n);
        let mut best: Option<((f64, f64, usize), Plan)> = None;
        for count in counts {
            let chosen = &pool[..count];
            let memory = chosen.iter().map(|c| c.memory).min().expect("at least one") as f64;
            let speed: f64 = chosen.iter().map(|c| c.flops).sum();
            for layout in factorizations(count, problem) {
                let plan = self.tiles(problem, layout, memory);
                let traffic = self.traffic(problem, &plan, layout, memory);
                let bytes = traffic.egress.max(traffic.ingress);
                // Seconds if the link is known or there is none (all local); bytes if unknown (fewer workers only break ties then).
                let time = match link {
                    Some(rate) => (bytes / rate).max(work / speed),
                    None if local => work / speed + self.master_seconds(&plan, traffic),
                    None => bytes,
                };
                let key = (time, traffic.egress + traffic.ingress, plan.tiles());
                if best.as_ref().is_none_or(|(b, _)| lexically_less(key, *b)) {
                    // Leaving workers out, it counts on the chosen ones' speed (within a factor of 2).
                    let min_speed = if count == p { 0.0 } else { chosen[count - 1].flops / 2.0 };
                    best = Some((key, Plan { min_speed, ..plan.spread_to(count == p) }));
                }
            }
        }
        best.expect("p >= 1 has a factorization").1
    }

    /// The 1-D plan of old: columns only, the width by this model's task floor
    /// and balance (about 16 tiles; a multiple of 4 once there are 4 or more).
    pub fn column_width(&self, problem: Problem) -> usize {
        let Problem { m, k, n, .. } = problem;
        if n == 0 {
            return 1;
        }
        let per_column = flops(m, k, 1).max(1.0);
        let min_width = (self.min_task_seconds * self.assumed_flops_per_second / per_column).ceil() as usize;
        let width = min_width.max(n.div_ceil(16)).clamp(1, n);
        let blocks = n.div_ceil(width);
        if blocks < 4 {
            return width;
        }
        n.div_ceil(blocks.next_multiple_of(4).min(n))
    }

    /// Cuts each worker box of the grid `w` into tiles: halves the longer of a
    /// tile's rows and columns while the slots' working set is over `memory`, or
    /// while there are too few tiles and a tile is still worth its cost; then,
    /// if need be, halves its depth.
    fn tiles(&self, problem: Problem, (wr, wc, wk): (usize, usize, usize), memory: f64) -> Plan {
        let Problem { m, k, n, .. } = problem;
        let (mut qr, mut qc, mut qk) = (1usize, 1usize, 1usize);
        let size = |q: usize, w: usize, len: usize| len.div_ceil(w * q).max(1);
        let working_set = |qr, qc, qk| {
            let (tr, tc, td) = (size(qr, wr, m), size(qc, wc, n), size(qk, wk, k));
            self.slots as f64 * (problem.bytes(tr, td) + problem.bytes(td, tc) + problem.bytes(tr, tc))
        };
        let worth_it = |qr, qc| flops(size(qr, wr, m), k.div_ceil(wk), size(qc, wc, n)) >= self.min_task_seconds * self.assumed_flops_per_second;
        loop {
            let (tr, tc) = (size(qr, wr, m), size(qc, wc, n));
            let too_big = working_set(qr, qc, qk) > memory;
            let too_few = qr * qc < self.tiles_per_worker && worth_it(qr * 2, qc).max(worth_it(qr, qc * 2));
            if !(too_big || too_few) || (tr == 1 && tc == 1) {
                break;
            }
            if tr >= tc && tr > 1 {
                qr *= 2;
            } else {
                qc *= 2;
            }
        }
        while working_set(qr, qc, qk) > memory && size(qk, wk, k) > 1 {
            qk *= 2;
        }
        Plan::grid(m, k, n, wr * qr, wc * qc, wk * qk).laid_out((wr, wc, wk))
    }

    /// The master's CPU seconds for `plan`: sending its panels, receiving and
    /// checking its results, and preparing the checks.
    fn master_seconds(&self, plan: &Plan, traffic: Traffic) -> f64 {
        traffic.egress * self.master_seconds_per_byte_out
            + traffic.ingress * self.master_seconds_per_result_byte
            + crate::verify::preparation_multiply_adds(plan) / self.verifier_multiply_adds_per_second
    }

    /// Bytes over the master's link for `plan` laid out on the worker grid `w`.
    pub fn traffic(&self, problem: Problem, plan: &Plan, (wr, wc, wk): (usize, usize, usize), memory: f64) -> Traffic {
        let Problem { m, k, n, .. } = problem;
        // One worker's box, and one tile.
        let (box_a, box_b) = (problem.bytes(m.div_ceil(wr), k.div_ceil(wk)), problem.bytes(k.div_ceil(wk), n.div_ceil(wc)));
        let (tr, tc, td) = (plan.rows.largest(), plan.cols.largest(), plan.depth.largest());
        let tile_c = problem.bytes(tr, tc) * self.slots as f64;
        let room = (memory - tile_c).max(problem.bytes(tr, td) + problem.bytes(td, tc));
        let per_worker = if box_a + box_b <= room {
            box_a + box_b
        } else {
            // Hold what fits of one operand's box, stream the other past each part.
            let hold_a = box_a + box_b * (box_a / (room - problem.bytes(td, tc)).max(1.0)).ceil();
            let hold_b = box_b + box_a * (box_b / (room - problem.bytes(tr, td)).max(1.0)).ceil();
            hold_a.min(hold_b)
        };
        let p = (wr * wc * wk) as f64;
        Traffic { egress: per_worker * p, ingress: problem.bytes(m, n) * plan.depth.parts as f64 }
    }
}

/// What the model needs to know of a worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    /// Bytes of panels and products it holds.
    pub memory: u64,
    /// Its kernel's speed, flop/s (measured, or assumed).
    pub flops: f64,
    /// On the master's machine (it connected over loopback): it shares the
    /// master's cores, and no network lies between them.
    pub local: bool,
}

/// Compares (time, bytes, tiles) keys, treating values within a relative 1e-9 as equal.
fn lexically_less(a: (f64, f64, usize), b: (f64, f64, usize)) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
    if !close(a.0, b.0) {
        return a.0 < b.0;
    }
    if !close(a.1, b.1) {
        return a.1 < b.1;
    }
    a.2 < b.2
}

/// Region counts worth trying for a pool of p: all up to 64, then every
/// quarter more, and p itself.
fn region_counts(p: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = (1..=p.min(64)).collect();
    let mut next = 80usize;
    while next < p {
        counts.push(next);
        next += next / 4;
    }
    counts.push(p);
    counts.dedup();
    counts
}

/// Every (wr, wc, wk) with wr·wc·wk = p that the problem's dimensions allow.
fn factorizations(p: usize, problem: Problem) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for wr in (1..=p).filter(|d| p.is_multiple_of(*d) && *d <= problem.m.max(1)) {
        for wc in (1..=p / wr).filter(|d| (p / wr).is_multiple_of(*d) && *d <= problem.n.max(1)) {
            let wk = p / wr / wc;
            if wk <= problem.k.max(1) {
                out.push((wr, wc, wk));
            }
        }
    }
    if out.is_empty() {
        out.push((1, 1, 1)); // more workers than any dimension allows: some will steal
    }
    out
}

/// A lower bound on the makespan of C = A·B over a star: each worker (its
/// speed in flop/s, its memory in bytes, its link in bytes/s) gets its inputs
/// only from the master, whose link carries `master_link` bytes/s.
///
/// For any split of the n³-like work W = m·k·n multiply-adds into shares w_i,
/// worker i must receive at least max(ITT(w_i, M_i), 0) words (Irony–Toledo–
/// Tiskin: w/(2√2·√M) − M), and the job lasts at least
/// - max_i 2·w_i / speed_i (compute),
/// - max_i received_i / link_i (the worker's own link),
/// - Σ_i received_i / master_link (the star's hub),
/// - (|A| + |B|) / master_link (every input byte must leave the master once).
///
/// The bound minimizes the maximum of these over the shares by bisection on
/// the makespan T: a share is feasible for worker i if both its compute and its
/// own link fit in T; T is feasible if the feasible shares cover W and the
/// hub's total fits in T.
pub fn lower_bound(problem: Problem, workers: &[(f64, f64, f64)], master_link: f64) -> f64 {
    let Problem { m, k, n, elem } = problem;
    let work = m as f64 * k as f64 * n as f64;
    let elem = elem as f64;
    let inputs = (m * k + k * n) as f64 * elem / master_link;
    // Words worker i must receive to do w multiply-adds with memory `mem` (bytes).
    let received = |w: f64, mem: f64| {
        let words = mem / elem;
        (w / (2.0 * std::f64::consts::SQRT_2 * words.sqrt()) - words).max(0.0) * elem
    };
    // Each worker's largest share within t: its compute, and its own link.
    let cap = |t: f64, &(speed, mem, link): &(f64, f64, f64)| {
        let mut share = t * speed / 2.0;
        if received(share, mem) / link > t {
            let words = mem / elem;
            // received is linear past the free part: solve received(w) = t·link.
            share = share.min((t * link / elem + words) * 2.0 * std::f64::consts::SQRT_2 * words.sqrt());
        }
        share
    };
    // Feasible if the caps cover the work, and the hub's total is within t when
    // shares go first to each worker's free part (received = 0), then to the
    // workers whose extra work costs the fewest bytes (the largest memories):
    // received is convex in the share, so that order minimises the total.
    let mut by_memory: Vec<&(f64, f64, f64)> = workers.iter().collect();
    by_memory.sort_by(|x, y| y.1.total_cmp(&x.1));
    let feasible = |t: f64| {
        let caps: Vec<f64> = by_memory.iter().map(|w| cap(t, w)).collect();
        let free: Vec<f64> = by_memory.iter().zip(&caps).map(|(w, &c)| c.min(2.0 * std::f64::consts::SQRT_2 * (w.1 / elem).powf(1.5))).collect();
        let mut left = work - free.iter().sum::<f64>();
        let mut hub = 0.0;
        for ((w, &c), &f) in by_memory.iter().zip(&caps).zip(&free) {
            if left <= 0.0 {
                break;
            }
            let extra = (c - f).min(left);
            hub += received(f + extra, w.1);
            left -= extra;
        }
        left <= work * 1e-12 && hub / master_link <= t
    };
    least_feasible(inputs, feasible)
}

/// The least makespan T ≥ `at_least` that `feasible` allows (feasibility is
/// monotone in T), by doubling then bisection; infinite past 10^12 s.
fn least_feasible(at_least: f64, feasible: impl Fn(f64) -> bool) -> f64 {
    let (mut lo, mut hi) = (at_least, at_least.max(1e-9));
    while !feasible(hi) {
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if feasible(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// A second lower bound on the same star's makespan, from the results'
/// return: worker i's w_i multiply-adds touch a_i entries of A, b_i of B and
/// c_i of C, with w_i² ≤ a_i·b_i·c_i (Loomis–Whitney). It starts with nothing,
/// so it receives a_i + b_i ≥ 2·w_i/√c_i words, and it sends at least one word
/// back for each of its c_i entries of C (a partial sum or the whole).
///
/// Over the hub, for any λ ≥ 0: T·(out + λ·in) ≥ Σ (a_i + b_i + λ·c_i) ≥
/// Σ min over c of (2·w_i/√c + λ·c) = 3·λ^(1/3)·Σ w_i^(2/3) (in words); λ =
/// out / (2·in) gives T ≥ 2·(out / (2·in))^(1/3)·Σ w_i^(2/3) / out. Each worker's
/// own link (`link` each way) caps its share: 2·w/√c ≤ T·link and c ≤ T·link
/// give w ≤ (T·link)^(3/2) / 2; its speed caps it at T·speed / 2.
///
/// Σ w^(2/3) is concave, so it is smallest when the work goes to as few
/// workers as can hold it: filled largest cap first (that split majorizes
/// every other within the caps, and Σ w^(2/3) is Schur-concave). The bound
/// is the least T at which the caps cover the work and that smallest Σ fits
/// the hub. It exceeds [`lower_bound`] when many workers must share the work:
/// every one of them needs its own panels, and returns its own part of C.
pub fn results_bound(problem: Problem, workers: &[(f64, f64, f64)], master_out: f64, master_in: f64) -> f64 {
    let Problem { m, k, n, elem } = problem;
    let work = m as f64 * k as f64 * n as f64;
    let elem = elem as f64;
    let hub_factor = 2.0 * (master_out / (2.0 * master_in)).cbrt() * elem / master_out;
    let feasible = |t: f64| {
        let mut caps: Vec<f64> = workers.iter().map(|&(speed, _, link)| (t * speed / 2.0).min((t * link / elem).powf(1.5) / 2.0)).collect();
        caps.sort_by(|x, y| y.total_cmp(x));
        let (mut left, mut spread) = (work, 0.0);
        for cap in caps {
            if left <= 0.0 {
                break;
            }
            let share = cap.min(left);
            spread += share.powf(2.0 / 3.0);
            left -= share;
        }
        left <= work * 1e-12 && spread * hub_factor <= t
    };
    least_feasible(0.0, feasible)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn square(n: usize) -> Problem {
        Problem { m: n, k: n, n, elem: 8 }
    }

    #[test]
    fn few_workers_split_k_to_send_each_input_byte_once() {
        let model = CostModel::default();
        for p in [1usize, 2, 3] {
            let plan = model.plan(square(4096), &vec![8 * GIB; p]);
            assert_eq!(plan.depth.parts % p, 0, "p={p}: {:?}", plan.shape());
            let traffic = model.traffic(square(4096), &plan, (1, 1, p), 8.0 * GIB as f64);
            let inputs = 2.0 * square(4096).bytes(4096, 4096);
            assert!(traffic.egress <= 1.01 * inputs, "p={p}: {traffic:?}");
        }
    }

    #[test]
    fn many_equal_workers_get_a_cube() {
        let model = CostModel::default();
        let problem = square(65536);
        let plan = model.plan(problem, &vec![64 * GIB; 64]);
        let (pr, pc, pk) = plan.shape();
        assert_eq!((pr % 4, pc % 4, pk), (0, 0, 4), "{:?}", plan.shape());
        let traffic = model.traffic(problem, &plan, (4, 4, 4), 64.0 * GIB as f64);
        let inputs = 2.0 * problem.bytes(65536, 65536);
        assert!(traffic.egress <= 1.15 * 4.0 * inputs, "{} vs {}", traffic.egress / inputs, 4.0);
    }

    #[test]
    fn local_workers_keep_k_whole_unless_a_link_rate_is_given() {
        let model = CostModel::default();
        let local = vec![Capacity { memory: 8 * GIB, flops: 50e9, local: true }; 2];
        let plan = model.plan_for(square(4096), &local, None);
        assert_eq!(plan.depth.parts, 1, "{:?}", plan.shape());
        assert_eq!(plan.layout.0 * plan.layout.1, 2, "both work: {:?}", plan.layout);
        // However small the job, none is told to wait: with no link to spare, waiting saves nothing.
        let tiny = model.plan_for(square(32), &local, None);
        assert!(tiny.spread && tiny.min_speed == 0.0, "{tiny:?}");
        // Said to be behind a 1 Gbit/s link, the same pool sends each input byte once.
        let linked = model.plan_for(square(4096), &local, Some(125e6));
        assert_eq!(linked.depth.parts % 2, 0, "{:?}", linked.shape());
        // One remote worker makes the link matter again.
        let mixed = [local[0], Capacity { local: false, ..local[0] }];
        assert_eq!(model.plan_for(square(4096), &mixed, None).depth.parts % 2, 0);
    }

    #[test]
    fn tall_skinny_splits_rows() {
        let model = CostModel::default();
        let problem = Problem { m: 200_000, k: 256, n: 256, elem: 8 };
        let plan = model.plan(problem, &[8 * GIB, 8 * GIB]);
        assert_eq!(plan.rows.parts % 2, 0, "{:?}", plan.shape());
        assert_eq!((plan.cols.parts, plan.depth.parts), (1, 1), "{:?}", plan.shape());
    }

    #[test]
    fn tiles_fit_the_smallest_budget() {
        let model = CostModel::default();
        for (n, budget) in [(4096, 32u64 << 20), (8192, 256 << 20), (1000, 1 << 20)] {
            let plan = model.plan(square(n), &[budget]);
            let tile = plan.largest_tile_elements() as u64 * 8 * model.slots as u64;
            assert!(tile <= budget, "n={n}: {:?} needs {tile} > {budget}", plan.shape());
        }
    }

    #[test]
    fn small_jobs_stay_in_few_tiles() {
        let model = CostModel::default();
        assert_eq!(model.plan(square(3), &[GIB]).tiles(), 1);
        let plan = model.plan(square(512), &[GIB, GIB]);
        let per_tile = flops(plan.rows.largest(), plan.depth.largest(), plan.cols.largest());
        assert!(per_tile / model.assumed_flops_per_second >= 0.5 * model.min_task_seconds, "{:?}", plan.shape());
    }

    #[test]
    fn column_width_follows_the_old_model() {
        let model = CostModel::default();
        assert_eq!(model.column_width(square(4096)), 256);
        assert_eq!(1024usize.div_ceil(model.column_width(square(1024))), 12);
        assert_eq!(model.column_width(square(3)), 3);
    }

    #[test]
    fn the_lower_bound_respects_the_link_and_the_pool() {
        let problem = square(4096);
        let inputs = 2.0 * problem.bytes(4096, 4096);
        let link = 125e6; // 1 Gbit/s
        let one = lower_bound(problem, &[(50e9, 8.0 * GIB as f64, 1e12)], link);
        assert!((one - (inputs / link).max(2.0 * 4096f64.powi(3) / 50e9)).abs() / one < 1e-3, "{one}");
        // Tiny memories force traffic far above the inputs (ITT's bound is weak:
        // 4 MiB each would still allow about the inputs' bytes here).
        let starved = lower_bound(problem, &[(50e9, 256.0 * 1024.0, 1e12); 4], link);
        assert!(starved > 2.0 * one, "{starved} vs {one}");
    }

    #[test]
    fn the_results_bound_is_the_closed_form_where_one_is_known() {
        let problem = square(4096);
        let w = 4096f64.powi(3);
        // One worker, its own link no limit: it must receive 2·w/√c words and
        // send c; the least T has T·out = 2·w/√(T·in) (words/s), so T =
        // (2w)^(2/3) / (out^(2/3)·in^(1/3)), with out and in in words/s.
        let alone = |out: f64, into: f64| (2.0 * w).powf(2.0 / 3.0) / ((out / 8.0).powf(2.0 / 3.0) * (into / 8.0).cbrt());
        for (out, into) in [(125e6, 125e6), (125e6, 1.25e9), (1.25e9, 125e6)] {
            let one = results_bound(problem, &[(1e15, GIB as f64, 1e12)], out, into);
            assert!((one - alone(out, into)).abs() / one < 1e-6, "out {out}, in {into}: {one} vs {}", alone(out, into));
        }
        // A worker fast enough for all the work takes it all: slower ones
        // beside it would only spread it, and spreading costs the hub more.
        let rate = 125e6;
        let mut pool = vec![(1e15, GIB as f64, 1e12)];
        pool.extend([(1e9, GIB as f64, 1e12); 10]);
        let mixed = results_bound(problem, &pool, rate, rate);
        assert!((mixed - alone(rate, rate)).abs() / mixed < 1e-6, "{mixed} vs {}", alone(rate, rate));
        // p equal workers, each just fast enough to do its 1/p within the hub's
        // time for p equal shares: all must compute, each with its own panels
        // and its own part of C.
        let p = 64.0;
        let spread = 2.0 * 0.5f64.cbrt() * p * (w / p).powf(2.0 / 3.0) * 8.0 / rate;
        let equal = results_bound(problem, &vec![(2.0 * (w / p) / spread, GIB as f64, 1e12); 64], rate, rate);
        assert!((equal - spread).abs() / spread < 1e-6, "{equal} vs {spread}");
        // Twice as fast, they need not all compute: fewer shares, less traffic.
        let fast = results_bound(problem, &vec![(4.0 * (w / p) / spread, GIB as f64, 1e12); 64], rate, rate);
        assert!(fast < equal && fast > alone(rate, rate), "{fast} between {} and {equal}", alone(rate, rate));
        // A worker's own slow link caps what it can take on.
        let slow = results_bound(problem, &[(1e15, GIB as f64, 1e6)], 1e12, 1e12);
        let by_link = (2.0 * w).powf(2.0 / 3.0) * 8.0 / 1e6;
        assert!((slow - by_link).abs() / by_link < 1e-6, "{slow} vs {by_link}");
    }
}
