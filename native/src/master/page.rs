//! What the master says about its job over HTTP: the fallback page at `/`
//! (when the browser worker is not built in), and `/progress` for the volunteer page.

use std::fmt::Write;

/// A snapshot of the job for the page; `/progress` is this, as JSON.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    pub shape: String,
    /// Blocks of C: a row band by a column band.
    pub blocks_done: usize,
    pub blocks_total: usize,
    /// Tiles: a block, or one of its partial sums when k is split.
    pub tiles_done: usize,
    pub tiles_total: usize,
    #[serde(rename = "native")]
    pub native_workers: usize,
    #[serde(rename = "browser")]
    pub browser_workers: usize,
    #[serde(skip)]
    pub worker_command: String,
    pub complete: bool,
    /// A long-lived master (`master serve`) with no job running: volunteers wait for the next.
    pub waiting: bool,
    /// C's rows and columns, and its blocks' grid (row bands, column bands), for the page's picture.
    pub m: usize,
    pub n: usize,
    pub grid: (usize, usize),
    /// One character per block, row band by row band: '1' done, '0' not yet.
    pub done: String,
}

/// The page for a master without the browser worker: progress, and why this tab does not compute.
pub fn render(s: &Status, not_built: &str) -> String {
    let mut body = String::new();
    let state = if s.complete { "complete" } else { "running" };
    let _ = write!(
        body,
        "<p>Job: {shape}, {state}: {done} of {total} blocks of C done.</p>\
         <p>Workers connected: {native} native, {browser} browser.</p>",
        shape = escape(&s.shape),
        done = s.blocks_done,
        total = s.blocks_total,
        native = s.native_workers,
        browser = s.browser_workers,
    );
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\"><title>Colonnade master</title></head>\
         <body><h1>Colonnade</h1>{body}\
         <p>{not_built}</p>\
         <p>To add a native worker, run: <code>{cmd}</code></p></body></html>",
        not_built = escape(not_built),
        cmd = escape(&s.worker_command),
    )
}

/// `/progress`: the job's state as JSON for the volunteer page.
pub fn progress_json(s: &Status) -> String {
    serde_json::to_string(s).expect("a status always serializes")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_progress_and_escapes() {
        let html = render(&Status { shape: "<3x3>".into(), blocks_done: 1, blocks_total: 4, native_workers: 2, ..Status::default() }, "not built");
        assert!(html.contains("1 of 4 blocks of C done"));
        assert!(html.contains("2 native, 0 browser"));
        assert!(html.contains("&lt;3x3&gt;") && html.contains("not built"));
    }

    #[test]
    fn progress_is_json() {
        let s = Status { shape: "2x2 \"times\" 2x2".into(), m: 2, n: 2, grid: (1, 2), done: "10".into(), blocks_total: 2, blocks_done: 1, ..Status::default() };
        let json: serde_json::Value = serde_json::from_str(&progress_json(&s)).unwrap();
        assert_eq!(json["shape"], "2x2 \"times\" 2x2");
        assert_eq!((json["grid"][0].as_u64(), json["grid"][1].as_u64()), (Some(1), Some(2)));
        assert_eq!((json["done"].as_str(), json["blocks_done"].as_u64(), json["native"].as_u64()), (Some("10"), Some(1), Some(0)));
        assert!(json.get("worker_command").is_none());
    }
}
