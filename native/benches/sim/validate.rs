//! The simulator against real runs: the real master and workers as hosts in
//! network namespaces, the master's link capped by tbf, the same job and
//! plan simulated, and the two times side by side. Needs root (as CI has).

use std::time::Duration;

use colonnade_core::plan::Plan;
use colonnade_core::protocol::WorkerKind;
use colonnade_native::compute;
use serde_json::{json, Value};

use crate::common::netns::Net;
use crate::common::{stats_path, Dense, MASTER, WORKER};
use crate::world::{self, Setup, WorkerSpec};

const PORT: u16 = 7300;

/// One configuration: n×n f64 on `workers` one-thread workers, the master's
/// egress capped at `rate` bytes/s (`tc_rate` for tc).
pub fn compare(n: usize, workers: usize, rate: f64, tc_rate: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path, c_path) = (dir.path().join("a.npy"), dir.path().join("b.npy"), dir.path().join("c.npy"));
    crate::common::write_npy(&a_path, &Dense::random_ints(n, n, 71));
    crate::common::write_npy(&b_path, &Dense::random_ints(n, n, 72));
    let net = Net::new('v', workers);
    net.cap_master(tc_rate);
    let listen = format!("{}:{PORT}", net.ip(0));
    let stats = stats_path(&c_path);
    let (a, b, c, s) = (a_path.to_str().unwrap(), b_path.to_str().unwrap(), c_path.to_str().unwrap(), stats.to_str().unwrap());
    let link = (rate as u64).to_string();
    let args = ["multiply", a, b, "-o", c, "--listen", &listen, "--stats-json", s, "--link-rate", &link];
    let mut master = net.spawn(0, "master", MASTER, &args);
    master.wait_for("'master listening on'", Duration::from_secs(120), |l| l.starts_with("master listening on "));
    let url = format!("ws://{listen}/ws");
    let _pool: Vec<_> = (1..=workers).map(|h| net.spawn(h, &format!("w{h}"), WORKER, &[&url, "--threads", "1", "--name", &format!("w{h}")])).collect();
    assert!(master.wait_exit(Duration::from_secs(600)).success(), "{}", master.output());
    let figures: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let measured = figures["job_s"].as_f64().unwrap();
    let triple = |key: &str| {
        let v = figures[key].as_array().unwrap();
        (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize, v[2].as_u64().unwrap() as usize)
    };
    let ((pr, pc, pk), layout) = (triple("grid"), triple("layout"));
    // The workers' real speed: one thread each, sharing this machine's cores.
    let share = (compute::available_cores() as f64 / workers as f64).min(1.0);
    let speed = kernel_speed() * share;
    let spread = figures["spread"].as_bool().unwrap_or(true);
    let min_speed = figures["min_speed"].as_f64().unwrap_or(0.0);
    let plan = Plan { min_speed, ..Plan::grid(n, n, n, pr, pc, pk).laid_out(layout).spread_to(spread) };
    let spec = WorkerSpec { kind: WorkerKind::Native, flops: speed, link: 1.25e9, latency: 0.0001, memory: 8 << 30, join_at: 0.0, leave_at: None, liar: false };
    let setup = Setup { plan, master_link: rate, master_ingress: 1.25e9, workers: vec![spec; workers], relay: false, horizon: 3600.0 };
    let simulated = world::run(&setup).makespan;
    let bound = (2.0 * (n * n * 8) as f64 / rate).max(colonnade_core::kernel::flops(n, n, n) / (speed * workers as f64));
    println!(
        "n={n} f64, master egress {tc_rate}, {workers} worker(s), grid {pr}x{pc}x{pk} layout {}x{}x{}: measured {measured:.2} s, simulated {simulated:.2} s ({:+.0}%); limit max((|A|+|B|)/link, flops/speeds) {bound:.2} s: measured/limit {:.2}",
        layout.0, layout.1, layout.2,
        100.0 * (simulated / measured - 1.0),
        measured / bound,
    );
    json!({
        "n": n, "workers": workers, "master_egress": tc_rate, "grid": [pr, pc, pk], "layout": [layout.0, layout.1, layout.2],
        "measured_s": measured, "simulated_s": simulated, "limit_s": bound, "measured_over_limit": measured / bound,
        "egress_over_inputs": figures["egress_over_inputs"],
    })
}

/// This machine's kernel on one thread, flop/s, on a product big enough to be steady.
fn kernel_speed() -> f64 {
    use colonnade_core::{DenseMatrix, Matrix};
    let n = 1024;
    let a = DenseMatrix::F64(Matrix::from_fn(n, n, |i, j| ((i * 7 + j) % 11) as f64));
    let best = (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(compute::multiply(&a, &a, 1));
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    colonnade_core::kernel::flops(n, n, n) / best
}
