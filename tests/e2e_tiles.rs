//! Tiles planned for the pool, and workers whose memory is smaller than A:
//! real master and worker processes, on loopback or on hosts of their own
//! (network namespaces: those tests need root, and fail without it).

mod common;

use std::time::Duration;

use common::netns::Net;
use common::*;

const LONG: Duration = Duration::from_secs(180);

fn inputs(dir: &tempfile::TempDir, m: usize, k: usize, n: usize) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf, Dense, Dense) {
    let (a_path, b_path, c_path) = (path(dir, "a.npy"), path(dir, "b.npy"), path(dir, "c.npy"));
    let (a, b) = (Dense::random_ints(m, k, 31), Dense::random_ints(k, n, 32));
    write_npy(&a_path, &a);
    write_npy(&b_path, &b);
    (a_path, b_path, c_path, a, b)
}

#[test]
fn two_workers_on_other_hosts_split_k_and_each_input_byte_leaves_the_master_once() {
    let _serial = serial();
    let net = Net::new('t', 2);
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 512, 512, 512);
    let addr = format!("{}:7000", net.ip(0));
    let stats_file = stats_path(&c_path);
    let (a_arg, b_arg, c_arg) = (a_path.to_str().unwrap(), b_path.to_str().unwrap(), c_path.to_str().unwrap());
    let mut master = net.spawn(0, "master", MASTER, &["multiply", a_arg, b_arg, "-o", c_arg, "--listen", &addr, "--stats-json", stats_file.to_str().unwrap()]);
    master.wait_for("'master listening on'", LONG, |l| l.starts_with("master listening on "));
    // Both join at once, well within the pause the master waits for newcomers before it plans.
    // (Started before the master, their reconnection back-offs could leave them a second apart.)
    let url = format!("ws://{addr}/ws");
    let _workers: Vec<Proc> = (1..=2).map(|h| net.spawn(h, &format!("w{h}"), WORKER, &[&url, "--threads", "1", "--name", &format!("w{h}")])).collect();
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_npy(&c_path).1, naive(&a, &b));
    let stats = stats(&c_path);
    assert_eq!(stats["layout"], serde_json::json!([1, 1, 2]), "one depth slice each: {stats}");
    let egress = stats["egress_over_inputs"].as_f64().unwrap();
    assert!((0.99..1.01).contains(&egress), "A and B each sent once in all: {egress}");
    let done = tiles_by_name(&c_path);
    assert!(done.len() == 2 && done.values().all(|&t| t > 0), "{done:?}: {stats}\n{}", master.output());
}

#[test]
fn local_workers_keep_k_whole_so_the_master_receives_and_checks_c_once() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 512, 512, 512);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &[]);
    let _workers = [start_worker("w1", &addr, &[]), start_worker("w2", &addr, &[])];
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_npy(&c_path).1, naive(&a, &b));
    let stats = stats(&c_path);
    assert_eq!(stats["layout"][0].as_u64().unwrap() * stats["layout"][1].as_u64().unwrap(), 2, "a region each: {stats}");
    assert_eq!(stats["grid"][2], 1, "k whole: {stats}");
    assert_eq!(stats["result_bytes"].as_u64(), Some(512 * 512 * 8), "C came back once: {stats}");
    let done = tiles_by_name(&c_path);
    assert!(done.len() == 2 && done.values().all(|&t| t > 0), "{done:?}: {stats}\n{}", master.output());
    // The verifier, prepared while A was read, was there before the plan and the first result.
    assert!(stats["verify_prep_while_reading_s"].as_f64().unwrap() > 0.0, "{stats}");
    assert_eq!((stats["verify_plan_wait_s"].as_f64(), stats["verify_prep_in_job_s"].as_f64()), (Some(0.0), Some(0.0)), "{stats}");
    assert_eq!(stats["results_held_for_verifier"], 0, "{stats}");
    assert!(stats["verify_checks_cpu_s"].as_f64().unwrap() > 0.0, "the checks were timed: {stats}");
}

#[test]
fn workers_with_a_quarter_of_a_in_memory_complete_the_job() {
    let _serial = serial();
    let dir = temp_dir();
    // A is 1024x1024 f64: 8 MiB; each worker lends 2 MiB.
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 1024, 1024, 512);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &[]);
    let workers: Vec<Proc> = (1..=2).map(|i| start_worker(&format!("w{i}"), &addr, &["--memory", "2M"])).collect();
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_product_sampled(&read_npy(&c_path).1, &a, &b);
    let stats = stats(&c_path);
    for w in stats["workers"].as_array().unwrap() {
        assert_eq!(w["memory_bytes"].as_u64(), Some(2 << 20), "{w}");
    }
    // Panels came and went: more than A and B crossed, but every worker kept within its memory
    // (its session refuses a panel past it, and would have dropped the connection).
    assert!(stats["egress_over_inputs"].as_f64().unwrap() > 1.0, "{stats}");
    for w in &workers {
        assert!(!w.output().contains("over this worker's memory"), "{}", w.output());
    }
}
