//! What the service knows now, shared between the driver (which writes it)
//! and the HTTP handlers (which read it): the jobs, the workers, the pool's
//! recent throughput, and the counters `/metrics` exports.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::store::{Record, State};

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub record: Record,
    pub url: String,
    pub tiles_done: usize,
    pub tiles_total: usize,
    /// Workers holding its tasks now.
    pub workers: usize,
    /// Over the recent window.
    pub gflops: f64,
    /// Seconds left at the recent speed; unknown until the job has made progress.
    pub eta_s: Option<f64>,
}

impl JobView {
    pub fn new(record: Record) -> Self {
        let url = format!("/api/jobs/{}", record.id);
        Self { record, url, tiles_done: 0, tiles_total: 0, workers: 0, gflops: 0.0, eta_s: None }
    }
}

/// A connected worker, for the dashboard.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerView {
    pub id: u64,
    pub kind: String,
    pub name: String,
    pub address: String,
    pub tiles_done: u64,
    pub gflops: f64,
    pub strikes: u32,
}

/// Counters since the service started, for `/metrics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub tasks_issued: u64,
    pub tasks_completed: u64,
    pub tasks_rejected: u64,
    pub tasks_expired: u64,
    pub flops: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds spent precomputing verification, summed over jobs: while A
    /// was read, and after the plan (when none was prepared, or it did not serve).
    pub verify_seconds_while_reading: f64,
    pub verify_seconds_after_plan: f64,
    /// How long finished jobs took, submitted to done.
    pub durations: Histogram,
}

/// Counts of observations at or under each bound, their sum and their number.
#[derive(Clone, Debug, Serialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self { bounds: bounds.to_vec(), counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn add(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

impl Default for Histogram {
    /// For job durations, seconds: a second to two days.
    fn default() -> Self {
        Self::new(&[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 48.0 * 3600.0])
    }
}

#[derive(Debug, Default)]
pub struct Board {
    pub jobs: BTreeMap<String, JobView>,
    pub workers: Vec<WorkerView>,
    pub native: usize,
    pub browser: usize,
    /// The pool's speed, one sample per second, newest last.
    pub throughput: VecDeque<(u64, f64)>,
    pub counters: Counters,
    /// Bumped on every publish, so watchers can tell news from old.
    pub version: u64,
}

/// The pool keeps this many seconds of throughput for the chart.
pub const THROUGHPUT_WINDOW: usize = 600;

impl Board {
    /// What the dashboard shows: workers, jobs (in submission order), throughput.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut jobs: Vec<&JobView> = self.jobs.values().collect();
        jobs.sort_by(|x, y| x.record.submitted.total_cmp(&y.record.submitted));
        serde_json::json!({
            "native": self.native, "browser": self.browser,
            "workers": self.workers, "jobs": jobs, "throughput": self.throughput,
        })
    }

    /// Jobs by state, for `/metrics`.
    pub fn jobs_by_state(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            [State::Queued, State::Running, State::Done, State::Cancelled, State::Failed].into_iter().map(|s| (s.name(), 0)).collect();
        for job in self.jobs.values() {
            *counts.entry(job.record.state.name()).or_default() += 1;
        }
        counts
    }
}
