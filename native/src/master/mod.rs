//! The master: serves workers and drives core's scheduler from a `select!` loop.

mod assets;
mod gate;
mod page;
mod progress;
mod server;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use colonnade_core::kernel::flops;
use colonnade_core::plan::Plan;
use colonnade_core::protocol::Token;
use colonnade_core::scheduler::{Event, PayloadStats, Scheduler, Violation, WorkerId, WorkerInfo};
use colonnade_core::DenseMatrix;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use page::Status;
use progress::Reporter;
pub use server::Limits;
use server::{Input, Outgoing, Traffic};

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
    /// copying results in, assembling C).
    pub encode_time: Duration,
    pub scheduler_time: Duration,
    /// Time to precompute the verification products (before the job starts).
    pub verify_prep: Duration,
    /// Columns of C taken from a checkpoint rather than computed.
    pub restored_columns: usize,
}

impl JobReport {
    /// The speed of what was computed in this run (restored blocks excluded).
    pub fn gflops(&self) -> f64 {
        let computed = flops(self.plan.m, self.plan.k, self.plan.n - self.restored_columns);
        if self.elapsed.is_zero() {
            return 0.0;
        }
        computed / self.elapsed.as_secs_f64() / 1e9
    }
}

impl Master {
    /// Binds `listen` and starts serving, within `limits`, over TLS if `tls` is given.
    pub async fn bind(listen: SocketAddr, limits: Limits, tls: Option<&ServerTls>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let (tx, inputs) = mpsc::channel(64);
        let (status, status_rx) = watch::channel(Status::default());
        let traffic = Arc::new(Traffic::default());
        server::spawn(listener, tx, status_rx, Arc::clone(&traffic), limits, tls.map(|t| Arc::clone(&t.config)))?;
        Ok(Self { addr, inputs, status, traffic, certificate: tls.map(|t| t.certificate.clone()) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL workers connect to. An unspecified address (0.0.0.0) is shown as
    /// this host's name, which is what a remote worker needs.
    pub fn worker_url(&self) -> String {
        let scheme = if self.certificate.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.public_host())
    }

    pub fn page_url(&self) -> String {
        let scheme = if self.certificate.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/", self.public_host())
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
        let scheme = if self.certificate.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}/ws", SocketAddr::new(loopback_for(self.addr), self.addr.port()));
        // Over TLS they trust exactly this master's certificate, whatever names it holds.
        let tls = self.certificate.clone().map(crate::tls::pinned_client_config);
        let handles = (1..=count)
            .map(|i| {
                let defaults = WorkerOptions::new(url.clone(), threads_each, format!("local-{i}"));
                let options = WorkerOptions { token: token.clone(), tls: tls.clone().unwrap_or(defaults.tls.clone()), ..defaults };
                tokio::spawn(worker::run(options, stopped.clone()))
            })
            .collect();
        LocalWorkers { stop, handles }
    }

    /// Runs one job to completion, recording each verified block in `checkpoint` if given.
    pub async fn run(&mut self, mut scheduler: Scheduler, show_progress: bool, checkpoint: Option<&checkpoint::Writer>) -> anyhow::Result<JobReport> {
        let plan = scheduler.plan().clone();
        let reporter = Reporter::new(plan.blocks(), show_progress);
        self.status.send_modify(|s| {
            s.shape = format!("{}x{} times {}x{}", plan.m, plan.k, plan.k, plan.n);
            s.blocks_total = plan.blocks();
            s.n = plan.n;
            s.width = plan.width;
            s.done = "0".repeat(plan.blocks());
            s.worker_command = format!("worker {}", self.worker_url());
        });
        let start = Instant::now();
        let mut first_task: Option<Instant> = None;
        let mut senders: HashMap<WorkerId, mpsc::UnboundedSender<Outgoing>> = HashMap::new();
        let mut addrs: HashMap<WorkerId, SocketAddr> = HashMap::new();
        // Addresses that sent too many wrong results, refused for the rest of this master's life.
        let mut banned: HashSet<IpAddr> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut scheduler_time = Duration::ZERO;
        reporter.waiting(&self.worker_url(), &self.page_url());
        loop {
            if deliver(&mut scheduler, &senders) {
                first_task.get_or_insert_with(Instant::now);
            }
            while let Some(event) = scheduler.poll_event() {
                reporter.event(&event, &addrs);
                if let (Event::BlockDone { block, .. }, Some(writer)) = (&event, checkpoint) {
                    writer.save(*block, scheduler.block_bytes(*block).expect("a done block is in C"));
                }
                if let Event::WorkerSilent { worker, silent_for } = event {
                    // The scheduler has dropped it; its connection may be half-open, so close it.
                    if let Some(tx) = senders.remove(&worker) {
                        let _ = tx.send(Outgoing::Close(format!("silent for {:.0} s", silent_for.as_secs_f64())));
                    }
                }
                if matches!(event, Event::WorkerLeft { .. }) && scheduler.progress().native_workers + scheduler.progress().browser_workers == 0 {
                    reporter.waiting(&self.worker_url(), &self.page_url());
                }
            }
            let done_flops = flops(plan.m, plan.k, plan.width) * scheduler.progress().blocks_done as f64;
            let elapsed = first_task.map_or(Duration::ZERO, |t| t.elapsed());
            reporter.update(scheduler.progress(), done_flops, elapsed);
            if scheduler.is_complete() {
                break;
            }
            let wake = scheduler.poll_timeout().map(|t| tokio::time::Instant::from_std(start + t));
            tokio::select! {
                input = self.inputs.recv() => {
                    let now = start.elapsed();
                    match input.context("the server stopped")? {
                        Input::Connected { worker, addr, outgoing } => {
                            tracing::debug!(worker, %addr, "connection");
                            if banned.contains(&addr.ip()) {
                                let _ = outgoing.send(Outgoing::Close("refused: this address sent wrong results".into()));
                                continue;
                            }
                            senders.insert(worker, outgoing);
                            addrs.insert(worker, addr);
                        }
                        Input::Message { worker, bytes } => {
                            if !senders.contains_key(&worker) {
                                continue; // already disconnected; its last words are ignored
                            }
                            let busy = Instant::now();
                            let handled = scheduler.handle_message(worker, &bytes, now);
                            scheduler_time += busy.elapsed();
                            if let Err(violation) = handled {
                                // Report what led here (e.g. the last strike) before the verdict.
                                while let Some(event) = scheduler.poll_event() {
                                    reporter.event(&event, &addrs);
                                }
                                if matches!(violation, Violation::TooManyStrikes(_)) {
                                    if let Some(addr) = addrs.get(&worker) {
                                        banned.insert(addr.ip());
                                    }
                                    reporter.note(&format!("banned {} for the rest of this master's life: it sent too many wrong results", addr_of(&addrs, worker)));
                                }
                                reporter.note(&format!("worker {worker} ({}) disconnected: {violation}", addr_of(&addrs, worker)));
                                deliver(&mut scheduler, &senders); // e.g. a Refused, before the close
                                if let Some(tx) = senders.remove(&worker) {
                                    let _ = tx.send(Outgoing::Close(violation.to_string()));
                                }
                                scheduler.handle_disconnect(worker, now);
                            }
                        }
                        Input::Closed { worker } => {
                            if senders.remove(&worker).is_some() {
                                scheduler.handle_disconnect(worker, now);
                            }
                        }
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => scheduler.handle_timeout(start.elapsed()),
                _ = tick.tick() => {
                    let p = scheduler.progress();
                    let done = (0..plan.blocks()).map(|b| if scheduler.block_done(b) { '1' } else { '0' }).collect();
                    self.status.send_modify(|s| {
                        s.done = done;
                        s.blocks_done = p.blocks_done;
                        s.native_workers = p.native_workers;
                        s.browser_workers = p.browser_workers;
                    });
                }
            }
        }
        let elapsed = first_task.map_or(Duration::ZERO, |t| t.elapsed());
        // Deliver the JobDone frames, then let the connections go.
        deliver(&mut scheduler, &senders);
        for tx in senders.values() {
            let _ = tx.send(Outgoing::Close("job complete".into()));
        }
        self.status.send_modify(|s| {
            s.blocks_done = s.blocks_total;
            s.done = "1".repeat(s.blocks_total);
            s.complete = true;
        });
        reporter.finish();
        Ok(JobReport {
            c: scheduler.take_result().expect("complete"),
            elapsed,
            plan,
            workers: scheduler.workers().map(|(id, info)| (id, info.clone())).collect(),
            stats: scheduler.stats(),
            wire_sent: self.traffic.sent_bytes.load(Ordering::Relaxed),
            wire_received: self.traffic.received_bytes.load(Ordering::Relaxed),
            encode_time: Duration::from_nanos(self.traffic.encode_nanos.load(Ordering::Relaxed)),
            scheduler_time,
            verify_prep: Duration::ZERO,
            restored_columns: 0,
        })
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

/// Hands the scheduler's outgoing frames to their connections; returns whether
/// any went out (frames for connections already gone are dropped).
fn deliver(scheduler: &mut Scheduler, senders: &HashMap<WorkerId, mpsc::UnboundedSender<Outgoing>>) -> bool {
    let mut sent = false;
    while let Some((to, frame)) = scheduler.poll_transmit() {
        if let Some(tx) = senders.get(&to) {
            sent |= tx.send(Outgoing::Frame(frame)).is_ok();
        }
    }
    sent
}

fn loopback_for(addr: SocketAddr) -> std::net::IpAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        a => a.ip(),
    }
}

fn addr_of(addrs: &HashMap<WorkerId, SocketAddr>, worker: WorkerId) -> String {
    addrs.get(&worker).map_or("unknown address".into(), ToString::to_string)
}

async fn sleep_until(when: Option<tokio::time::Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
