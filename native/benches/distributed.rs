//! Colonnade against the machine: `cargo xtask bench`.
//!
//! For each size, in one run: the kernel alone in this process (2 threads and 1,
//! "the limit"), then the real `master` with two real `worker` processes (1
//! thread each) on loopback. Reports medians, ratios to the limit, the plan,
//! where the time goes (verification's share included), the master's egress
//! against A and B, bytes on the wire against the payload, peak memory, and
//! the scheduler's throughput with 16 workers and tiny tasks. Then, file to
//! file, `master multiply` with two pre-started workers against numpy's
//! `np.save(c, np.load(a) @ np.load(b))` on the same files, and a tall-skinny
//! job. Writes a table to stdout and everything to target/bench/bench.json.
//!
//! `--smoke` runs tiny sizes once, to check the pipeline (CI), not the speed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use colonnade_core::kernel::flops;
use colonnade_core::{DenseMatrix, Dtype, Matrix};
use colonnade_native::{compute, io, procstats};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MASTER: &str = env!("CARGO_BIN_EXE_master");
const WORKER: &str = env!("CARGO_BIN_EXE_worker");

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (sizes, runs, tiny_tasks): (&[(usize, Dtype)], usize, usize) = if smoke {
        (&[(64, Dtype::F64), (96, Dtype::F32)], 1, 400)
    } else {
        (&[(1024, Dtype::F64), (2048, Dtype::F64), (4096, Dtype::F64), (4096, Dtype::F32)], 3, 20_000)
    };
    let mut results = Vec::new();
    for &(n, dtype) in sizes {
        results.push(bench_size(n, dtype, runs));
    }
    let scheduler = bench_scheduler(tiny_tasks, 16, runs);
    print_table(&results, &scheduler);
    let (square, skinny) = if smoke { (64, (200, 16)) } else { (4096, (200_000, 256)) };
    let files = vec![against_numpy(square, square, square, runs), against_numpy(skinny.0, skinny.1, skinny.1, runs)];
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join(if smoke { "bench-smoke.json" } else { "bench.json" });
    print_files(&files);
    let all = json!({ "runs_per_figure": runs, "sizes": results, "scheduler": scheduler, "file_to_file": files });
    std::fs::write(&file, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    println!("\nwrote {}", file.display());
}

fn random(n: usize, dtype: Dtype, seed: u64) -> DenseMatrix {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let m = Matrix::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
    match dtype {
        Dtype::F64 => DenseMatrix::F64(m),
        Dtype::F32 => DenseMatrix::F32(DenseMatrix::F64(m).into_f32()),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn bench_size(n: usize, dtype: Dtype, runs: usize) -> Value {
    eprintln!("n={n} {dtype}: preparing");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (random(n, dtype, 1), random(n, dtype, 2));
    let (a_path, b_path, c_path) = (dir.path().join("a.npy"), dir.path().join("b.npy"), dir.path().join("c.npy"));
    io::write_matrix(&a_path, &a, false).unwrap();
    io::write_matrix(&b_path, &b, false).unwrap();
    let work = flops(n, n, n);

    let limit = |threads: usize| {
        let mut reference = None;
        let rates = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let c = compute::multiply(&a, &b, threads);
                let rate = work / start.elapsed().as_secs_f64() / 1e9;
                reference = Some(c);
                rate
            })
            .collect();
        (median(rates), reference.unwrap())
    };
    eprintln!("n={n} {dtype}: the limit");
    let (limit2, reference) = limit(2);
    let (limit1, _) = limit(1);

    let mut runs_json: Vec<Value> = (0..runs)
        .map(|r| {
            eprintln!("n={n} {dtype}: distributed run {}", r + 1);
            let run = distributed_run(&a_path, &b_path, &c_path, 2, &[]);
            check(&c_path, &reference);
            run
        })
        .collect();
    runs_json.sort_by(|x, y| x["job_s"].as_f64().unwrap().total_cmp(&y["job_s"].as_f64().unwrap()));
    let mid = runs_json[runs_json.len() / 2].clone();
    let f = |k: &str| mid[k].as_f64().unwrap_or(f64::NAN);
    let matrix_bytes = (n * n) as f64 * dtype.size() as f64;
    let compute_per_worker: f64 = mid["workers"].as_array().unwrap().iter().map(|w| w["compute_s"].as_f64().unwrap()).sum::<f64>() / 2.0;
    let worker_rss: Vec<f64> = mid["worker_peak_rss_bytes"].as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    let gflops = work / f("job_s") / 1e9;
    json!({
        "n": n, "dtype": dtype.to_string(), "grid": mid["grid"], "layout": mid["layout"], "tiles": mid["tiles"],
        "limit_2_threads_gflops": limit2, "limit_1_thread_gflops": limit1,
        "gflops": gflops, "ratio_to_limit": gflops / limit2,
        "job_s": f("job_s"), "read_s": f("read_s"), "write_s": f("write_s"),
        "time": {
            "compute_per_worker_s": compute_per_worker,
            "not_computing_per_worker_s": f("job_s") - compute_per_worker,
            "master_encode_s": f("encode_s"),
            "master_scheduler_s": f("scheduler_s"),
            "master_job_cpu_s": f("master_job_cpu_s"),
            "verification_prep_s": f("verify_prep_s"),
            "verification_prep_cpu_s": f("verify_prep_cpu_s"),
            "verification_prep_in_job_s": f("verify_prep_in_job_s"),
            "verification_prep_while_reading_s": f("verify_prep_while_reading_s"),
            "verification_checks_cpu_s": f("verify_checks_cpu_s"),
            "verification_stall_s": f("verify_stall_s"),
            "verification_plan_wait_s": f("verify_plan_wait_s"),
            "verification_share_of_job": verification_share(&mid),
            "verification_prep_cpu_over_job_time": f("verify_prep_cpu_s") / f("job_s"),
            "results_held_for_verifier": mid["results_held_for_verifier"],
        },
        "egress_over_inputs": f("egress_over_inputs"),
        "wire_bytes": f("wire_sent_bytes") + f("wire_received_bytes"),
        "payload_bytes": f("payload_bytes"),
        "wire_ratio": (f("wire_sent_bytes") + f("wire_received_bytes")) / f("payload_bytes"),
        "master_peak_rss_bytes": f("master_peak_rss_bytes"),
        "master_rss_ratio": f("master_peak_rss_bytes") / (3.0 * matrix_bytes),
        "worker_peak_rss_bytes": worker_rss,
        "all_runs_job_s": runs_json.iter().map(|r| r["job_s"].clone()).collect::<Vec<_>>(),
    })
}

