//! Browser tabs as workers: the real master, headless Chromium opening its page,
//! and the Rust worker running as WebAssembly in Web Workers.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::*;

const LONG: Duration = Duration::from_secs(180);

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-artifacts").join(name)
}

fn inputs(dir: &tempfile::TempDir, m: usize, k: usize, n: usize) -> (PathBuf, PathBuf, PathBuf, Dense, Dense) {
    let (a_path, b_path, c_path) = (path(dir, "a.npy"), path(dir, "b.npy"), path(dir, "c.npy"));
    let a = Dense::random_ints(m, k, 11);
    let b = Dense::random_ints(k, n, 12);
    write_npy(&a_path, &a);
    write_npy(&b_path, &b);
    (a_path, b_path, c_path, a, b)
}

/// Checks every column of C at a few rows against the textbook sum.
fn check_sampled(c_path: &std::path::Path, a: &Dense, b: &Dense) {
    let (_, c) = read_npy(c_path);
    assert_eq!((c.rows, c.cols), (a.rows, b.cols));
    for j in 0..c.cols {
        for i in [j % c.rows, (j * 13 + 5) % c.rows] {
            assert_eq!(c.at(i, j), naive_entry(a, b, i, j), "C[{i}][{j}]");
        }
    }
}

#[test]
fn one_tab_computes_every_block() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path) = (path(&dir, "a.csv"), path(&dir, "b.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(120, 80, 1);
    let b = Dense::random_ints(80, 100, 2);
    write_csv(&a_path, &a);
    write_csv(&b_path, &b);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "10"]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/"));
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &b));
    let done = worker_tiles(&c_path);
    assert!(done.iter().all(|(kind, _)| kind == "browser"), "{done:?}");
    assert_eq!(done.iter().map(|(_, d)| d).sum::<usize>(), 10);
}

/// A master over https (an openssl self-signed certificate) and a tab on wss.
/// Chromium trusts exactly that certificate's key, through
/// --ignore-certificate-errors-spki-list (it works in headless Chromium 156,
/// for the page and its Web Workers' wss alike, given the --user-data-dir
/// that Browser always sets). The alternatives trust every certificate
/// (--ignore-certificate-errors, WebDriver's acceptInsecureCerts) or need an
/// NSS database in the profile.
#[test]
fn one_tab_computes_every_block_over_https() {
    let _serial = serial();
    let dir = temp_dir();
    let (cert, key) = openssl::self_signed(dir.path(), "cert");
    let (other, _) = openssl::self_signed(dir.path(), "other");
    let (a_path, b_path, c_path) = (path(&dir, "a.csv"), path(&dir, "b.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(60, 40, 4);
    let b = Dense::random_ints(40, 50, 5);
    write_csv(&a_path, &a);
    write_csv(&b_path, &b);
    let tls = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--block", "10"];
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &tls);
    let page = format!("https://{addr}/");
    master.wait_for("the page's https URL", LONG, |l| l.contains(&page));
    let trusting = |cert: &std::path::Path| vec![format!("--ignore-certificate-errors-spki-list={}", openssl::spki_sha256_base64(cert))];

    // Trusting another key is not trusting this one: Chromium shows its
    // certificate error page (chromedriver reports no error for it).
    let stranger = Browser::launch_with(&trusting(&other));
    stranger.goto(&page);
    let shown = stranger.execute("return [location.href, document.body.innerText].join(' ')");
    let shown = shown.as_str().unwrap_or_default();
    assert!(shown.starts_with("chrome-error://") && shown.contains("ERR_CERT_AUTHORITY_INVALID"), "{shown}");
    drop(stranger);

    let browser = Browser::launch_with(&trusting(&cert));
    browser.goto(&page);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &b));
    let done = worker_tiles(&c_path);
    assert!(done.iter().all(|(kind, _)| kind == "browser"), "{done:?}");
    assert_eq!(done.iter().map(|(_, d)| d).sum::<usize>(), 5);
}

