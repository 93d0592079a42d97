//! The real `master` and `worker` binaries on loopback.

mod common;

use std::time::Duration;

use colonnade_core::protocol::{Message, Token, WorkerKind, PROTOCOL_VERSION};
use common::*;
use tokio_tungstenite::tungstenite;

const LONG: Duration = Duration::from_secs(120);

fn tiles_done(c: &std::path::Path) -> Vec<usize> {
    worker_tiles(c).into_iter().map(|(_, tiles)| tiles).collect()
}

#[test]
fn the_seed_example_reproduces() {
    let _serial = serial();
    let dir = temp_dir();
    let a = path(&dir, "a.csv");
    let c = path(&dir, "c.csv");
    write_csv(&a, &Dense::from_fn(3, 3, |i, j| (3 * i + j + 1) as f64));
    let (mut master, _) = start_master(&a, &a, &c, &["--local-workers", "1"]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    // The course project printed the columns 30 66 102, 36 81 126, 42 96 150.
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "30,36,42\n66,81,96\n102,126,150\n");
    // Its in-process worker is its own, trusted without a token.
    assert_eq!(trusted_by_name(&c), [("local-1".to_owned(), true)].into());
}

#[test]
fn three_workers_share_a_job() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path) = (path(&dir, "a.npy"), path(&dir, "b.npy"), path(&dir, "c.npy"));
    let a = Dense::random_ints(1500, 1500, 1);
    let b = Dense::random_ints(1500, 1500, 2);
    write_npy(&a_path, &a);
    write_npy(&b_path, &b);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "12"]);
    master.wait_for("waiting for workers", LONG, |l| l.starts_with("waiting for workers"));
    let _workers: Vec<Proc> = (1..=3).map(|i| start_worker(&format!("w{i}"), &addr, &[])).collect();
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    let (descr, c) = read_npy(&c_path);
    assert_eq!(descr, "<f8", "float inputs give a float result");
    assert_product_sampled(&c, &a, &b);
    let done = tiles_done(&c_path);
    assert_eq!(done.len(), 3, "three workers joined:\n{}", master.output());
    assert_eq!(done.iter().sum::<usize>(), 125, "each block counted once");
    assert!(done.iter().all(|&d| d > 0), "every worker took blocks: {done:?}");
    assert!(trusted_by_name(&c_path).values().all(|&t| !t), "strangers are not trusted");
}

#[test]
fn a_worker_killed_mid_job_costs_time_not_correctness() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path) = (path(&dir, "a.csv"), path(&dir, "b.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(200, 150, 3);
    let b = Dense::random_ints(150, 90, 4);
    write_csv(&a_path, &a);
    write_csv(&b_path, &b);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "7"]);
    let mut doomed = start_worker("doomed", &addr, &[]);
    doomed.wait_for("'computing task'", LONG, |l| l.contains("computing task"));
    doomed.sigkill();
    master.wait_for("the dead worker's tiles re-queued", LONG, |l| l.contains("left;") && !l.contains(" 0 of its tiles"));
    let _heir = start_worker("heir", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &b));
}

#[test]
fn a_worker_may_start_before_the_master() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path) = (path(&dir, "a.mtx"), path(&dir, "b.csv"), path(&dir, "c.csv"));
    std::fs::write(&a_path, "%%MatrixMarket matrix coordinate integer symmetric\n3 3 3\n1 1 2\n3 1 -1\n2 2 5\n").unwrap();
    let a = Dense { rows: 3, cols: 3, data: vec![2.0, 0.0, -1.0, 0.0, 5.0, 0.0, -1.0, 0.0, 0.0] };
    let b = Dense::random_ints(3, 40, 5);
    write_csv(&b_path, &b);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let early = start_worker("early", &addr, &[]);
    early.wait_for("a failed connection attempt", LONG, |l| l.contains("cannot reach the master"));
    let (mut master, _) = start_master_on(&addr, &a_path, &b_path, &c_path, &["--block", "4"]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &b));
    assert_eq!(tiles_done(&c_path), vec![10], "the early worker did every tile");

    // The master is gone; the worker waits for the next one on the same address.
    let c2_path = path(&dir, "c2.csv");
    let (mut second, _) = start_master_on(&addr, &a_path, &a_path, &c2_path, &["--block", "1"]);
    assert!(second.wait_exit(LONG).success(), "{}", second.output());
    assert_eq!(read_csv(&c2_path), naive(&a, &a));
    assert_eq!(tiles_done(&c2_path), vec![3], "the same worker served the second master");
}