/// What verifying took from a job, over its time: how long the plan waited
/// for the preparation once the pool was settled, the preparation's time after
/// the first task (wall, so at least its CPU time; any wait for it at the end
/// lies within that), and the checks' CPU time.
fn verification_share(stats: &Value) -> f64 {
    let f = |k: &str| stats[k].as_f64().unwrap_or(f64::NAN);
    (f("verify_plan_wait_s") + f("verify_prep_in_job_s") + f("verify_checks_cpu_s")) / f("job_s")
}

/// File to file, as a new user would run it: `master multiply` with two
/// `--threads 1` workers started first, timed from start to exit, against
/// numpy multiplying the same files on all cores. Medians; C is checked.
fn against_numpy(m: usize, k: usize, n: usize, runs: usize) -> Value {
    eprintln!("file to file, {m}x{k} by {k}x{n}: against numpy");
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path, c_path, np_path) = (dir.path().join("a.npy"), dir.path().join("b.npy"), dir.path().join("c.npy"), dir.path().join("c_np.npy"));
    let rect = |rows: usize, cols: usize, seed: u64| {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        DenseMatrix::F64(Matrix::from_fn(rows, cols, |_, _| rng.random_range(-1.0..1.0)))
    };
    io::write_matrix(&a_path, &rect(m, k, 3), false).unwrap();
    io::write_matrix(&b_path, &rect(k, n, 4), false).unwrap();
    let script = format!(
        "import numpy as np, time\nt=time.perf_counter()\nnp.save({:?}, np.load({:?}) @ np.load({:?}))\nprint(time.perf_counter()-t)",
        np_path.to_str().unwrap(),
        a_path.to_str().unwrap(),
        b_path.to_str().unwrap()
    );
    let numpy = median(
        (0..runs)
            .map(|_| {
                let out = Command::new("python3").args(["-c", &script]).output().expect("python3 with numpy");
                assert!(out.status.success(), "numpy failed: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().unwrap()
            })
            .collect(),
    );
    let reference = io::read_matrix(&np_path, u64::MAX).unwrap().matrix;
    let (mut egress, mut verification, mut in_read) = (Vec::new(), Vec::new(), Vec::new());
    let ours = median(
        (0..runs)
            .map(|_| {
                let (took, stats) = file_to_file(&a_path, &b_path, &c_path);
                check(&c_path, &reference);
                egress.push(stats["panel_bytes"].as_f64().unwrap() / (stats["inputs_bytes"].as_f64().unwrap() + 2.0 * (k * n * 8) as f64 - (k * n * 8) as f64));
                verification.push(verification_share(&stats));
                in_read.push(stats["verify_prep_while_reading_s"].as_f64().unwrap_or(0.0));
                took
            })
            .collect(),
    );
    json!({
        "m": m, "k": k, "n": n, "numpy_s": numpy, "colonnade_s": ours, "speed_vs_numpy": numpy / ours,
        "egress_over_a_plus_p_b": median(egress), "verification_share_of_job": median(verification),
        "verification_prep_while_reading_s": median(in_read),
    })
}

