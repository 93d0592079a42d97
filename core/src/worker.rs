//! The worker's side of the protocol, sans-IO: shared by the native worker and
//! the browser worker, which only add a socket and a place to run the kernel.
//!
//! The shell feeds every received message to [`WorkerSession::handle_message`],
//! sends what [`WorkerSession::poll_transmit`] yields, runs each
//! [`ComputeTask`] from [`WorkerSession::next_task`], and reports the product
//! with [`WorkerSession::complete`]. It also calls
//! [`WorkerSession::handle_timeout`] when [`WorkerSession::poll_timeout`] says,
//! which sends heartbeats and notices a master gone silent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{self, CodecError};
use crate::kernel;
use crate::liveness::{Heartbeat, Liveness};
use crate::matrix::{element_count, DenseMatrix, Dtype};
use crate::payload::{Incoming, PayloadError};
use crate::protocol::{chunk_ranges, Frame, JobId, LeaseId, MatrixBytes, Message, Operand, PanelId, Token, WorkerKind, MAX_CHUNK, PROTOCOL_VERSION};

/// Tasks a worker asks to hold at once (the master grants at most its own
/// limit, 4 by default). One computes while the next ones' panels
/// arrive; more than one waiting covers a task that waits on the master's
/// link behind panels sent ahead of it. Four instead of two took the real
/// link-bound namespace runs from 3.75/3.19/3.09 s to 3.45/3.01/2.97 s on
/// 1/2/3 workers (README, Status).
pub const DEFAULT_SLOTS: u32 = 4;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub kind: WorkerKind,
    pub threads: u32,
    /// Tasks held at once.
    pub slots: u32,
    pub name: String,
    /// Bytes of panels and results this worker holds at most; the master is
    /// told, and a master that sends more breaks the protocol.
    pub memory: u64,
    /// Its kernel's measured speed, flop/s (0 if not measured).
    pub flops: u64,
    /// Sent in Hello; admits a native worker to a master that requires it.
    pub token: Token,
    pub heartbeat: Heartbeat,
}

impl WorkerConfig {
    pub fn new(kind: WorkerKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            threads: 1,
            slots: DEFAULT_SLOTS,
            name: name.into(),
            memory: 1 << 30,
            flops: 0,
            token: Token::default(),
            heartbeat: Heartbeat::default(),
        }
    }
}

