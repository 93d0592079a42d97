//! One port for everything: `/ws` for workers, `/` for people.
//!
//! Each WebSocket gets a reader (forwarding messages to the driver over a
//! bounded channel, so a slow driver pushes back on the socket) and a writer
//! (encoding frames just before they go out, so queued frames cost no copies).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use colonnade_core::codec::MAX_HEADER;
use colonnade_core::protocol::DEFAULT_CHUNK;
use colonnade_core::protocol::Frame;
use colonnade_core::scheduler::{WorkerId, DEFAULT_MAX_SLOTS};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};

use super::assets;
use super::open::{Full, Opened, Openings};
use super::gate::GatedListener;
use super::page::{self, Status};

/// What the connections tell the driver.
#[derive(Debug)]
pub enum Input {
    Connected { worker: WorkerId, addr: SocketAddr, outgoing: mpsc::UnboundedSender<Outgoing> },
    Message { worker: WorkerId, bytes: Bytes },
    Closed { worker: WorkerId },
}

/// What the driver tells a connection.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Frame),
    /// Close the connection, telling the worker why.
    Close(String),
}

/// WebSocket traffic, counted as it passes, for the benchmark.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Time spent encoding frames (the one copy of a body into a message).
    pub encode_nanos: AtomicU64,
}

/// How much the master lets connections and workers take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open WebSocket connections; more are refused with 503.
    pub max_connections: usize,
    /// Open WebSocket connections from one address; more are refused with 503.
    pub max_per_address: usize,
    /// Time for a new WebSocket to send its Hello before it is closed
    /// (so idle and slowloris sockets cannot pile up).
    pub handshake_timeout: Duration,
    /// Largest body of one message, either way; a larger message closes the connection.
    pub max_chunk: usize,
    /// Tasks one worker may hold at once, whatever it asks for (its credit).
    pub max_slots: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// The defaults, in one place (the command line shows these).
    pub const DEFAULT: Limits = Limits {
        max_connections: 1024,
        // Well above a tab's one connection per core, or a few workers behind one NAT.
        max_per_address: 64,
        handshake_timeout: Duration::from_secs(10),
        max_chunk: DEFAULT_CHUNK,
        max_slots: DEFAULT_MAX_SLOTS,
    };

    /// Largest WebSocket message: a header and one chunk.
    pub fn max_message(&self) -> usize {
        self.max_chunk + MAX_HEADER
    }
}

#[derive(Clone)]
struct AppState {
    inputs: mpsc::Sender<Input>,
    next_worker: Arc<AtomicU64>,
    status: watch::Receiver<Status>,
    traffic: Arc<Traffic>,
    limits: Limits,
    open: Openings,
}

/// Serves on `listener` until the process ends: https and wss if `tls` is given.
pub fn spawn(
    listener: tokio::net::TcpListener,
    inputs: mpsc::Sender<Input>,
    status: watch::Receiver<Status>,
    traffic: Arc<Traffic>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    extra: Option<Router>,
) -> std::io::Result<()> {
    let open = Openings::default();
    let state = AppState { inputs, next_worker: Arc::new(AtomicU64::new(1)), status, traffic, limits, open };
    let app = Router::new()
        .route("/", get(index))
        .route("/progress", get(progress))
        .route("/web/worker.js", get(worker_js))
        .route("/web/pkg/{file}", get(web_asset))
        .route("/ws", get(upgrade))
        .with_state(state);
    // `master serve` adds its jobs API and dashboard here.
    let app = match extra {
        Some(extra) => app.merge(extra),
        None => app,
    };
    let timeout = limits.handshake_timeout;
    match tls {
        None => tokio::spawn(serve(GatedListener::plain(listener, timeout)?, app, timeout)),
        Some(config) => tokio::spawn(serve(GatedListener::tls(listener, config, timeout)?, app, timeout)),
    };
    Ok(())
}

/// Serves `app` on every connection `listener` yields. Unlike `axum::serve`, it
/// gives hyper a timer, so a client that has not sent a whole request head
/// within `header_timeout` is dropped: slow HTTP (slowloris) holds nothing open.
async fn serve<L: axum::serve::Listener<Addr = SocketAddr>>(mut listener: L, app: Router, header_timeout: Duration) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::Service;
    loop {
        let (io, addr) = listener.accept().await;
        let app = app.clone();
        tokio::spawn(async move {
            // Handlers read the peer's address as `ConnectInfo`, as under axum::serve.
            let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(addr));
                app.clone().call(request.map(axum::body::Body::new))
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
                tracing::debug!(%addr, "connection ended: {e}");
            }
        });
    }
}

