//! Whether a benchmark runs small, to check its pipeline rather than time it.

/// When asked with `--smoke`, or when run by `cargo test` (CI's `cargo test
/// --all-targets`), which, unlike `cargo bench`, does not pass `--bench`.
pub fn wanted() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench")
}
