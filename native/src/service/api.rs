//! The jobs API, in JSON, on the workers' port:
//!
//! - `POST /api/jobs`: a multipart form with files `a` and `b` (named with
//!   their format's extension) and an optional `priority`; returns the id and URL.
//! - `GET /api/jobs`, `GET /api/jobs/{id}`: state, progress, speed and ETA.
//! - `GET /api/jobs/{id}/result?format=npy|csv|mtx`: C, streamed.
//! - `DELETE /api/jobs/{id}`: cancels a live job; forgets a finished one.
//! - `GET /metrics`: Prometheus' text format (see `metrics`).
//! - `GET /dashboard`: the operator's page, fed by `GET /api/events` (Server-Sent Events).
//!
//! With a submit token, every call needs `Authorization: Bearer <token>`;
//! the dashboard and its events, which a browser opens, take it as `?token=`.
//! Errors are `{"error": "<one line>"}` with a 4xx, the line `multiply`
//! prints for the same bad input.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use colonnade_core::protocol::Token;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::board::Board;
use super::driver::{job_key, Command};
use super::store::{now_secs, Record, State as JobState, Store};
use crate::units::human_bytes;
use crate::commands::read_inputs;
use crate::io::{self, Format};

#[derive(Clone, Debug)]
pub struct Api {
    pub store: Store,
    pub board: Arc<Mutex<Board>>,
    pub commands: mpsc::Sender<Command>,
    /// Needed on every call, if set.
    pub token: Option<Token>,
    /// Largest upload of one matrix file, bytes.
    pub max_upload: u64,
    /// Memory for one job's A, B and C; by default what is available.
    pub max_memory: Option<u64>,
}

/// An API error: a status and one line.
#[derive(Debug)]
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, message.into())
}

fn not_found(id: &str) -> Failure {
    Failure(StatusCode::NOT_FOUND, format!("no job {id}"))
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/jobs", get(list).post(submit))
        .route("/api/jobs/{id}", get(show).delete(delete))
        .route("/api/jobs/{id}/result", get(result))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(dashboard))
        .route("/api/events", get(events))
        .layer(DefaultBodyLimit::disable()) // uploads are limited as they stream, per file
        .with_state(api)
}

impl Api {
    /// Checks the bearer token, if one is set.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), Failure> {
        self.authorize_page(headers, None)
    }

    /// The same, for what a browser opens: the token may come in the URL.
    pub fn authorize_page(&self, headers: &HeaderMap, in_url: Option<&str>) -> Result<(), Failure> {
        let Some(token) = &self.token else { return Ok(()) };
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).or(in_url);
        match given {
            Some(given) if Token::new(given.trim()) == *token => Ok(()),
            Some(_) => Err(Failure(StatusCode::UNAUTHORIZED, "wrong submit token".into())),
            None => Err(Failure(StatusCode::UNAUTHORIZED, "this master needs a submit token: send 'Authorization: Bearer <token>'".into())),
        }
    }
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn dashboard(State(api): State<Api>, headers: HeaderMap, Query(query): Query<TokenQuery>) -> Result<Response, Failure> {
    api.authorize_page(&headers, query.token.as_deref())?;
    Ok(axum::response::Html(include_str!("dashboard.html")).into_response())
}

