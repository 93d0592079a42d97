//! Real network faults between hosts with their own addresses (network
//! namespaces): loss, a bandwidth cap, added latency, and a cut link.
//! These need root; where they cannot run they fail, they never skip.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::netns::Net;
use common::*;

const LONG: Duration = Duration::from_secs(180);
const PORT: u16 = 7000;

/// The test-only latency proxy (native/examples/delay_proxy.rs), built by `cargo test`.
fn delay_proxy() -> String {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_owned();
    let exe: PathBuf = deps.parent().unwrap().join("examples/delay_proxy");
    assert!(exe.is_file(), "{} is missing: cargo test builds examples", exe.display());
    exe.to_string_lossy().into_owned()
}

/// Starts the master on host 0; returns it once it listens.
fn start_master(net: &Net, a: &std::path::Path, c: &std::path::Path, extra: &[&str]) -> Proc {
    let listen = format!("{}:{PORT}", net.ip(0));
    let (a, c) = (a.to_str().unwrap(), c.to_str().unwrap());
    let stats = stats_path(std::path::Path::new(c));
    let args = [&["multiply", a, a, "-o", c, "--listen", &listen, "--stats-json", stats.to_str().unwrap()][..], extra].concat();
    let master = net.spawn(0, "master", MASTER, &args);
    master.wait_for("'master listening on'", LONG, |l| l.starts_with("master listening on "));
    master
}

#[test]
fn a_job_completes_through_loss_a_bandwidth_cap_and_latency() {
    let _serial = serial();
    let net = Net::new('f', 3);
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.npy"), path(&dir, "c.npy"));
    let a = Dense::random_ints(900, 900, 31);
    write_npy(&a_path, &a);
    let mut master = start_master(&net, &a_path, &c_path, &["--block", "45"]);
    // Each worker reaches the master through a proxy that adds 50 ms each way.
    // The proxies come up first and the workers then start together, so that
    // none has the job to itself before the others join.
    let mut procs = Vec::new();
    for host in 1..=3 {
        net.cap(host, "100mbit");
        net.lose(host, 0.01);
        let target = format!("{}:{PORT}", net.ip(0));
        let proxy = net.spawn(host, &format!("proxy{host}"), &delay_proxy(), &["127.0.0.1:7100", &target, "50"]);
        proxy.wait_for("'proxy listening'", LONG, |l| l.starts_with("proxy listening"));
        procs.push(proxy);
    }
    for host in 1..=3 {
        procs.push(net.spawn(host, &format!("w{host}"), WORKER, &["ws://127.0.0.1:7100/ws", "--threads", "1", "--name", &format!("w{host}")]));
    }
    let start = Instant::now();
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    let took = start.elapsed();
    assert_product_sampled(&read_npy(&c_path).1, &a, &a);
    let done = tiles_by_name(&c_path);
    assert_eq!(done.len(), 3, "three hosts joined:\n{}", master.output());
    assert_eq!(done.values().sum::<usize>(), 20, "{done:?}");
    // The faults were real: packets were dropped, and A crossed the capped link of
    // every host that computed. (A host whose connection a lost packet held back
    // a second may join when the others have the job in hand, and compute nothing.)
    let dropped = net.dropped();
    assert!(dropped > 0, "no packet was dropped");
    assert!(done.values().filter(|&&n| n > 0).count() >= 2, "the hosts shared the job: {done:?}");
    for host in 1..=3 {
        let shaped = net.shaped_bytes(host);
        assert!(done[&format!("w{host}")] == 0 || shaped > 900 * 900 * 8, "host {host}: A did not cross its capped link ({shaped} bytes): {done:?}");
    }
    eprintln!("3 hosts, 1% loss, 100 Mbit/s, +50 ms each way: job done in {:.2} s, {dropped} packets dropped", took.as_secs_f64());
}

#[test]
fn a_cut_link_costs_its_tasks_within_the_lease_deadline() {
    let _serial = serial();
    let net = Net::new('c', 3);
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.npy"), path(&dir, "c.npy"));
    let a = Dense::random_ints(1200, 1200, 32);
    write_npy(&a_path, &a);
    // A slow link (20 Mbit/s) makes the job last long enough to cut one mid-way.
    let mut master = start_master(&net, &a_path, &c_path, &["--block", "20"]);
    let url = format!("ws://{}:{PORT}/ws", net.ip(0));
    let workers: Vec<Proc> = (1..=3)
        .map(|host| {
            net.cap(host, "20mbit");
            net.spawn(host, &format!("w{host}"), WORKER, &[&url, "--threads", "1", "--name", &format!("w{host}")])
        })
        .collect();
    workers[0].wait_for("'computing task'", LONG, |l| l.contains("computing task"));
    net.link(1, false);
    let cut = Instant::now();
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    let recovered = cut.elapsed();
    assert_product_sampled(&read_npy(&c_path).1, &a, &a);
    let done = worker_tiles(&c_path);
    let cut_off: usize = done.iter().filter(|(name, _)| name == "native").map(|(_, n)| *n).take(1).sum();
    assert!(cut_off < 60, "the cut worker did not finish the job alone");
    let noticed = master.output().lines().find(|l| l.contains("has said nothing for")).map(str::to_owned);
    eprintln!("link cut mid-job: the job completed {:.1} s later; silence noticed: {noticed:?}", recovered.as_secs_f64());
    // Every lease runs at least 20 s; the cut worker's tasks came back well inside that.
    assert!(recovered < Duration::from_secs(20), "{recovered:?}\n{}", master.output());
}
