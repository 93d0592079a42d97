//! `master serve`: a master that stays up. One pool of workers across jobs
//! submitted over HTTP (see `api`), kept on disk (see `store`) so that a
//! restart resumes them, and run by one driver (see `driver`).

mod api;
mod board;
mod driver;
mod metrics;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use colonnade_core::protocol::Token;
use colonnade_core::scheduler::Scheduler;
use tokio::sync::mpsc;

pub use board::Board;
pub use store::{Record, State, Store};

use crate::commands::{self, Serving};

#[derive(Clone, Debug)]
pub struct ServeArgs {
    /// Where jobs' inputs, checkpoints and results live.
    pub data: PathBuf,
    /// Needed by every API call, if set (not the workers' token).
    pub submit_token: Option<Token>,
    /// Memory for one job's A, B and C.
    pub max_memory: Option<u64>,
    /// Largest upload of one matrix file.
    pub max_upload: u64,
    /// Jobs in memory and on the pool at once; the rest wait on disk.
    pub max_running: usize,
    pub serving: Serving,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.data)?;
    let records = store.load_all()?;
    let board = Arc::new(Mutex::new(Board::default()));
    {
        let mut b = board.lock().expect("board");
        for record in &records {
            b.jobs.insert(record.id.clone(), board::JobView::new(record.clone()));
        }
    }
    let (commands, commands_rx) = mpsc::channel(64);
    let api = api::Api { store: store.clone(), board: Arc::clone(&board), commands, token: args.submit_token.clone(), max_upload: args.max_upload, max_memory: args.max_memory };
    let served = commands::serve(&args.serving, Some(api::router(api))).await?;
    let base = served.master.page_url();
    println!("  submit jobs:   POST {base}api/jobs (files a and b)");
    let live = records.iter().filter(|r| r.state.is_live()).count();
    if live > 0 {
        println!("resuming {live} job(s) from {}", args.data.display());
    }
    let scheduler = Scheduler::new(args.serving.scheduler_config());
    let mut driver = driver::Driver::new(store, board, scheduler, args.max_running, args.max_memory);
    driver.resume(records);
    let commands::Served { mut master, locals } = served;
    let result = driver.run(&mut master, commands_rx, crate::cli::stop_requested()).await;
    commands::Served { master, locals }.stop().await;
    result
}