#[test]
fn a_native_worker_and_a_tab_share_a_job() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 1024, 1024, 4096);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "32"]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?cores=1"));
    master.wait_for("the tab joined", LONG, |l| l.contains("joined: browser"));
    let _native = start_worker("native", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    check_sampled(&c_path, &a, &b);
    let done = worker_tiles(&c_path);
    let by = |kind: &str| done.iter().filter(|(k, _)| k == kind).map(|(_, d)| d).sum::<usize>();
    assert!(by("browser") > 0 && by("native") > 0, "both kinds contributed: {done:?}");
    assert_eq!(by("browser") + by("native"), 128);
}

#[test]
fn a_tab_navigated_away_mid_job_loses_nothing() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 1024, 1024, 6144);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "32"]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?cores=1"));

    // The page shows what it is doing, and it changes as blocks get done.
    let first = browser.wait_text("state", LONG, |s| s.starts_with("connected"));
    let job = browser.wait_text("job", LONG, |s| s.contains("1024x1024 times 1024x6144"));
    let blocks = browser.wait_text("tiles", LONG, |s| s.parse::<u32>().is_ok_and(|b| b >= 2));
    let overall = browser.wait_text("overall", LONG, |s| s.contains("0 native, 1 browser"));
    browser.screenshot(&artifact("browser-mid-job.png"));
    assert!(browser.text("gflops").ends_with("GFLOP/s") && browser.text("gflops") != "0.0 GFLOP/s");
    eprintln!("page mid-job: state={first:?} job={job:?} tiles={blocks} overall={overall:?}");

    browser.goto("about:blank");
    master.wait_for("the tab's blocks re-queued", LONG, |l| l.contains("left;") && !l.contains(" 0 of its tiles"));
    let _native = start_worker("native", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    check_sampled(&c_path, &a, &b);
    let done = worker_tiles(&c_path);
    assert_eq!(done.iter().map(|(_, d)| d).sum::<usize>(), 192, "{done:?}");
}

#[test]
fn the_page_pauses_and_stops_within_a_task() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 512, 512, 2048);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "16"]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?cores=1"));
    browser.wait_text("tiles", LONG, |s| s.parse::<u32>().is_ok_and(|b| b >= 1));
    browser.execute("document.getElementById('pause').click()");
    browser.wait_text("state", LONG, |s| s == "paused");
    // At most the task in hand finishes after Pause.
    std::thread::sleep(Duration::from_millis(300));
    let paused_at = browser.text("tiles");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(browser.text("tiles"), paused_at, "no tiles while paused");
    browser.execute("document.getElementById('stop').click()");
    browser.wait_text("state", LONG, |s| s.starts_with("stopped"));
    master.wait_for("the stopped tab's tasks handed back", LONG, |l| l.contains("left;"));
    let _native = start_worker("native", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    check_sampled(&c_path, &a, &b);
}

#[test]
fn the_bench_page_prints_kernel_speeds() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    write_csv(&a_path, &Dense::random_ints(2, 2, 3));
    // A master with no workers just serves the page while it waits.
    let (_master, addr) = start_master(&a_path, &a_path, &c_path, &[]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?bench"));
    let line = browser.wait_text("bench", LONG, |s| s.starts_with("bench n=1024:"));
    eprintln!("{line}");
    let figures: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_start_matches('(').parse::<f64>().ok())
        .collect();
    assert_eq!(figures.len(), 3, "f32, f64 and the portable f64: {line}");
    assert!(figures.iter().all(|&g| g > 0.1), "{line}");
    assert_eq!(browser.text("tiles"), "0", "the bench does not compute for the master");
}

