//! The worker's side of the protocol, sans-IO: shared by the native worker and
//! the browser worker, which only add a socket and a place to run the kernel.
//!
//! The shell feeds every received message to [`WorkerSession::handle_message`],
//! sends what [`WorkerSession::poll_transmit`] yields, runs each
//! [`ComputeTask`] from [`WorkerSession::next_task`], and reports the product
//! with [`WorkerSession::complete`]. It also calls
//! [`WorkerSession::handle_timeout`] when [`WorkerSession::poll_timeout`] says,
//! which sends heartbeats and notices a master gone silent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{self, CodecError};
use crate::kernel;
use crate::liveness::{Heartbeat, Liveness};
use crate::matrix::{element_count, DenseMatrix, Dtype};
use crate::payload::{Incoming, PayloadError};
use crate::protocol::{chunk_ranges, Frame, JobId, LeaseId, MatrixBytes, Message, Token, WorkerKind, MAX_CHUNK, PROTOCOL_VERSION};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub kind: WorkerKind,
    pub threads: u32,
    /// Tasks held at once: one computing while the next one's bytes arrive.
    pub slots: u32,
    pub name: String,
    /// Largest A or B block this worker will accept, in bytes.
    pub max_operand_bytes: usize,
    /// Sent in Hello; admits a native worker to a master that requires it.
    pub token: Token,
    pub heartbeat: Heartbeat,
}

