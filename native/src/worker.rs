//! The native worker: a WebSocket client around core's `WorkerSession`.
//!
//! It reconnects with backoff (so it may start before the master and outlive
//! a master restart), computes on blocking threads while the socket keeps
//! receiving the next task, and on shutdown hands back what it holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use colonnade_core::backoff::Backoff;
use colonnade_core::codec::MAX_MESSAGE;
use colonnade_core::pool::Refusal;
use colonnade_core::protocol::{Token, WorkerKind};
use colonnade_core::worker::{ComputeTask, WorkerConfig, WorkerError, WorkerEvent, WorkerSession, DEFAULT_SLOTS};
use colonnade_core::DenseMatrix;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::compute;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub url: String,
    pub threads: usize,
    pub name: String,
    /// Tasks held at once; 2 lets the next tile's panels arrive while this one computes.
    pub slots: u32,
    /// Bytes of panels and products it holds at most (the master is told).
    pub memory: u64,
    /// Its kernel's speed, flop/s, measured at start (the master is told).
    pub flops: u64,
    /// Sent in Hello to a master that requires it; never logged.
    pub token: Token,
    /// Whom to trust for wss:// URLs.
    pub tls: Arc<rustls::ClientConfig>,
    /// The `--ca` file `tls` was made from, named when TLS fails.
    pub ca: Option<PathBuf>,
}

impl WorkerOptions {
    pub fn new(url: impl Into<String>, threads: usize, name: impl Into<String>) -> Self {
        Self { url: url.into(), threads: threads.max(1), name: name.into(), slots: DEFAULT_SLOTS, memory: default_memory(1), flops: 0,
            token: Token::default(),
            tls: crate::tls::client_config(None).expect("the built-in roots need no file"),
            ca: None,
        }
    }
}

/// A share of the memory available now, for one of `workers` on this machine:
/// half of it, split between them (1 GiB each if the system does not say).
pub fn default_memory(workers: usize) -> u64 {
    crate::io::available_memory().map_or(1 << 30, |m| m / 2 / workers.max(1) as u64)
}

/// Large reads move whole chunks with fewer syscalls and buffer growths.
const READ_BUFFER: usize = 1 << 20;

/// How a connection ended.
enum Ended {
    /// Shutdown was requested: stop for good.
    Shutdown,
    /// The master refused us (a token, a version): retrying would not help.
    Refused(String),
    /// The master went away: reconnect. `welcomed` says whether it had accepted
    /// us; only then does the backoff start again from the shortest wait.
    Lost { why: String, welcomed: bool },
}

