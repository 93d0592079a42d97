//! The simulator: `cargo xtask sim`.
//!
//! Drives the real core scheduler (pool and job) and real worker sessions on a
//! virtual clock with simulated workers: each with its own speed, link,
//! latency and memory, joining and leaving, some lying (see `world`). Prints,
//! for each scenario, the makespan against the lower bound of
//! `colonnade_core::plan::model::lower_bound` (from the workers' memories)
//! and against it tightened by `results_bound` (C's return; a relay is held
//! to a star's bounds, which it may beat), the master's egress against the
//! model's minimum, the tasks issued, and the scheduler's real CPU time per
//! task; and writes everything to target/bench/sim.json.
//!
//! `--smoke` runs small scenarios, to check the pipeline (CI), not the figures.

// The simulator uses the test harness's network hosts.
#[path = "../../../tests/common/mod.rs"]
mod common;
mod link;
mod validate;
mod world;

use std::path::Path;

use colonnade_core::plan::model::{lower_bound, results_bound, Capacity, Problem};
use colonnade_core::plan::CostModel;
use colonnade_core::protocol::WorkerKind;
use serde_json::{json, Value};
use world::{Setup, WorkerSpec};

const GBIT: f64 = 125e6;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn main() {
    // As the master does: the scheduler's CPU figures are then the master's.
    colonnade_native::allocator::without_fastbins();
    let smoke = std::env::args().any(|a| a == "--smoke");
    link::self_check();
    let mut results = Vec::new();
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let scenarios: Vec<(String, Setup)> = if smoke { smoke_scenarios() } else { scenarios() };
    for (name, setup) in scenarios.into_iter().filter(|(name, _)| only.as_ref().is_none_or(|o| name.contains(o.as_str()))) {
        eprintln!("sim: {name}");
        results.push(report(&name, &setup));
    }
    // Against real runs in network namespaces (root only; the full run, not
    // the smoke; alone with `cargo xtask sim real`).
    let checks: Vec<Value> = if smoke || only.as_ref().is_some_and(|o| o != "real") {
        Vec::new()
    } else {
        println!("\nthe simulator against real runs (master and workers as hosts in network namespaces, the master's egress capped by tbf):");
        [(4096, 1), (4096, 2), (4096, 3)].into_iter().map(|(n, p)| validate::compare(n, p, GBIT, "1gbit")).collect()
    };
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join(if smoke { "sim-smoke.json" } else { "sim.json" });
    std::fs::write(&file, serde_json::to_string_pretty(&json!({ "scenarios": results, "against_real_runs": checks })).unwrap()).unwrap();
    println!("\nwrote {}", file.display());
}

/// Equal native workers on a capped master link.
fn servers(p: usize, flops: f64, memory: u64) -> Vec<WorkerSpec> {
    let spec = WorkerSpec { kind: WorkerKind::Native, flops, link: 10.0 * GBIT, latency: 0.0002, memory, join_at: 0.0, leave_at: None, liar: false };
    vec![spec; p]
}

/// The plan the master would make with the workers present at the start, knowing the link.
fn planned(problem: Problem, workers: &[WorkerSpec], link: f64) -> colonnade_core::plan::Plan {
    let pool: Vec<Capacity> = workers.iter().filter(|w| w.join_at == 0.0).map(|w| Capacity { memory: w.memory, flops: w.flops, local: false }).collect();
    CostModel::default().plan_for(problem, &pool, Some(link))
}

fn smoke_scenarios() -> Vec<(String, Setup)> {
    let problem = Problem { m: 1024, k: 1024, n: 1024, elem: 8 };
    let workers = servers(3, 20e9, GIB);
    let plan = planned(problem, &workers, GBIT);
    vec![("smoke: n=1024, 3 workers".into(), Setup { plan, master_link: GBIT, master_ingress: GBIT, workers, relay: false, horizon: 3600.0 })]
}

