//! The master: serves workers and drives core's scheduler from a `select!` loop.

mod assets;
mod gate;
mod open;
mod page;
mod prep;
mod progress;
mod rate;
mod server;

pub use prep::PrepCost;
pub(crate) use prep::{build_verifier, WhileReading};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use colonnade_core::kernel::flops;
use colonnade_core::plan::{Plan, Tile};
use colonnade_core::protocol::Token;
use colonnade_core::protocol::{Frame, JobId, Message};
use colonnade_core::scheduler::{self as core, Event, Output, PayloadStats, Scheduler, WorkerId, WorkerInfo};
use colonnade_core::DenseMatrix;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use page::Status;
pub(crate) use progress::Reporter;
pub(crate) use rate::Rate;
pub use server::Limits;
pub(crate) use server::Input;
use server::{Outgoing, Traffic};

use crate::checkpoint;
use crate::tls::ServerTls;
use crate::worker::{self, WorkerOptions};

/// A listening master, ready to run a job.
#[derive(Debug)]
pub struct Master {
    addr: SocketAddr,
    inputs: mpsc::Receiver<Input>,
    status: watch::Sender<Status>,
    traffic: Arc<Traffic>,
    /// The certificate it serves, if it speaks TLS.
    certificate: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// What a finished job produced, and how it went.
#[derive(Debug)]
pub struct JobReport {
    pub c: DenseMatrix,
    /// From the first task sent to C assembled.
    pub elapsed: Duration,
    pub plan: Plan,
    pub workers: Vec<(WorkerId, WorkerInfo)>,
    pub stats: PayloadStats,
    /// WebSocket message bytes, headers included, both ways.
    pub wire_sent: u64,
    pub wire_received: u64,
    /// Master time spent encoding frames, and inside the scheduler (decoding,
    /// copying results in, checking and assembling them).
    pub encode_time: Duration,
    pub scheduler_time: Duration,
    /// What the verifier's precompute took, while A was read or on threads of
    /// its own (see `prep`).
    pub verify_prep: PrepCost,
    /// How long the preparation ran after the first task went out (wall
    /// time, so at least its CPU time there): what it can have taken from
    /// the job, besides the plan's wait for it.
    pub verify_prep_in_job: Duration,
    /// The thread CPU time the result checks took, where it can be read.
    pub verify_checks: Option<Duration>,
    /// How long the job's end waited for the verifier's preparation.
    pub verify_stall: Duration,
    /// How long the plan waited for the preparation once the pool was settled.
    pub verify_plan_wait: Duration,
    /// Results that arrived before the verifier was ready and waited for it.
    pub held_for_verifier: u64,
    /// Flops of the blocks taken from a checkpoint rather than computed.
    pub restored_flops: f64,
}

impl JobReport {
    /// The speed of what was computed in this run (restored blocks excluded).
    pub fn gflops(&self) -> f64 {
        let computed = flops(self.plan.m, self.plan.k, self.plan.n) - self.restored_flops;
        if self.elapsed.is_zero() {
            return 0.0;
        }
        computed / self.elapsed.as_secs_f64() / 1e9
    }
}

/// What the shell adds to a job once it is planned: the verifier (built on
/// threads of its own, unless the job has it already), and the checkpoint's
/// manifest and writer.
#[derive(Debug)]
pub struct Preparation {
    /// Builds the job's verifier for its plan (again, if the one it has does
    /// not serve it); `None` if it has one already for its plan (a checkpoint
    /// resumed).
    pub verifier: Option<VerifierRecipe>,
    /// The tiles to prepare it for before the plan, if the job waits for that.
    pub early_tiles: Option<Vec<Tile>>,
    /// What preparing the verifier while A was read took, and when, if it
    /// was (the job has that verifier already).
    pub prepared: Option<(PrepCost, std::ops::Range<Instant>)>,
    pub checkpoint: Option<checkpoint::Checkpoint>,
}

/// Everything a verifier is made from but the plan.
#[derive(Debug, Clone)]
pub struct VerifierRecipe {
    pub a: Arc<DenseMatrix>,
    pub b: Arc<DenseMatrix>,
    /// Secret: workers never see them.
    pub weights: Vec<f64>,
    pub integer: bool,
}

impl Master {
    /// Binds `listen` and starts serving, within `limits`, over TLS if `tls`
    /// is given; `extra` routes are served beside the workers' and the page's.
    pub async fn bind(listen: SocketAddr, limits: Limits, tls: Option<&ServerTls>, extra: Option<axum::Router>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let (tx, inputs) = mpsc::channel(64);
        let (status, status_rx) = watch::channel(Status::default());
        let traffic = Arc::new(Traffic::default());
        server::spawn(listener, tx, status_rx, Arc::clone(&traffic), limits, tls.map(|t| Arc::clone(&t.config)), extra)?;
        Ok(Self { addr, inputs, status, traffic, certificate: tls.map(|t| t.certificate.clone()) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the connections said next; `None` once the server has stopped.
    pub(crate) async fn next_input(&mut self) -> Option<Input> {
        self.inputs.recv().await
    }

    /// WebSocket bytes both ways so far.
    pub(crate) fn traffic(&self) -> (u64, u64) {
        (self.traffic.sent_bytes.load(Ordering::Relaxed), self.traffic.received_bytes.load(Ordering::Relaxed))
    }

    /// Replaces what the page and `/progress` show.
    pub(crate) fn show(&self, status: Status) {
        self.status.send_replace(status);
    }

    /// The URL workers connect to. An unspecified address (0.0.0.0) is shown as
    /// this host's name, which is what a remote worker needs.
    pub fn worker_url(&self) -> String {
        self.socket_url(&self.public_host())
    }

    pub fn page_url(&self) -> String {
        let scheme = if self.certificate.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/", self.public_host())
    }

    /// The WebSocket URL at `host`: wss when this master serves TLS.
    fn socket_url(&self, host: &str) -> String {
        let scheme = if self.certificate.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{host}/ws")
    }

    fn public_host(&self) -> String {
        if self.addr.ip().is_unspecified() {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
            let host = if host.is_empty() { "THIS-HOST".to_owned() } else { host };
            format!("{host}:{}", self.addr.port())
        } else {
            self.addr.to_string()
        }
    }

    /// Starts `count` workers inside this process. They connect over loopback,
    /// speak the same protocol as remote workers, and present `token`.
    pub fn spawn_local_workers(&self, count: usize, threads_each: usize, token: &Token) -> LocalWorkers {
        let (stop, stopped) = watch::channel(false);
        let url = self.socket_url(&SocketAddr::new(loopback_for(self.addr), self.addr.port()).to_string());
        // Over TLS they trust exactly this master's certificate, whatever names it holds.
        let tls = self.certificate.clone().map(crate::tls::pinned_client_config);
        let handles = (1..=count)
            .map(|i| {
                let defaults = WorkerOptions::new(url.clone(), threads_each, format!("local-{i}"));
                let memory = worker::default_memory(count);
                let options = WorkerOptions { token: token.clone(), tls: tls.clone().unwrap_or(defaults.tls.clone()), memory, ..defaults };
                tokio::spawn(worker::run(options, stopped.clone()))
            })
            .collect();
        LocalWorkers { stop, handles }
    }

    /// Serves the pool with no job yet (greetings, heartbeats, departures)
    /// until `until` is done: workers that connect while the inputs are read
    /// are welcomed at once, and a job that comes after finds the pool
    /// settled and is planned without waiting for newcomers.
    pub(crate) async fn greet<T>(&mut self, session: &mut Session, until: impl std::future::Future<Output = T>) -> T {
        let Session { scheduler, shell, start } = session;
        let reporter = Reporter::new(false);
        reporter.waiting(&self.worker_url(), &self.page_url());
        tokio::pin!(until);
        loop {
            let wake = carry_out(scheduler, shell, &reporter, |_, _| {});
            let wake = wake.map(|t| tokio::time::Instant::from_std(*start + t));
            tokio::select! {
                done = &mut until => return done,
                Some(input) = self.inputs.recv() => shell.input(scheduler, input, start.elapsed()),
                _ = sleep_until(wake), if wake.is_some() => scheduler.handle_input(core::Input::Timeout, start.elapsed()),
            }
        }
    }

    /// Runs `job` on the session's scheduler to completion; once it is
    /// planned, builds its verifier and records each verified block of C in
    /// the checkpoint.
    pub(crate) async fn run(&mut self, session: &mut Session, job: JobId, mut prep: Preparation, show_progress: bool) -> anyhow::Result<JobReport> {
        let Session { scheduler, shell, start } = session;
        let start = *start;
        let mut reporter = Reporter::new(show_progress);
        let mut rate = Rate::default();
        let mut planned = false;
        let mut verifier = prep.verifier.take().map(|recipe| prep::Prep::start(recipe, prep.early_tiles.take(), prep.prepared.take()));
        let mut writer: Option<checkpoint::Writer> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        if let Some(p) = scheduler.problem(job) {
            self.status.send_modify(|s| {
                s.shape = format!("{}x{} times {}x{}", p.m, p.k, p.k, p.n);
                s.worker_command = format!("worker {}", self.worker_url());
            });
        }
        let mut complete = false;
        loop {
            let wake = carry_out(scheduler, shell, &reporter, |scheduler, event| {
                match event {
                    Event::TileDone { job: j, block, block_done: true, .. } if j == job => {
                        if let (Some(w), Some(bytes)) = (&writer, scheduler.job(job).and_then(|j| j.block_bytes(block))) {
                            w.save(block, &bytes);
                        }
                    }
                    Event::JobComplete { job: j } if j == job => complete = true,
                    Event::WorkerLeft { .. } if scheduler.headcount().total() == 0 => {
                        reporter.waiting(&self.worker_url(), &self.page_url());
                    }
                    _ => {}
                }
            });
            // Once planned: the page and the bar learn the grid; the verifier and the checkpoint start.
            if let (false, Some(j)) = (planned, scheduler.job(job)) {
                planned = true;
                let plan = j.plan().clone();
                reporter.start(plan.tiles());
                self.announce(&plan);
                tracing::info!("job planned: {}", describe(&plan));
                if let Some(cp) = prep.checkpoint.as_mut() {
                    if cp.grid.is_none() {
                        cp.begin((plan.shape(), plan.layout))?;
                    }
                    writer = Some(cp.writer());
                }
                if let (Some(v), true) = (verifier.as_mut(), j.awaits_verifier()) {
                    v.planned(&plan);
                }
            }
            if let Some(j) = scheduler.job(job) {
                let elapsed = shell.first_task.map_or(Duration::ZERO, |t| t.elapsed());
                let now = Instant::now();
                rate.sample(now, j.flops_done());
                let total = flops(j.plan().m, j.plan().k, j.plan().n);
                reporter.update(j.tiles_done(), scheduler.headcount(), j.flops_done(), elapsed, rate.eta(now, total - j.flops_done()));
            }
            if complete {
                break;
            }
            let wake = wake.map(|t| tokio::time::Instant::from_std(start + t));
            tokio::select! {
                input = self.inputs.recv() => {
                    let now = start.elapsed();
                    let busy = Instant::now();
                    shell.input(scheduler, input.context("the server stopped")?, now);
                    shell.scheduler_time += busy.elapsed();
                }
                built = async { verifier.as_mut().expect("guarded").built().await }, if verifier.is_some() => {
                    if !scheduler.set_verifier(job, built?, start.elapsed()) {
                        if let (Some(v), Some(j)) = (verifier.as_mut(), scheduler.job(job)) {
                            v.refused(j.plan());
                        }
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => scheduler.handle_input(core::Input::Timeout, start.elapsed()),
                _ = tick.tick() => self.publish(scheduler, job),
            }
        }
        let (elapsed, end) = (shell.first_task.map_or(Duration::ZERO, |t| t.elapsed()), Instant::now());
        if let Some(v) = verifier.as_mut() {
            v.finish().await?;
        }
        let verify_prep_in_job = match (&verifier, shell.first_task) {
            (Some(v), Some(first)) => v.within(first..end),
            _ => Duration::ZERO,
        };
        // The JobDone frames went out above; now let the connections go.
        for tx in shell.senders.values() {
            let _ = tx.send(Outgoing::Close("job complete".into()));
        }
        self.status.send_modify(|s| {
            s.blocks_done = s.blocks_total;
            s.done = "1".repeat(s.blocks_total);
            s.complete = true;
        });
        reporter.finish();
        if let Some(w) = writer {
            w.finish();
        }
        let mut finished = scheduler.remove_job(job, start.elapsed()).expect("running");
        Ok(JobReport {
            c: finished.take_result().expect("complete"),
            elapsed,
            plan: finished.plan().clone(),
            workers: scheduler.pool().infos().map(|(id, info)| (id, info.clone())).collect(),
            stats: finished.stats(),
            wire_sent: self.traffic.sent_bytes.load(Ordering::Relaxed),
            wire_received: self.traffic.received_bytes.load(Ordering::Relaxed),
            encode_time: Duration::from_nanos(self.traffic.encode_nanos.load(Ordering::Relaxed)),
            scheduler_time: shell.scheduler_time,
            verify_prep: verifier.as_ref().map(|v| v.cost).unwrap_or_default(),
            verify_prep_in_job,
            verify_checks: finished.check_time(),
            verify_stall: finished.verifier_stall(),
            verify_plan_wait: finished.plan_waited_for_verifier(),
            held_for_verifier: finished.held_for_verifier(),
            restored_flops: 0.0,
        })
    }

    /// Tells the page the job's shape and grid.
    pub(crate) fn announce(&self, plan: &Plan) {
        self.status.send_modify(|s| {
            s.shape = format!("{}x{} times {}x{}", plan.m, plan.k, plan.k, plan.n);
            s.blocks_total = plan.blocks();
            s.m = plan.m;
            s.n = plan.n;
            s.grid = (plan.rows.parts, plan.cols.parts);
            s.done = "0".repeat(plan.blocks());
            s.worker_command = format!("worker {}", self.worker_url());
        });
    }

    /// Shows the job's progress to the page.
    pub(crate) fn publish(&self, scheduler: &Scheduler, job: JobId) {
        let (Some(j), p) = (scheduler.job(job), scheduler.headcount()) else { return };
        let done = (0..j.plan().blocks()).map(|b| if j.block_done(b) { '1' } else { '0' }).collect();
        self.status.send_modify(|s| {
            s.done = done;
            s.blocks_done = j.blocks_done();
            s.tiles_done = j.tiles_done();
            s.tiles_total = j.plan().tiles();
            s.native_workers = p.native;
            s.browser_workers = p.browser;
        });
    }
}

/// The plan in a few words, for the log and the summary.
pub fn describe(plan: &Plan) -> String {
    let (pr, pc, pk) = plan.shape();
    let (wr, wc, wk) = plan.layout;
    format!("{} tiles ({pr} row bands x {pc} column bands x {pk} depth slices), laid out for {wr}x{wc}x{wk} workers", plan.tiles())
}

/// Carries out what the scheduler asks until it asks to wait, and returns
/// when it wants to be woken: frames go out, closed connections are reported,
/// and so is each event before `on_event` sees it.
fn carry_out(scheduler: &mut Scheduler, shell: &mut Shell, reporter: &Reporter, mut on_event: impl FnMut(&Scheduler, Event)) -> Option<Duration> {
    loop {
        match scheduler.poll_output() {
            Output::Wake(at) => return at,
            Output::Send { to, frame } => shell.send(to, frame),
            Output::Close { worker, reason, ban } => {
                reporter.closed(worker, &reason, ban, &shell.addrs);
                shell.close(worker, reason.to_string());
            }
            Output::Event(event) => {
                reporter.event(&event, &shell.addrs);
                on_event(scheduler, event);
            }
        }
    }
}

/// A master's pool across the reading of the inputs and the job: the
/// scheduler, its clock's origin, and where each worker's frames go.
pub(crate) struct Session {
    pub scheduler: Scheduler,
    pub shell: Shell,
    pub start: Instant,
}

impl Session {
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler, shell: Shell::default(), start: Instant::now() }
    }

    /// The scheduler's time now.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The shell's side of the connections: where to send each worker's frames.
#[derive(Debug, Default)]
pub(crate) struct Shell {
    senders: HashMap<WorkerId, mpsc::UnboundedSender<Outgoing>>,
    pub addrs: HashMap<WorkerId, SocketAddr>,
    /// When the first task went out: the job's clock starts there.
    first_task: Option<Instant>,
    /// Tasks sent, over the shell's life.
    pub tasks_sent: u64,
    /// Connections closed since [`Shell::forget_gone`] last ran: their
    /// addresses are kept until the scheduler's last words about them are out.
    gone: Vec<WorkerId>,
    scheduler_time: Duration,
}

impl Shell {
    /// Hands what a connection said to the scheduler.
    pub fn input(&mut self, scheduler: &mut Scheduler, input: Input, now: Duration) {
        match input {
            Input::Connected { worker, addr, outgoing } => {
                tracing::debug!(worker, %addr, "connection");
                self.senders.insert(worker, outgoing);
                self.addrs.insert(worker, addr);
                scheduler.handle_input(core::Input::Connected { worker, addr: Some(peer_addr(addr.ip())) }, now);
            }
            Input::Message { worker, bytes } => {
                // A connection already closed may still have messages on the way.
                if self.senders.contains_key(&worker) {
                    scheduler.handle_input(core::Input::Message { worker, bytes: &bytes }, now);
                }
            }
            Input::Closed { worker } => {
                if self.senders.remove(&worker).is_some() {
                    scheduler.handle_input(core::Input::Disconnected { worker }, now);
                }
                self.gone.push(worker);
            }
        }
    }

    pub fn send(&mut self, to: WorkerId, frame: Frame) {
        let task = matches!(frame.message, Message::Task { .. });
        if let Some(tx) = self.senders.get(&to) {
            if tx.send(Outgoing::Frame(frame)).is_ok() && task {
                self.first_task.get_or_insert_with(Instant::now);
                self.tasks_sent += 1;
            }
        }
    }

    /// Forgets the addresses of connections closed before the last call, so a
    /// master that stays up does not keep one per connection it ever had.
    pub fn forget_gone(&mut self) {
        for worker in std::mem::take(&mut self.gone) {
            self.addrs.remove(&worker);
        }
    }

    /// Closes a connection after what is queued for it; its later messages are ignored.
    pub fn close(&mut self, worker: WorkerId, reason: String) {
        if let Some(tx) = self.senders.remove(&worker) {
            let _ = tx.send(Outgoing::Close(reason));
        }
    }
}

/// Workers running inside the master's process.
#[derive(Debug)]
pub struct LocalWorkers {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl LocalWorkers {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// The address as core keeps it: IPv6 octets, IPv4 mapped.
fn peer_addr(ip: std::net::IpAddr) -> core::PeerAddr {
    core::PeerAddr(match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    })
}

fn loopback_for(addr: SocketAddr) -> std::net::IpAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        a => a.ip(),
    }
}

pub(crate) async fn sleep_until(when: Option<tokio::time::Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