/// A snapshot of the board each second, pushed while the page is open.
async fn events(State(api): State<Api>, headers: HeaderMap, Query(query): Query<TokenQuery>) -> Result<Response, Failure> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    api.authorize_page(&headers, query.token.as_deref())?;
    let stream = futures_util::stream::unfold((api.board, true), |(board, first)| async move {
        if !first {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let snapshot = board.lock().expect("board").snapshot().to_string();
        Some((Ok::<_, std::convert::Infallible>(Event::default().data(snapshot)), (board, false)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let text = super::metrics::render(&api.board.lock().expect("board"));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn list(State(api): State<Api>, headers: HeaderMap) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let board = api.board.lock().expect("board");
    let mut jobs: Vec<_> = board.jobs.values().cloned().collect();
    jobs.sort_by(|x, y| x.record.submitted.total_cmp(&y.record.submitted).then_with(|| x.record.id.cmp(&y.record.id)));
    Ok(Json(serde_json::json!({ "jobs": jobs })).into_response())
}

async fn show(State(api): State<Api>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let board = api.board.lock().expect("board");
    let view = board.jobs.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(view).into_response())
}

async fn delete(State(api): State<Api>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let state = api.board.lock().expect("board").jobs.get(&id).map(|v| v.record.state).ok_or_else(|| not_found(&id))?;
    if state.is_live() {
        let stopping = || Failure(StatusCode::SERVICE_UNAVAILABLE, "the master is stopping".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        api.commands.send(Command::Cancel(id.clone(), tx)).await.map_err(|_| stopping())?;
        return match rx.await.map_err(|_| stopping())? {
            Some(JobState::Cancelled) => Ok(Json(serde_json::json!({ "id": id, "state": "cancelled" })).into_response()),
            _ => Err(Failure(StatusCode::CONFLICT, format!("job {id} has finished; its C is being stored"))),
        };
    }
    api.board.lock().expect("board").jobs.remove(&id);
    api.store.remove(&id);
    Ok(Json(serde_json::json!({ "id": id, "state": "deleted" })).into_response())
}

#[derive(Debug, Deserialize)]
struct ResultQuery {
    format: Option<String>,
}

async fn result(State(api): State<Api>, headers: HeaderMap, UrlPath(id): UrlPath<String>, Query(query): Query<ResultQuery>) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let record = api.board.lock().expect("board").jobs.get(&id).map(|v| v.record.clone()).ok_or_else(|| not_found(&id))?;
    let ext = query.format.unwrap_or_else(|| "npy".into());
    let format = Format::of(Path::new(&format!("c.{ext}"))).map_err(|_| bad(format!("format={ext}: use npy, csv or mtx")))?;
    if record.state != JobState::Done {
        return Err(Failure(StatusCode::CONFLICT, format!("job {id} is {}; C is ready once it is done", record.state.name())));
    }
    let path = api.store.result(&id, format);
    if format != Format::Npy && !path.exists() {
        // Made once from the stored .npy, then kept.
        let npy = api.store.result(&id, Format::Npy);
        let (to, integer) = (path.clone(), record.integer);
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> { io::write_matrix(&to, &io::read_matrix(&npy, u64::MAX)?.matrix, integer) })
            .await
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    }
    let file = tokio::fs::File::open(&path).await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("C of job {id}: {e}")))?;
    let length = file.metadata().await.map(|m| m.len()).ok();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "application/octet-stream".parse().expect("valid"));
    headers.insert(header::CONTENT_DISPOSITION, format!("attachment; filename=\"c.{}\"", format.extension()).parse().expect("valid"));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length.into());
    }
    Ok(response)
}

/// Streams the upload to the job's folder, reads it as `multiply` would,
/// records the job, and hands it to the driver. Once the upload is in, the
/// rest runs as a task of its own: a client that hangs up then strands nothing.
async fn submit(State(api): State<Api>, headers: HeaderMap, mut form: Multipart) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let (key, dir) = loop {
        let key = job_key(rand::random::<u64>());
        match api.store.create(&key) {
            Ok(dir) => break (key, dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create the job's folder: {e}"))),
        }
    };
    let folder = Folder { store: api.store.clone(), key: Some(key.clone()) };
    let upload = receive(&api, &dir, &mut form).await?;
    let finishing = tokio::spawn(finish(api, key, dir, upload, folder));
    finishing.await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// A new job's folder, removed unless the job is accepted.
struct Folder {
    store: Store,
    key: Option<String>,
}

impl Drop for Folder {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.store.remove(&key);
        }
    }
}

/// The files as uploaded: (the name the client gave, where it is stored), and the priority.
struct Upload {
    a: (String, PathBuf),
    b: (String, PathBuf),
    priority: u32,
}

