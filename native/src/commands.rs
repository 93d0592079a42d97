//! The master's subcommands: `multiply` files, and the self-checking `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use colonnade_core::kernel::flops;
use colonnade_core::plan::{CostModel, Plan};
use colonnade_core::job::{Job, Unplanned};
use colonnade_core::protocol::{JobId, Token};
use colonnade_core::scheduler::{Access, JobError, Scheduler, SchedulerConfig};
use colonnade_core::verify::{whole_depth_tiles, Verifier};
use colonnade_core::{DenseMatrix, Dtype, Matrix};
use rand::{Rng, SeedableRng};

use crate::checkpoint::{Checkpoint, Inputs};
use crate::cli::BadInput;
use crate::compute;
use crate::io::{self, Filled, Format, InputError};
use crate::master::{describe, JobReport, Limits, LocalWorkers, Master, PrepCost, Preparation, Session, VerifierRecipe, WhileReading};
use crate::procstats;
use crate::tls::ServerTls;

#[derive(Clone, Debug)]
pub struct MultiplyArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    pub output: PathBuf,
    pub block: Option<usize>,
    /// The master's link rate, bytes/s, if the user knows it: the plan then
    /// weighs bytes against flops.
    pub link_rate: Option<f64>,
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
    /// Workers started inside the master's process (they get `access.own`).
    pub local_workers: usize,
    pub limits: Limits,
    pub access: Access,
    /// Serve https and wss with this certificate.
    pub tls: Option<ServerTls>,
}

impl Serving {
    /// Serving settings; with `local_workers`, `access` also gets a fresh
    /// secret for them, so the master trusts its own in-process workers as it
    /// does the holders of its token.
    pub fn new(listen: SocketAddr, local_workers: usize, limits: Limits, access: Access, tls: Option<ServerTls>) -> Self {
        let own = (local_workers > 0).then(|| Token::new(format!("{:032x}", rand::random::<u128>())));
        Self { listen, local_workers, limits, access: Access { own, ..access }, tls }
    }

    /// The scheduler's settings for these limits and this access.
    pub(crate) fn scheduler_config(&self) -> SchedulerConfig {
        let mut config = SchedulerConfig { access: self.access.clone(), ..SchedulerConfig::default() };
        (config.max_chunk, config.max_slots) = (self.limits.max_chunk, self.limits.max_slots);
        config
    }
}

pub async fn multiply(args: MultiplyArgs) -> anyhow::Result<()> {
    // Refuse a bad output path before doing any work.
    Format::of(&args.output)?;
    check_output_dir(&args.output)?;
    // Serve first: workers that connect while the inputs are read are welcomed meanwhile.
    let mut served = serve(&args.serving, None).await?;
    let mut session = Session::new(Scheduler::new(args.serving.scheduler_config()));
    let started = Instant::now();
    let (a_path, b_path, output, max_memory) = (args.a.clone(), args.b.clone(), args.output.clone(), args.max_memory);
    // A checkpoint already begun resumes on its own grid, checked by a verifier
    // of its own, prepared after the read; a fresh one is like no checkpoint.
    let while_reading = args.checkpoint.as_deref().is_none_or(|dir| !Checkpoint::has_begun(dir));
    let reading = tokio::task::spawn_blocking(move || read_inputs(&a_path, &b_path, &output, max_memory, while_reading));
    let inputs = served.master.greet(&mut session, reading).await?;
    let (a, b, integer, prepared) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            served.stop().await;
            return Err(e);
        }
    };
    let read_time = started.elapsed();
    let prep_while_reading = prepared.as_ref().map(WhileReading::cost);
    let cpu_before = procstats::cpu_time();
    let spec = JobSpec {
        id: rand::rng().random(),
        a,
        b,
        integer,
        block: args.block,
        link_rate: args.link_rate,
        checkpoint: args.checkpoint.clone(),
        early_verifier: true,
        prepared,
    };
    let report = run(spec, session, served).await?;
    let job_cpu = procstats::cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let write_start = Instant::now();
    io::write_matrix(&args.output, &report.c, integer)?;
    let write_time = write_start.elapsed();
    if let Some(path) = &args.stats_json {
        let json = stats_json(&report, read_time, write_time, job_cpu, prep_while_reading);
        std::fs::write(path, json.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote {} ({}x{} {}) in {:.2} s; computed in {:.3} s at {:.1} GFLOP/s ({})",
        args.output.display(),
        report.plan.m,
        report.plan.n,
        report.c.dtype(),
        write_start.elapsed().as_secs_f64(),
        report.elapsed.as_secs_f64(),
        report.gflops(),
        describe(&report.plan),
    );
    print_workers(&report);
    Ok(())
}

