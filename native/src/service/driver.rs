//! The service's driver: one scheduler, one pool of workers, many jobs.
//!
//! Workers stay connected between jobs. At most `max_running` jobs hold their
//! matrices in memory at once and share the pool by weight; the rest wait on
//! disk. Every job checkpoints its verified blocks in its folder, so a
//! restarted master resumes each job where it was.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use colonnade_core::job::Job;
use colonnade_core::kernel::flops;
use colonnade_core::protocol::JobId;
use colonnade_core::scheduler::{self as core, Event, Output, Scheduler};
use colonnade_core::verify::Verifier;
use colonnade_core::DenseMatrix;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::board::{Board, JobView, WorkerView, THROUGHPUT_WINDOW};
use super::store::{now_secs, Record, State, Store};
use crate::checkpoint::{self, Checkpoint};
use crate::commands::{prepare, read_inputs, JobSpec};
use crate::io::{self, Format};
use crate::master::{build_verifier, describe, sleep_until, Master, PrepCost, Preparation, Rate, Reporter, Shell, Status, WhileReading};

/// What the API asks of the driver.
#[derive(Debug)]
pub enum Command {
    /// Run a stored job; its inputs come along if the API has read them already.
    Submit { record: Record, inputs: Option<Box<(DenseMatrix, DenseMatrix, Option<WhileReading>)>> },
    /// Cancel a queued or running job, withdrawing its tasks; answers the
    /// job's state after (cancelled, or done if C was being stored already).
    Cancel(String, tokio::sync::oneshot::Sender<Option<State>>),
}

/// Runs `work`, turning a panic into an error: one bad job fails alone.
fn unpanicked<T>(work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| Err(anyhow::anyhow!("an internal error (a panic); see the log")))
}

/// A job's id in the protocol, from its id in the API (16 hex digits).
pub fn job_id(key: &str) -> Option<JobId> {
    (key.len() == 16).then(|| JobId::from_str_radix(key, 16).ok()).flatten()
}

pub fn job_key(id: JobId) -> String {
    format!("{id:016x}")
}

/// A job in the scheduler, and what the shell keeps for it.
#[derive(Debug)]
struct Active {
    record: Record,
    prep: Preparation,
    writer: Option<checkpoint::Writer>,
    rate: Rate,
    planned: bool,
}

type Inputs = anyhow::Result<(DenseMatrix, DenseMatrix, bool, Option<WhileReading>)>;

pub struct Driver {
    pub store: Store,
    pub board: Arc<Mutex<Board>>,
    pub scheduler: Scheduler,
    pub max_running: usize,
    pub max_memory: Option<u64>,
    shell: Shell,
    start: Instant,
    queue: VecDeque<Record>,
    active: HashMap<JobId, Active>,
    /// Jobs whose inputs are being read, and those cancelled meanwhile.
    loading: HashSet<JobId>,
    /// Jobs whose C is being written.
    storing: HashSet<JobId>,
    cancelled_while_loading: HashSet<JobId>,
    loads: JoinSet<(Record, Inputs)>,
    verifiers: JoinSet<(JobId, Verifier, PrepCost)>,
    writes: JoinSet<(Record, anyhow::Result<()>)>,
    /// The job the page shows.
    shown: Option<JobId>,
    /// Flops done by all jobs, as last sampled for the throughput chart.
    last_sample: (u64, f64),
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("queued", &self.queue.len()).field("active", &self.active.len()).finish_non_exhaustive()
    }
}

impl Driver {
    pub fn new(store: Store, board: Arc<Mutex<Board>>, scheduler: Scheduler, max_running: usize, max_memory: Option<u64>) -> Self {
        Self {
            store,
            board,
            scheduler,
            max_running: max_running.max(1),
            max_memory,
            shell: Shell::default(),
            start: Instant::now(),
            queue: VecDeque::new(),
            active: HashMap::new(),
            loading: HashSet::new(),
            storing: HashSet::new(),
            cancelled_while_loading: HashSet::new(),
            loads: JoinSet::new(),
            verifiers: JoinSet::new(),
            writes: JoinSet::new(),
            shown: None,
            last_sample: (now_secs() as u64, 0.0),
        }
    }