/// Serves masters until `shutdown` becomes true. Returns only then, or with an
/// error on a bad URL or when a master refuses this worker.
pub async fn run(mut options: WorkerOptions, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if options.flops == 0 {
        let threads = options.threads;
        options.flops = tokio::task::spawn_blocking(move || compute::measure_speed(threads)).await.unwrap_or(0);
        tracing::info!("kernel speed here: {:.1} GFLOP/s on {} thread(s)", options.flops as f64 / 1e9, options.threads);
    }
    let mut backoff = Backoff::new(spread_seed());
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(READ_BUFFER);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(&options.tls));
        let connect = tokio_tungstenite::connect_async_tls_with_config(&options.url, Some(config), true, Some(connector));
        let outcome = tokio::select! {
            c = connect => c,
            _ = shutdown.changed() => return Ok(()),
        };
        let wait = match outcome {
            Ok((socket, _)) => {
                tracing::info!(url = %options.url, "connected to the master");
                match serve(socket, &options, &mut shutdown).await {
                    Ended::Shutdown => return Ok(()),
                    Ended::Refused(reason) => {
                        return Err(anyhow!("the master at {} refused this worker: {reason}{}", options.url, advice(&reason)));
                    }
                    Ended::Lost { why, welcomed } => {
                        if welcomed {
                            backoff.welcomed();
                        }
                        let wait = backoff.next_wait();
                        tracing::info!("connection ended ({why}); reconnecting in {wait:.1?}");
                        wait
                    }
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::Url(e)) => {
                return Err(anyhow!("{}: not a usable WebSocket URL: {e}", options.url));
            }
            Err(e) => {
                let wait = backoff.next_wait();
                match tls_failure(&e) {
                    Some(why) => tracing::warn!(
                        url = %options.url,
                        "TLS with the master failed ({why}); {}; retrying in {wait:.1?}",
                        tls_hint(why, options.ca.as_deref())
                    ),
                    None => tracing::info!(url = %options.url, "cannot reach the master ({e}); retrying in {wait:.1?}"),
                }
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Differs between workers, even in one process (the master's local
/// workers), so that their waits at the backoff's cap spread.
fn spread_seed() -> u64 {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The TLS problem behind a failed connection, if that is what it was (rustls
/// reports through the IO error it returns).
fn tls_failure(e: &tokio_tungstenite::tungstenite::Error) -> Option<&rustls::Error> {
    use tokio_tungstenite::tungstenite::error::TlsError;
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Tls(TlsError::Rustls(tls)) => Some(tls),
        Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// What to do about a failed TLS handshake. Someone who already passed `--ca`
/// must not be told to pass it again.
fn tls_hint(why: &rustls::Error, ca: Option<&Path>) -> String {
    use rustls::CertificateError::{BadSignature, Other, UnknownIssuer};
    let Some(ca) = ca else {
        return "for a master with a private or self-signed certificate, pass that certificate or its CA with --ca FILE".into();
    };
    match why {
        // Other: webpki's CaUsedAsEndEntity, a self-signed master not pinned.
        rustls::Error::InvalidCertificate(UnknownIssuer | BadSignature | Other(_)) => {
            format!("the certificate in {} is neither the master's certificate nor the CA that signed it", ca.display())
        }
        _ => format!("that is with --ca {} and the public roots", ca.display()),
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn serve(socket: Socket, options: &WorkerOptions, shutdown: &mut watch::Receiver<bool>) -> Ended {
    let (mut sink, mut stream) = socket.split();
    let config = WorkerConfig {
        threads: options.threads as u32,
        slots: options.slots,
        memory: options.memory,
        flops: options.flops,
        ..WorkerConfig::new(WorkerKind::Native, options.name.clone())
    };
    let token = options.token.clone();
    let clock = Instant::now();
    let mut session = WorkerSession::new(WorkerConfig { token, ..config }, Duration::ZERO);
    let mut computing: Option<(u64, JoinHandle<(DenseMatrix, Duration)>)> = None;
    let mut welcomed = false;
    let lost = |why: String, welcomed: bool| Ended::Lost { why, welcomed };
    let ended = loop {
        if computing.is_none() {
            computing = session.next_task().map(|task| start(task, options.threads));
        }
        if let Err(e) = flush(&mut session, &mut sink).await {
            break lost(e.to_string(), welcomed);
        }
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match session.handle_message(&bytes, clock.elapsed()) {
                    Ok(event) => {
                        welcomed |= matches!(event, Some(WorkerEvent::Welcomed { .. }));
                        log_event(event);
                    }
                    Err(WorkerError::Refused(reason)) => break Ended::Refused(reason),
                    Err(e) => break lost(format!("the master sent something unusable: {e}"), welcomed),
                },
                Some(Ok(Message::Close(frame))) => break lost(frame.map_or("closed".into(), |f| f.reason.to_string()), welcomed),
                Some(Ok(_)) => {}
                Some(Err(e)) => break lost(e.to_string(), welcomed),
                None => break lost("closed".into(), welcomed),
            },
            done = async { (&mut computing.as_mut().expect("guarded").1).await }, if computing.is_some() => {
                let (lease, _) = computing.take().expect("guarded");
                match done {
                    Ok((c, took)) => {
                        if session.complete(lease, c, took) {
                            tracing::debug!(lease, "task done");
                        }
                    }
                    Err(e) => break lost(format!("compute thread failed: {e}"), welcomed),
                }
            }
            _ = tokio::time::sleep_until((clock + session.poll_timeout()).into()) => {
                if let Err(e) = session.handle_timeout(clock.elapsed()) {
                    break lost(e.to_string(), welcomed);
                }
            }
            _ = shutdown.changed() => {
                let held = session.in_flight();
                session.release_all();
                let _ = flush(&mut session, &mut sink).await;
                let _ = sink.close().await;
                tracing::info!("stopping; handed back {held} task(s)");
                break Ended::Shutdown;
            }
        }
    };
    if let Some((_, handle)) = computing {
        handle.abort();
    }
    ended
}

/// What to do about a refusal, in this command's own terms.
fn advice(reason: &str) -> &'static str {
    match Refusal::recognize(reason) {
        Some(Refusal::TokenRequired) => "; start the worker with --token-file FILE, FILE holding the master's token",
        Some(Refusal::WrongToken) => "; check that the worker's --token-file holds the master's token",
        _ => "",
    }
}

fn start(task: ComputeTask, threads: usize) -> (u64, JoinHandle<(DenseMatrix, Duration)>) {
    tracing::debug!(lease = task.lease, row = task.row, col = task.col, rows = task.rows(), cols = task.cols(), "computing task");
    let lease = task.lease;
    let handle = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        let c = compute::multiply(&task.a, &task.b, threads);
        (c, start.elapsed())
    });
    (lease, handle)
}

async fn flush(session: &mut WorkerSession, sink: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin)) -> anyhow::Result<()> {
    while let Some(frame) = session.poll_transmit() {
        sink.feed(Message::Binary(colonnade_core::codec::encode_frame(&frame).into())).await.context("sending to the master")?;
    }
    sink.flush().await.context("sending to the master")?;
    Ok(())
}

fn log_event(event: Option<WorkerEvent>) {
    match event {
        Some(WorkerEvent::Welcomed { worker, slots }) => tracing::info!(worker, slots, "joined"),
        Some(WorkerEvent::JobStarted { job, m, k, n, dtype }) => {
            tracing::info!(job, "job: A is {m}x{k}, C is {m}x{n}, {dtype}");
        }
        Some(WorkerEvent::TaskCancelled { lease }) => tracing::debug!(lease, "task cancelled: another worker finished it, or the job was withdrawn"),
        Some(WorkerEvent::Accepted { lease, done, total }) => tracing::debug!(lease, "result verified; the job has {done} of {total} tiles"),
        Some(WorkerEvent::JobDone { job }) => tracing::info!(job, "job done"),
        None => {}
    }
}