/// The form's files, streamed to `dir`, and its fields, checked.
async fn receive(api: &Api, dir: &Path, form: &mut Multipart) -> Result<Upload, Failure> {
    let mut files: [Option<(String, PathBuf)>; 2] = [None, None];
    let mut priority = 1u32;
    while let Some(mut field) = form.next_field().await.map_err(|e| bad(format!("the form: {e}")))? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "a" => 0,
            "b" => 1,
            "priority" => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| bad(format!("priority: {e}")))? {
                    text.extend_from_slice(&chunk);
                    if text.len() > 32 {
                        return Err(bad("priority: a whole number from 1"));
                    }
                }
                let text = String::from_utf8_lossy(&text);
                priority = text.trim().parse().ok().filter(|&p| p >= 1).ok_or_else(|| bad(format!("priority '{}': a whole number from 1", text.trim())))?;
                continue;
            }
            other => return Err(bad(format!("unexpected form field '{other}' (send files 'a' and 'b', and optionally 'priority')"))),
        };
        let given = field.file_name().map(str::to_owned).unwrap_or_else(|| name.clone());
        let format = Format::of(Path::new(&given)).map_err(|e| bad(e.to_string()))?;
        let stored = dir.join(format!("{name}.{}", format.extension()));
        let mut out = tokio::fs::File::create(&stored).await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", stored.display())))?;
        let mut size = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(|e| bad(format!("{given}: the upload broke off: {e}")))? {
            size += chunk.len() as u64;
            if size > api.max_upload {
                let limit = human_bytes(api.max_upload.into());
                return Err(Failure(StatusCode::PAYLOAD_TOO_LARGE, format!("{given}: larger than the {limit} upload limit (set by --max-upload)")));
            }
            out.write_all(&chunk).await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("storing {given}: {e}")))?;
        }
        out.flush().await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("storing {given}: {e}")))?;
        files[slot] = Some((given, stored));
    }
    let [Some(a), Some(b)] = files else {
        return Err(bad("send two files, as form fields 'a' and 'b' (e.g. curl -F a=@a.npy -F b=@b.npy)"));
    };
    Ok(Upload { a, b, priority })
}

/// Reads the inputs (one submission at a time, so concurrent uploads cannot
/// together exhaust memory), saves the record, and hands the job over.
async fn finish(api: Api, key: String, dir: PathBuf, upload: Upload, mut folder: Folder) -> Result<Response, Failure> {
    static READING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let Upload { a: (a_name, a), b: (b_name, b), priority } = upload;
    let c = dir.join("c.npy");
    let max_memory = api.max_memory;
    let (a_path, b_path) = (a.clone(), b.clone());
    // The files reach the disk while they are read; the record, saved after both, is the commit.
    let (a_sync, b_sync) = (a.clone(), b.clone());
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&a_sync)?.sync_all()?;
        std::fs::File::open(&b_sync)?.sync_all()
    });
    let reading = READING.acquire().await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // A new job: its verifier is prepared as A is read, as `master multiply`'s is.
    let read = tokio::task::spawn_blocking(move || read_inputs(&a_path, &b_path, &c, max_memory, true))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    drop(reading);
    synced
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("storing the inputs: {e}")))?;
    // Errors name the files as the user sent them, not where they are stored.
    let (a_m, b_m, integer, prepared) = read.map_err(|e| {
        let line = format!("{e:#}").replace(&*a.to_string_lossy(), &a_name).replace(&*b.to_string_lossy(), &b_name).replace(&*dir.join("c.npy").to_string_lossy(), "C");
        let status = if crate::cli::exit_code(&e) == 2 { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
        Failure(status, line)
    })?;
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let record = Record {
        id: key.clone(),
        state: JobState::Queued,
        a: file_name(&a),
        b: file_name(&b),
        m: a_m.rows(),
        k: a_m.cols(),
        n: b_m.cols(),
        priority,
        submitted: now_secs(),
        finished: None,
        error: None,
        integer,
    };
    // Room in the driver's queue first: once the record is saved, nothing may block.
    let stopping = || Failure(StatusCode::SERVICE_UNAVAILABLE, "the master is stopping".into());
    let permit = api.commands.reserve().await.map_err(|_| stopping())?;
    api.store.save(&record).map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    folder.key = None; // accepted: the folder stays
    api.board.lock().expect("board").jobs.insert(key.clone(), super::board::JobView::new(record.clone()));
    permit.send(Command::Submit { record, inputs: Some(Box::new((a_m, b_m, prepared))) });
    let url = format!("/api/jobs/{key}");
    Ok((StatusCode::CREATED, [(header::LOCATION, url.clone())], Json(serde_json::json!({ "id": key, "url": url }))).into_response())
}
