//! What the master says about its job over HTTP: the fallback page at `/`
//! (when the browser worker is not built in), and `/progress` for the volunteer page.

use std::fmt::Write;

/// A snapshot of the job for the page.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub shape: String,
    pub blocks_done: usize,
    pub blocks_total: usize,
    pub native_workers: usize,
    pub browser_workers: usize,
    pub worker_command: String,
    pub complete: bool,
    /// Columns of C and columns per block, for the page's picture.
    pub n: usize,
    pub width: usize,
    /// One character per block: '1' done, '0' not yet.
    pub done: String,
}

/// The page for a master without the browser worker: progress, and why this tab does not compute.
pub fn render(s: &Status, not_built: &str) -> String {
    let mut body = String::new();
    let state = if s.complete { "complete" } else { "running" };
    let _ = write!(
        body,
        "<p>Job: {shape}, {state}: {done} of {total} column blocks done.</p>\
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
    format!(
        "{{\"shape\":\"{}\",\"n\":{},\"width\":{},\"done\":\"{}\",\"blocks_done\":{},\"blocks_total\":{},\"native\":{},\"browser\":{},\"complete\":{}}}",
        s.shape.replace(['"', '\\'], ""),
        s.n,
        s.width,
        s.done,
        s.blocks_done,
        s.blocks_total,
        s.native_workers,
        s.browser_workers,
        s.complete
    )
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
        assert!(html.contains("1 of 4 column blocks done"));
        assert!(html.contains("2 native, 0 browser"));
        assert!(html.contains("&lt;3x3&gt;") && html.contains("not built"));
    }

    #[test]
    fn progress_is_json() {
        let s = Status { shape: "2x2 times 2x2".into(), n: 2, width: 1, done: "10".into(), blocks_total: 2, blocks_done: 1, ..Status::default() };
        assert_eq!(
            progress_json(&s),
            r#"{"shape":"2x2 times 2x2","n":2,"width":1,"done":"10","blocks_done":1,"blocks_total":2,"native":0,"browser":0,"complete":false}"#
        );
    }
}
