//! Colonnade's core: everything that is not IO.
//!
//! It never touches sockets, files, threads, clocks or randomness of its own:
//! time comes in as `now`, and the shells in `native/` and `web/` do the IO.

#[cfg(target_endian = "big")]
compile_error!("Colonnade's wire format is raw little-endian; big-endian hosts are not supported");

pub mod assembly;
pub mod backoff;
pub mod codec;
pub mod job;
pub mod kernel;
pub mod liveness;
pub mod matrix;
pub mod payload;
pub mod plan;
pub mod pool;
pub mod protocol;
pub mod scheduler;
pub mod verify;
pub mod worker;

pub use matrix::{DenseMatrix, Dtype, Element, Matrix, ShapeError};
