//! `--checkpoint`: a master killed with SIGKILL at any point, run again with
//! the same command, resumes without recomputing finished blocks.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(120);

fn saved_blocks(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("block-")).count())
}

/// Waits until the checkpoint holds more than `than` blocks.
fn wait_for_blocks(dir: &Path, than: usize) -> usize {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        let n = saved_blocks(dir);
        if n > than {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the checkpoint never grew past {than} blocks");
}

#[test]
fn a_master_killed_at_any_point_resumes_without_recomputing() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, cp) = (path(&dir, "a.npy"), path(&dir, "b.npy"), path(&dir, "c.npy"), path(&dir, "cp"));
    let a = Dense::random_ints(400, 300, 21);
    let b = Dense::random_ints(300, 240, 22);
    write_npy(&a_path, &a);
    write_npy(&b_path, &b);
    let args = ["--block", "4", "--checkpoint", cp.to_str().unwrap()];
    let total = 60;

    // Killed before any block: nothing to resume, nothing broken.
    let (mut master, _) = start_master(&a_path, &b_path, &c_path, &args);
    master.sigkill();
    assert_eq!(saved_blocks(&cp), 0);

    // Killed mid-job, three times: the checkpoint only grows.
    let mut kept = 0;
    for round in 0..3 {
        let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &args);
        master.wait_for("the resume line", LONG, |l| l.contains(&format!("{kept} of {total} blocks already done")));
        let mut worker = start_worker(&format!("w{round}"), &addr, &[]);
        wait_for_blocks(&cp, kept + 2);
        worker.signal("STOP"); // freeze progress, so the kill lands mid-job
        master.sigkill();
        worker.sigkill();
        let now = saved_blocks(&cp);
        assert!(now > kept && now < total, "round {round}: {kept} then {now} of {total}");
        kept = now;
    }
    assert!(!c_path.exists(), "no output from a killed master");

    // One saved block is damaged on disk: it is discarded and computed again.
    let victim = std::fs::read_dir(&cp).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("block-")).unwrap().path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    kept -= 1;

    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &args);
    master.wait_for("the resume line", LONG, |l| l.contains(&format!("{kept} of {total} blocks already done")));
    let _finisher = start_worker("finisher", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert!(master.output().contains("discarding"), "the damaged block is named:\n{}", master.output());
    let computed: usize = worker_tiles(&c_path).iter().map(|(_, n)| n).sum();
    assert_eq!(computed, total - kept, "finished blocks are not recomputed:\n{}", master.output());
    assert_eq!(read_npy(&c_path).1, naive(&a, &b), "C is exact");

    // Run once more: everything comes from the checkpoint, and C is the same.
    let first = std::fs::read(&c_path).unwrap();
    let (mut master, _) = start_master(&a_path, &b_path, &c_path, &args);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert!(master.output().contains(&format!("{total} of {total} blocks already done")), "{}", master.output());
    assert_eq!(std::fs::read(&c_path).unwrap(), first, "the same C, byte for byte");
}

#[test]
fn a_fresh_checkpoint_prepares_the_verifier_while_reading_and_a_resume_does_not() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, cp) = (path(&dir, "a.npy"), path(&dir, "b.npy"), path(&dir, "c.npy"), path(&dir, "cp"));
    let (a, b) = (Dense::random_ints(300, 200, 26), Dense::random_ints(200, 160, 27));
    write_npy(&a_path, &a);
    write_npy(&b_path, &b);
    let args = ["--checkpoint", cp.to_str().unwrap(), "--local-workers", "1"];
    let (mut master, _) = start_master(&a_path, &b_path, &c_path, &args);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_npy(&c_path).1, naive(&a, &b));
    let fresh = stats(&c_path);
    assert!(fresh["verify_prep_while_reading_s"].as_f64().unwrap() > 0.0, "fresh, as without a checkpoint: {fresh}");

    // Begun: it resumes (here with every block done), on a verifier of its own.
    let (mut master, _) = start_master(&a_path, &b_path, &c_path, &args);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert!(master.output().contains("blocks already done"), "{}", master.output());
    let resumed = stats(&c_path);
    assert!(resumed["verify_prep_while_reading_s"].is_null(), "nothing prepared for a grid it will not use: {resumed}");
}

#[test]
fn a_checkpoint_for_other_inputs_is_refused() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, cp) = (path(&dir, "a.csv"), path(&dir, "b.csv"), path(&dir, "c.csv"), path(&dir, "cp"));
    write_csv(&a_path, &Dense::random_ints(6, 5, 23));
    write_csv(&b_path, &Dense::random_ints(5, 4, 24));
    let args = ["--checkpoint", cp.to_str().unwrap(), "--local-workers", "1"];
    let (mut master, _) = start_master(&a_path, &b_path, &c_path, &args);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    std::fs::remove_file(&c_path).unwrap();

    write_csv(&b_path, &Dense::random_ints(5, 4, 25)); // same shape, other numbers
    let mut cmd = std::process::Command::new(MASTER);
    cmd.arg("multiply").arg(&a_path).arg(&b_path).arg("-o").arg(&c_path).args(["--listen", "127.0.0.1:0"]).args(args);
    let mut again = Proc::spawn("master", &mut cmd);
    assert_eq!(again.wait_exit(LONG).code(), Some(2), "{}", again.output());
    let line = again.output();
    assert!(line.contains("cp: this checkpoint belongs to other inputs"), "{line}");
    assert!(line.contains("delete this one to start over"), "{line}");
    assert!(!c_path.exists(), "no output written");
}
