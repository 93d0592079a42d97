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
use super::driver::{job_id, job_key, Command};
use super::store::{now_secs, Record, State as JobState, Store};
use crate::cli::human_bytes;
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
        api.commands.send(Command::Cancel(id.clone())).await.map_err(|_| Failure(StatusCode::SERVICE_UNAVAILABLE, "the master is stopping".into()))?;
        return Ok(Json(serde_json::json!({ "id": id, "state": "cancelled" })).into_response());
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
    headers.insert(header::CONTENT_DISPOSITION, format!("attachment; filename=\"c.{ext}\"").parse().expect("valid"));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length.into());
    }
    Ok(response)
}

/// Streams the upload to the job's folder, reads it as `multiply` would,
/// records the job, and hands it to the driver.
async fn submit(State(api): State<Api>, headers: HeaderMap, mut form: Multipart) -> Result<Response, Failure> {
    api.authorize(&headers)?;
    let key = job_key(rand::random::<u64>());
    let dir = api.store.create(&key).map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let outcome = receive(&api, &key, &dir, &mut form).await;
    if outcome.is_err() {
        api.store.remove(&key);
    }
    let (record, inputs) = outcome?;
    api.board.lock().expect("board").jobs.insert(key.clone(), super::board::JobView::new(record.clone()));
    let url = format!("/api/jobs/{key}");
    api.commands
        .send(Command::Submit { record, inputs: Some(Box::new(inputs)) })
        .await
        .map_err(|_| Failure(StatusCode::SERVICE_UNAVAILABLE, "the master is stopping".into()))?;
    Ok((StatusCode::CREATED, [(header::LOCATION, url.clone())], Json(serde_json::json!({ "id": key, "url": url }))).into_response())
}

/// The form's files and fields, checked; the job's record, saved.
async fn receive(api: &Api, key: &str, dir: &Path, form: &mut Multipart) -> Result<(Record, (colonnade_core::DenseMatrix, colonnade_core::DenseMatrix)), Failure> {
    let mut files: [Option<(String, PathBuf)>; 2] = [None, None];
    let mut priority = 1u32;
    while let Some(mut field) = form.next_field().await.map_err(|e| bad(format!("the form: {e}")))? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "a" => 0,
            "b" => 1,
            "priority" => {
                let text = field.text().await.map_err(|e| bad(format!("priority: {e}")))?;
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
        out.sync_all().await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("storing {given}: {e}")))?;
        files[slot] = Some((given, stored));
    }
    let [Some((a_name, a)), Some((b_name, b))] = files else {
        return Err(bad("send two files, as form fields 'a' and 'b' (e.g. curl -F a=@a.npy -F b=@b.npy)"));
    };
    let c = dir.join("c.npy");
    let max_memory = api.max_memory;
    let (a_path, b_path) = (a.clone(), b.clone());
    let read = tokio::task::spawn_blocking(move || read_inputs(&a_path, &b_path, &c, max_memory))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // Errors name the files as the user sent them, not where they are stored.
    let (a_m, b_m, integer) = read.map_err(|e| {
        let line = format!("{e:#}").replace(&*a.to_string_lossy(), &a_name).replace(&*b.to_string_lossy(), &b_name).replace(&*dir.join("c.npy").to_string_lossy(), "C");
        let status = if crate::cli::exit_code(&e) == 2 { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
        Failure(status, line)
    })?;
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let record = Record {
        id: key.to_owned(),
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
    api.store.save(&record).map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    debug_assert!(job_id(key).is_some());
    Ok((record, (a_m, b_m)))
}
