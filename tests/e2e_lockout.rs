//! No lock-out: connections that crowd the master from one address, or take
//! tasks and never answer, cannot keep an honest worker from finishing the job
//! in about its own time.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colonnade_core::codec::encode;
use colonnade_core::protocol::{Message, Token, WorkerKind, PROTOCOL_VERSION};
use common::*;
use tokio_tungstenite::tungstenite;

const LONG: Duration = Duration::from_secs(180);
/// Where the squatters come from: not the honest worker's 127.0.0.1.
const ELSEWHERE: [u8; 4] = [127, 0, 0, 2];

/// Connections that say Hello from `ELSEWHERE`, take what they are given and
/// never answer but with heartbeats, until dropped. Returns how many the
/// master let in.
struct Squatters {
    stop: Arc<AtomicBool>,
    admitted: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Squatters {
    fn start(addr: &str, count: usize, kind: WorkerKind, slots: u32) -> Self {
        let (stop, admitted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let target: SocketAddr = addr.parse().unwrap();
        let threads = (0..count)
            .map(|_| {
                let (stop, admitted) = (Arc::clone(&stop), Arc::clone(&admitted));
                std::thread::spawn(move || squat(target, kind, slots, &stop, &admitted))
            })
            .collect();
        Self { stop, admitted, threads }
    }

    /// Waits until `n` of them are in and have been given their tasks.
    fn wait_admitted(&self, n: usize) {
        let deadline = Instant::now() + LONG;
        while self.admitted.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "only {} squatters got in", self.admitted.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Squatters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn squat(target: SocketAddr, kind: WorkerKind, slots: u32, stop: &AtomicBool, admitted: &AtomicUsize) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let Ok(stream) = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::from(ELSEWHERE), 0))?;
        socket.connect(target).await
    }) else {
        return;
    };
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    let Ok((mut ws, _)) = tungstenite::client(format!("ws://{target}/ws"), stream) else { return }; // 503: not let in
    let hello = Message::Hello { protocol: PROTOCOL_VERSION, kind, threads: 1, slots, name: "squatter".into(), token: Token::default(), memory: 1 << 30, flops: 100_000_000_000 };
    if ws.send(tungstenite::Message::Binary(encode(&hello, &[]).into())).is_err() {
        return;
    }
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (mut counted, mut last_beat) = (false, Instant::now());
    while !stop.load(Ordering::SeqCst) {
        match ws.read() {
            Ok(tungstenite::Message::Binary(bytes)) => {
                if !counted && matches!(colonnade_core::codec::decode(&bytes).map(|d| d.0), Ok(Message::Task { .. })) {
                    counted = true;
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(tungstenite::Message::Close(_)) => return,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        if last_beat.elapsed() > Duration::from_secs(2) {
            last_beat = Instant::now();
            if ws.send(tungstenite::Message::Binary(encode(&Message::Heartbeat, &[]).into())).is_err() {
                return;
            }
        }
    }
}

/// The job, its inputs, and how long one honest worker alone takes on it.
fn job_alone(dir: &tempfile::TempDir) -> (std::path::PathBuf, std::path::PathBuf, Dense, Duration) {
    let (a_path, c_path) = (path(dir, "a.npy"), path(dir, "c.npy"));
    let a = Dense::random_ints(768, 768, 51);
    write_npy(&a_path, &a);
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &["--block", "8"]);
    let start = Instant::now();
    let _worker = start_worker("alone", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    (a_path, c_path, a, start.elapsed())
}

/// Runs the job with `squatters` in first, then the honest worker; checks C and the time.
fn survive(squatters: impl FnOnce(&str) -> Squatters, expect_in: usize) {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path, a, alone) = job_alone(&dir);
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &["--block", "8"]);
    let crowd = squatters(&addr);
    crowd.wait_admitted(expect_in);
    let start = Instant::now();
    let _honest = start_worker("honest", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    let took = start.elapsed();
    assert_eq!(read_npy(&c_path).1, naive(&a, &a));
    eprintln!("alone {alone:?}, among squatters {took:?}");
    assert!(took <= alone * 2 + Duration::from_secs(5), "alone {alone:?}, among squatters {took:?}");
    drop(crowd);
}

#[test]
fn a_thousand_tabs_from_one_address_do_not_lock_out_an_honest_worker() {
    // Only --max-per-address (64 by default) of the 1,100 get in; each holds one task at most.
    survive(|addr| Squatters::start(addr, 1_100, WorkerKind::Browser, 4), 64);
}

#[test]
fn takers_that_never_answer_do_not_hold_up_the_job() {
    survive(|addr| Squatters::start(addr, 3, WorkerKind::Native, 4), 3);
}