/// What happened, for logs and the volunteer page.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEvent {
    /// Accepted, with `slots` tasks of credit.
    Welcomed { worker: u64, slots: u32 },
    JobStarted { job: JobId, m: usize, k: usize, n: usize, dtype: Dtype },
    TaskCancelled { lease: LeaseId },
    /// A result of this worker's was verified; the job has `done` of `total` tiles.
    Accepted { lease: LeaseId, done: u64, total: u64 },
    JobDone { job: JobId },
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the master refused this worker: {0}")]
    Refused(String),
    #[error("the master sent {0}, which only a worker sends")]
    Unexpected(&'static str),
    #[error("the master sent data for job {0}, which it never announced")]
    UnknownJob(JobId),
    #[error("the master sent panel {panel} of job {job} twice")]
    DuplicatePanel { job: JobId, panel: PanelId },
    #[error("the master used panel {panel} of job {job}, which it never sent")]
    UnknownPanel { job: JobId, panel: PanelId },
    #[error("the master evicted panel {panel} of job {job} while a task still needs it")]
    PanelInUse { job: JobId, panel: PanelId },
    #[error("the master sent more of panel {panel} of job {job} than it announced")]
    Surplus { job: JobId, panel: PanelId },
    #[error("the master sent a task for lease {0} twice")]
    DuplicateLease(LeaseId),
    #[error("panel {panel} of job {job} is {rows}x{cols}, which does not fit the job's {m}x{k} by {k}x{n}")]
    BadPanel { job: JobId, panel: PanelId, rows: u64, cols: u64, m: usize, k: usize, n: usize },
    #[error("the task's panels do not multiply: A is {a_rows}x{a_cols}, B is {b_rows}x{b_cols}")]
    Mismatched { a_rows: usize, a_cols: usize, b_rows: usize, b_cols: usize },
    #[error("{what} would take {bytes} bytes, over this worker's memory of {limit} ({used} in use)")]
    TooLarge { what: &'static str, bytes: u128, used: u64, limit: u64 },
    #[error("an empty {0} (zero rows or columns)")]
    Empty(&'static str),
    #[error("{what}: {source}")]
    Payload { what: &'static str, source: PayloadError },
    #[error("the master has said nothing for {0:?}")]
    MasterSilent(Duration),
}

/// One tile to multiply: the A panel times the B panel.
#[derive(Clone, Debug)]
pub struct ComputeTask {
    pub job: JobId,
    pub lease: LeaseId,
    /// Where the product goes in C: its first row and column.
    pub row: usize,
    pub col: usize,
    pub a: Arc<DenseMatrix>,
    pub b: Arc<DenseMatrix>,
}

impl ComputeTask {
    pub fn rows(&self) -> usize {
        self.a.rows()
    }
    pub fn cols(&self) -> usize {
        self.b.cols()
    }
    pub fn flops(&self) -> f64 {
        kernel::flops(self.a.rows(), self.a.cols(), self.b.cols())
    }
    /// Multiplies on the calling thread.
    pub fn compute(&self) -> DenseMatrix {
        match (&*self.a, &*self.b) {
            (DenseMatrix::F64(a), DenseMatrix::F64(b)) => kernel::multiply(a, b.as_slice()).into(),
            (DenseMatrix::F32(a), DenseMatrix::F32(b)) => kernel::multiply(a, b.as_slice()).into(),
            _ => unreachable!("the session builds panels with the job's dtype"),
        }
    }
}

#[derive(Debug)]
enum PanelData {
    Arriving(Incoming),
    Ready(Arc<DenseMatrix>),
}

#[derive(Debug)]
struct JobShape {
    m: usize,
    k: usize,
    n: usize,
    dtype: Dtype,
}

#[derive(Debug)]
struct Task {
    job: JobId,
    a: PanelId,
    b: PanelId,
    row: usize,
    col: usize,
    /// Bytes its product will take.
    result: u64,
}

#[derive(Debug)]
pub struct WorkerSession {
    config: WorkerConfig,
    jobs: BTreeMap<JobId, JobShape>,
    panels: BTreeMap<(JobId, PanelId), PanelData>,
    /// Announced tasks waiting for their panels.
    tasks: BTreeMap<LeaseId, Task>,
    /// Tasks handed to the shell and not yet completed or cancelled, with their result bytes.
    computing: BTreeMap<LeaseId, u64>,
    /// Bytes of panels and reserved results: never above `config.memory`.
    used: u64,
    outbox: VecDeque<Frame>,
    master: Liveness,
    /// Largest result chunk the master accepts, from its Welcome.
    max_chunk: usize,
}

impl WorkerSession {
    /// A new session on a connection opened at `now`; its first outgoing message is Hello.
    pub fn new(config: WorkerConfig, now: Duration) -> Self {
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            kind: config.kind,
            threads: config.threads,
            slots: config.slots,
            name: config.name.clone(),
            token: config.token.clone(),
            memory: config.memory,
            flops: config.flops,
        };
        let master = Liveness::new(now, &config.heartbeat);
        let outbox = VecDeque::from([Frame::new(hello)]);
        Self {
            config,
            jobs: BTreeMap::new(),
            panels: BTreeMap::new(),
            tasks: BTreeMap::new(),
            computing: BTreeMap::new(),
            used: 0,
            outbox,
            master,
            max_chunk: MAX_CHUNK,
        }
    }

    /// Time has reached `now`: queues a heartbeat if one is due, and fails if
    /// the master has been silent too long (the shell should reconnect).
    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), WorkerError> {
        let heartbeat = self.config.heartbeat;
        if let Some(silent) = self.master.silent_past(now, heartbeat.timeout) {
            return Err(WorkerError::MasterSilent(silent));
        }
        if self.master.beat_due(now, &heartbeat) {
            self.outbox.push_back(Frame::new(Message::Heartbeat));
        }
        Ok(())
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Duration {
        self.master.next_wake(self.config.heartbeat.timeout)
    }

    /// A message from the master arrived at `now`.
    pub fn handle_message(&mut self, bytes: &[u8], now: Duration) -> Result<Option<WorkerEvent>, WorkerError> {
        let (message, body) = codec::decode(bytes)?;
        self.master.heard(now);
        match message {
            Message::Heartbeat => Ok(None),
            Message::Welcome { worker, slots, max_chunk } => {
                // Results go out in chunks the master accepts (never more than the protocol's).
                self.max_chunk = usize::try_from(max_chunk).unwrap_or(MAX_CHUNK).clamp(1, MAX_CHUNK);
                Ok(Some(WorkerEvent::Welcomed { worker, slots }))
            }
            Message::Refused { reason } => Err(WorkerError::Refused(reason)),
            Message::Job { job, m, k, n, dtype } => {
                if m == 0 || k == 0 || n == 0 {
                    return Err(WorkerError::Empty("job"));
                }
                let (m, k, n) = (to_usize(m)?, to_usize(k)?, to_usize(n)?);
                self.jobs.insert(job, JobShape { m, k, n, dtype });
                Ok(Some(WorkerEvent::JobStarted { job, m, k, n, dtype }))
            }
            Message::Panel { job, panel, operand, rows, cols } => {
                self.on_panel(job, panel, operand, rows, cols)?;
                self.add_panel_chunk(job, panel, 0, body)?;
                Ok(None)
            }
            Message::PanelChunk { job, panel, offset } => {
                self.add_panel_chunk(job, panel, offset, body)?;
                Ok(None)
            }
            Message::Evict { job, panels } => {
                for panel in panels {
                    if self.tasks.values().any(|t| t.job == job && (t.a == panel || t.b == panel)) {
                        return Err(WorkerError::PanelInUse { job, panel });
                    }
                    if let Some(data) = self.panels.remove(&(job, panel)) {
                        self.used -= panel_bytes(&data);
                    }
                }
                Ok(None)
            }
            Message::Task { job, lease, a, b, row, col } => {
                self.on_task(lease, Task { job, a, b, row: to_usize(row)?, col: to_usize(col)?, result: 0 })?;
                Ok(None)
            }
            Message::Cancel { lease } => {
                let known = self.drop_task(lease);
                Ok(known.then_some(WorkerEvent::TaskCancelled { lease }))
            }
            Message::Accepted { lease, done, total } => Ok(Some(WorkerEvent::Accepted { lease, done, total })),
            Message::JobDone { job } => {
                self.jobs.remove(&job);
                let leases: Vec<LeaseId> = self.tasks.iter().filter(|(_, t)| t.job == job).map(|(&l, _)| l).collect();
                for lease in leases {
                    self.drop_task(lease);
                }
                let panels: Vec<_> = self.panels.range((job, 0)..=(job, PanelId::MAX)).map(|(&key, _)| key).collect();
                for key in panels {
                    let data = self.panels.remove(&key).expect("listed above");
                    self.used -= panel_bytes(&data);
                }
                Ok(Some(WorkerEvent::JobDone { job }))
            }
            Message::Hello { .. } => Err(WorkerError::Unexpected("Hello")),
            Message::ResultChunk { .. } => Err(WorkerError::Unexpected("ResultChunk")),
            Message::Release { .. } => Err(WorkerError::Unexpected("Release")),
        }
    }

    fn on_panel(&mut self, job: JobId, panel: PanelId, operand: Operand, rows: u64, cols: u64) -> Result<(), WorkerError> {
        let shape = self.jobs.get(&job).ok_or(WorkerError::UnknownJob(job))?;
        let (m, k, n, dtype) = (shape.m, shape.k, shape.n, shape.dtype);
        if self.panels.contains_key(&(job, panel)) {
            return Err(WorkerError::DuplicatePanel { job, panel });
        }
        let (max_rows, max_cols) = match operand {
            Operand::A => (m, k),
            Operand::B => (k, n),
        };
        if rows == 0 || cols == 0 || rows > max_rows as u64 || cols > max_cols as u64 {
            return Err(WorkerError::BadPanel { job, panel, rows, cols, m, k, n });
        }
        let bytes = u128::from(rows) * u128::from(cols) * dtype.size() as u128;
        self.reserve("a panel", bytes)?;
        let (rows, cols) = (rows as usize, cols as usize);
        element_count(rows, cols).map_err(|_| self.too_large("a panel", bytes))?;
        let incoming = Incoming::new(dtype, rows, cols).map_err(|_| self.too_large("a panel", bytes))?;
        self.panels.insert((job, panel), PanelData::Arriving(incoming));
        Ok(())
    }

    /// Bytes `offset..` of a panel; a message without a body adds nothing.
    fn add_panel_chunk(&mut self, job: JobId, panel: PanelId, offset: u64, body: &[u8]) -> Result<(), WorkerError> {
        if body.is_empty() && offset == 0 {
            return Ok(());
        }
        let data = self.panels.get_mut(&(job, panel)).ok_or(WorkerError::UnknownPanel { job, panel })?;
        let PanelData::Arriving(incoming) = data else {
            return Err(WorkerError::Surplus { job, panel });
        };
        if incoming.add(offset, body).map_err(|source| WorkerError::Payload { what: "a panel", source })? {
            let PanelData::Arriving(done) = std::mem::replace(data, PanelData::Ready(Arc::new(DenseMatrix::zeros(Dtype::F32, 0, 0).expect("an empty matrix")))) else {
                unreachable!("matched Arriving above")
            };
            *data = PanelData::Ready(Arc::new(done.into_matrix()));
        }
        Ok(())
    }

    fn on_task(&mut self, lease: LeaseId, mut task: Task) -> Result<(), WorkerError> {
        let dtype = self.jobs.get(&task.job).ok_or(WorkerError::UnknownJob(task.job))?.dtype;
        if self.tasks.contains_key(&lease) || self.computing.contains_key(&lease) {
            return Err(WorkerError::DuplicateLease(lease));
        }
        let (a_rows, a_cols) = self.panel_shape(task.job, task.a)?;
        let (b_rows, b_cols) = self.panel_shape(task.job, task.b)?;
        if a_cols != b_rows {
            return Err(WorkerError::Mismatched { a_rows, a_cols, b_rows, b_cols });
        }
        let bytes = a_rows as u128 * b_cols as u128 * dtype.size() as u128;
        self.reserve("a task's product", bytes)?;
        task.result = bytes as u64;
        self.tasks.insert(lease, task);
        Ok(())
    }

    fn panel_shape(&self, job: JobId, panel: PanelId) -> Result<(usize, usize), WorkerError> {
        match self.panels.get(&(job, panel)) {
            Some(PanelData::Arriving(incoming)) => Ok(incoming.shape()),
            Some(PanelData::Ready(matrix)) => Ok((matrix.rows(), matrix.cols())),
            None => Err(WorkerError::UnknownPanel { job, panel }),
        }
    }

    /// Counts `bytes` against the memory budget, or fails.
    fn reserve(&mut self, what: &'static str, bytes: u128) -> Result<(), WorkerError> {
        if u128::from(self.used) + bytes > u128::from(self.config.memory) {
            return Err(self.too_large(what, bytes));
        }
        self.used += bytes as u64;
        Ok(())
    }

    fn too_large(&self, what: &'static str, bytes: u128) -> WorkerError {
        WorkerError::TooLarge { what, bytes, used: self.used, limit: self.config.memory }
    }

    /// Forgets a task, waiting or computing; returns whether it was known.
    fn drop_task(&mut self, lease: LeaseId) -> bool {
        let bytes = match (self.tasks.remove(&lease), self.computing.remove(&lease)) {
            (Some(task), _) => task.result,
            (None, Some(bytes)) => bytes,
            (None, None) => return false,
        };
        self.used -= bytes;
        true
    }

    /// The next task whose panels have both arrived.
    pub fn next_task(&mut self) -> Option<ComputeTask> {
        let ready = |job: JobId, panel: PanelId| match self.panels.get(&(job, panel)) {
            Some(PanelData::Ready(m)) => Some(Arc::clone(m)),
            _ => None,
        };
        let (lease, a, b) = self.tasks.iter().find_map(|(&lease, t)| Some((lease, ready(t.job, t.a)?, ready(t.job, t.b)?)))?;
        let task = self.tasks.remove(&lease).expect("found above");
        self.computing.insert(lease, task.result);
        Some(ComputeTask { job: task.job, lease, row: task.row, col: task.col, a, b })
    }

    /// Reports a finished product and the time spent computing it; queues it
    /// for sending unless the task was cancelled meanwhile. Returns whether it will be sent.
    pub fn complete(&mut self, lease: LeaseId, c: DenseMatrix, compute: Duration) -> bool {
        if !self.drop_task(lease) {
            return false;
        }
        let bytes = MatrixBytes::into_bytes(c);
        for range in chunk_ranges(bytes.len(), self.max_chunk) {
            let compute_us = u64::try_from(compute.as_micros()).unwrap_or(u64::MAX);
            let message = Message::ResultChunk { lease, offset: range.start as u64, compute_us };
            self.outbox.push_back(Frame::with_body(message, bytes.slice(range)));
        }
        true
    }

    /// Hands back every unfinished task, e.g. when stopping.
    pub fn release_all(&mut self) {
        let leases: Vec<LeaseId> = self.tasks.keys().chain(self.computing.keys()).copied().collect();
        for &lease in &leases {
            self.drop_task(lease);
        }
        if !leases.is_empty() {
            self.outbox.push_back(Frame::new(Message::Release { leases }));
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.outbox.pop_front()
    }

    /// Tasks held: arriving, waiting or computing.
    pub fn in_flight(&self) -> usize {
        self.tasks.len() + self.computing.len()
    }

    /// Bytes of panels and reserved results held now.
    pub fn memory_used(&self) -> u64 {
        self.used
    }
}

fn panel_bytes(data: &PanelData) -> u64 {
    match data {
        PanelData::Arriving(incoming) => incoming.total() as u64,
        PanelData::Ready(matrix) => matrix.as_bytes().len() as u64,
    }
}

fn to_usize(x: u64) -> Result<usize, WorkerError> {
    usize::try_from(x).map_err(|_| WorkerError::TooLarge { what: "a dimension", bytes: u128::from(x), used: 0, limit: usize::MAX as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    const T0: Duration = Duration::ZERO;

    fn frame(message: Message, body: &[u8]) -> Vec<u8> {
        codec::encode(&message, body)
    }

    /// Job 1: m=2, k=2, n=3, f64.
    fn session_with_job(config: WorkerConfig) -> WorkerSession {
        let mut s = WorkerSession::new(config, T0);
        assert!(matches!(s.poll_transmit().unwrap().message, Message::Hello { .. }));
        s.handle_message(&frame(Message::Job { job: 1, m: 2, k: 2, n: 3, dtype: Dtype::F64 }, &[]), T0).unwrap();
        s
    }

    fn panel(panel: PanelId, operand: Operand, rows: u64, cols: u64) -> Message {
        Message::Panel { job: 1, panel, operand, rows, cols }
    }

    #[test]
    fn computes_a_task_once_its_panels_arrive_in_chunks() {
        let mut s = session_with_job(WorkerConfig::new(WorkerKind::Native, "t"));
        let a = Matrix::from_fn(2, 2, |i, j| (i + 2 * j) as f64);
        let b = Matrix::from_fn(2, 1, |i, _| (i + 1) as f64);
        s.handle_message(&frame(panel(0, Operand::A, 2, 2), &a.as_bytes()[..16]), T0).unwrap();
        s.handle_message(&frame(panel(3, Operand::B, 2, 1), b.as_bytes()), T0).unwrap();
        s.handle_message(&frame(Message::Task { job: 1, lease: 5, a: 0, b: 3, row: 0, col: 2 }, &[]), T0).unwrap();
        assert!(s.next_task().is_none(), "A's panel has not all arrived");
        s.handle_message(&frame(Message::PanelChunk { job: 1, panel: 0, offset: 16 }, &a.as_bytes()[16..]), T0).unwrap();
        let task = s.next_task().unwrap();
        assert_eq!((task.lease, task.row, task.col, task.rows(), task.cols()), (5, 0, 2, 2, 1));
        let c = task.compute();
        assert_eq!(c, DenseMatrix::F64(Matrix::from_col_major(2, 1, vec![4.0, 7.0]).unwrap()));
        assert!(s.complete(5, c.clone(), Duration::from_micros(7)));
        let out = s.poll_transmit().unwrap();
        assert_eq!(out.message, Message::ResultChunk { lease: 5, offset: 0, compute_us: 7 });
        assert_eq!(&out.body[..], c.as_bytes());
        let accepted = s.handle_message(&frame(Message::Accepted { lease: 5, done: 1, total: 3 }, &[]), T0).unwrap();
        assert_eq!(accepted, Some(WorkerEvent::Accepted { lease: 5, done: 1, total: 3 }));
    }

    #[test]
    fn memory_holds_panels_and_products_and_eviction_frees_it() {
        // A's panel 32 bytes, B's 16, the product 16: 64 fits exactly.
        let mut s = session_with_job(WorkerConfig { memory: 64, ..WorkerConfig::new(WorkerKind::Browser, "t") });
        s.handle_message(&frame(panel(0, Operand::A, 2, 2), &[1; 32]), T0).unwrap();
        s.handle_message(&frame(panel(3, Operand::B, 2, 1), &[2; 16]), T0).unwrap();
        s.handle_message(&frame(Message::Task { job: 1, lease: 1, a: 0, b: 3, row: 0, col: 0 }, &[]), T0).unwrap();
        assert_eq!(s.memory_used(), 64);
        let over = s.handle_message(&frame(panel(4, Operand::B, 2, 1), &[]), T0);
        assert!(matches!(over, Err(WorkerError::TooLarge { what: "a panel", used: 64, limit: 64, .. })), "{over:?}");
        let in_use = s.handle_message(&frame(Message::Evict { job: 1, panels: vec![3] }, &[]), T0);
        assert!(matches!(in_use, Err(WorkerError::PanelInUse { panel: 3, .. })));
        let task = s.next_task().unwrap();
        assert!(s.complete(task.lease, task.compute(), Duration::ZERO));
        s.handle_message(&frame(Message::Evict { job: 1, panels: vec![3] }, &[]), T0).unwrap();
        assert_eq!(s.memory_used(), 32);
        s.handle_message(&frame(Message::JobDone { job: 1 }, &[]), T0).unwrap();
        assert_eq!(s.memory_used(), 0);
    }

    #[test]
    fn cancelled_results_are_not_sent_and_release_lists_the_rest() {
        let mut s = session_with_job(WorkerConfig::new(WorkerKind::Native, "t"));
        s.handle_message(&frame(panel(0, Operand::A, 2, 2), &[0; 32]), T0).unwrap();
        s.handle_message(&frame(panel(3, Operand::B, 2, 1), &[0; 16]), T0).unwrap();
        for lease in [7, 8] {
            s.handle_message(&frame(Message::Task { job: 1, lease, a: 0, b: 3, row: 0, col: lease - 7 }, &[]), T0).unwrap();
        }
        let t = s.next_task().unwrap();
        let event = s.handle_message(&frame(Message::Cancel { lease: t.lease }, &[]), T0).unwrap();
        assert_eq!(event, Some(WorkerEvent::TaskCancelled { lease: t.lease }));
        assert!(!s.complete(t.lease, t.compute(), Duration::ZERO));
        s.release_all();
        assert_eq!(s.poll_transmit().unwrap().message, Message::Release { leases: vec![8] });
        assert_eq!(s.memory_used(), 48, "the panels stay; no product is reserved");
    }

    #[test]
    fn results_are_chunked_as_the_master_asks() {
        let mut s = WorkerSession::new(WorkerConfig::new(WorkerKind::Native, "t"), T0);
        let welcome = s.handle_message(&frame(Message::Welcome { worker: 3, slots: 1, max_chunk: 16 }, &[]), T0).unwrap();
        assert_eq!(welcome, Some(WorkerEvent::Welcomed { worker: 3, slots: 1 }));
        s.handle_message(&frame(Message::Job { job: 1, m: 5, k: 1, n: 1, dtype: Dtype::F64 }, &[]), T0).unwrap();
        s.handle_message(&frame(panel(0, Operand::A, 5, 1), &[1; 40]), T0).unwrap();
        s.handle_message(&frame(panel(1, Operand::B, 1, 1), &[2; 8]), T0).unwrap();
        s.handle_message(&frame(Message::Task { job: 1, lease: 2, a: 0, b: 1, row: 0, col: 0 }, &[]), T0).unwrap();
        let task = s.next_task().unwrap();
        assert!(s.complete(task.lease, task.compute(), Duration::ZERO));
        let sizes: Vec<usize> = std::iter::from_fn(|| s.poll_transmit()).filter(|f| f.message != Message::Heartbeat).skip(1).map(|f| f.body.len()).collect();
        assert_eq!(sizes, [16, 16, 8], "40 bytes of C in chunks of at most 16");
    }

    #[test]
    fn heartbeats_go_out_and_a_silent_master_is_noticed() {
        let secs = Duration::from_secs;
        let mut s = WorkerSession::new(WorkerConfig::new(WorkerKind::Native, "t"), T0);
        assert!(matches!(s.poll_transmit().unwrap().message, Message::Hello { .. }));
        assert_eq!(s.poll_timeout(), secs(5));
        s.handle_timeout(secs(5)).unwrap();
        assert_eq!(s.poll_transmit().unwrap().message, Message::Heartbeat);
        s.handle_message(&frame(Message::Heartbeat, &[]), secs(10)).unwrap();
        s.handle_timeout(secs(25)).unwrap();
        assert!(matches!(s.handle_timeout(secs(26)), Err(WorkerError::MasterSilent(d)) if d == secs(16)));
    }

    #[test]
    fn rejects_what_a_hostile_master_could_send() {
        let mut s = WorkerSession::new(WorkerConfig { memory: 1 << 20, ..WorkerConfig::new(WorkerKind::Browser, "t") }, T0);
        let unknown = s.handle_message(&frame(panel(0, Operand::A, 1, 1), &[0; 8]), T0);
        assert!(matches!(unknown, Err(WorkerError::UnknownJob(1))));
        s.handle_message(&frame(Message::Job { job: 1, m: 1 << 40, k: 1 << 40, n: 1, dtype: Dtype::F64 }, &[]), T0).unwrap();
        let huge = s.handle_message(&frame(panel(0, Operand::A, 1 << 40, 1 << 40), &[]), T0);
        assert!(matches!(huge, Err(WorkerError::TooLarge { .. })), "{huge:?}");
        let outside = s.handle_message(&frame(panel(0, Operand::B, 1, 2), &[]), T0);
        assert!(matches!(outside, Err(WorkerError::BadPanel { .. })), "{outside:?}");
        let task = Message::Task { job: 1, lease: 1, a: 0, b: 1, row: 0, col: 0 };
        assert!(matches!(s.handle_message(&frame(task, &[]), T0), Err(WorkerError::UnknownPanel { panel: 0, .. })));
        s.handle_message(&frame(panel(0, Operand::A, 2, 3), &[]), T0).unwrap();
        s.handle_message(&frame(panel(1, Operand::B, 2, 1), &[]), T0).unwrap();
        let mismatched = s.handle_message(&frame(Message::Task { job: 1, lease: 1, a: 0, b: 1, row: 0, col: 0 }, &[]), T0);
        assert!(matches!(mismatched, Err(WorkerError::Mismatched { .. })));
        assert!(matches!(s.handle_message(&frame(panel(0, Operand::A, 2, 3), &[]), T0), Err(WorkerError::DuplicatePanel { .. })));
        let surplus = s.handle_message(&frame(Message::PanelChunk { job: 1, panel: 1, offset: 0 }, &[0; 24]), T0);
        assert!(matches!(surplus, Err(WorkerError::Payload { .. })));
        let refused = Message::Refused { reason: "no".into() };
        assert!(matches!(s.handle_message(&frame(refused, &[]), T0), Err(WorkerError::Refused(_))));
    }
}
