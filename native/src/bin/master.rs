//! `master`: splits C = A·B into column blocks, hands them to workers over
//! WebSocket, and assembles C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use colonnade_native::cli::{self, BadInput};
use colonnade_native::master::Limits;
use colonnade_native::commands::{self, DemoArgs, MultiplyArgs, Serving};
use colonnade_core::scheduler::Access;
use colonnade_native::service::ServeArgs;
use colonnade_native::submit::{self, SubmitArgs};
use colonnade_native::tls::ServerTls;
use colonnade_native::units;

#[derive(Parser, Debug)]
#[command(version, about = "Colonnade master: distributed C = A·B over native and browser workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing would buy nothing
enum Command {
    /// Multiply two matrix files (.npy, .csv or .mtx) and write C.
    Multiply {
        /// A, the left operand.
        a: PathBuf,
        /// B, the right operand.
        b: PathBuf,
        /// Where to write C; the extension picks the format.
        #[arg(short, long)]
        output: PathBuf,
        /// Columns per tile, all rows and all of k each (default: the cost model
        /// plans tiles for the workers that join).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        block: Option<u64>,
        /// The master's link rate, e.g. 1G or 100M (bytes/s, as --max-memory
        /// counts); given, the plan weighs bytes against flops and may use fewer
        /// workers than join. Default: the link is assumed to be the bottleneck,
        /// unless every worker is local (loopback): then the master's CPU is.
        #[arg(long, value_name = "BYTES", value_parser = units::parse_bytes)]
        link_rate: Option<u64>,
        /// Write the run's figures (times, plan, bytes on the wire, master CPU and peak memory) as JSON.
        #[arg(long, value_name = "FILE")]
        stats_json: Option<PathBuf>,
        /// Memory for A, B and C (e.g. 16G); bigger inputs are refused before
        /// they are read. Default: the memory available now.
        #[arg(long, value_name = "BYTES", value_parser = units::parse_bytes)]
        max_memory: Option<u64>,
        /// Record each verified block in DIR (durably), and resume from it: run
        /// the same command again after a crash and finished blocks are kept.
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        serving: ServingArgs,
    },
    /// Stay up and run jobs submitted over HTTP (POST /api/jobs), on one pool
    /// of workers that stays connected between jobs.
    Serve {
        /// Where jobs' inputs, checkpoints and results are kept; started again
        /// on the same folder, the master resumes its jobs.
        #[arg(long, value_name = "DIR", default_value = "colonnade-data")]
        data: PathBuf,
        /// API calls must send the secret in FILE as `Authorization: Bearer
        /// <secret>`. Not the workers' token.
        #[arg(long, value_name = "FILE")]
        submit_token_file: Option<PathBuf>,
        /// Memory for one job's A, B and C (e.g. 16G); bigger jobs are refused.
        /// Default: the memory available when the job is submitted.
        #[arg(long, value_name = "BYTES", value_parser = units::parse_bytes)]
        max_memory: Option<u64>,
        /// Largest upload of one matrix file.
        #[arg(long, value_name = "BYTES", value_parser = units::parse_bytes, default_value = "4G")]
        max_upload: u64,
        /// Jobs computed at once, sharing the pool; more wait on disk.
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
        max_running: u64,
        #[command(flatten)]
        serving: ServingArgs,
    },
    /// Send A and B to a `master serve`, follow the job, and download C.
    Submit {
        /// A, the left operand (.npy, .csv or .mtx).
        a: PathBuf,
        /// B, the right operand.
        b: PathBuf,
        /// Where to write C; the extension picks the format.
        #[arg(short, long)]
        output: PathBuf,
        /// The master's address, e.g. http://host:8080.
        #[arg(long, value_name = "URL")]
        to: String,
        /// The master's submit token, read from FILE.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Shares of the pool against other running jobs (each has 1 by default).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        priority: u32,
    },
    /// Multiply random matrices with local workers and check the result.
    Demo {
        /// n, for n×n matrices.
        #[arg(long, default_value_t = 2048)]
        size: usize,
        /// Workers to start inside this process.
        #[arg(long, default_value_t = 2)]
        local_workers: usize,
        /// Address for extra workers and browsers (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Columns per tile (default: the cost model plans tiles).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        block: Option<u64>,
    },
}