/// Whether a read failed only because the peer went away (a worker stopped,
/// a tab closed), which needs no warning, rather than because it broke a rule.
fn hung_up(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::{error::ProtocolError, Error};
    let inner = std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>());
    matches!(inner, Some(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) | Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_)))
}

async fn index(State(state): State<AppState>) -> Html<String> {
    match assets::WEB {
        Some(_) => Html(assets::INDEX_HTML.to_owned()),
        None => Html(page::render(&state.status.borrow(), assets::NOT_BUILT)),
    }
}

async fn progress(State(state): State<AppState>) -> Response {
    let json = page::progress_json(&state.status.borrow());
    // Public, read-only: a volunteer page served from another host may read it.
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], json).into_response()
}

const JS: &str = "text/javascript; charset=utf-8";

async fn worker_js() -> Response {
    match assets::WEB {
        Some(_) => ([(header::CONTENT_TYPE, JS)], assets::WORKER_JS).into_response(),
        None => (StatusCode::NOT_FOUND, assets::NOT_BUILT).into_response(),
    }
}

async fn web_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match (file.as_str(), assets::WEB) {
        ("colonnade_web.js", Some((glue, _))) => ([(header::CONTENT_TYPE, JS)], glue).into_response(),
        ("colonnade_web_bg.wasm", Some((_, wasm))) => ([(header::CONTENT_TYPE, "application/wasm")], wasm).into_response(),
        (_, None) => (StatusCode::NOT_FOUND, assets::NOT_BUILT).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn upgrade(ws: WebSocketUpgrade, ConnectInfo(addr): ConnectInfo<SocketAddr>, State(state): State<AppState>) -> Response {
    let open = match state.open.open(addr.ip(), state.limits.max_connections, state.limits.max_per_address) {
        Ok(open) => open,
        Err(Full::Master(max)) => {
            tracing::warn!(%addr, "refused a connection: {max} are open already");
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections to this master; try again later").into_response();
        }
        Err(Full::Address(max)) => {
            tracing::warn!(%addr, "refused a connection: {max} from this address are open already");
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections from this address; try again later").into_response();
        }
    };
    // Small socket buffers: an idle connection costs little (tungstenite's
    // defaults, 128 KiB each way, were 90% of a worker's footprint: 167 KiB
    // per idle worker, 15 KiB with these); big messages still stream through,
    // 4 KiB per read.
    ws.max_message_size(state.limits.max_message())
        .max_frame_size(state.limits.max_message())
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| connection(socket, addr, state, open))
        .into_response()
}

async fn connection(socket: WebSocket, addr: SocketAddr, state: AppState, _open: Opened) {
    let worker = state.next_worker.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let closer = tx.clone();
    if state.inputs.send(Input::Connected { worker, addr, outgoing: tx }).await.is_err() {
        return; // the job is over
    }
    let (mut sink, mut stream) = socket.split();
    let traffic = Arc::clone(&state.traffic);
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let result = match out {
                Outgoing::Frame(frame) => {
                    let start = std::time::Instant::now();
                    let bytes = colonnade_core::codec::encode_frame(&frame);
                    traffic.encode_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    traffic.sent_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    sink.send(Message::Binary(bytes.into())).await
                }
                Outgoing::Close(reason) => {
                    let reason: String = reason.chars().take(120).collect();
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1008, reason: reason.into() }))).await;
                    break;
                }
            };
            if result.is_err() {
                break;
            }
        }
    });
    let handshake = state.limits.handshake_timeout;
    let mut heard = false;
    loop {
        let next = if heard {
            stream.next().await
        } else {
            match tokio::time::timeout(handshake, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::warn!(%addr, "closed a connection that sent no Hello within {handshake:?}");
                    let _ = closer.send(Outgoing::Close(format!("no Hello within {handshake:?}")));
                    break;
                }
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) if hung_up(&e) => break,
            Some(Err(e)) => {
                tracing::warn!(%addr, "closed a connection: {e}");
                break;
            }
            None => break,
        };
        heard = true;
        let bytes = match message {
            Message::Binary(bytes) => {
                state.traffic.received_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                bytes
            }
            Message::Close(_) => break,
            _ => continue,
        };
        if state.inputs.send(Input::Message { worker, bytes }).await.is_err() {
            break;
        }
    }
    let _ = state.inputs.send(Input::Closed { worker }).await;
    // The writer ends when every sender is gone: ours, then the driver's.
    drop(closer);
    let _ = writer.await;
}
