//! `master submit`: sends A and B to a `master serve`, shows the job's
//! progress, and downloads C; with `multiply`'s exit codes (2 for bad input,
//! which the service reports as a 4xx).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use colonnade_core::protocol::Token;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::cli::BadInput;
use crate::io::{Format, InputError};

#[derive(Debug)]
pub struct SubmitArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    pub output: PathBuf,
    /// The service's address, e.g. http://host:8080.
    pub to: String,
    pub token: Option<Token>,
    pub priority: u32,
}

#[derive(Debug, Deserialize)]
struct Submitted {
    id: String,
}

#[derive(Debug, Deserialize)]
struct View {
    state: String,
    tiles_done: usize,
    tiles_total: usize,
    eta_s: Option<f64>,
    error: Option<String>,
    m: usize,
    n: usize,
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let output_format = Format::of(&args.output)?;
    crate::commands::check_output_dir(&args.output)?;
    let base = args.to.trim_end_matches('/').to_owned();
    let client = Client { agent: agent(), token: args.token.clone(), base };
    let started = Instant::now();
    let id = client.post_job(&args.a, &args.b, args.priority)?;
    eprintln!("submitted job {id} to {}", client.base);
    let view = client.follow(&id)?;
    match view.state.as_str() {
        "done" => {}
        "failed" => anyhow::bail!("job {id} failed: {}", view.error.unwrap_or_default()),
        other => anyhow::bail!("job {id} was {other} on the master"),
    }
    client.download(&id, output_format, &args.output)?;
    println!("wrote {} ({}x{}) in {:.2} s (job {id})", args.output.display(), view.m, view.n, started.elapsed().as_secs_f64());
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_connect(Some(Duration::from_secs(10))).build().into()
}

struct Client {
    agent: ureq::Agent,
    token: Option<Token>,
    base: String,
}

impl Client {
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {}", token.secret())),
            None => request,
        }
    }

    /// Streams both files as a multipart form; returns the job's id.
    fn post_job(&self, a: &Path, b: &Path, priority: u32) -> anyhow::Result<String> {
        let boundary = format!("colonnade-{:016x}", rand::random::<u64>());
        let part = |name: &str, path: &Path| -> Result<(Vec<u8>, File), InputError> {
            Format::of(path)?;
            let file = File::open(path).map_err(|e| InputError::new(path, e.to_string()))?;
            let file_name = path.file_name().map(|n| n.to_string_lossy().replace('"', "")).unwrap_or_default();
            let head = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n");
            Ok((head.into_bytes(), file))
        };
        let (a_head, a_file) = part("a", a)?;
        let (b_head, b_file) = part("b", b)?;
        let tail = format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"priority\"\r\n\r\n{priority}\r\n--{boundary}--\r\n");
        let mut body = a_head.chain(a_file).chain(&b"\r\n"[..]).chain(&b_head[..]).chain(b_file).chain(tail.as_bytes());
        let request = self.agent.post(format!("{}/api/jobs", self.base)).header("Content-Type", format!("multipart/form-data; boundary={boundary}"));
        let response = self.authorized(request).send(ureq::SendBody::from_reader(&mut body)).with_context(|| format!("cannot reach {}", self.base))?;
        let submitted: Submitted = self.json(response)?;
        Ok(submitted.id)
    }

    /// Polls the job until it ends, with a bar on a terminal.
    fn follow(&self, id: &str) -> anyhow::Result<View> {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} tiles · {msg} [{elapsed_precise}]").expect("valid template"));
        // A master restarting resumes the job: wait for it a while.
        const PATIENCE: Duration = Duration::from_secs(120);
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let request = self.agent.get(format!("{}/api/jobs/{id}", self.base));
            let response = match self.authorized(request).call() {
                Ok(response) => {
                    unreachable_since = None;
                    response
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(|| {
                        bar.println(format!("lost the master ({e}); waiting for it to come back"));
                        Instant::now()
                    });
                    if since.elapsed() > PATIENCE {
                        return Err(anyhow::Error::new(e).context(format!("cannot reach {} for {} s", self.base, PATIENCE.as_secs())));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let view: View = self.json(response)?;
            bar.set_length(view.tiles_total as u64);
            bar.set_position(view.tiles_done as u64);
            bar.set_message(match (view.state.as_str(), view.eta_s) {
                ("running", Some(eta)) => format!("ETA {eta:.0} s"),
                (state, _) => state.to_owned(),
            });
            if !matches!(view.state.as_str(), "queued" | "running") {
                bar.finish_and_clear();
                return Ok(view);
            }
            // Often near the end, where each poll's delay adds to the job's; rarely on a long job.
            let next = view.eta_s.map_or(0.1, |eta| (eta / 20.0).clamp(0.02, 1.0));
            std::thread::sleep(Duration::from_secs_f64(next));
        }
    }

    /// Streams C to a temporary file beside `output`, then renames it.
    fn download(&self, id: &str, format: Format, output: &Path) -> anyhow::Result<()> {
        let request = self.agent.get(format!("{}/api/jobs/{id}/result?format={}", self.base, format.extension()));
        let response = self.authorized(request).call().with_context(|| format!("cannot reach {}", self.base))?;
        if !response.status().is_success() {
            return Err(self.error(response));
        }
        let tmp = output.with_extension(format!("{}.part", format.extension()));
        let copy = || -> anyhow::Result<()> {
            let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let (_, body) = response.into_parts();
            std::io::copy(&mut body.into_reader(), &mut file).context("downloading C")?;
            file.flush()?;
            file.sync_all()?;
            std::fs::rename(&tmp, output).with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))
        };
        let result = copy();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn json<T: serde::de::DeserializeOwned>(&self, mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<T> {
        if !response.status().is_success() {
            return Err(self.error(response));
        }
        response.body_mut().read_json().context("the master's answer is not what this submit expects")
    }

    /// The service's one-line error; a 4xx is the user's to fix (exit 2).
    fn error(&self, response: ureq::http::Response<ureq::Body>) -> anyhow::Error {
        let status = response.status();
        let (_, body) = response.into_parts();
        let mut text = String::new();
        let _ = body.into_with_config().limit(64 * 1024).reader().read_to_string(&mut text);
        let message = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["error"].as_str().map(str::to_owned)).unwrap_or(text);
        if status.is_client_error() {
            BadInput(message).into()
        } else {
            anyhow::anyhow!("the master answered {status}: {message}")
        }
    }
}
