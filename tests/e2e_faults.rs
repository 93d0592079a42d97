//! Workers that lie: every wrong result is caught before it reaches C, its
//! sender is cut off, and the job still ends with the right C.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

/// The test-only faulty worker (native/examples/faulty_worker.rs), built by `cargo test`.
fn faulty_worker() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_owned();
    let exe = deps.parent().unwrap().join("examples/faulty_worker");
    assert!(exe.is_file(), "{} is missing: cargo test builds examples", exe.display());
    exe
}

/// Runs a job with a liar on 127.0.0.2, waits for `caught`, then lets an honest
/// worker finish; C must equal the product.
fn survive(mode: &str, caught: &str) -> String {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path) = (path(&dir, "a.npy"), path(&dir, "b.npy"), path(&dir, "c.npy"));
    // Non-integer values, so the floating-point tolerance is what is tested.
    let a = Dense::from_fn(60, 50, |i, j| ((i * 7 + j * 3) % 13) as f64 / 7.0 - 0.9);
    let b = Dense::from_fn(50, 64, |i, j| ((i * 5 + j * 11) % 17) as f64 / 3.0 - 2.5);
    write_npy(&a_path, &a);
    write_npy(&b_path, &b);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "4"]);
    let mut cmd = Command::new(faulty_worker());
    cmd.arg(format!("ws://{addr}/ws")).arg(mode).args(["--bind", "127.0.0.2"]);
    let _liar = Proc::spawn("liar", &mut cmd);
    let line = master.wait_for(caught, LONG, |l| l.contains(caught));
    let _honest = start_worker("honest", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    let (_, c) = read_npy(&c_path);
    let want = naive(&a, &b);
    for (x, y) in c.data.iter().zip(&want.data) {
        assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "C differs: {x} vs {y}");
    }
    let output = master.output();
    assert!(output.contains("'honest'"), "{output}");
    line
}

#[test]
fn a_flipped_element_is_caught_three_times_then_banned() {
    survive("flip", "banned 127.0.0.2");
}

#[test]
fn all_zeros_are_caught() {
    survive("zeros", "banned 127.0.0.2");
}

#[test]
fn another_blocks_numbers_are_caught() {
    survive("other-block", "banned 127.0.0.2");
}

#[test]
fn a_result_for_a_task_never_given_is_refused() {
    let line = survive("foreign-lease", "disconnected: sent a result for lease");
    assert!(line.contains("127.0.0.2"), "{line}");
}

#[test]
fn a_result_of_the_wrong_shape_is_refused() {
    let line = survive("wrong-shape", "disconnected: result for lease");
    assert!(line.contains("past the payload"), "{line}");
}
