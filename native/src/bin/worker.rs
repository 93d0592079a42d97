//! `worker`: connects to a master, computes tiles of C, sends them back.
//! Reconnects with backoff; on Ctrl-C hands back its tasks and exits 0.

use std::process::ExitCode;

use clap::Parser;
use colonnade_native::cli::{self, BadInput};
use colonnade_native::compute;
use colonnade_native::units;
use colonnade_native::worker::{self, WorkerOptions};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(version, about = "Colonnade worker: computes tiles of C = A·B for a master")]
struct Args {
    /// The master's WebSocket URL, e.g. ws://master-host:8080/ws
    url: String,
    /// Compute threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// A name for the master's logs (default: this host's name).
    #[arg(long)]
    name: Option<String>,
    /// A file holding the master's token, for a master started with --token-file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Memory for the master's panels and products (e.g. 256M, 8G); the master
    /// never sends more. Default: half of the memory available now.
    #[arg(long, value_name = "BYTES", value_parser = units::parse_bytes)]
    memory: Option<u64>,
    /// PEM file with the master's own certificate (self-signed) or the CA that
    /// signed it, for wss://; the public web's roots are always trusted.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_tracing("info");
    let url = match normalise_url(&args.url) {
        Ok(url) => url,
        Err(e) => return cli::fail(e.into()),
    };
    let token = match args.token_file.as_deref().map(cli::read_token).transpose() {
        Ok(token) => token.unwrap_or_default(),
        Err(e) => return cli::fail(e.into()),
    };
    let tls = match colonnade_native::tls::client_config(args.ca.as_deref()) {
        Ok(tls) => tls,
        Err(e) => return cli::fail(e.into()),
    };
    let threads = args.threads.map_or_else(compute::available_cores, |t| t as usize);
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".into())
    });
    // One thread is plenty for the socket; compute runs on blocking threads.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            cli::stop_requested().await;
            let _ = stop.send(true);
        });
        let defaults = WorkerOptions::new(url, threads, name);
        let memory = args.memory.unwrap_or(defaults.memory);
        worker::run(WorkerOptions { token, tls, ca: args.ca, memory, ..defaults }, stopped).await
    });
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(e),
    }
}

/// Accepts `ws://host:port/ws`, and `ws://host:port` as shorthand for it.
fn normalise_url(url: &str) -> Result<String, BadInput> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| BadInput(format!("{url}: not a WebSocket URL (expected ws://HOST:PORT/ws)")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(BadInput(format!("{url}: no host (expected ws://HOST:PORT/ws)")));
    }
    Ok(if rest.contains('/') { url.to_owned() } else { format!("{url}/ws") })
}
