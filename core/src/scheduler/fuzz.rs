//! The `hostile_worker` fuzz target's harness (core/fuzz), also replayed over
//! its corpus by `cargo test`: whatever a worker sends after a valid Hello,
//! the scheduler never panics.

use std::time::Duration;

use super::{Input, Output, Scheduler, SchedulerConfig};
use crate::codec;
use crate::job::Job;
use crate::matrix::{DenseMatrix, Matrix};
use crate::plan::Plan;
use crate::protocol::{Message, Token, WorkerKind, PROTOCOL_VERSION};

/// Feeds `data` to a small job as one worker's messages, each prefixed by a
/// one-byte length. Returns how many it accepted, and whether it then broke a rule.
pub fn check_hostile_worker(data: &[u8]) -> (usize, bool) {
    let a = DenseMatrix::F64(Matrix::from_fn(3, 2, |i, j| (i + j) as f64));
    let b = DenseMatrix::F64(Matrix::from_fn(2, 4, |i, j| (i * j) as f64));
    let config = SchedulerConfig::default();
    let job = Job::new(1, a, b, Plan::columns(3, 2, 4, 1), config.leases.clone(), config.max_chunk).expect("a valid job");
    let mut sched = Scheduler::new(config);
    sched.add_job(job, Duration::ZERO);
    let hello = Message::Hello { protocol: PROTOCOL_VERSION, kind: WorkerKind::Native, threads: 1, slots: 2, name: "f".into(), token: Token::default(), memory: 1 << 20, flops: 0 };
    sched.handle_input(Input::Connected { worker: 1, addr: None }, Duration::ZERO);
    sched.handle_input(Input::Message { worker: 1, bytes: &codec::encode(&hello, &[]) }, Duration::ZERO);
    let (mut rest, mut now, mut accepted) = (data, Duration::ZERO, 0);
    let closed = |sched: &mut Scheduler| loop {
        match sched.poll_output() {
            Output::Close { .. } => return true,
            Output::Wake(_) => return false,
            _ => {}
        }
    };
    assert!(!closed(&mut sched), "a valid Hello is welcomed");
    while let Some((&len, tail)) = rest.split_first() {
        let (message, tail) = tail.split_at((len as usize).min(tail.len()));
        rest = tail;
        now += Duration::from_millis(u64::from(len));
        sched.handle_input(Input::Message { worker: 1, bytes: message }, now);
        if closed(&mut sched) {
            return (accepted, true);
        }
        accepted += 1;
        sched.handle_input(Input::Timeout, now);
        if closed(&mut sched) {
            return (accepted, true);
        }
    }
    (accepted, false)
}
