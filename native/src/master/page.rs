//! The page served at `/`: what the master is doing, and how to help.

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
}

pub fn render(s: &Status) -> String {
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
         <p>Browser workers are not built yet: this tab does not compute.</p>\
         <p>To add a native worker, run: <code>{cmd}</code></p></body></html>",
        cmd = escape(&s.worker_command),
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
        let html = render(&Status { shape: "<3x3>".into(), blocks_done: 1, blocks_total: 4, native_workers: 2, ..Status::default() });
        assert!(html.contains("1 of 4 column blocks done"));
        assert!(html.contains("2 native, 0 browser"));
        assert!(html.contains("&lt;3x3&gt;"));
    }
}
