//! What both binaries share: logging set-up and exit codes.
//!
//! Exit codes: 0 done; 2 bad usage or bad input; 1 any other failure.

use std::path::Path;
use std::process::ExitCode;

use colonnade_core::protocol::Token;

use colonnade_core::scheduler::JobError;

use crate::io::InputError;

/// Bad usage or bad input that no file format reader saw (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Logs go to stderr, filtered by `RUST_LOG` (default: `default_level`).
pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).init();
}

pub fn exit_code(error: &anyhow::Error) -> u8 {
    let bad_input = error.chain().any(|e| e.is::<InputError>() || e.is::<BadInput>() || e.is::<JobError>());
    if bad_input {
        2
    } else {
        1
    }
}

/// Prints the error on one line and picks the exit code.
pub fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(exit_code(&error))
}

/// Reads a shared secret from `path`: the file's contents, surrounding
/// whitespace trimmed. Errors name the file, never what it holds.
pub fn read_token(path: &Path) -> Result<Token, BadInput> {
    let text = std::fs::read_to_string(path).map_err(|e| BadInput(format!("{}: cannot read the token file: {e}", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(BadInput(format!(
            "{}: the token file is empty; put a secret in it, e.g. `head -c 32 /dev/urandom | base64 > {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(Token::new(secret))
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_requested() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