/// `master multiply` from start to exit, with two workers already running
/// (they wait for it); returns the wall time and its figures.
fn file_to_file(a: &Path, b: &Path, c: &Path) -> (f64, Value) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut pool: Vec<Child> = (0..2)
        .map(|i| {
            Command::new(WORKER)
                .arg(format!("ws://{addr}/ws"))
                .args(["--threads", "1", "--name", &format!("ftf-{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // workers are up and knocking
    let stats = c.with_extension("json");
    let start = Instant::now();
    let status = Command::new(MASTER)
        .arg("multiply")
        .arg(a)
        .arg(b)
        .arg("-o")
        .arg(c)
        .args(["--listen", &addr, "--stats-json"])
        .arg(&stats)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let took = start.elapsed().as_secs_f64();
    assert!(status.success(), "the master failed");
    for w in &mut pool {
        let _ = w.kill();
        let _ = w.wait();
    }
    (took, serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap())
}

/// One real job: a master process and `workers` worker processes on loopback.
/// Returns the master's --stats-json figures plus each worker's peak memory.
fn distributed_run(a: &Path, b: &Path, c: &Path, workers: usize, master_args: &[&str]) -> Value {
    let stats = c.with_extension("json");
    let mut master = Command::new(MASTER)
        .arg("multiply")
        .arg(a)
        .arg(b)
        .arg("-o")
        .arg(c)
        .args(["--listen", "127.0.0.1:0", "--stats-json"])
        .arg(&stats)
        .args(master_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = listening_address(&mut master);
    let mut pool: Vec<Child> = (0..workers)
        .map(|i| {
            Command::new(WORKER)
                .arg(format!("ws://{addr}/ws"))
                .args(["--threads", "1", "--name", &format!("bench-{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let status = master.wait().unwrap();
    assert!(status.success(), "the master failed");
    let rss: Vec<Option<u64>> = pool.iter().map(|w| procstats::peak_rss_bytes(Some(w.id()))).collect();
    for w in &mut pool {
        let _ = w.kill();
        let _ = w.wait();
    }
    let mut figures: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    figures["worker_peak_rss_bytes"] = json!(rss);
    figures
}

fn listening_address(master: &mut Child) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = master.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = lines.next().expect("master exited early").unwrap();
        if let Some(addr) = line.strip_prefix("master listening on ") {
            let addr = addr.trim().to_owned();
            // Keep draining stdout so the master never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return addr;
        }
        assert!(Instant::now() < deadline, "the master never said where it listens");
    }
}

/// The pipeline must produce the right C, or its figures mean nothing.
fn check(c_path: &Path, reference: &DenseMatrix) {
    let c = io::read_matrix(c_path, u64::MAX).unwrap().matrix;
    assert_eq!(c.dtype(), reference.dtype());
    let tolerance = if c.dtype() == Dtype::F32 { 1e-3 } else { 1e-9 };
    let (c, r) = (c.into_f64(), reference.clone().into_f64());
    let worst = c.as_slice().iter().zip(r.as_slice()).fold(0.0f64, |w, (x, y)| w.max((x - y).abs()));
    assert!(worst <= tolerance * r.cols() as f64, "distributed C differs from the local product by {worst}");
}

/// Many tiny tasks (1-column blocks of a 1×1 by 1×tasks product) through the
/// real codec and WebSocket to `workers` worker processes.
fn bench_scheduler(tasks: usize, workers: usize, runs: usize) -> Value {
    eprintln!("scheduler: {tasks} tiny tasks to {workers} workers");
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path, c_path) = (dir.path().join("a.npy"), dir.path().join("b.npy"), dir.path().join("c.npy"));
    io::write_matrix(&a_path, &DenseMatrix::F64(Matrix::from_fn(1, 1, |_, _| 2.0)), false).unwrap();
    io::write_matrix(&b_path, &DenseMatrix::F64(Matrix::from_fn(1, tasks, |_, j| j as f64)), false).unwrap();
    let mut samples: Vec<(f64, f64)> = (0..runs)
        .map(|_| {
            let run = distributed_run(&a_path, &b_path, &c_path, workers, &["--block", "1"]);
            let job_s = run["job_s"].as_f64().unwrap();
            let cpu = run["master_job_cpu_s"].as_f64().unwrap_or(f64::NAN);
            (tasks as f64 / job_s, cpu / tasks as f64 * 1e6)
        })
        .collect();
    samples.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (rate, cpu_us) = samples[samples.len() / 2];
    json!({ "tasks": tasks, "workers": workers, "tasks_per_s": rate, "master_cpu_us_per_task": cpu_us })
}

fn print_table(sizes: &[Value], scheduler: &Value) {
    println!("\n{:<10} {:>10} {:>9} {:>9} {:>7} {:>6} | {:>7} {:>9} {:>6} {:>7} {:>7} {:>4} | {:>6} {:>6} {:>6} {:>10} | {:>6} {:>7}", "size", "grid", "limit 2T", "limit 1T", "GFLOP/s", "ratio", "job s", "compute/w", "sched", "verify", "prep", "held", "egress", "wire", "master", "worker MiB", "read s", "in read");
    for s in sizes {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        let t = |k: &str| s["time"][k].as_f64().unwrap_or(f64::NAN);
        let grid = s["grid"].as_array().map_or("?".into(), |g| g.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x"));
        let worker = s["worker_peak_rss_bytes"].as_array().map_or(f64::NAN, |w| w.iter().filter_map(Value::as_f64).fold(0.0, f64::max)) / (1u64 << 20) as f64;
        println!(
            "{:<10} {:>10} {:>9.1} {:>9.1} {:>7.1} {:>6.2} | {:>7.3} {:>9.3} {:>6.3} {:>6.1}% {:>6.1}% {:>4} | {:>6.2} {:>6.3} {:>6.2} {:>10.0} | {:>6.3} {:>5.0}ms",
            format!("{} {}", s["n"], s["dtype"].as_str().unwrap()),
            grid,
            f("limit_2_threads_gflops"),
            f("limit_1_thread_gflops"),
            f("gflops"),
            f("ratio_to_limit"),
            f("job_s"),
            t("compute_per_worker_s"),
            t("master_scheduler_s"),
            100.0 * t("verification_share_of_job"),
            100.0 * t("verification_prep_cpu_over_job_time"),
            s["time"]["results_held_for_verifier"],
            f("egress_over_inputs"),
            f("wire_ratio"),
            f("master_rss_ratio"),
            worker,
            f("read_s"),
            1e3 * t("verification_prep_while_reading_s"),
        );
    }
    println!("(ratio: distributed over the 2-thread limit; sched: master time in the scheduler, result checks included; verify: what verifying took from the job, over the job time (the plan's wait for the preparation once the pool was settled, the preparation's time after the first task, which covers any wait for it at the end, and the checks' CPU time); prep: the preparation's CPU time over the job time, wherever it ran (it runs while A is read); held: results that waited for it; egress: panel bytes sent over A+B; wire: bytes on the wire over the payload; master: peak RSS over A+B+C; worker: peak RSS; read s: reading A and B; in read: the preparation's wall time while A was read, within read s)");
    println!(
        "scheduler: {} tiny tasks to {} workers: {:.0} tasks/s, {:.1} µs of master CPU per task",
        scheduler["tasks"], scheduler["workers"], scheduler["tasks_per_s"].as_f64().unwrap(), scheduler["master_cpu_us_per_task"].as_f64().unwrap()
    );
}

fn print_files(files: &[Value]) {
    for f in files {
        println!(
            "file to file, {}x{} by {}x{} f64: numpy {:.2} s, colonnade {:.2} s (2 workers x 1 thread): {:.2}x numpy's speed; egress over A + 2B: {:.2}; verification {:.1}% of the job (its preparation {:.0} ms while A was read)",
            f["m"], f["k"], f["k"], f["n"],
            f["numpy_s"].as_f64().unwrap(),
            f["colonnade_s"].as_f64().unwrap(),
            f["speed_vs_numpy"].as_f64().unwrap(),
            f["egress_over_a_plus_p_b"].as_f64().unwrap(),
            100.0 * f["verification_share_of_job"].as_f64().unwrap_or(f64::NAN),
            1e3 * f["verification_prep_while_reading_s"].as_f64().unwrap_or(f64::NAN),
        );
    }
}
