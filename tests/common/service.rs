//! Talking to `master serve` as a client would: over real HTTP.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{read_npy, write_npy, Dense, Proc, MASTER};

/// Starts `master serve` on a free loopback port; returns it and its address.
pub fn start_service(data: &Path, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(MASTER);
    cmd.arg("serve").arg("--data").arg(data).args(["--listen", "127.0.0.1:0"]).args(extra).env("RUST_LOG", "info");
    let master = Proc::spawn("master", &mut cmd);
    let line = master.wait_for("'master listening on'", Duration::from_secs(30), |l| l.starts_with("master listening on "));
    (master, line.trim_start_matches("master listening on ").trim().to_owned())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// POSTs A and B (as .npy bytes) as a multipart form; returns the status and the JSON answer.
pub fn post_job(addr: &str, a: &[u8], b: &[u8], token: Option<&str>) -> (u16, Value) {
    let boundary = "e2e-boundary-7d3f";
    let mut body = Vec::new();
    for (name, bytes) in [("a", a), ("b", b)] {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.npy\"\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut request = agent().post(format!("http://{addr}/api/jobs")).header("Content-Type", format!("multipart/form-data; boundary={boundary}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    answer(request.send(&body[..]).unwrap())
}

pub fn get(addr: &str, path: &str) -> (u16, Value) {
    answer(agent().get(format!("http://{addr}{path}")).call().unwrap())
}

pub fn answer(mut response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

pub fn npy_bytes(dir: &Path, name: &str, m: &Dense) -> Vec<u8> {
    let p = dir.join(name);
    write_npy(&p, m);
    std::fs::read(p).unwrap()
}

/// Waits until the job's state is `state`, and returns its view.
pub fn wait_state(addr: &str, id: &str, state: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, view) = get(addr, &format!("/api/jobs/{id}"));
        if view["state"] == state {
            return view;
        }
        assert!(Instant::now() < deadline, "job {id} not {state} within {timeout:?}: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Downloads C as .npy and reads it.
pub fn result(addr: &str, id: &str, dir: &Path) -> Dense {
    let mut response = agent().get(format!("http://{addr}/api/jobs/{id}/result?format=npy")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
    let p = dir.join(format!("{id}.npy"));
    std::fs::write(&p, bytes).unwrap();
    read_npy(&p).1
}

