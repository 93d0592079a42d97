//! The volunteer page and the browser worker, embedded in the binary.

/// The page at `/`.
pub const INDEX_HTML: &str = include_str!("../../../index.html");
/// The Web Worker's entry point; loads the wasm glue below.
pub const WORKER_JS: &str = include_str!("../../../web/worker.js");

/// wasm-bindgen's JS glue and the wasm module, if `cargo xtask web` built them.
#[cfg(web_assets)]
pub const WEB: Option<(&str, &[u8])> = Some((
    include_str!("../../../web/pkg/colonnade_web.js"),
    include_bytes!("../../../web/pkg/colonnade_web_bg.wasm"),
));
#[cfg(not(web_assets))]
pub const WEB: Option<(&str, &[u8])> = None;

/// What `/` says when the browser worker was not built into this master.
pub const NOT_BUILT: &str = "Browser workers are not built into this master, so this tab cannot compute. \
To build them, run `cargo xtask web` and then rebuild the master (`cargo xtask demo` and `cargo xtask test` do both).";
