//! Colonnade's native shell: files, sockets, threads and the command line,
//! around the sans-IO `colonnade-core`.

pub mod allocator;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod compute;
pub mod io;
pub mod master;
pub mod procstats;
pub mod service;
pub mod submit;
pub mod tls;
pub mod units;
pub mod worker;
