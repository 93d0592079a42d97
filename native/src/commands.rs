//! The master's subcommands: `multiply` files, and the self-checking `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use colonnade_core::kernel::flops;
use colonnade_core::plan::{CostModel, Plan};
use colonnade_core::job::Job;
use colonnade_core::scheduler::{Access, Scheduler, SchedulerConfig};
use colonnade_core::verify::Verifier;
use colonnade_core::{DenseMatrix, Dtype, Matrix};
use rand::{Rng, SeedableRng};

use crate::checkpoint::{Checkpoint, Inputs};
use crate::cli::BadInput;
use crate::compute;
use crate::io::{self, Format, InputError};
use crate::master::{JobReport, Limits, Master};
use crate::procstats;
use crate::tls::ServerTls;

#[derive(Clone, Debug)]
pub struct MultiplyArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    pub output: PathBuf,
    pub block: Option<usize>,
    /// Where to write the run's figures as JSON, if anywhere.
    pub stats_json: Option<PathBuf>,
    /// Where to record verified blocks, and resume from.
    pub checkpoint: Option<PathBuf>,
    /// Memory for A, B and C; by default what the system has available.
    pub max_memory: Option<u64>,
    pub serving: Serving,
}

#[derive(Clone, Debug)]
pub struct DemoArgs {
    pub size: usize,
    pub block: Option<usize>,
    pub serving: Serving,
}

/// How the master serves workers: where, who may join, within what limits.
#[derive(Clone, Debug)]
pub struct Serving {
    pub listen: SocketAddr,
    /// Workers started inside the master's process (they get the token).
    pub local_workers: usize,
    pub limits: Limits,
    pub access: Access,
    /// Serve https and wss with this certificate.
    pub tls: Option<ServerTls>,
}

pub async fn multiply(args: MultiplyArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Refuse a bad output path before doing any work.
    Format::of(&args.output)?;
    check_output_dir(&args.output)?;
    // One memory budget for A, B and C, each checked before it is allocated.
    let budget = args.max_memory.or_else(io::available_memory).unwrap_or(u64::MAX);
    let a = io::read_matrix(&args.a, budget)?;
    let b = io::read_matrix(&args.b, budget.saturating_sub(a.matrix.as_bytes().len() as u64))?;
    if a.matrix.cols() != b.matrix.rows() {
        return Err(BadInput(format!(
            "cannot multiply {} by {}: A is {} but B is {}: A's columns must equal B's rows",
            args.a.display(),
            args.b.display(),
            a.matrix.shape_string(),
            b.matrix.shape_string()
        ))
        .into());
    }
    check_job_memory(&a.matrix, &b.matrix, &args.output, budget)?;
    let integer = a.integer && b.integer;
    let (a, b) = same_dtype(a.matrix, b.matrix);
    let read_time = started.elapsed();
    let cpu_before = procstats::cpu_time();
    let spec = JobSpec { a, b, integer, block: args.block, checkpoint: args.checkpoint.clone() };
    let report = run(spec, &args.serving).await?;
    let job_cpu = procstats::cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let write_start = Instant::now();
    io::write_matrix(&args.output, &report.c, integer)?;
    let write_time = write_start.elapsed();
    if let Some(path) = &args.stats_json {
        let json = stats_json(&report, read_time, write_time, job_cpu);
        std::fs::write(path, json.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote {} ({}x{} {}) in {:.2} s; computed in {:.3} s at {:.1} GFLOP/s ({} blocks of {} columns)",
        args.output.display(),
        report.plan.m,
        report.plan.n,
        report.c.dtype(),
        write_start.elapsed().as_secs_f64(),
        report.elapsed.as_secs_f64(),
        report.gflops(),
        report.plan.blocks(),
        report.plan.width,
    );
    print_workers(&report);
    Ok(())
}

/// The run's figures: times, traffic against the payload minimum, master CPU and memory.
fn stats_json(report: &JobReport, read: Duration, write: Duration, job_cpu: Option<Duration>) -> serde_json::Value {
    let elem = report.c.dtype().size() as u64;
    let (m, k, n) = (report.plan.m as u64, report.plan.k as u64, report.plan.n as u64);
    let a_bytes = m * k * elem;
    let workers_given_a = report.stats.operand_bytes / a_bytes.max(1);
    let payload_min = workers_given_a * a_bytes + k * n * elem + m * n * elem;
    let workers: Vec<_> = report
        .workers
        .iter()
        .map(|(id, w)| {
            serde_json::json!({
                "id": id, "kind": format!("{:?}", w.kind).to_lowercase(), "name": w.name,
                "blocks": w.blocks_done, "compute_s": w.compute.as_secs_f64(),
            })
        })
        .collect();
    serde_json::json!({
        "m": m, "k": k, "n": n, "dtype": report.c.dtype().to_string(),
        "blocks": report.plan.blocks(), "block_width": report.plan.width,
        "read_s": read.as_secs_f64(), "job_s": report.elapsed.as_secs_f64(), "write_s": write.as_secs_f64(),
        "gflops": report.gflops(),
        "workers": workers,
        "wire_sent_bytes": report.wire_sent, "wire_received_bytes": report.wire_received,
        "payload_min_bytes": payload_min,
        "payload_operand_bytes": report.stats.operand_bytes, "payload_task_bytes": report.stats.task_bytes,
        "payload_result_bytes": report.stats.result_bytes, "leases_issued": report.stats.leases_issued,
        "encode_s": report.encode_time.as_secs_f64(), "scheduler_s": report.scheduler_time.as_secs_f64(),
        "verify_prep_s": report.verify_prep.as_secs_f64(),
        "rejected": report.workers.iter().map(|(_, w)| w.strikes).sum::<u32>(),
        "master_job_cpu_s": job_cpu.map(|d| d.as_secs_f64()),
        "master_peak_rss_bytes": procstats::peak_rss_bytes(None),
    })
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let n = args.size;
    if n == 0 {
        return Err(BadInput("--size must be at least 1".into()).into());
    }
    println!("Colonnade demo: C = A·B for random {n}x{n} f64 matrices, {} local workers", args.serving.local_workers);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xC0_1055);
    let mut random = || DenseMatrix::F64(Matrix::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0)));
    let (a, b) = (random(), random());
    let spec = JobSpec { a: a.clone(), b: b.clone(), integer: false, block: args.block, checkpoint: None };
    let report = run(spec, &args.serving).await?;
    println!(
        "distributed: {:.3} s, {:.1} GFLOP/s ({} blocks of {} columns)",
        report.elapsed.as_secs_f64(),
        report.gflops(),
        report.plan.blocks(),
        report.plan.width
    );
    print_workers(&report);
    let threads = compute::available_cores();
    let start = Instant::now();
    let reference = compute::multiply(&a, &b, threads);
    let local = start.elapsed();
    let local_gflops = flops(n, n, n) / local.as_secs_f64() / 1e9;
    println!(
        "local multiply ({threads} threads): {:.3} s, {local_gflops:.1} GFLOP/s; distributed/local = {:.2}",
        local.as_secs_f64(),
        report.gflops() / local_gflops
    );
    // Both sides round differently only in summation order; bound that error.
    let max_abs = |m: &DenseMatrix| m.clone().into_f64().as_slice().iter().fold(0.0f64, |x, v| x.max(v.abs()));
    let tolerance = 2.0 * n as f64 * f64::EPSILON * n as f64 * max_abs(&a) * max_abs(&b);
    let (c, r) = (report.c.into_f64(), reference.into_f64());
    let diff = c.as_slice().iter().zip(r.as_slice()).fold(0.0f64, |x, (p, q)| x.max((p - q).abs()));
    println!("max |C - C_local| = {diff:.3e} (tolerance {tolerance:.1e})");
    let ok = diff <= tolerance;
    println!("{}", if ok { "verified" } else { "MISMATCH: the distributed result differs from the local one" });
    Ok(ok)
}

