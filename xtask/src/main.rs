//! `cargo xtask`: the README's commands, and everything a fresh machine needs
//! for them. Each step says what it runs.

use std::process::{Command, ExitCode};

const USAGE: &str = "\
cargo xtask <command>

Commands:
  demo [ARGS...]   build the browser worker and the master (release), then
                   run `master demo ARGS...`
  test             install what the tests need (wasm target, wasm-bindgen,
                   numpy, Chromium, iproute2 and iptables), build the browser
                   worker, then run clippy and the whole test suite
  web              build the browser worker into web/pkg (the master embeds it)
  bench [--smoke]  the distributed benchmark (release): a table on stdout and
                   target/bench/bench.json; --smoke runs it tiny, as CI does
  sim [--smoke] [NAME]
                   the simulator (release): the real scheduler on a virtual
                   clock with simulated pools, up to 10,000 workers; prints each
                   scenario (or those whose name contains NAME) against its lower
                   bounds (the workers' memories; C's return) and writes
                   target/bench/sim.json
";

/// The wasm-bindgen CLI must match the `wasm-bindgen` crate exactly.
const WASM_BINDGEN_VERSION: &str = "0.2.130";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(),
        Some("web") => web(),
        Some("bench") => bench(&args[1..]),
        Some("sim") => run(cargo().args(["bench", "-p", "colonnade-native", "--bench", "sim", "--"]).args(&args[1..])),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &[String]) -> Result<(), String> {
    web()?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "colonnade-native", "--bin", "master", "--", "demo"]).args(args);
    run(&mut cmd)
}

fn bench(args: &[String]) -> Result<(), String> {
    run(cargo().args(["bench", "-p", "colonnade-native", "--bench", "distributed", "--"]).args(args))?;
    run(cargo().args(["bench", "-p", "colonnade-native", "--bench", "service", "--"]).args(args))
}

fn test() -> Result<(), String> {
    ensure_numpy()?;
    ensure_debian_tools()?;
    web()?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--features", "colonnade-native/fuzzing", "--", "-D", "warnings"]))?;
    let wasm_crates = ["-p", "colonnade-core", "-p", "colonnade-web", "--target", "wasm32-unknown-unknown"];
    run(cargo().arg("clippy").args(wasm_crates).args(["--", "-D", "warnings"]))?;
    // The wasm-only kernel, tested in wasm (Node.js runs wasm-bindgen-test by default).
    let runner = ensure_wasm_bindgen()?.with_file_name("wasm-bindgen-test-runner");
    let mut totals = Totals::default();
    run_tests(
        cargo()
            .args(["test", "-p", "colonnade-web", "--target", "wasm32-unknown-unknown"])
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner),
        &mut totals,
    )?;
    // The benchmark's and the simulator's pipelines, tiny and in the test profile: figures, not speed.
    run(cargo().args(["test", "-p", "colonnade-native", "--bench", "distributed", "--", "--smoke"]))?;
    run(cargo().args(["test", "-p", "colonnade-native", "--bench", "service", "--", "--smoke"]))?;
    run(cargo().args(["test", "-p", "colonnade-native", "--bench", "sim", "--", "--smoke"]))?;
    // The fuzz corpora replay through hooks behind the `fuzzing` feature.
    run_tests(cargo().args(["test", "--workspace", "--features", "colonnade-native/fuzzing"]), &mut totals)?;
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs a `cargo test`, echoing its output and adding up its `test result:` lines.
fn run_tests(cmd: &mut Command, totals: &mut Totals) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';').find_map(|part| part.trim().strip_suffix(word)?.split_whitespace().last()?.parse::<u64>().ok()).unwrap_or(0)
            };
            totals.passed += count("passed");
            totals.failed += count("failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

/// Builds the browser worker: wasm (with simd128, see .cargo/config.toml),
/// then wasm-bindgen's JS glue, into web/pkg.
fn web() -> Result<(), String> {
    ensure_wasm_target()?;
    let bindgen = ensure_wasm_bindgen()?;
    run(cargo().args(["build", "--release", "-p", "colonnade-web", "--target", "wasm32-unknown-unknown"]))?;
    let root = workspace_root();
    let wasm = root.join("target/wasm32-unknown-unknown/release/colonnade_web.wasm");
    let out = root.join("web/pkg");
    run(Command::new(bindgen).args(["--target", "web", "--no-typescript", "--out-dir"]).arg(&out).arg(&wasm))
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_owned()
}

/// Finds wasm-bindgen at the pinned version, installing it if needed.
fn ensure_wasm_bindgen() -> Result<std::path::PathBuf, String> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let bin = cargo_home.join("bin/wasm-bindgen");
    let version = Command::new(&bin).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if !version.is_ok_and(|v| v.split_whitespace().nth(1) == Some(WASM_BINDGEN_VERSION)) {
        // Not --locked: that fails for this version (see DESIGN.md).
        run(cargo().args(["install", "wasm-bindgen-cli", "--version", WASM_BINDGEN_VERSION, "--force"]))?;
    }
    Ok(bin)
}

/// Debian packages the tests use: Chromium and chromedriver (the browser
/// tests), iproute2 and iptables (the network fault tests, in namespaces).
fn ensure_debian_tools() -> Result<(), String> {
    let needed = [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        ("/usr/sbin/ip", "iproute2"),
        ("/usr/sbin/tc", "iproute2"),
        ("/usr/sbin/iptables", "iptables"),
    ];
    let mut missing: Vec<&str> = needed.iter().filter(|(bin, _)| !std::path::Path::new(bin).is_file()).map(|&(_, pkg)| pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Core must build for the browser.
fn ensure_wasm_target() -> Result<(), String> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    Ok(())
}

/// The end-to-end tests check our .npy files against numpy itself.
fn ensure_numpy() -> Result<(), String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_numpy = Command::new(&python).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success());
    if !has_numpy {
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "numpy"]))?;
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
