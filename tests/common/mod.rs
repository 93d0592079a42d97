//! Harness for end-to-end tests: real `master` and `worker` processes on
//! loopback, inputs written and outputs read by independent code here.
#![allow(dead_code)] // each test binary uses a different part

pub mod browser;
pub mod crowd;
pub mod netns;
pub mod openssl;
pub mod service;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const MASTER: &str = env!("CARGO_BIN_EXE_master");
pub const WORKER: &str = env!("CARGO_BIN_EXE_worker");

/// End-to-end tests share two cores; running them one at a time keeps timing sane.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process whose output lines are collected as they come. Killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        for (stream, tag) in [(Box::new(stdout) as Box<dyn std::io::Read + Send>, "out"), (Box::new(stderr), "err")] {
            let (tx, log, name) = (tx.clone(), Arc::clone(&log), name.to_owned());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("E2E_VERBOSE").is_some() {
                        eprintln!("[{name} {tag}] {line}");
                    }
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Self { name: name.to_owned(), child, lines, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an output line (stdout or stderr) matching `pred`, and returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("{}: no line {what} within {timeout:?}; output:\n{}", self.name, self.output()),
            }
        }
    }

    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads drain what is left.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}; output:\n{}", self.name, self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `master multiply` on a free loopback port; returns it and its address.
pub fn start_master(a: &Path, b: &Path, c: &Path, extra: &[&str]) -> (Proc, String) {
    start_master_on("127.0.0.1:0", a, b, c, extra)
}

pub fn start_master_on(listen: &str, a: &Path, b: &Path, c: &Path, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(MASTER);
    cmd.arg("multiply").arg(a).arg(b).arg("-o").arg(c).args(["--listen", listen]).arg("--stats-json").arg(stats_path(c)).args(extra);
    let master = Proc::spawn("master", &mut cmd);
    let line = master.wait_for("'master listening on'", Duration::from_secs(30), |l| l.starts_with("master listening on "));
    let addr = line.trim_start_matches("master listening on ").trim().to_owned();
    (master, addr)
}

pub fn start_worker(name: &str, addr: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(WORKER);
    cmd.arg(format!("ws://{addr}/ws")).args(["--threads", "1", "--name", name]).args(extra).env("RUST_LOG", "debug");
    Proc::spawn(name, &mut cmd)
}

/// Where `master multiply -o C` writes its figures in these tests.
pub fn stats_path(c: &Path) -> PathBuf {
    let mut name = c.as_os_str().to_owned();
    name.push(".stats.json");
    PathBuf::from(name)
}

/// The run's figures, from the master's `--stats-json`.
pub fn stats(c: &Path) -> serde_json::Value {
    let path = stats_path(c);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// (kind, tiles done) for each worker that joined, in the order they joined.
pub fn worker_tiles(c: &Path) -> Vec<(String, usize)> {
    let stats = stats(c);
    let workers = stats["workers"].as_array().expect("a workers list");
    workers.iter().map(|w| (w["kind"].as_str().unwrap().to_owned(), w["tiles"].as_u64().unwrap() as usize)).collect()
}

/// Whether the master trusted each worker (by name), as `--stats-json` says.
pub fn trusted_by_name(c: &Path) -> std::collections::BTreeMap<String, bool> {
    let workers = stats(c)["workers"].as_array().expect("a workers list").clone();
    workers.iter().map(|w| (w["name"].as_str().unwrap().to_owned(), w["trusted"].as_bool().expect("a trusted flag"))).collect()
}

/// Tiles done by each worker name: a worker that reconnected is listed once
/// per connection, and counted here as one.
pub fn tiles_by_name(c: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut by_name = std::collections::BTreeMap::new();
    for w in stats(c)["workers"].as_array().expect("a workers list") {
        *by_name.entry(w["name"].as_str().unwrap().to_owned()).or_default() += w["tiles"].as_u64().unwrap() as usize;
    }
    by_name
}

/// A dense matrix in row-major order, as tests think of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Dense {
    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        let data = (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j))).map(|(i, j)| f(i, j)).collect();
        Self { rows, cols, data }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }
    /// Small pseudo-random integers, so every product is exact.
    pub fn random_ints(rows: usize, cols: usize, seed: u64) -> Self {
        Self::from_fn(rows, cols, |i, j| {
            let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ seed;
            x ^= x >> 31;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 29;
            (x % 21) as f64 - 10.0
        })
    }
}

/// The textbook product, entry (i, j).
pub fn naive_entry(a: &Dense, b: &Dense, i: usize, j: usize) -> f64 {
    (0..a.cols).map(|p| a.at(i, p) * b.at(p, j)).sum()
}

/// Checks C = A·B exactly at three rows of every column (so of every block):
/// the whole textbook product is too slow for big inputs in a test build.
pub fn assert_product_sampled(c: &Dense, a: &Dense, b: &Dense) {
    assert_eq!((c.rows, c.cols), (a.rows, b.cols), "C's shape");
    for j in 0..c.cols {
        for i in [j % c.rows, (j * 7 + 3) % c.rows, c.rows - 1 - j % c.rows] {
            assert_eq!(c.at(i, j), naive_entry(a, b, i, j), "C[{i}][{j}]");
        }
    }
}

pub fn naive(a: &Dense, b: &Dense) -> Dense {
    Dense::from_fn(a.rows, b.cols, |i, j| naive_entry(a, b, i, j))
}

pub fn write_csv(path: &Path, m: &Dense) {
    let mut s = String::new();
    for i in 0..m.rows {
        let row: Vec<String> = (0..m.cols).map(|j| format!("{}", m.at(i, j))).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

pub fn read_csv(path: &Path) -> Dense {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(|c| c.trim().parse().unwrap_or_else(|_| panic!("bad cell {c:?}"))).collect())
        .collect();
    let cols = rows.first().map_or(0, Vec::len);
    Dense { rows: rows.len(), cols, data: rows.concat() }
}

/// Writes a C-order little-endian f64 `.npy`, as numpy does by default.
pub fn write_npy(path: &Path, m: &Dense) {
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {}), }}", m.rows, m.cols);
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Reads the `.npy` files the master writes: `<f8`, `<f4` or `<i8`, either order.
pub fn read_npy(path: &Path) -> (String, Dense) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"), "not an npy v1 file");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    let field = |key: &str| header.split(key).nth(1).unwrap().trim_start_matches(['\'', ':', ' ']).to_owned();
    let descr = field("'descr'")[..3].to_owned();
    let fortran = field("'fortran_order'").starts_with("True");
    let shape = field("'shape'");
    let dims: Vec<usize> = shape.trim_start_matches('(').split(')').next().unwrap().split(',').map(|d| d.trim().parse().unwrap()).collect();
    let (rows, cols) = (dims[0], dims[1]);
    let data = &bytes[10 + len..];
    let size = if descr == "<f4" { 4 } else { 8 };
    assert_eq!(data.len(), rows * cols * size);
    let value = |k: usize| -> f64 {
        let b = &data[k * size..(k + 1) * size];
        match descr.as_str() {
            "<f8" => f64::from_le_bytes(b.try_into().unwrap()),
            "<i8" => i64::from_le_bytes(b.try_into().unwrap()) as f64,
            "<f4" => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            other => panic!("unexpected dtype {other}"),
        }
    };
    let m = Dense::from_fn(rows, cols, |i, j| value(if fortran { j * rows + i } else { i * cols + j }));
    (descr, m)
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