/// A job's inputs and how to split and check it.
struct JobSpec {
    a: DenseMatrix,
    b: DenseMatrix,
    /// Every entry of A and B is an integer: results are checked exactly.
    integer: bool,
    block: Option<usize>,
    checkpoint: Option<PathBuf>,
}

/// A job ready to run, and what preparing it took.
struct Prepared {
    job: Job,
    verify_prep: Duration,
    restored_columns: usize,
}

/// Listens, starts local workers, and runs the job, checking every result.
async fn run(spec: JobSpec, serving: &Serving) -> anyhow::Result<JobReport> {
    let checkpoint = match &spec.checkpoint {
        Some(dir) => {
            let width = spec.block.unwrap_or_else(|| default_width(&spec.a, &spec.b));
            Some((dir.clone(), Checkpoint::open(dir, &Inputs::of(&spec.a, &spec.b), width)?))
        }
        None => None,
    };
    let mut config = SchedulerConfig { access: serving.access.clone(), ..SchedulerConfig::default() };
    (config.max_chunk, config.max_slots) = (serving.limits.max_chunk, serving.limits.max_slots);
    let prepared = prepare(spec, &config, checkpoint.as_ref())?;
    let writer = checkpoint.as_ref().map(|(_, cp)| cp.writer());
    let job_id = prepared.job.id();
    let mut scheduler = Scheduler::new(config);
    let mut master = Master::bind(serving.listen, serving.limits, serving.tls.as_ref()).await?;
    println!("master listening on {}", master.local_addr());
    println!("  add a worker:  worker {}", master.worker_url());
    println!("  or a browser:  {}", master.page_url());
    let local_workers = serving.local_workers;
    let locals = (local_workers > 0).then(|| {
        let threads = (compute::available_cores() / local_workers).max(1);
        master.spawn_local_workers(local_workers, threads, serving.access.token.as_ref().unwrap_or(&Default::default()))
    });
    scheduler.add_job(prepared.job, Duration::ZERO);
    let result = tokio::select! {
        r = master.run(&mut scheduler, job_id, true, writer.as_ref()) => r,
        _ = crate::cli::stop_requested() => Err(anyhow::anyhow!("interrupted; no output written")),
    };
    if let Some(locals) = locals {
        locals.stop().await;
    }
    if let Some(writer) = writer {
        writer.finish();
    }
    let Prepared { verify_prep, restored_columns, .. } = prepared;
    result.map(|report| JobReport { verify_prep, restored_columns, ..report })
}