impl WorkerConfig {
    pub fn new(kind: WorkerKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            threads: 1,
            slots: 2,
            name: name.into(),
            max_operand_bytes: 8 << 30,
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
    #[error("the master sent data for job {got}, but the current job is {current:?}")]
    WrongJob { got: JobId, current: Option<JobId> },
    #[error("the master sent data for lease {0}, which it never announced")]
    UnknownLease(LeaseId),
    #[error("the task's columns {first}..{end} lie outside the job's {n} columns")]
    BadColumns { first: u64, end: u64, n: usize },
    #[error("{what} would take {bytes} bytes, over this worker's limit of {limit}")]
    TooLarge { what: &'static str, bytes: u128, limit: usize },
    #[error("the master sent more of {0} than it announced")]
    Surplus(&'static str),
    #[error("an empty {0} (zero rows or columns)")]
    Empty(&'static str),
    #[error("{what}: {source}")]
    Payload { what: &'static str, source: PayloadError },
    #[error("the master has said nothing for {0:?}")]
    MasterSilent(Duration),
}

/// One block to multiply: C_J = A · B_J.
#[derive(Clone, Debug)]
pub struct ComputeTask {
    pub job: JobId,
    pub lease: LeaseId,
    pub first_col: usize,
    pub a: Arc<DenseMatrix>,
    /// k × cols, column-major.
    pub b: DenseMatrix,
}

impl ComputeTask {
    pub fn cols(&self) -> usize {
        self.b.cols()
    }
    pub fn flops(&self) -> f64 {
        kernel::flops(self.a.rows(), self.a.cols(), self.b.cols())
    }
    /// Multiplies on the calling thread.
    pub fn compute(&self) -> DenseMatrix {
        match (&*self.a, &self.b) {
            (DenseMatrix::F64(a), DenseMatrix::F64(b)) => kernel::multiply(a, b.as_slice()).into(),
            (DenseMatrix::F32(a), DenseMatrix::F32(b)) => kernel::multiply(a, b.as_slice()).into(),
            _ => unreachable!("the session builds A and B with the job's dtype"),
        }
    }
}

#[derive(Debug)]
enum Operand {
    Arriving(Incoming),
    Ready(Arc<DenseMatrix>),
}

#[derive(Debug)]
struct Job {
    id: JobId,
    k: usize,
    n: usize,
    dtype: Dtype,
    a: Operand,
}

#[derive(Debug)]
struct Task {
    first_col: usize,
    b: Incoming,
}

#[derive(Debug)]
pub struct WorkerSession {
    config: WorkerConfig,
    job: Option<Job>,
    /// Announced tasks whose B is arriving or waiting for A.
    tasks: BTreeMap<LeaseId, Task>,
    /// Tasks handed to the shell and not yet completed or cancelled.
    computing: BTreeSet<LeaseId>,
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
        };
        let master = Liveness::new(now, &config.heartbeat);
        let outbox = VecDeque::from([Frame::new(hello)]);
        Self { config, job: None, tasks: BTreeMap::new(), computing: BTreeSet::new(), outbox, master, max_chunk: MAX_CHUNK }
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
                let event = self.on_job(job, m, k, n, dtype)?;
                self.add_operand_chunk(job, 0, body)?;
                Ok(Some(event))
            }
            Message::OperandChunk { job, offset } => {
                self.add_operand_chunk(job, offset, body)?;
                Ok(None)
            }
            Message::Task { job, lease, first_col, cols } => {
                let Some(j) = self.job.as_ref().filter(|j| j.id == job) else {
                    return Err(WorkerError::WrongJob { got: job, current: self.job.as_ref().map(|j| j.id) });
                };
                let end = first_col.saturating_add(cols);
                if cols == 0 || end > j.n as u64 {
                    return Err(WorkerError::BadColumns { first: first_col, end, n: j.n });
                }
                let bytes = j.k as u128 * cols as u128 * j.dtype.size() as u128;
                self.check_size("a B block", bytes)?;
                let b = Incoming::new(j.dtype, j.k, cols as usize).map_err(|_| WorkerError::TooLarge {
                    what: "a B block",
                    bytes,
                    limit: self.config.max_operand_bytes,
                })?;
                self.tasks.insert(lease, Task { first_col: first_col as usize, b });
                self.add_task_chunk(lease, 0, body)?;
                Ok(None)
            }
            Message::TaskChunk { lease, offset } => {
                self.add_task_chunk(lease, offset, body)?;
                Ok(None)
            }
            Message::Cancel { lease } => {
                let known = self.tasks.remove(&lease).is_some() | self.computing.remove(&lease);
                Ok(known.then_some(WorkerEvent::TaskCancelled { lease }))
            }
            Message::JobDone { job } => {
                if self.job.as_ref().is_some_and(|j| j.id == job) {
                    self.job = None;
                    self.tasks.clear();
                    self.computing.clear();
                }
                Ok(Some(WorkerEvent::JobDone { job }))
            }
            Message::Hello { .. } => Err(WorkerError::Unexpected("Hello")),
            Message::ResultChunk { .. } => Err(WorkerError::Unexpected("ResultChunk")),
            Message::Release { .. } => Err(WorkerError::Unexpected("Release")),
        }
    }

    /// Bytes `offset..` of A; a message without a body adds nothing.
    fn add_operand_chunk(&mut self, job: JobId, offset: u64, body: &[u8]) -> Result<(), WorkerError> {
        if body.is_empty() && offset == 0 {
            return Ok(());
        }
        let current = self.job.as_ref().map(|j| j.id);
        let Some(j) = self.job.as_mut().filter(|j| j.id == job) else {
            return Err(WorkerError::WrongJob { got: job, current });
        };
        let Operand::Arriving(incoming) = &mut j.a else {
            return Err(WorkerError::Surplus("A"));
        };
        if incoming.add(offset, body).map_err(|source| WorkerError::Payload { what: "A", source })? {
            let placeholder = Operand::Ready(Arc::new(DenseMatrix::zeros(j.dtype, 0, 0).expect("an empty matrix")));
            let Operand::Arriving(done) = std::mem::replace(&mut j.a, placeholder) else {
                unreachable!("matched Arriving above")
            };
            j.a = Operand::Ready(Arc::new(done.into_matrix()));
        }
        Ok(())
    }

    /// Bytes `offset..` of a task's B block; a message without a body adds nothing.
    fn add_task_chunk(&mut self, lease: LeaseId, offset: u64, body: &[u8]) -> Result<(), WorkerError> {
        if body.is_empty() && offset == 0 {
            return Ok(());
        }
        let task = self.tasks.get_mut(&lease).ok_or(WorkerError::UnknownLease(lease))?;
        task.b.add(offset, body).map_err(|source| WorkerError::Payload { what: "a B block", source })?;
        Ok(())
    }

    fn check_size(&self, what: &'static str, bytes: u128) -> Result<(), WorkerError> {
        if bytes > self.config.max_operand_bytes as u128 {
            return Err(WorkerError::TooLarge { what, bytes, limit: self.config.max_operand_bytes });
        }
        Ok(())
    }

    fn on_job(&mut self, id: JobId, m: u64, k: u64, n: u64, dtype: Dtype) -> Result<WorkerEvent, WorkerError> {
        if m == 0 || k == 0 || n == 0 {
            return Err(WorkerError::Empty("job"));
        }
        self.check_size("A", m as u128 * k as u128 * dtype.size() as u128)?;
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let too_large = |_| WorkerError::TooLarge { what: "A", bytes: u128::MAX, limit: self.config.max_operand_bytes };
        element_count(m, k).map_err(too_large)?;
        let a = Incoming::new(dtype, m, k).map_err(too_large)?;
        self.job = Some(Job { id, k, n, dtype, a: Operand::Arriving(a) });
        self.tasks.clear();
        self.computing.clear();
        Ok(WorkerEvent::JobStarted { job: id, m, k, n, dtype })
    }

    /// The next task whose operands have all arrived.
    pub fn next_task(&mut self) -> Option<ComputeTask> {
        let job = self.job.as_ref()?;
        let Operand::Ready(a) = &job.a else { return None };
        let lease = *self.tasks.iter().find(|(_, t)| t.b.is_complete())?.0;
        let task = self.tasks.remove(&lease).expect("found above");
        self.computing.insert(lease);
        Some(ComputeTask { job: job.id, lease, first_col: task.first_col, a: Arc::clone(a), b: task.b.into_matrix() })
    }

    /// Reports a finished product and the time spent computing it; queues it
    /// for sending unless the task was cancelled meanwhile. Returns whether it will be sent.
    pub fn complete(&mut self, lease: LeaseId, c: DenseMatrix, compute: Duration) -> bool {
        if !self.computing.remove(&lease) {
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
        let leases: Vec<LeaseId> = self.tasks.keys().chain(&self.computing).copied().collect();
        self.tasks.clear();
        self.computing.clear();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    const T0: Duration = Duration::ZERO;

    fn frame(message: Message, body: &[u8]) -> Vec<u8> {
        codec::encode(&message, body)
    }

    #[test]
    fn computes_a_task_from_chunks() {
        let mut s = WorkerSession::new(WorkerConfig::new(WorkerKind::Native, "t"), T0);
        assert!(matches!(s.poll_transmit().unwrap().message, Message::Hello { .. }));
        let a = Matrix::from_fn(2, 2, |i, j| (i + 2 * j) as f64);
        let b = Matrix::from_fn(2, 1, |i, _| (i + 1) as f64);
        s.handle_message(&frame(Message::Job { job: 1, m: 2, k: 2, n: 3, dtype: Dtype::F64 }, &[]), T0).unwrap();
        s.handle_message(&frame(Message::Task { job: 1, lease: 5, first_col: 2, cols: 1 }, &[]), T0).unwrap();
        s.handle_message(&frame(Message::TaskChunk { lease: 5, offset: 0 }, b.as_bytes()), T0).unwrap();
        assert!(s.next_task().is_none(), "A has not arrived");
        s.handle_message(&frame(Message::OperandChunk { job: 1, offset: 0 }, &a.as_bytes()[..16]), T0).unwrap();
        s.handle_message(&frame(Message::OperandChunk { job: 1, offset: 16 }, &a.as_bytes()[16..]), T0).unwrap();
        let task = s.next_task().unwrap();
        assert_eq!((task.lease, task.first_col, task.cols()), (5, 2, 1));
        let c = task.compute();
        assert_eq!(c, DenseMatrix::F64(Matrix::from_col_major(2, 1, vec![4.0, 7.0]).unwrap()));
        assert!(s.complete(5, c.clone(), Duration::from_micros(7)));
        let out = s.poll_transmit().unwrap();
        assert_eq!(out.message, Message::ResultChunk { lease: 5, offset: 0, compute_us: 7 });
        assert_eq!(&out.body[..], c.as_bytes());
    }

    #[test]
    fn job_and_task_carry_their_first_chunk() {
        let mut s = WorkerSession::new(WorkerConfig::new(WorkerKind::Native, "t"), T0);
        let a = Matrix::from_fn(1, 2, |_, j| (j + 1) as f32);
        let b = Matrix::from_fn(2, 1, |i, _| (i + 3) as f32);
        s.handle_message(&frame(Message::Job { job: 4, m: 1, k: 2, n: 1, dtype: Dtype::F32 }, a.as_bytes()), T0).unwrap();
        s.handle_message(&frame(Message::Task { job: 4, lease: 9, first_col: 0, cols: 1 }, b.as_bytes()), T0).unwrap();
        let c = s.next_task().expect("A and B arrived with their headers").compute();
        assert_eq!(c, DenseMatrix::F32(Matrix::from_col_major(1, 1, vec![11.0]).unwrap()));
        let surplus = frame(Message::OperandChunk { job: 4, offset: 8 }, &[0; 4]);
        assert!(matches!(s.handle_message(&surplus, T0), Err(WorkerError::Surplus("A"))));
    }

    #[test]
    fn cancelled_results_are_not_sent_and_release_lists_the_rest() {
        let mut s = WorkerSession::new(WorkerConfig::new(WorkerKind::Native, "t"), T0);
        s.poll_transmit();
        s.handle_message(&frame(Message::Job { job: 1, m: 1, k: 1, n: 2, dtype: Dtype::F32 }, &[]), T0).unwrap();
        s.handle_message(&frame(Message::OperandChunk { job: 1, offset: 0 }, &1f32.to_le_bytes()), T0).unwrap();
        for lease in [7, 8] {
            s.handle_message(&frame(Message::Task { job: 1, lease, first_col: lease - 7, cols: 1 }, &[]), T0).unwrap();
            s.handle_message(&frame(Message::TaskChunk { lease, offset: 0 }, &2f32.to_le_bytes()), T0).unwrap();
        }
        let t = s.next_task().unwrap();
        let event = s.handle_message(&frame(Message::Cancel { lease: t.lease }, &[]), T0).unwrap();
        assert_eq!(event, Some(WorkerEvent::TaskCancelled { lease: t.lease }));
        assert!(!s.complete(t.lease, t.compute(), Duration::ZERO));
        s.release_all();
        assert_eq!(s.poll_transmit().unwrap().message, Message::Release { leases: vec![8] });
    }

    #[test]
    fn results_are_chunked_as_the_master_asks() {
        let mut s = WorkerSession::new(WorkerConfig::new(WorkerKind::Native, "t"), T0);
        let welcome = s.handle_message(&frame(Message::Welcome { worker: 3, slots: 1, max_chunk: 16 }, &[]), T0).unwrap();
        assert_eq!(welcome, Some(WorkerEvent::Welcomed { worker: 3, slots: 1 }));
        s.handle_message(&frame(Message::Job { job: 1, m: 5, k: 1, n: 1, dtype: Dtype::F64 }, &[1; 40]), T0).unwrap();
        s.handle_message(&frame(Message::Task { job: 1, lease: 2, first_col: 0, cols: 1 }, &[2; 8]), T0).unwrap();
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
        let mut s = WorkerSession::new(WorkerConfig { max_operand_bytes: 1 << 20, ..WorkerConfig::new(WorkerKind::Browser, "t") }, T0);
        let huge = Message::Job { job: 1, m: 1 << 40, k: 1 << 40, n: 1, dtype: Dtype::F64 };
        assert!(matches!(s.handle_message(&frame(huge, &[]), T0), Err(WorkerError::TooLarge { .. })));
        let task = Message::Task { job: 9, lease: 1, first_col: 0, cols: 1 };
        assert!(matches!(s.handle_message(&frame(task, &[]), T0), Err(WorkerError::WrongJob { .. })));
        s.handle_message(&frame(Message::Job { job: 1, m: 2, k: 2, n: 2, dtype: Dtype::F64 }, &[]), T0).unwrap();
        let outside = Message::Task { job: 1, lease: 1, first_col: 1, cols: u64::MAX };
        assert!(matches!(s.handle_message(&frame(outside, &[]), T0), Err(WorkerError::BadColumns { .. })));
        assert!(matches!(s.handle_message(&frame(Message::TaskChunk { lease: 3, offset: 0 }, &[1]), T0), Err(WorkerError::UnknownLease(3))));
        let refused = Message::Refused { reason: "no".into() };
        assert!(matches!(s.handle_message(&frame(refused, &[]), T0), Err(WorkerError::Refused(_))));
    }
}
