//! `master serve` against the machine (`cargo xtask bench` runs it after the
//! distributed benchmark): real processes and real HTTP on loopback, two
//! one-thread workers that stay connected throughout.
//!
//! Prints, each measured in this run:
//! - 100 jobs of n=256, each submitted as the previous one's C arrives: all
//!   correct, the median latency from submit to C, and whether the workers
//!   ever reconnected;
//! - an n=2048 job submitted and downloaded, against `master multiply` of the
//!   same files on the same workers (goal: ≤ 1.15×);
//! - two equal jobs at once: how far apart they finish (goal: within 10%);
//! - SIGKILL with 3 jobs queued and 1 running, then a restart: all 4 complete
//!   with C identical to a clean run's;
//! - the master's memory per connected worker, operands aside: its resident
//!   memory with 1,000 idle connected workers, less without (goal: ≤ 16 KiB).
//!
//! `--smoke` runs it tiny, to check the pipeline (CI).

// The tests' harness: processes, the service client, matrices.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::service::{get, npy_bytes, post_job, result, start_service, wait_state};
use colonnade_core::{DenseMatrix, Matrix};
use common::{naive, start_master, start_worker, write_npy, Dense, Proc};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(600);

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (jobs, small, big, pair, kill) = if smoke { (5, 32, 96, 64, 128) } else { (100, 256, 2048, 1536, 2048) };
    let dir = tempfile::tempdir().unwrap();
    let figures = json!({
        "back_to_back": back_to_back(dir.path(), jobs, small),
        "submit_vs_multiply": submit_vs_multiply(dir.path(), big, if smoke { 1 } else { 3 }),
        "two_at_once": two_at_once(dir.path(), pair),
        "sigkill_and_restart": sigkill_and_restart(dir.path(), kill, small),
        "memory_per_worker": memory_per_worker(dir.path(), if smoke { 50 } else { 1000 }),
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join(if smoke { "service-smoke.json" } else { "service.json" });
    std::fs::write(&file, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    println!("\nwrote {}", file.display());
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Two one-thread workers for the master at `addr`.
fn pool(addr: &str) -> Vec<Proc> {
    (1..=2).map(|i| start_worker(&format!("w{i}"), addr, &[])).collect()
}

fn reconnects(workers: &[Proc]) -> usize {
    workers.iter().map(|w| w.output().matches("joined").count().saturating_sub(1)).sum()
}

fn back_to_back(dir: &Path, jobs: usize, n: usize) -> Value {
    eprintln!("service: {jobs} jobs of n={n}, back to back");
    let (_master, addr) = start_service(&dir.join("b2b"), &[]);
    let workers = pool(&addr);
    let mut latencies = Vec::new();
    for i in 0..jobs as u64 {
        let (a, b) = (Dense::random_ints(n, n, i), Dense::random_ints(n, n, 1000 + i));
        let (a_bytes, b_bytes) = (npy_bytes(dir, "a.npy", &a), npy_bytes(dir, "b.npy", &b));
        let start = Instant::now();
        let (status, answer) = post_job(&addr, &a_bytes, &b_bytes, None);
        assert_eq!(status, 201, "{answer}");
        let id = answer["id"].as_str().unwrap();
        wait_state(&addr, id, "done", LONG);
        let c = result(&addr, id, dir);
        latencies.push(start.elapsed().as_secs_f64());
        assert_eq!(c, naive(&a, &b), "job {i}");
    }
    let (latency, reconnected) = (median(latencies), reconnects(&workers));
    println!("{jobs} jobs of n={n} back to back: all correct; median submit-to-C {:.0} ms; worker reconnects: {reconnected}", latency * 1e3);
    json!({ "jobs": jobs, "n": n, "median_latency_s": latency, "reconnects": reconnected })
}

fn submit_vs_multiply(dir: &Path, n: usize, runs: usize) -> Value {
    eprintln!("service: submit n={n} against multiply");
    let (a_path, b_path) = (dir.join("big_a.npy"), dir.join("big_b.npy"));
    write_npy(&a_path, &Dense::random_ints(n, n, 5));
    write_npy(&b_path, &Dense::random_ints(n, n, 6));
    let (mut multiply, mut submit) = (Vec::new(), Vec::new());
    let (_service, service_addr) = start_service(&dir.join("svb"), &[]);
    let _service_pool = pool(&service_addr);
    for run in 0..runs {
        // multiply: a fresh master, the same kind of workers, started first.
        let c_path = dir.join(format!("mult_c{run}.npy"));
        let start = Instant::now();
        let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &[]);
        let workers = pool(&addr);
        assert!(master.wait_exit(LONG).success(), "{}", master.output());
        multiply.push(start.elapsed().as_secs_f64());
        drop(workers);
        // submit: to the master that stays up, whose workers are connected already.
        let c_sub = dir.join(format!("sub_c{run}.npy"));
        let start = Instant::now();
        let out = Command::new(common::MASTER).arg("submit").arg(&a_path).arg(&b_path).arg("-o").arg(&c_sub).args(["--to", &format!("http://{service_addr}")]).output().unwrap();
        submit.push(start.elapsed().as_secs_f64());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(&c_path).unwrap(), std::fs::read(&c_sub).unwrap(), "the same C both ways");
    }
    let (m, s) = (median(multiply), median(submit));
    println!("n={n}: master submit + download {s:.2} s, master multiply {m:.2} s (workers started with it): submit/multiply {:.2} (goal ≤ 1.15)", s / m);
    json!({ "n": n, "multiply_s": m, "submit_s": s, "submit_over_multiply": s / m })
}

fn two_at_once(dir: &Path, n: usize) -> Value {
    eprintln!("service: two jobs of n={n} at once");
    let (_master, addr) = start_service(&dir.join("pair"), &[]);
    let _workers = pool(&addr);
    std::thread::sleep(Duration::from_millis(500)); // both workers in
    let inputs: Vec<(Dense, Dense)> = (0..2).map(|i| (Dense::random_ints(n, n, 40 + i), Dense::random_ints(n, n, 50 + i))).collect();
    let bodies: Vec<(Vec<u8>, Vec<u8>)> = inputs.iter().enumerate().map(|(i, (a, b))| (npy_bytes(dir, &format!("pa{i}.npy"), a), npy_bytes(dir, &format!("pb{i}.npy"), b))).collect();
    // Submitted at the same moment, from two clients.
    let start = Instant::now();
    let ids: Vec<String> = std::thread::scope(|scope| {
        let posts: Vec<_> = bodies.iter().map(|(a, b)| scope.spawn(|| post_job(&addr, a, b, None).1["id"].as_str().unwrap().to_owned())).collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let mut finished = [None; 2];
    while finished.iter().any(Option::is_none) {
        for (i, id) in ids.iter().enumerate() {
            if finished[i].is_none() && get(&addr, &format!("/api/jobs/{id}")).1["state"] == "done" {
                finished[i] = Some(start.elapsed().as_secs_f64());
            }
        }
        assert!(start.elapsed() < LONG, "the pair did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    for (id, (a, b)) in ids.iter().zip(&inputs) {
        common::assert_product_sampled(&result(&addr, id, dir), a, b);
    }
    let (x, y) = (finished[0].unwrap(), finished[1].unwrap());
    let gap = (x - y).abs() / x.max(y);
    println!("two jobs of n={n} at once on 2 workers: done at {x:.2} s and {y:.2} s, {:.1}% apart (goal ≤ 10%)", gap * 100.0);
    json!({ "n": n, "finished_s": [x, y], "gap": gap })
}

fn sigkill_and_restart(dir: &Path, n: usize, small: usize) -> Value {
    eprintln!("service: SIGKILL with 3 queued and 1 running");
    let data = dir.join("kill");
    let (mut master, addr) = start_service(&data, &["--max-running", "1"]);
    let workers = pool(&addr);
    let sizes = [n, small, small, small];
    let inputs: Vec<(Dense, Dense)> = sizes.iter().enumerate().map(|(i, &s)| (Dense::random_ints(s, s, 60 + i as u64), Dense::random_ints(s, s, 70 + i as u64))).collect();
    let ids: Vec<String> = inputs
        .iter()
        .map(|(a, b)| post_job(&addr, &npy_bytes(dir, "ka.npy", a), &npy_bytes(dir, "kb.npy", b), None).1["id"].as_str().unwrap().to_owned())
        .collect();
    let deadline = Instant::now() + LONG;
    while get(&addr, &format!("/api/jobs/{}", ids[0])).1["tiles_done"].as_u64().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let states: Vec<String> = ids.iter().map(|id| get(&addr, &format!("/api/jobs/{id}")).1["state"].as_str().unwrap().to_owned()).collect();
    master.sigkill();
    drop(workers);
    let start = Instant::now();
    let (_master, addr) = start_service(&data, &[]);
    let _workers = pool(&addr);
    let mut identical = 0;
    for (id, (a, b)) in ids.iter().zip(&inputs) {
        wait_state(&addr, id, "done", LONG);
        // A clean run: the same product in one process. Integer inputs make
        // every correct C the same, bit for bit, whatever the summation order.
        let dense = |d: &Dense| DenseMatrix::F64(Matrix::from_fn(d.rows, d.cols, |i, j| d.at(i, j)));
        let clean = colonnade_native::compute::multiply(&dense(a), &dense(b), 2).into_f64();
        let clean = Dense::from_fn(clean.rows(), clean.cols(), |i, j| clean.get(i, j));
        identical += usize::from(result(&addr, id, dir) == clean);
    }
    println!(
        "SIGKILL with jobs {states:?}, restart: {identical} of 4 complete with C as a clean run's, {:.2} s after the restart",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(identical, 4);
    json!({ "states_at_kill": states, "complete_and_identical": identical, "after_restart_s": start.elapsed().as_secs_f64() })
}

fn memory_per_worker(dir: &Path, count: usize) -> Value {
    eprintln!("service: memory with {count} connected workers");
    let limits = ["--max-connections", "4000", "--max-per-address", "4000"];
    let (master, addr) = start_service(&dir.join("mem"), &limits);
    std::thread::sleep(Duration::from_millis(500));
    let before = colonnade_native::procstats::rss_bytes(Some(master.pid())).unwrap_or(0);
    let crowd = common::crowd::Crowd::start(&addr, count);
    crowd.wait_joined(count, LONG);
    std::thread::sleep(Duration::from_secs(3)); // heartbeats both ways, the board refreshed
    let after = colonnade_native::procstats::rss_bytes(Some(master.pid())).unwrap_or(0);
    let per = after.saturating_sub(before) as f64 / count as f64;
    println!("master memory per connected worker ({count} idle, operands aside): {:.1} KiB (goal ≤ 16 KiB)", per / 1024.0);
    drop(crowd);
    json!({ "workers": count, "rss_before_bytes": before, "rss_after_bytes": after, "bytes_per_worker": per })
}