/// The cost model's block width for A·B.
fn default_width(a: &DenseMatrix, b: &DenseMatrix) -> usize {
    CostModel::default().block_width(a.rows(), a.cols(), b.cols(), a.dtype().size())
}

/// Plans the job (on the checkpoint's own plan when resuming), draws the
/// secret weights for Freivalds' check, and restores checkpointed blocks.
fn prepare(spec: JobSpec, config: &SchedulerConfig, checkpoint: Option<&(PathBuf, Checkpoint)>) -> anyhow::Result<Prepared> {
    let JobSpec { a, b, integer, block, .. } = spec;
    let (m, k, n, elem) = (a.rows(), a.cols(), b.cols(), a.dtype().size());
    let width = match checkpoint {
        Some((_, cp)) => cp.width,
        None => block.unwrap_or_else(|| default_width(&a, &b)),
    };
    let plan = Plan::new(m, k, n, width);
    let mut rng = rand::rng();
    // Secret weights for Freivalds' check: workers never see them.
    let weights = (0..n)
        .map(|_| {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            sign * if integer { f64::from(rng.random_range(1u8..=8)) } else { rng.random_range(1.0..2.0) }
        })
        .collect();
    // Shared by the job (their bytes) and the verifier; the job checks the shapes.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let job = Job::new(rng.random::<u64>(), Arc::clone(&a), Arc::clone(&b), plan.clone(), config.leases.clone(), config.max_chunk)?;
    let started = Instant::now();
    let tiles: Vec<_> = (0..plan.blocks()).map(|i| plan.tile(i)).collect();
    let verifier = Verifier::new(a, b, &tiles, weights, integer);
    let verify_prep = started.elapsed();
    let mut job = job.with_verifier(verifier);
    let mut restored_columns = 0;
    if let Some((dir, cp)) = checkpoint {
        let block_len = |i: usize| (i < plan.blocks()).then(|| plan.columns(i).len() * m * elem);
        let mut restored = 0;
        for saved in cp.saved_blocks(block_len) {
            match job.restore(saved.index, &saved.bytes) {
                Ok(()) => {
                    restored += 1;
                    restored_columns += plan.columns(saved.index).len();
                }
                Err(e) => {
                    tracing::warn!("checkpoint: discarding {e}; it will be computed again");
                    cp.discard(saved.index);
                }
            }
        }
        println!("checkpoint {}: {restored} of {} blocks already done ({width} columns each)", dir.display(), plan.blocks());
    }
    Ok(Prepared { job, verify_prep, restored_columns })
}

fn print_workers(report: &JobReport) {
    for (id, info) in &report.workers {
        let kind = format!("{:?}", info.kind).to_lowercase();
        println!("  worker {id} ({kind} '{}'): {} blocks", info.name, info.blocks_done);
    }
}

/// f32 only when both are f32; otherwise both in f64.
fn same_dtype(a: DenseMatrix, b: DenseMatrix) -> (DenseMatrix, DenseMatrix) {
    if a.dtype() == Dtype::F32 && b.dtype() == Dtype::F32 {
        (a, b)
    } else {
        (DenseMatrix::F64(a.into_f64()), DenseMatrix::F64(b.into_f64()))
    }
}

/// A, B (in the job's element type) and C must fit in `budget` together.
fn check_job_memory(a: &DenseMatrix, b: &DenseMatrix, output: &Path, budget: u64) -> Result<(), InputError> {
    let elem = if a.dtype() == Dtype::F32 && b.dtype() == Dtype::F32 { 4 } else { 8 };
    let (ab, c) = ((a.rows() * a.cols() + b.rows() * b.cols()) as u128 * elem, (a.rows() * b.cols()) as u128 * elem);
    if ab + c > u128::from(budget) {
        let (shape, both) = (format!("{}x{}", a.rows(), b.cols()), crate::cli::human_bytes(ab));
        let problem = format!("C = A·B is {shape} and needs {}; with A and B ({both}) that is {}", crate::cli::human_bytes(c), io::over_limit(budget));
        return Err(InputError::new(output, problem));
    }
    Ok(())
}

fn check_output_dir(output: &Path) -> Result<(), InputError> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(InputError::new(output, format!("the folder {} does not exist", dir.display())));
    }
    Ok(())
}