/// The run's figures: times; the plan; traffic against A and B and against
/// the payload; master CPU and memory; what the verifier's preparation took
/// while A was read (within `read`), if it was prepared then.
fn stats_json(report: &JobReport, read: Duration, write: Duration, job_cpu: Option<Duration>, prep_while_reading: Option<PrepCost>) -> serde_json::Value {
    let elem = report.c.dtype().size() as u64;
    let plan = &report.plan;
    let (m, k, n) = (plan.m as u64, plan.k as u64, plan.n as u64);
    let inputs = (m * k + k * n) * elem;
    let workers: Vec<_> = report
        .workers
        .iter()
        .map(|(id, w)| {
            serde_json::json!({
                "id": id, "kind": format!("{:?}", w.kind).to_lowercase(), "name": w.name,
                "tiles": w.tiles_done, "compute_s": w.compute.as_secs_f64(), "flops": w.flops,
                "memory_bytes": w.memory, "strikes": w.strikes, "trusted": w.trusted,
            })
        })
        .collect();
    serde_json::json!({
        "m": m, "k": k, "n": n, "dtype": report.c.dtype().to_string(),
        "grid": [plan.rows.parts, plan.cols.parts, plan.depth.parts],
        "layout": [plan.layout.0, plan.layout.1, plan.layout.2],
        // Whether workers beyond the layout's boxes share them, or wait (and how fast one must be to get a box).
        "spread": plan.spread, "min_speed": plan.min_speed,
        "tiles": plan.tiles(), "blocks": plan.blocks(),
        "read_s": read.as_secs_f64(), "job_s": report.elapsed.as_secs_f64(), "write_s": write.as_secs_f64(),
        "gflops": report.gflops(),
        "workers": workers,
        "wire_sent_bytes": report.wire_sent, "wire_received_bytes": report.wire_received,
        "inputs_bytes": inputs,
        "panel_bytes": report.stats.panel_bytes,
        "egress_over_inputs": report.stats.panel_bytes as f64 / inputs.max(1) as f64,
        "result_bytes": report.stats.result_bytes,
        "payload_bytes": report.stats.panel_bytes + report.stats.result_bytes,
        "leases_issued": report.stats.leases_issued,
        "encode_s": report.encode_time.as_secs_f64(), "scheduler_s": report.scheduler_time.as_secs_f64(),
        "verify_prep_s": report.verify_prep.wall.as_secs_f64(),
        "verify_prep_cpu_s": report.verify_prep.cpu.map(|d| d.as_secs_f64()),
        "verify_prep_in_job_s": report.verify_prep_in_job.as_secs_f64(),
        "verify_prep_while_reading_s": prep_while_reading.map(|c| c.wall.as_secs_f64()),
        "verify_prep_while_reading_cpu_s": prep_while_reading.and_then(|c| c.cpu).map(|d| d.as_secs_f64()),
        "verify_checks_cpu_s": report.verify_checks.map(|d| d.as_secs_f64()),
        "verify_stall_s": report.verify_stall.as_secs_f64(),
        "verify_plan_wait_s": report.verify_plan_wait.as_secs_f64(),
        "results_held_for_verifier": report.held_for_verifier,
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
    let spec = JobSpec {
        id: rand::rng().random(),
        a: a.clone(),
        b: b.clone(),
        integer: false,
        block: args.block,
        link_rate: None,
        checkpoint: None,
        early_verifier: true,
        prepared: None,
    };
    let mut served = serve(&args.serving, None).await?;
    let mut session = Session::new(Scheduler::new(args.serving.scheduler_config()));
    served.master.greet(&mut session, async {}).await;
    let report = run(spec, session, served).await?;
    println!("distributed: {:.3} s, {:.1} GFLOP/s ({})", report.elapsed.as_secs_f64(), report.gflops(), describe(&report.plan));
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
pub(crate) struct JobSpec {
    pub id: JobId,
    pub a: DenseMatrix,
    pub b: DenseMatrix,
    /// Every entry of A and B is an integer: results are checked exactly.
    pub integer: bool,
    /// Columns per tile, if the user chose them; otherwise the pool's model plans.
    pub block: Option<usize>,
    pub link_rate: Option<f64>,
    pub checkpoint: Option<PathBuf>,
    /// The shell prepares the verifier before the plan, and planning waits for
    /// it a while (`master multiply`; a master that stays up has no idle pause).
    pub early_verifier: bool,
    /// The verifier's preparation done while A was read, if it was.
    pub prepared: Option<WhileReading>,
}

/// Reads A and B within `max_memory` (default: what is available), each
/// checked before it is allocated, and C's share too. Returns them in the
/// product's element type, and whether both hold only integers. B is read
/// first: if `prepare_checks`, the verifier is then prepared band by band as
/// A is read (when A and B share a dtype), and returned too.
pub(crate) fn read_inputs(
    a: &Path,
    b: &Path,
    output: &Path,
    max_memory: Option<u64>,
    prepare_checks: bool,
) -> anyhow::Result<(DenseMatrix, DenseMatrix, bool, Option<WhileReading>)> {
    let budget = max_memory.or_else(io::available_memory).unwrap_or(u64::MAX);
    let b_in = io::read_matrix(b, budget)?;
    let (mut prepared, mut declined) = (None::<WhileReading>, !prepare_checks);
    let mut on_filled = |filled: Filled<'_>| {
        if declined {
            return;
        }
        // Only for a product it can be: otherwise the job prepares it after the read.
        let (m, k) = filled.shape;
        if prepared.is_none() && (filled.stored.dtype() != b_in.matrix.dtype() || k != b_in.matrix.rows()) {
            declined = true;
            return;
        }
        let integer = filled.integer && b_in.integer;
        prepared.get_or_insert_with(|| WhileReading::start(m, &b_in.matrix, secret_weights(b_in.matrix.cols(), integer), integer)).add(&filled);
    };
    let a_in = io::read_matrix_filling(a, budget.saturating_sub(b_in.matrix.as_bytes().len() as u64), &mut on_filled)?;
    JobError::check_inner(&a_in.matrix, &b_in.matrix).map_err(|e| BadInput(format!("cannot multiply {} by {}: {e}", a.display(), b.display())))?;
    let dtype = Dtype::of_product(a_in.matrix.dtype(), b_in.matrix.dtype());
    check_job_memory(&a_in.matrix, &b_in.matrix, dtype, output, budget)?;
    let integer = a_in.integer && b_in.integer;
    let prepared = prepared.filter(WhileReading::complete);
    Ok((a_in.matrix.into_dtype(dtype), b_in.matrix.into_dtype(dtype), integer, prepared))
}

/// Secret weights for Freivalds' check, one per column of C: workers never
/// see them. Small integers for an integer job, so its checks are exact.
fn secret_weights(n: usize, integer: bool) -> Vec<f64> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            sign * if integer { f64::from(rng.random_range(1u8..=8)) } else { rng.random_range(1.0..2.0) }
        })
        .collect()
}