/// How the master serves workers: where, who may join, within what limits.
#[derive(Args, Debug)]
struct ServingArgs {
    /// Address for workers and browsers (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Workers to start inside this process.
    #[arg(long, default_value_t = 0)]
    local_workers: usize,
    /// Open worker connections (native and browser) before more are refused.
    #[arg(long, default_value_t = Limits::DEFAULT.max_connections as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Open worker connections from one address before more are refused.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT.max_per_address as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_per_address: u64,
    /// Seconds a new connection may take to say Hello before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = Limits::DEFAULT.handshake_timeout.as_secs_f64())]
    handshake_timeout: f64,
    /// Largest message body, either way (e.g. 64K; at most 8M). A worker
    /// sending more is cut off; results come back in chunks this size.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::DEFAULT.max_chunk as u64, value_parser = parse_chunk)]
    max_chunk: u64,
    /// Tasks one worker may hold at once, whatever it asks for.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT.max_slots, value_parser = clap::value_parser!(u32).range(1..))]
    max_slots: u32,
    /// Native workers must present the secret in FILE (their own --token-file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Turn browser volunteers away (with --token-file: only token holders may join).
    #[arg(long)]
    no_browsers: bool,
    /// Serve https and wss with this PEM certificate (chain); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ServingArgs {
    /// The serving settings, with files read and checked.
    fn load(self) -> anyhow::Result<Serving> {
        let Ok(handshake_timeout) = std::time::Duration::try_from_secs_f64(self.handshake_timeout) else {
            return Err(BadInput(format!("--handshake-timeout {}: not a number of seconds", self.handshake_timeout)).into());
        };
        let limits = Limits {
            max_connections: self.max_connections as usize,
            max_per_address: self.max_per_address as usize,
            handshake_timeout,
            max_chunk: self.max_chunk as usize,
            max_slots: self.max_slots,
        };
        let token = self.token_file.as_deref().map(cli::read_token).transpose()?;
        let access = Access { token, browsers: !self.no_browsers, own: None };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::load(&cert, &key)?),
            _ => None,
        };
        Ok(Serving::new(self.listen, self.local_workers, limits, access, tls))
    }
}

/// A chunk limit: between 4 KiB and the protocol's 8 MiB.
fn parse_chunk(text: &str) -> Result<u64, String> {
    let bytes = units::parse_bytes(text)?;
    let max = colonnade_core::protocol::MAX_CHUNK as u64;
    if !(4096..=max).contains(&bytes) {
        return Err(format!("must be between 4K and 8M ({max} bytes)"));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    colonnade_native::allocator::without_fastbins();
    let cli = Cli::parse();
    cli::init_tracing("warn");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Multiply { a, b, output, block, link_rate, stats_json, max_memory, checkpoint, serving } => {
                let serving = serving.load()?;
                let block = block.map(|b| b as usize);
                let link_rate = link_rate.map(|r| r as f64);
                commands::multiply(MultiplyArgs { a, b, output, block, link_rate, stats_json, checkpoint, max_memory, serving }).await.map(|()| true)
            }
            Command::Serve { data, submit_token_file, max_memory, max_upload, max_running, serving } => {
                let serving = serving.load()?;
                let submit_token = submit_token_file.as_deref().map(cli::read_token).transpose()?;
                let args = ServeArgs { data, submit_token, max_memory, max_upload, max_running: max_running as usize, serving };
                colonnade_native::service::serve(args).await.map(|()| true)
            }
            Command::Submit { a, b, output, to, token_file, priority } => {
                let token = token_file.as_deref().map(cli::read_token).transpose()?;
                let args = SubmitArgs { a, b, output, to, token, priority };
                tokio::task::spawn_blocking(move || submit::submit(args)).await?.map(|()| true)
            }
            Command::Demo { size, local_workers, listen, block } => {
                let serving = Serving::new(listen, local_workers, Limits::default(), Access::default(), None);
                commands::demo(DemoArgs { size, block: block.map(|b| b as usize), serving }).await
            }
        }
    });
    // Local workers may still be blocked in a kernel call; don't wait for them.
    runtime.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => cli::fail(e),
    }
}