    /// Queues jobs recorded before a restart.
    pub fn resume(&mut self, records: Vec<Record>) {
        for record in records.into_iter().filter(|r| r.state.is_live()) {
            tracing::info!(job = record.id, "resuming");
            self.queue.push_back(record);
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Serves until asked to stop: the pool's connections, the API's commands,
    /// and the jobs' verifiers, inputs and results as they become ready.
    pub async fn run(mut self, master: &mut Master, mut commands: mpsc::Receiver<Command>, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let reporter = Reporter::new(false);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            self.admit();
            let wake = loop {
                let event = match self.scheduler.poll_output() {
                    Output::Wake(at) => break at,
                    Output::Send { to, frame } => {
                        self.shell.send(to, frame);
                        continue;
                    }
                    Output::Close { worker, reason, ban } => {
                        reporter.closed(worker, &reason, ban, &self.shell.addrs);
                        self.shell.close(worker, reason.to_string());
                        continue;
                    }
                    Output::Event(event) => event,
                };
                reporter.event(&event, &self.shell.addrs);
                self.on_event(event);
            };
            let wake = wake.map(|t| tokio::time::Instant::from_std(self.start + t));
            tokio::select! {
                input = master.next_input() => {
                    let now = self.now();
                    self.shell.input(&mut self.scheduler, input.context("the server stopped")?, now);
                }
                Some(command) = commands.recv() => self.on_command(command),
                Some(loaded) = self.loads.join_next(), if !self.loads.is_empty() => {
                    let (record, inputs) = loaded.context("reading a job's inputs failed")?;
                    self.loaded(record, inputs);
                }
                Some(built) = self.verifiers.join_next(), if !self.verifiers.is_empty() => {
                    let (job, verifier, took) = built.context("building a verifier failed")?; // only a panic, which verify never should
                    self.board.lock().expect("board").counters.verify_seconds_after_plan += took.wall.as_secs_f64();
                    let now = self.now();
                    self.scheduler.set_verifier(job, verifier, now);
                }
                Some(written) = self.writes.join_next(), if !self.writes.is_empty() => {
                    let (record, result) = written.context("writing a result failed")?;
                    self.written(record, result);
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    let now = self.now();
                    self.scheduler.handle_input(core::Input::Timeout, now);
                }
                _ = tick.tick() => self.publish(master),
                () = &mut stop => return Ok(()),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Submit { record, inputs } => match inputs {
                Some(inputs) if self.has_room() => {
                    let (a, b, prepared) = *inputs;
                    let integer = record.integer;
                    self.start_job(record, a, b, integer, prepared);
                }
                Some(inputs) => {
                    // No room: it waits on disk, and is read and prepared again when admitted.
                    self.count_prepared(inputs.2.as_ref());
                    self.queue.push_back(record);
                }
                None => self.queue.push_back(record),
            },
            Command::Cancel(key, answer) => {
                let state = self.cancel(&key);
                let _ = answer.send(state);
            }
        }
    }

    /// Counts a verifier's preparation while A was read, used or not.
    fn count_prepared(&self, prepared: Option<&WhileReading>) {
        if let Some(p) = prepared {
            self.board.lock().expect("board").counters.verify_seconds_while_reading += p.cost().wall.as_secs_f64();
        }
    }

    fn has_room(&self) -> bool {
        self.active.len() + self.loading.len() < self.max_running
    }

    /// Starts reading the inputs of queued jobs while there is room.
    fn admit(&mut self) {
        while self.has_room() {
            let Some(record) = self.queue.pop_front() else { return };
            let Some(id) = job_id(&record.id) else { continue };
            let (a, b, c) = (self.store.input(&record, 'a'), self.store.input(&record, 'b'), self.store.result(&record.id, Format::Npy));
            let max_memory = self.max_memory;
            // A job that will resume on its checkpoint's grid is checked by a verifier of its own.
            let fresh = !Checkpoint::has_begun(&self.store.checkpoint(&record.id));
            self.loading.insert(id);
            self.loads.spawn_blocking(move || {
                let inputs = unpanicked(|| read_inputs(&a, &b, &c, max_memory, fresh));
                (record, inputs)
            });
        }
    }

    fn loaded(&mut self, record: Record, inputs: Inputs) {
        let id = job_id(&record.id).expect("queued jobs have valid ids");
        self.loading.remove(&id);
        if self.cancelled_while_loading.remove(&id) {
            return;
        }
        match inputs {
            Ok((a, b, integer, prepared)) => self.start_job(record, a, b, integer, prepared),
            Err(e) => self.fail(record, format!("{e:#}")),
        }
    }

    /// Puts a job in the scheduler, resuming from its checkpoint.
    fn start_job(&mut self, mut record: Record, a: DenseMatrix, b: DenseMatrix, integer: bool, prepared: Option<WhileReading>) {
        let id = job_id(&record.id).expect("jobs have valid ids");
        let checkpoint = Some(self.store.checkpoint(&record.id));
        self.count_prepared(prepared.as_ref());
        let spec = JobSpec { id, a, b, integer, block: None, link_rate: None, checkpoint, early_verifier: false, prepared };
        let now = self.now();
        match prepare(spec, &mut self.scheduler, now) {
            Ok((_, prep, _)) => {
                self.scheduler.set_weight(id, record.priority);
                record.state = State::Running;
                self.record(&record);
                tracing::info!(job = record.id, "running: {}x{} times {}x{}", record.m, record.k, record.k, record.n);
                self.active.insert(id, Active { record, prep, writer: None, rate: Rate::default(), planned: false });
                // A job resumed on its checkpoint's grid is planned already: no JobPlanned comes.
                if self.scheduler.job(id).is_some() {
                    self.planned(id);
                }
            }
            Err(e) => self.fail(record, format!("{e:#}")),
        }
    }

    fn on_event(&mut self, event: Event) {
        let mut board = self.board.lock().expect("board");
        match event {
            Event::JobPlanned { job } => {
                drop(board);
                self.planned(job);
            }
            Event::TileDone { job, tile, block, block_done, .. } => {
                board.counters.tasks_completed += 1;
                if let Some(j) = self.scheduler.job(job) {
                    let t = j.plan().tile(tile);
                    board.counters.flops += flops(t.rows.len(), t.depth.len(), t.cols.len());
                    if let Some(active) = self.active.get_mut(&job) {
                        // The rate is measured at the steps themselves.
                        active.rate.sample(Instant::now(), j.flops_done());
                        if let (true, Some(w)) = (block_done, &active.writer) {
                            if let Some(bytes) = j.block_bytes(block) {
                                w.save(block, &bytes);
                            }
                        }
                    }
                }
            }
            Event::Rejected { .. } => board.counters.tasks_rejected += 1,
            Event::LeaseExpired { .. } => board.counters.tasks_expired += 1,
            Event::JobComplete { job } => {
                drop(board);
                self.complete(job);
            }
            Event::WorkerJoined { .. } | Event::WorkerLeft { .. } | Event::Speculated { .. } => {}
        }
    }

    /// The job's tiles are chosen: its verifier and checkpoint start.
    fn planned(&mut self, job: JobId) {
        let (Some(active), Some(j)) = (self.active.get_mut(&job), self.scheduler.job(job)) else { return };
        active.planned = true;
        let plan = j.plan().clone();
        tracing::info!(job = active.record.id, "planned: {}", describe(&plan));
        // Unless the verifier prepared while A was read serves the plan.
        if let (Some(recipe), true) = (active.prep.verifier.take(), j.awaits_verifier()) {
            let plan = plan.clone();
            self.verifiers.spawn_blocking(move || {
                let (verifier, took) = build_verifier(recipe, &Job::verified_tiles(&plan));
                (job, verifier, took)
            });
        }
        if let Some(cp) = active.prep.checkpoint.as_mut() {
            if cp.grid.is_none() {
                if let Err(e) = cp.begin((plan.shape(), plan.layout)) {
                    tracing::warn!(job = active.record.id, "checkpoint: {e}; the job runs without one");
                    return;
                }
            }
            active.writer = Some(cp.writer());
        }
    }

    /// C is assembled: it is written to the job's folder, then the job is done.
    fn complete(&mut self, job: JobId) {
        let now = self.now();
        let Some(mut finished) = self.scheduler.remove_job(job, now) else { return };
        let Some(active) = self.active.remove(&job) else { return };
        if let Some(w) = active.writer {
            w.finish();
        }
        if let Some(view) = self.board.lock().expect("board").jobs.get_mut(&active.record.id) {
            (view.tiles_done, view.tiles_total, view.workers) = (finished.plan().tiles(), finished.plan().tiles(), 0);
        }
        let c = finished.take_result().expect("a complete job has C");
        let path = self.store.result(&active.record.id, Format::Npy);
        let record = active.record;
        let integer = record.integer;
        self.storing.insert(job);
        self.writes.spawn_blocking(move || {
            let result = unpanicked(|| io::write_matrix(&path, &c, integer));
            (record, result)
        });
    }

    fn written(&mut self, mut record: Record, result: anyhow::Result<()>) {
        if let Some(id) = job_id(&record.id) {
            self.storing.remove(&id);
        }
        if let Err(e) = result {
            return self.fail(record, format!("cannot store C: {e:#}"));
        }
        record.state = State::Done;
        record.finished = Some(now_secs());
        if self.record(&record) {
            self.tidy(&record);
        }
        let mut board = self.board.lock().expect("board");
        let took = record.finished.unwrap_or(record.submitted) - record.submitted;
        board.counters.durations.add(took.max(0.0));
        if let Some(view) = board.jobs.get_mut(&record.id) {
            view.eta_s = Some(0.0);
        }
        tracing::info!(job = record.id, "done");
    }

    /// Cancels the job if it is live; returns its state after.
    fn cancel(&mut self, key: &str) -> Option<State> {
        let id = job_id(key)?;
        if self.storing.contains(&id) {
            return Some(State::Running); // finished already; C is on its way to disk
        }
        let now = self.now();
        let record = if let Some(at) = self.queue.iter().position(|r| r.id == key) {
            self.queue.remove(at)
        } else if let Some(active) = self.active.remove(&id) {
            self.scheduler.remove_job(id, now);
            Some(active.record)
        } else if self.loading.contains(&id) {
            self.cancelled_while_loading.insert(id);
            self.board.lock().expect("board").jobs.get(key).map(|v| v.record.clone())
        } else {
            None
        };
        let mut record = record?;
        record.state = State::Cancelled;
        record.finished = Some(now_secs());
        if self.record(&record) {
            self.tidy(&record);
        }
        tracing::info!(job = key, "cancelled");
        Some(State::Cancelled)
    }

    fn fail(&mut self, mut record: Record, error: String) {
        tracing::warn!(job = record.id, "failed: {error}");
        record.state = State::Failed;
        record.error = Some(error);
        record.finished = Some(now_secs());
        self.record(&record);
    }

    /// Saves the record and shows it; returns whether it is on disk (a
    /// record that cannot be saved is logged, and nothing is deleted on its word).
    fn record(&self, record: &Record) -> bool {
        let saved = self.store.save(record).map_err(|e| tracing::error!("{e:#}")).is_ok();
        let mut board = self.board.lock().expect("board");
        board.jobs.entry(record.id.clone()).or_insert_with(|| JobView::new(record.clone())).record = record.clone();
        saved
    }

    /// A finished job keeps only its record and C.
    fn tidy(&self, record: &Record) {
        let _ = std::fs::remove_dir_all(self.store.checkpoint(&record.id));
        for which in ['a', 'b'] {
            let _ = std::fs::remove_file(self.store.input(record, which));
        }
    }

    /// Refreshes the board (jobs, workers, throughput) and the page.
    fn publish(&mut self, master: &Master) {
        let now = Instant::now();
        self.scheduler.forget_departed();
        self.shell.forget_gone();
        let mut board = self.board.lock().expect("board");
        for (&id, active) in &mut self.active {
            let Some(view) = board.jobs.get_mut(&active.record.id) else { continue };
            let Some(job) = self.scheduler.job(id) else { continue };
            let total = flops(active.record.m, active.record.k, active.record.n);
            active.rate.sample(now, job.flops_done());
            view.tiles_done = job.tiles_done();
            view.tiles_total = job.plan().tiles();
            view.workers = self.scheduler.workers_on(id);
            view.gflops = active.rate.speed(now).unwrap_or(0.0) / 1e9;
            view.eta_s = active.rate.eta(now, total - job.flops_done());
        }
        let headcount = self.scheduler.headcount();
        (board.native, board.browser) = (headcount.native, headcount.browser);
        board.workers = self
            .scheduler
            .pool()
            .infos()
            .filter(|(_, w)| w.connected)
            .map(|(id, w)| WorkerView {
                id,
                kind: format!("{:?}", w.kind).to_lowercase(),
                name: w.name.clone(),
                address: self.shell.addrs.get(&id).map(|a| a.to_string()).unwrap_or_default(),
                tiles_done: w.tiles_done as u64,
                gflops: if w.compute.is_zero() { 0.0 } else { w.flops / w.compute.as_secs_f64() / 1e9 },
                strikes: w.strikes,
            })
            .collect();
        (board.counters.bytes_sent, board.counters.bytes_received) = master.traffic();
        board.counters.tasks_issued = self.shell.tasks_sent;
        let second = now_secs() as u64;
        if second > self.last_sample.0 {
            let flops = board.counters.flops;
            let rate = (flops - self.last_sample.1) / (second - self.last_sample.0) as f64;
            board.throughput.push_back((second, rate / 1e9));
            if board.throughput.len() > THROUGHPUT_WINDOW {
                board.throughput.pop_front();
            }
            self.last_sample = (second, flops);
        }
        board.version += 1;
        drop(board);
        self.show_on_page(master);
    }

    /// The page shows the oldest running job, or that the master waits for work.
    fn show_on_page(&mut self, master: &Master) {
        let running = self.active.iter().filter(|(_, a)| a.planned).min_by(|x, y| x.1.record.submitted.total_cmp(&y.1.record.submitted)).map(|(&id, _)| id);
        let Some(id) = running else {
            if self.shown.take().is_some() || !self.active.is_empty() || self.queue.is_empty() {
                let headcount = self.scheduler.headcount();
                master.show(Status { waiting: true, native_workers: headcount.native, browser_workers: headcount.browser, worker_command: format!("worker {}", master.worker_url()), ..Status::default() });
            }
            return;
        };
        if self.shown != Some(id) {
            self.shown = Some(id);
            if let Some(job) = self.scheduler.job(id) {
                master.show(Status::default());
                master.announce(job.plan());
            }
        }
        master.publish(&self.scheduler, id);
    }
}