fn scenarios() -> Vec<(String, Setup)> {
    let mut out = Vec::new();
    // The link-bound configurations the namespace runs measure (tests/e2e_sim_check.rs).
    let square = |n: usize| Problem { m: n, k: n, n, elem: 8 };
    for p in [1, 2, 3] {
        let workers = servers(p, 45e9, 8 * GIB);
        let plan = planned(square(4096), &workers, GBIT);
        // As tbf caps it there: the master's egress; its ingress is the veth's.
        out.push((format!("n=4096 f64, 1 Gbit/s master, {p} worker(s)"), Setup { plan, master_link: GBIT, master_ingress: 10.0 * GBIT, workers, relay: false, horizon: 3600.0 }));
    }
    // Egress with many equal workers with ample memory.
    for p in [8, 64] {
        let workers = servers(p, 50e9, 64 * GIB);
        let plan = planned(square(16384), &workers, 10.0 * GBIT);
        out.push((format!("n=16384 f64, 10 Gbit/s master, {p} equal workers"), Setup { plan, master_link: 10.0 * GBIT, master_ingress: 10.0 * GBIT, workers, relay: false, horizon: 36_000.0 }));
    }
    // A is 4x each worker's memory.
    let workers = servers(2, 45e9, 256 * MIB);
    let plan = planned(square(8192), &workers, 10.0 * GBIT);
    out.push(("n=8192 f64, workers with 256 MiB (A is 512 MiB)".into(), Setup { plan, master_link: 10.0 * GBIT, master_ingress: 10.0 * GBIT, workers, relay: false, horizon: 36_000.0 }));
    // The volunteer crowd, with and without relaying panels.
    let workers = crowd(10_000, 3600.0, 7);
    let plan = planned(square(65536), &workers, 10.0 * GBIT);
    for relay in [false, true] {
        let name = format!("n=65536 f64, 10 Gbit/s master, 10,000 workers (90% tabs), churn 5%/min, 1% liars{}", if relay { ", relay" } else { "" });
        out.push((name, Setup { plan: plan.clone(), master_link: 10.0 * GBIT, master_ingress: 10.0 * GBIT, workers: workers.clone(), relay, horizon: 36_000.0 }));
    }
    out
}

/// A tiny generator, so the scenarios need no RNG crate and repeat exactly.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Log-uniform, for quantities spread over a decade or more.
    fn log_between(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }
}

/// `count` workers present at the start, 90% browser tabs (2–20 GFLOP/s,
/// 10–100 Mbit/s, 256 MiB–2 GiB) and 10% servers (50–200 GFLOP/s, 1–10 Gbit/s,
/// 8–64 GiB); each minute until `span` seconds, 5% of them leave and as many
/// newcomers join; 1% lie.
fn crowd(count: usize, span: f64, seed: u64) -> Vec<WorkerSpec> {
    let mut rng = Rng(seed);
    let one = |rng: &mut Rng, join_at: f64| {
        let tab = rng.unit() < 0.9;
        let (kind, flops, link, memory) = if tab {
            (WorkerKind::Browser, rng.log_between(2e9, 20e9), rng.log_between(10.0, 100.0) * 1e6 / 8.0, rng.log_between(256.0, 2048.0) as u64 * MIB)
        } else {
            (WorkerKind::Native, rng.log_between(50e9, 200e9), rng.log_between(1.0, 10.0) * GBIT, rng.log_between(8.0, 64.0) as u64 * GIB)
        };
        let latency = rng.between(0.005, if tab { 0.08 } else { 0.02 });
        WorkerSpec { kind, flops, link, latency, memory, join_at, leave_at: None, liar: rng.unit() < 0.01 }
    };
    let mut workers: Vec<WorkerSpec> = (0..count).map(|_| one(&mut rng, 0.0)).collect();
    let mut minute = 60.0;
    while minute < span {
        let present: Vec<usize> = (0..workers.len()).filter(|&i| workers[i].join_at < minute && workers[i].leave_at.is_none()).collect();
        for _ in 0..count / 20 {
            let i = present[(rng.unit() * present.len() as f64) as usize];
            workers[i].leave_at.get_or_insert(minute - 60.0 * rng.unit());
            let join_at = minute - 60.0 * rng.unit();
            let newcomer = one(&mut rng, join_at);
            workers.push(newcomer);
        }
        minute += 60.0;
    }
    workers
}