/// The job has 1,200 tiles, so the worker is still in it when the signal
/// comes: with 12, a worker holding 4 tasks at once had done them all and
/// was between masters. (Its tiny tasks take microseconds, so it often holds
/// none at that moment: the hand-back may be of nothing.)
#[test]
fn ctrl_c_hands_back_the_task_and_exits_zero() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path) = (path(&dir, "a.csv"), path(&dir, "b.csv"), path(&dir, "c.csv"));
    let (a, b) = (Dense::random_ints(60, 60, 6), Dense::random_ints(60, 6000, 7));
    write_csv(&a_path, &a);
    write_csv(&b_path, &b);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "5"]);
    let mut quitter = start_worker("quitter", &addr, &[]);
    quitter.wait_for("'computing task'", LONG, |l| l.contains("computing task"));
    quitter.signal("INT");
    let status = quitter.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", quitter.output());
    assert!(quitter.output().contains("stopping; handed back"), "{}", quitter.output());
    let _heir = start_worker("heir", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &b));
}

#[test]
fn the_master_serves_its_page_and_progress() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    write_csv(&a_path, &Dense::random_ints(4, 4, 7));
    let (_master, addr) = start_master(&a_path, &a_path, &c_path, &[]);
    // No worker yet: the job is not planned, but its shape shows.
    let progress = http_get_until(&addr, "/progress", |body| body.contains("4x4 times 4x4"));
    let json: serde_json::Value = serde_json::from_str(progress.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!((json["blocks_done"].as_u64(), json["tiles_total"].as_u64(), json["complete"].as_bool()), (Some(0), Some(0), Some(false)), "{progress}");
    let page = http_get_until(&addr, "/", |body| body.contains("</html>"));
    if cfg!(web_assets) {
        assert!(page.contains("This tab is lending its CPU"), "{page}");
    } else {
        assert!(page.contains("cargo xtask web") && page.contains(&format!("worker ws://{addr}/ws")), "{page}");
    }
}

/// GETs `path` until the response satisfies `ready` (the master publishes its
/// status on its first progress tick).
fn http_get_until(addr: &str, path: &str, ready: impl Fn(&str) -> bool) -> String {
    use std::io::{Read, Write};
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        if out.starts_with("HTTP/1.1 200") && ready(&out) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET {path} never became ready");
}

/// Sends a WebSocket upgrade request by hand; returns the stream and the response head.
fn raw_upgrade(addr: &str) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn connections_over_the_limit_are_refused_politely() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    write_csv(&a_path, &Dense::random_ints(4, 4, 8));
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &["--max-connections", "1", "--block", "1"]);
    let (_held, head) = raw_upgrade(&addr);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = raw_upgrade(&addr);
    assert!(head.starts_with("HTTP/1.1 503"), "the second connection is refused: {head}");
    drop(_held);
    // Once the first is gone, a worker gets in and finishes the job.
    let _worker = start_worker("w", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert!(master.output().contains("refused a connection"), "{}", master.output());
}

#[test]
fn a_connection_that_never_says_hello_is_closed() {
    use std::io::Read;
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    write_csv(&a_path, &Dense::random_ints(4, 4, 9));
    let (master, addr) = start_master(&a_path, &a_path, &c_path, &["--handshake-timeout", "0.5"]);
    let (mut silent, head) = raw_upgrade(&addr);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let start = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest); // returns when the master closes the socket
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(8), "closed after {waited:?}");
    assert_eq!(rest.first(), Some(&0x88), "a WebSocket close frame: {rest:?}");
    master.wait_for("the timeout logged", LONG, |l| l.contains("sent no Hello within"));
}

#[test]
fn a_token_keeps_strangers_out_and_lets_its_holders_in() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let (token, wrong) = (path(&dir, "token"), path(&dir, "wrong"));
    let secret = "correct-horse-battery-staple";
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    std::fs::write(&wrong, "incorrect-horse").unwrap();
    let a = Dense::random_ints(30, 30, 10);
    write_csv(&a_path, &a);
    let token_arg = token.to_str().unwrap();
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &["--token-file", token_arg, "--no-browsers", "--block", "5"]);

    let mut stranger = start_worker("stranger", &addr, &[]);
    assert_eq!(stranger.wait_exit(LONG).code(), Some(1), "{}", stranger.output());
    assert!(stranger.output().contains("refused this worker: this master requires a token"), "{}", stranger.output());
    let mut impostor = start_worker("impostor", &addr, &["--token-file", wrong.to_str().unwrap()]);
    assert_eq!(impostor.wait_exit(LONG).code(), Some(1), "{}", impostor.output());
    assert!(impostor.output().contains("wrong token"), "{}", impostor.output());
    // A socket that claims to be a browser tab is turned away by --no-browsers.
    assert!(hello_as_browser(&addr).contains("does not take browser volunteers"));

    let holder = start_worker("holder", &addr, &["--token-file", token_arg]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
    assert_eq!(tiles_done(&c_path), vec![6], "only the holder joined:\n{}", master.output());
    assert_eq!(trusted_by_name(&c_path), [("holder".to_owned(), true)].into());
    for p in [&master, &stranger, &impostor, &holder] {
        assert!(!p.output().contains(secret), "{} logged the token:\n{}", p.name, p.output());
    }
}

