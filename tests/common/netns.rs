//! Test hosts with their own addresses: one network namespace for the master
//! and one per worker, joined by veth pairs to a bridge in the master's.
//! Links are shaped with `tbf` (bandwidth) and iptables random drops (loss);
//! latency comes from `delay_proxy` (this kernel has no netem). Needs root,
//! `ip`, `tc` and `iptables`: without them the test fails loudly, never skips.

use std::process::Command;

use super::Proc;

/// A master host (index 0) and worker hosts 1..=n on 10.77.<subnet>.0/24.
pub struct Net {
    prefix: String,
    subnet: u8,
    workers: usize,
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\nthe network tests need root, iproute2 and iptables (cargo xtask test installs them)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Net {
    /// Creates the hosts. `tag` keeps concurrent test binaries apart.
    pub fn new(tag: char, workers: usize) -> Self {
        let pid = std::process::id();
        let net = Self { prefix: format!("cl{}{tag}", pid % 100_000), subnet: (pid % 200) as u8 + 20, workers };
        net.clean();
        let m = net.ns(0);
        sh(&["ip", "netns", "add", &m]);
        sh(&["ip", "-n", &m, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &m, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &m, "addr", "add", &format!("{}/24", net.ip(0)), "dev", "br0"]);
        sh(&["ip", "-n", &m, "link", "set", "br0", "up"]);
        for host in 1..=workers {
            let (w, port) = (net.ns(host), format!("p{host}"));
            sh(&["ip", "netns", "add", &w]);
            sh(&["ip", "-n", &w, "link", "set", "lo", "up"]);
            sh(&["ip", "link", "add", "eth0", "netns", &w, "type", "veth", "peer", "name", &port, "netns", &m]);
            sh(&["ip", "-n", &m, "link", "set", &port, "master", "br0", "up"]);
            sh(&["ip", "-n", &w, "addr", "add", &format!("{}/24", net.ip(host)), "dev", "eth0"]);
            sh(&["ip", "-n", &w, "link", "set", "eth0", "up"]);
        }
        net
    }

    pub fn ns(&self, host: usize) -> String {
        if host == 0 {
            format!("{}m", self.prefix)
        } else {
            format!("{}w{host}", self.prefix)
        }
    }

    pub fn ip(&self, host: usize) -> String {
        format!("10.77.{}.{}", self.subnet, if host == 0 { 1 } else { 10 + host })
    }

    /// Starts `program args…` on `host`.
    pub fn spawn(&self, host: usize, name: &str, program: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host), program]).args(args).env("RUST_LOG", "debug");
        Proc::spawn(name, &mut cmd)
    }

    /// Caps `host`'s link to `rate` (e.g. "100mbit") both ways.
    pub fn cap(&self, host: usize, rate: &str) {
        let tbf = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms"];
        sh(&[&["tc", "-n", &self.ns(host), "qdisc", "add", "dev", "eth0"][..], &tbf].concat());
        sh(&[&["tc", "-n", &self.ns(0), "qdisc", "add", "dev", &format!("p{host}")][..], &tbf].concat());
    }

    /// Caps everything the master sends, to all workers together, to `rate`
    /// (e.g. "1gbit"): its one link's egress.
    pub fn cap_master(&self, rate: &str) {
        sh(&["tc", "-n", &self.ns(0), "qdisc", "add", "dev", "br0", "root", "tbf", "rate", rate, "burst", "1mb", "latency", "100ms"]);
    }

    /// Drops a random `fraction` of the packets on `host`'s link, each way.
    pub fn lose(&self, host: usize, fraction: f64) {
        let p = fraction.to_string();
        let drop = ["-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"];
        sh(&[&["ip", "netns", "exec", &self.ns(host), "iptables", "-A", "INPUT", "-i", "eth0"][..], &drop].concat());
        let from = self.ip(host);
        sh(&[&["ip", "netns", "exec", &self.ns(0), "iptables", "-A", "INPUT", "-s", &from][..], &drop].concat());
    }

    /// Packets the loss rules have dropped so far, on every host.
    pub fn dropped(&self) -> u64 {
        (0..=self.workers)
            .map(|host| {
                let table = sh(&["ip", "netns", "exec", &self.ns(host), "iptables", "-L", "INPUT", "-v", "-n", "-x"]);
                table.lines().filter(|l| l.contains("DROP")).filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok()).sum::<u64>()
            })
            .sum()
    }

    /// Bytes the bandwidth caps have passed toward `host` (from the master side).
    pub fn shaped_bytes(&self, host: usize) -> u64 {
        let stats = sh(&["tc", "-s", "-n", &self.ns(0), "qdisc", "show", "dev", &format!("p{host}")]);
        stats.split_whitespace().skip_while(|w| *w != "Sent").nth(1).and_then(|b| b.parse().ok()).unwrap_or(0)
    }

    /// Cuts or restores `host`'s link, at the master's end.
    pub fn link(&self, host: usize, up: bool) {
        sh(&["ip", "-n", &self.ns(0), "link", "set", &format!("p{host}"), if up { "up" } else { "down" }]);
    }

    fn clean(&self) {
        for host in 0..=self.workers {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).output();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.clean();
    }
}