/// Runs one scenario, prints a line, and returns its figures.
fn report(name: &str, setup: &Setup) -> Value {
    let plan = &setup.plan;
    let problem = Problem { m: plan.m, k: plan.k, n: plan.n, elem: 8 };
    let outcome = world::run(setup);
    let specs: Vec<(f64, f64, f64)> = setup.workers.iter().map(|w| (w.flops, w.memory as f64, w.link)).collect();
    let bound = lower_bound(problem, &specs, setup.master_link);
    // Also a lower bound for a star: each worker's panels and its part of C
    // cross the hub. A relay is not a star: both are then its yardsticks, not its bounds.
    let tight = bound.max(results_bound(problem, &specs, setup.master_link, setup.master_ingress));
    let inputs = ((plan.m * plan.k + plan.k * plan.n) * 8) as f64;
    let (wr, wc, wk) = plan.layout;
    let model = CostModel::default().traffic(problem, plan, plan.layout, setup.workers.iter().map(|w| w.memory).min().unwrap_or(GIB) as f64);
    println!(
        "{name}\n  grid {:?} layout {wr}x{wc}x{wk}: makespan {:.2} s, {}bound {:.2} s ({:.2}x), with C's return {:.2} s ({:.2}x); egress {:.2}x A+B (model {:.2}x); egress busy {:.0}% and workers computing {:.0}% of the makespan; {} tasks ({} copies), {} rejected; scheduler CPU {:.1} µs per task, {:.2} µs per input, of which results and hand-backs {:.1} µs per task and the upkeep of connections {:.1} µs per task ({} upkeep inputs, {:.3} µs per connected worker per second); C {}",
        plan.shape(),
        outcome.makespan,
        if setup.relay { "a star's " } else { "" },
        bound,
        outcome.makespan / bound,
        tight,
        outcome.makespan / tight,
        outcome.egress / inputs,
        model.egress / inputs,
        100.0 * outcome.egress_busy / outcome.makespan,
        100.0 * outcome.computing / (outcome.makespan * setup.workers.len() as f64),
        outcome.leases,
        outcome.speculated,
        outcome.rejected,
        outcome.cpu_per_task.as_secs_f64() * 1e6,
        outcome.cpu_per_input.as_secs_f64() * 1e6,
        outcome.cpu_on_results_per_task.as_secs_f64() * 1e6,
        (outcome.cpu_per_task - outcome.cpu_on_results_per_task).as_secs_f64() * 1e6,
        outcome.upkeep_inputs,
        outcome.upkeep_per_worker_second.as_secs_f64() * 1e6,
        if outcome.correct { "correct" } else { "WRONG OR INCOMPLETE" },
    );
    assert!(outcome.complete && outcome.correct, "{name}: the simulated job must complete with the right C");
    json!({
        "name": name, "grid": plan.shape(), "layout": [wr, wc, wk],
        "makespan_s": outcome.makespan, "lower_bound_s": bound, "makespan_over_bound": outcome.makespan / bound,
        "bound_with_results_s": tight, "makespan_over_bound_with_results": outcome.makespan / tight,
        "egress_bytes": outcome.egress, "ingress_bytes": outcome.ingress, "inputs_bytes": inputs,
        "egress_over_inputs": outcome.egress / inputs, "model_egress_over_inputs": model.egress / inputs,
        "relayed_bytes": outcome.relayed, "egress_busy_s": outcome.egress_busy, "computing_s": outcome.computing,
        "tasks": outcome.leases, "speculated": outcome.speculated, "rejected": outcome.rejected, "events": outcome.events,
        "scheduler_cpu_us_per_task": outcome.cpu_per_task.as_secs_f64() * 1e6,
        "scheduler_cpu_us_per_input": outcome.cpu_per_input.as_secs_f64() * 1e6,
        "scheduler_cpu_on_results_us_per_task": outcome.cpu_on_results_per_task.as_secs_f64() * 1e6,
        "upkeep_inputs": outcome.upkeep_inputs,
        "upkeep_cpu_us_per_worker_second": outcome.upkeep_per_worker_second.as_secs_f64() * 1e6,
        "worker_seconds": outcome.worker_seconds,
    })
}