type RawSocket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// A WebSocket to the master, opened by hand, that has said Hello as `kind` with no token.
fn raw_hello(addr: &str, kind: WorkerKind) -> RawSocket {
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws")).expect("WebSocket handshake");
    let hello = Message::Hello { protocol: PROTOCOL_VERSION, kind, threads: 1, slots: 1, name: "raw".into(), token: Token::default(), memory: 1 << 30, flops: 0 };
    ws.send(tungstenite::Message::Binary(colonnade_core::codec::encode(&hello, &[]).into())).unwrap();
    ws
}

/// Says Hello as a browser tab with no token; returns why the master refused it.
fn hello_as_browser(addr: &str) -> String {
    let mut ws = raw_hello(addr, WorkerKind::Browser);
    loop {
        match ws.read().expect("the master answers before closing") {
            tungstenite::Message::Binary(bytes) => match colonnade_core::codec::decode(&bytes).unwrap().0 {
                Message::Refused { reason } => return reason,
                other => panic!("expected Refused, got {other:?}"),
            },
            tungstenite::Message::Close(frame) => panic!("closed without a reason: {frame:?}"),
            _ => {}
        }
    }
}

#[test]
fn a_frozen_worker_is_dropped_by_its_silence_and_its_blocks_reissued() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(80, 80, 11);
    write_csv(&a_path, &a);
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &["--block", "4"]);
    let frozen = start_worker("frozen", &addr, &[]);
    frozen.wait_for("'computing task'", LONG, |l| l.contains("computing task"));
    // SIGSTOP: the process holds its tasks and its TCP connection stays open, but it says nothing.
    frozen.signal("STOP");
    let stopped = std::time::Instant::now();
    master.wait_for("the silence noticed", LONG, |l| l.contains("has said nothing for"));
    let noticed = stopped.elapsed();
    let left = master.wait_for("its tiles re-queued", LONG, |l| l.contains("left;"));
    assert!(!left.contains(" 0 of its tiles"), "{left}");
    eprintln!("a frozen worker was dropped {:.1} s after it froze", noticed.as_secs_f64());
    // The 15 s heartbeat timeout, well inside the 20 s minimum lease.
    assert!(noticed >= Duration::from_secs(14) && noticed < Duration::from_secs(20), "{noticed:?}");
    let _heir = start_worker("heir", &addr, &[]);
    frozen.signal("CONT"); // it finds its connection closed and reconnects
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
    frozen.wait_for("the thawed worker reconnecting", LONG, |l| l.contains("reconnecting"));
}

#[test]
fn chunk_and_credit_limits_hold() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.npy"), path(&dir, "c.npy"));
    let a = Dense::random_ints(100, 100, 12);
    write_npy(&a_path, &a);
    // A (80 KB) and every block of C (8 KB) must travel in 4 KiB chunks; a worker holds one task.
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &["--max-chunk", "4K", "--max-slots", "1", "--block", "10"]);
    send_oversized_message(&addr, 80_000); // over 4 KiB plus the 64 KiB allowed for a header
    let line = master.wait_for("the oversized message refused", LONG, |l| l.contains("closed a connection"));
    assert!(line.contains("too long") && line.contains("80000"), "{line}");
    let worker = start_worker("w", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_npy(&c_path).1, naive(&a, &a));
    assert!(worker.output().contains("slots=1"), "the worker was granted one task:\n{}", worker.output());
    let bad = std::process::Command::new(MASTER).args(["multiply", "a.npy", "b.npy", "-o", "c.npy", "--max-chunk", "1K"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must be between 4K and 8M"));
}

/// Joins, then sends a message of `size` bytes and reads until the master hangs up.
fn send_oversized_message(addr: &str, size: usize) {
    let mut ws = raw_hello(addr, WorkerKind::Native);
    let _ = ws.send(tungstenite::Message::Binary(vec![0u8; size].into()));
    while ws.read().is_ok() {}
}

#[test]
fn slow_http_requests_are_dropped() {
    use std::io::{Read, Write};
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    write_csv(&a_path, &Dense::random_ints(4, 4, 13));
    let (_master, addr) = start_master(&a_path, &a_path, &c_path, &["--handshake-timeout", "0.5"]);
    // Half a request head, then silence (slowloris); and a connection that says nothing.
    for opening in [&b"GET / HTTP/1.1\r\nHost: x\r\n"[..], b""] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(opening).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let start = std::time::Instant::now();
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest).is_ok();
        let waited = start.elapsed();
        assert!(closed && waited >= Duration::from_millis(400) && waited < Duration::from_secs(8), "{opening:?}: closed={closed} after {waited:?}");
    }
}