/// A tab on `master serve` stays through job after job, with no reload, and
/// says when it waits for work.
#[test]
fn a_tab_on_a_lasting_master_takes_job_after_job() {
    use common::service::{npy_bytes, post_job, result, start_service, wait_state};
    let _serial = serial();
    let dir = temp_dir();
    let (master, addr) = start_service(&path(&dir, "data"), &[]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?cores=1"));
    browser.wait_text("overall", LONG, |t| t.starts_with("waiting for work"));
    for i in 0..3 {
        let (a, b) = (Dense::random_ints(60, 40, i), Dense::random_ints(40, 50, i + 9));
        let (status, answer) = post_job(&addr, &npy_bytes(dir.path(), "a.npy", &a), &npy_bytes(dir.path(), "b.npy", &b), None);
        assert_eq!(status, 201, "{answer}");
        let id = answer["id"].as_str().unwrap();
        wait_state(&addr, id, "done", LONG);
        assert_eq!(result(&addr, id, dir.path()), naive(&a, &b));
    }
    browser.wait_text("overall", LONG, |t| t.starts_with("waiting for work"));
    assert_eq!(master.output().matches("joined: browser").count(), 1, "one tab, one connection throughout:\n{}", master.output());
}

/// The page served by a static host of the repository (not the master)
/// computes for the master named in its URL.
#[test]
fn the_page_from_any_static_host_computes_for_the_master_in_its_url() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 90, 70, 80);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--block", "20"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let host = Proc::spawn("static host", std::process::Command::new(python).args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory", root]));
    host.wait_for("the static host serving", Duration::from_secs(20), |l| l.contains("Serving HTTP"));
    let browser = Browser::launch();
    browser.goto(&format!("http://127.0.0.1:{port}/index.html?cores=1&master=ws://{addr}/ws"));
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    check_sampled(&c_path, &a, &b);
    assert!(worker_tiles(&c_path).iter().all(|(kind, _)| kind == "browser"));
}

/// A tab at a master that takes no browsers is refused after each Hello. It
/// waits longer each time (the wait starts again only once a master welcomes
/// it, not whenever a socket opens), and the page says when it tries again
/// and why.
#[test]
fn a_refused_tab_waits_longer_each_time_and_says_why() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 40, 30, 20);
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &["--no-browsers"]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?cores=1"));
    // Waits of 0.1, 0.2, 0.4, 0.8, 1.6 s: the fifth refusal's is over a second.
    let said = browser.wait_text("state", Duration::from_secs(60), |t| retry_shown(t).is_some_and(|s| s >= 1.0));
    assert!(said.contains("does not take browser volunteers"), "{said}");
    let _native = start_worker("native", &addr, &[]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    check_sampled(&c_path, &a, &b);
    assert!(worker_tiles(&c_path).iter().all(|(kind, _)| kind == "native"));
}

/// The seconds in "reconnecting to the master in 1.6 s (why)".
fn retry_shown(state: &str) -> Option<f64> {
    state.strip_prefix("reconnecting to the master in ")?.split(' ').next()?.parse().ok()
}

/// Opened from disk, where a page may not start workers, it says what to do.
#[test]
fn the_page_opened_from_disk_says_what_to_do() {
    let _serial = serial();
    let browser = Browser::launch();
    browser.goto(concat!("file://", env!("CARGO_MANIFEST_DIR"), "/../index.html"));
    let said = browser.wait_text("state", Duration::from_secs(30), |t| t.contains("opened from disk"));
    assert!(said.contains("python3 -m http.server") && said.contains("?master="), "{said}");
}

/// A tab that lends its WebAssembly a quarter of A (?memory=) still computes
/// the whole job: the master sends it tiles that fit, and panels come and go.
#[test]
fn a_tab_with_a_quarter_of_a_in_memory_completes_the_job() {
    let _serial = serial();
    let dir = temp_dir();
    let (a_path, b_path, c_path, a, b) = inputs(&dir, 1024, 1024, 1024); // A is 8 MiB of f64
    let (mut master, addr) = start_master(&a_path, &b_path, &c_path, &[]);
    let browser = Browser::launch();
    browser.goto(&format!("http://{addr}/?cores=1&memory=2M"));
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    check_sampled(&c_path, &a, &b);
    let figures = stats(&c_path);
    let tab = &figures["workers"][0];
    assert_eq!((tab["kind"].as_str(), tab["memory_bytes"].as_u64()), (Some("browser"), Some(2 << 20)), "{tab}");
    let panels = figures["panel_bytes"].as_f64().unwrap();
    assert!(panels > 2.0 * (1024 * 1024 * 8) as f64, "panels were sent again after eviction: {panels} bytes");
}
