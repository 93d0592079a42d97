//! What the master tells the person watching: a progress bar on a terminal,
//! plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use colonnade_core::protocol::WorkerKind;
use colonnade_core::scheduler::{CloseReason, Event, Headcount, WorkerId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug)]
pub struct Reporter {
    /// Whether to show a bar (on a terminal).
    show: bool,
    bar: Option<ProgressBar>,
}

impl Reporter {
    pub fn new(show: bool) -> Self {
        Self { show: show && std::io::stderr().is_terminal(), bar: None }
    }

    /// The job is planned into `tiles`: the bar starts.
    pub fn start(&mut self, tiles: usize) {
        if !self.show {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(tiles as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} tiles · {msg} [{elapsed_precise}]")
                .expect("valid template")
                .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        self.bar = Some(bar);
    }

    /// A line for the person, above the bar if there is one.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn waiting(&self, worker_url: &str, page_url: &str) {
        self.note(&format!("waiting for workers: run `worker {worker_url}` on any machine, or open {page_url} in a browser"));
    }

    pub fn event(&self, event: &Event, addrs: &HashMap<WorkerId, SocketAddr>) {
        let addr = |w: &WorkerId| addrs.get(w).map_or("?".into(), ToString::to_string);
        match event {
            Event::WorkerJoined { worker, kind, name } => {
                let kind = match kind {
                    WorkerKind::Native => "native",
                    WorkerKind::Browser => "browser",
                };
                self.note(&format!("worker {worker} joined: {kind} '{name}' from {}", addr(worker)));
            }
            Event::WorkerLeft { worker, requeued } => {
                self.note(&format!("worker {worker} left; {requeued} of its tiles go back in the queue"));
            }
            Event::LeaseExpired { worker, tile, .. } => {
                self.note(&format!("worker {worker} is overdue with tile {tile}; re-issuing it"));
            }
            Event::Rejected { worker, tile, reason, strikes, .. } => {
                self.note(&format!("worker {worker} ({}) sent a wrong result for tile {tile} (strike {strikes}): {reason}", addr(worker)));
            }
            Event::Speculated { worker, tile, .. } => tracing::debug!(worker, tile, "tail: duplicating a straggler's tile"),
            Event::TileDone { worker, tile, .. } => tracing::debug!(worker, tile, "tile done"),
            Event::JobPlanned { job } => tracing::debug!(job, "job planned"),
            Event::JobComplete { job } => tracing::debug!(job, "job complete"),
        }
    }

    /// The scheduler closed a connection: say why, and whether its address is now banned.
    pub fn closed(&self, worker: WorkerId, reason: &CloseReason, ban: bool, addrs: &HashMap<WorkerId, SocketAddr>) {
        let addr = addrs.get(&worker).map_or("unknown address".into(), ToString::to_string);
        match reason {
            CloseReason::Silent(silent_for) => {
                self.note(&format!("worker {worker} ({addr}) has said nothing for {:.1} s; dropping it", silent_for.as_secs_f64()));
            }
            // Refusals are the worker's business: it is told why, and logs it.
            CloseReason::Refused(refusal) => tracing::info!(worker, %addr, "refused: {refusal}"),
            _ => self.note(&format!("worker {worker} ({addr}) disconnected: {reason}")),
        }
        if ban {
            self.note(&format!("banned {addr} for the rest of this master's life: it sent too many wrong results"));
        }
    }

    /// `eta`: seconds left at the recent speed, once known.
    pub fn update(&self, tiles_done: usize, p: Headcount, done_flops: f64, elapsed: Duration, eta: Option<f64>) {
        if let Some(bar) = &self.bar {
            bar.set_position(tiles_done as u64);
            let rate = done_flops / elapsed.as_secs_f64().max(1e-9) / 1e9;
            let eta = eta.map_or(String::new(), |s| format!(" · ETA {s:.0} s"));
            bar.set_message(format!("{} workers ({} native, {} browser) · {rate:.1} GFLOP/s{eta}", p.total(), p.native, p.browser));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