/// A listening master and the workers started inside it.
pub(crate) struct Served {
    pub master: Master,
    pub locals: Option<LocalWorkers>,
}

impl Served {
    pub async fn stop(self) {
        if let Some(locals) = self.locals {
            locals.stop().await;
        }
    }
}

/// Listens (serving `extra` routes too), says where, and starts the local workers.
pub(crate) async fn serve(serving: &Serving, extra: Option<axum::Router>) -> anyhow::Result<Served> {
    let master = Master::bind(serving.listen, serving.limits, serving.tls.as_ref(), extra).await?;
    println!("master listening on {}", master.local_addr());
    println!("  add a worker:  worker {}", master.worker_url());
    println!("  or a browser:  {}", master.page_url());
    let local_workers = serving.local_workers;
    let locals = (local_workers > 0).then(|| {
        let threads = (compute::available_cores() / local_workers).max(1);
        let own = serving.access.own.as_ref().expect("made with local workers");
        master.spawn_local_workers(local_workers, threads, own)
    });
    Ok(Served { master, locals })
}

/// Runs the job on the master, checking every result.
async fn run(spec: JobSpec, mut session: Session, served: Served) -> anyhow::Result<JobReport> {
    let Served { mut master, locals } = served;
    let now = session.now();
    let prepared = prepare(spec, &mut session.scheduler, now);
    let result = match prepared {
        Ok((job_id, prep, restored_flops)) => tokio::select! {
            r = master.run(&mut session, job_id, prep, true) => r.map(|report| JobReport { restored_flops, ..report }),
            _ = crate::cli::stop_requested() => Err(anyhow::anyhow!("interrupted; no output written")),
        },
        Err(e) => Err(e),
    };
    Served { master, locals }.stop().await;
    result
}

