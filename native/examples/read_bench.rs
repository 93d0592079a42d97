//! How fast the master reads `.npy` inputs, beside numpy's own `np.load`:
//! `cargo run --release -p colonnade-native --example read_bench [n]` (default 8192).
//!
//! Writes, with numpy, an n×n f64 file in C order, one in Fortran order and an
//! f32 one in C order into a temporary folder; warms each file into the page
//! cache; then times `read_matrix` and `np.load` (inside one `python3` process
//! per file, timing only the call) 5 times each and prints the medians.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use colonnade_native::io::read_matrix;

const RUNS: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("text")
}

/// Reads the whole file once, so that both readers find it in the page cache.
fn warm(path: &Path) {
    let mut file = std::fs::File::open(path).expect("open");
    std::io::copy(&mut file, &mut std::io::sink()).expect("read");
}

fn ours(path: &Path) -> f64 {
    let samples = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let loaded = read_matrix(path, u64::MAX).expect("reads");
            let elapsed = start.elapsed().as_secs_f64();
            drop(loaded);
            elapsed
        })
        .collect();
    median(samples)
}

fn numpy(path: &Path) -> f64 {
    const SCRIPT: &str = "
import sys, time, statistics
import numpy as np
path, runs = sys.argv[1], int(sys.argv[2])
np.load(path)  # warm-up
samples = []
for _ in range(runs):
    start = time.perf_counter()
    a = np.load(path)
    samples.append(time.perf_counter() - start)
    del a
print(statistics.median(samples))
";
    python(SCRIPT, &[path.to_str().expect("utf-8 path"), &RUNS.to_string()]).trim().parse().expect("a number")
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().expect("n is a number")).unwrap_or(8192);
    let dir = tempfile::tempdir().expect("temp dir");
    let files = [("f64 C order", "c64.npy"), ("f64 Fortran order", "f64.npy"), ("f32 C order", "c32.npy")];
    const WRITE: &str = "
import sys
import numpy as np
n, d = int(sys.argv[1]), sys.argv[2]
a = np.random.default_rng(1).standard_normal((n, n))
np.save(d + '/c64.npy', a)
np.save(d + '/f64.npy', np.asfortranarray(a))
np.save(d + '/c32.npy', a.astype(np.float32))
";
    python(WRITE, &[&n.to_string(), dir.path().to_str().expect("utf-8 path")]);
    println!("n={n}, median of {RUNS}, files in the page cache");
    println!("{:<18} {:>10} {:>10} {:>12}", "file", "ours ms", "numpy ms", "ours/numpy");
    for (name, file) in files {
        let path = dir.path().join(file);
        warm(&path);
        let (a, b) = (ours(&path), numpy(&path));
        println!("{name:<18} {:>10.1} {:>10.1} {:>11.2}x", a * 1e3, b * 1e3, a / b);
    }
}
