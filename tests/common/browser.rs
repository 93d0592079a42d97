//! Headless Chromium, driven over WebDriver by chromedriver.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::Proc;

pub struct Browser {
    base: String,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium. Fails loudly when they
    /// are missing: `cargo xtask test` installs them.
    pub fn launch() -> Self {
        Self::launch_with(&[])
    }

    /// The same, with more Chromium flags.
    pub fn launch_with(extra: &[String]) -> Self {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(Path::new(bin).is_file(), "{bin} is missing: run `cargo xtask test`, which installs Chromium");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Proc::spawn("chromedriver", Command::new("/usr/bin/chromedriver").arg(format!("--port={port}")));
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start: {}", driver.output());
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1000,900",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend_from_slice(extra);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        }}});
        let response: Value = ureq::post(&format!("{root}/session")).send_json(&caps).expect("new session").body_mut().read_json().unwrap();
        let session = response["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {response}")).to_owned();
        Self { base: format!("{root}/session/{session}"), _driver: driver, _profile: profile }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut response = ureq::post(&format!("{}{path}", self.base)).send_json(&body).unwrap_or_else(|e| panic!("POST {path}: {e}"));
        response.body_mut().read_json::<Value>().unwrap()["value"].take()
    }

    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// Runs `script` in the page and returns its value.
    pub fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
    }

    /// The text of the element with id `id` ("" if it is not there yet).
    pub fn text(&self, id: &str) -> String {
        let script = format!("const e = document.getElementById('{id}'); return e ? e.textContent : '';");
        self.execute(&script).as_str().unwrap_or_default().to_owned()
    }

    /// Polls the element `id` until `pred` holds for its text, which it returns.
    pub fn wait_text(&self, id: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(id);
            if pred(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "#{id} never matched; last text: {text:?}; page state: {:?}", self.text("state"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn screenshot(&self, path: &Path) {
        let mut response = ureq::get(&format!("{}/screenshot", self.base)).call().expect("screenshot");
        let value: Value = response.body_mut().read_json().unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(value["value"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; chromedriver itself is killed by its Proc.
        let _ = ureq::delete(&self.base).call();
    }
}