/// Puts the job in the scheduler: planned by the pool's model once workers are
/// there, or on the user's `--block` width, or on the grid of a checkpoint it
/// resumes (whose blocks are then restored, each verified first). Returns the
/// job's id, what the shell adds once it is planned, and the flops restored.
pub(crate) fn prepare(spec: JobSpec, scheduler: &mut Scheduler, now: Duration) -> anyhow::Result<(JobId, Preparation, f64)> {
    let JobSpec { id, a, b, integer, block, link_rate, checkpoint, early_verifier, prepared } = spec;
    let checkpoint = checkpoint.map(|dir| Checkpoint::open(&dir, &Inputs::of(&a, &b)).map(|cp| (dir, cp))).transpose()?;
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let weights = prepared.as_ref().map_or_else(|| secret_weights(n, integer), |p| p.weights().to_vec());
    // Shared by the job (their bytes) and the verifier.
    let recipe = VerifierRecipe { a: Arc::new(a), b: Arc::new(b), weights, integer };
    // Prepared while A was read, for the groups of `whole_depth_tiles`.
    let (ready, prepared) = match prepared.map(|p| p.finish(&recipe.a, &recipe.b)) {
        Some((verifier, cost, span)) => (Some(verifier), Some((cost, span))),
        None => (None, None),
    };
    let (leases, chunk) = (scheduler.lease_config(), scheduler.max_chunk());
    let fixed = match (&checkpoint, block) {
        (Some((_, cp)), _) if cp.grid.is_some() => {
            let ((pr, pc, pk), layout) = cp.grid.expect("matched");
            Some(Plan::grid(m, k, n, pr, pc, pk).laid_out(layout))
        }
        (_, Some(width)) => Some(Plan::columns(m, k, n, width)),
        _ => None,
    };
    let Some(plan) = fixed else {
        if let Some((dir, _)) = &checkpoint {
            println!("checkpoint {}: starting afresh; the job is planned once workers join", dir.display());
        }
        let model = CostModel::default();
        let job = Unplanned::new(id, Arc::clone(&recipe.a), Arc::clone(&recipe.b), model, leases, chunk)?.with_link(link_rate);
        let early_tiles = (ready.is_none() && early_verifier).then(|| whole_depth_tiles(m, k, n));
        let job = match (ready, &early_tiles) {
            (Some(verifier), _) => job.with_verifier(verifier),
            (None, Some(tiles)) => job.verifier_coming(tiles.clone()),
            (None, None) => job.awaiting_verifier(),
        };
        scheduler.add_unplanned(job, now);
        return Ok((id, Preparation { verifier: Some(recipe), early_tiles, prepared, checkpoint: checkpoint.map(|(_, cp)| cp) }, 0.0));
    };
    let job = Job::new(id, Arc::clone(&recipe.a), Arc::clone(&recipe.b), plan.clone(), leases, chunk)?;
    let resuming = checkpoint.as_ref().is_some_and(|(_, cp)| cp.grid.is_some());
    if !resuming {
        if let Some((dir, _)) = &checkpoint {
            println!("checkpoint {}: 0 of {} blocks already done ({})", dir.display(), plan.blocks(), describe(&plan));
        }
        let job = match ready.map(|mut verifier| (verifier.retile(&Job::verified_tiles(&plan)), verifier)) {
            Some((true, verifier)) => job.with_verifier(verifier),
            _ => job.awaiting_verifier(),
        };
        scheduler.add_job(job, now);
        return Ok((id, Preparation { verifier: Some(recipe), early_tiles: None, prepared, checkpoint: checkpoint.map(|(_, cp)| cp) }, 0.0));
    }
    let (dir, cp) = checkpoint.expect("resuming");
    // Resuming: blocks read back get the same verification as a worker's result.
    let VerifierRecipe { a, b, weights, integer } = recipe;
    let mut job = job.with_verifier(Verifier::new(a, Arc::clone(&b), &Job::restorable_tiles(&plan), weights, integer));
    let block_len = |i: usize| (i < plan.blocks()).then(|| plan.block(i)).map(|(r, c)| r.len() * c.len() * b.dtype().size());
    let (mut restored, mut restored_flops) = (0, 0.0);
    for saved in cp.saved_blocks(block_len) {
        match job.restore(saved.index, &saved.bytes) {
            Ok(()) => {
                restored += 1;
                let (rows, cols) = plan.block(saved.index);
                restored_flops += flops(rows.len(), k, cols.len());
            }
            Err(e) => {
                tracing::warn!("checkpoint: discarding {e}; it will be computed again");
                cp.discard(saved.index);
            }
        }
    }
    println!("checkpoint {}: {restored} of {} blocks already done ({})", dir.display(), plan.blocks(), describe(&plan));
    scheduler.add_job(job, now);
    Ok((id, Preparation { verifier: None, early_tiles: None, prepared: None, checkpoint: Some(cp) }, restored_flops))
}

fn print_workers(report: &JobReport) {
    for (id, info) in &report.workers {
        let kind = format!("{:?}", info.kind).to_lowercase();
        println!("  worker {id} ({kind} '{}'): {} tiles", info.name, info.tiles_done);
    }
}

/// A, B and C, in the product's element type, must fit in `budget` together.
fn check_job_memory(a: &DenseMatrix, b: &DenseMatrix, dtype: Dtype, output: &Path, budget: u64) -> Result<(), InputError> {
    let elem = dtype.size() as u128;
    let (ab, c) = ((a.rows() * a.cols() + b.rows() * b.cols()) as u128 * elem, (a.rows() * b.cols()) as u128 * elem);
    if ab + c > u128::from(budget) {
        let (shape, both) = (format!("{}x{}", a.rows(), b.cols()), crate::units::human_bytes(ab));
        let problem = format!("C = A·B is {shape} and needs {}; with A and B ({both}) that is {}", crate::units::human_bytes(c), io::over_limit(budget));
        return Err(InputError::new(output, problem));
    }
    Ok(())
}

pub(crate) fn check_output_dir(output: &Path) -> Result<(), InputError> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(InputError::new(output, format!("the folder {} does not exist", dir.display())));
    }
    Ok(())
}
