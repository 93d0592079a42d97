//! The messages between master and workers.
//!
//! Every WebSocket binary message is one [`Message`] header (see [`crate::codec`])
//! followed by an optional raw body. Bodies carry operand and result bytes: raw
//! little-endian, column-major, in chunks of at most [`MAX_CHUNK`] bytes, so no
//! single message grows with the matrix.

use serde::{Deserialize, Serialize};

use crate::matrix::Dtype;

/// Bumped on any incompatible change. `Hello` stays variant 0 with `protocol`
/// as its first field, and `Refused` variant 2 with one string, so a master and
/// a worker of different versions can always tell each other so.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest body of one message.
pub const MAX_CHUNK: usize = 8 << 20;

/// The body size a master asks for unless told otherwise. Bodies this small
/// reuse the allocator's memory at both ends; 8 MiB ones were mapped afresh,
/// faulted in and zeroed for every message, and tungstenite shifts what a
/// partial write leaves over. In n=4096 f64 jobs on two one-thread workers
/// (medians of 4 runs, alternating) the master's CPU went from 0.66 to
/// 0.54 s, and the job from 2.13 to 1.93 s.
pub const DEFAULT_CHUNK: usize = 256 << 10;

/// Identifies one job of one master.
pub type JobId = u64;
/// Identifies one attempt at one tile: a lease. A tile re-issued gets a new lease.
pub type LeaseId = u64;

pub use crate::plan::{Operand, PanelId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerKind {
    Native,
    Browser,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Worker → master, first message on a connection.
    Hello {
        protocol: u32,
        kind: WorkerKind,
        /// Compute threads (informational).
        threads: u32,
        /// Tasks it is willing to hold at once (pull credit).
        slots: u32,
        /// Free-form label for logs, e.g. the host name.
        name: String,
        /// The master's shared secret, if the worker was given one.
        token: Token,
        /// Bytes of panels and results it can hold at once: the master never
        /// sends more.
        memory: u64,
        /// Its kernel's speed as it measured it at start, flop/s (a hint for
        /// planning until its verified results show the real one).
        flops: u64,
    },
    /// Master → worker: accepted, with the tasks it may hold at once (its
    /// credit) and the largest body the master accepts per message.
    Welcome { worker: u64, slots: u32, max_chunk: u64 },
    /// Master → worker: not accepted, and why. The master closes the connection.
    Refused { reason: String },
    /// Master → worker: a job's shape; its panels and tasks follow.
    Job { job: JobId, m: u64, k: u64, n: u64, dtype: Dtype },
    /// Master → worker: a `rows`×`cols` panel of A or B, column-major, which the
    /// worker keeps until told to evict it. The message carries the first chunk
    /// of its bytes; the rest follows in `PanelChunk`s.
    Panel { job: JobId, panel: PanelId, operand: Operand, rows: u64, cols: u64 },
    /// Master → worker: bytes `offset..offset + body.len()` of a panel.
    PanelChunk { job: JobId, panel: PanelId, offset: u64 },
    /// Master → worker: drop these panels (to make room for others).
    Evict { job: JobId, panels: Vec<PanelId> },
    /// Master → worker: compute panel `a` (A) times panel `b` (B), the tile of
    /// C (or partial sum) whose first element is (`row`, `col`). It starts as
    /// soon as both panels are in.
    Task { job: JobId, lease: LeaseId, a: PanelId, b: PanelId, row: u64, col: u64 },
    /// Master → worker: another worker finished this task; drop it.
    Cancel { lease: LeaseId },
    /// Worker → master: bytes `offset..` of the task's product, and how long
    /// the worker spent computing it (the same in every chunk).
    ResultChunk { lease: LeaseId, offset: u64, compute_us: u64 },
    /// Master → worker: the result of `lease` was verified and is in C, which
    /// now has `done` of its `total` tiles.
    Accepted { lease: LeaseId, done: u64, total: u64 },
    /// Worker → master: these tasks will not be finished (the worker is stopping).
    Release { leases: Vec<LeaseId> },
    /// Master → worker: the job is over; drop its panels and tasks.
    JobDone { job: JobId },
    /// Either way: still here (see [`crate::liveness`]).
    Heartbeat,
}

impl Message {
    /// Whether this message carries a body.
    pub fn has_body(&self) -> bool {
        matches!(self, Message::Panel { .. } | Message::PanelChunk { .. } | Message::ResultChunk { .. })
    }
}

/// A shared secret that admits native workers. It never shows in `Debug`
/// output (so never in logs), and compares in constant time.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The secret itself, to present it (an HTTP bearer token).
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Token {
    /// Constant time in the contents, so timing reveals no prefix of the secret.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        diff == 0 && a.len() == b.len()
    }
}

impl Eq for Token {}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Token(none)" } else { "Token(<redacted>)" })
    }
}

/// Splits `len` bytes into chunk ranges of at most `max` bytes. Empty input gives no chunks.
pub fn chunk_ranges(len: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let max = max.max(1);
    (0..len.div_ceil(max)).map(move |i| i * max..((i + 1) * max).min(len))
}

/// A message ready to send: a header and the bytes it carries (shared, not copied).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub message: Message,
    pub body: bytes::Bytes,
}

impl Frame {
    pub fn new(message: Message) -> Self {
        Self { message, body: bytes::Bytes::new() }
    }
    pub fn with_body(message: Message, body: bytes::Bytes) -> Self {
        Self { message, body }
    }
}

/// Lets a matrix's bytes be shared as `Bytes` without copying them.
#[derive(Debug)]
pub struct MatrixBytes(pub std::sync::Arc<crate::matrix::DenseMatrix>);

impl AsRef<[u8]> for MatrixBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl MatrixBytes {
    /// The matrix's bytes; the matrix itself can stay shared (as A is with the verifier).
    pub fn into_bytes(matrix: impl Into<std::sync::Arc<crate::matrix::DenseMatrix>>) -> bytes::Bytes {
        bytes::Bytes::from_owner(MatrixBytes(matrix.into()))
    }
}
