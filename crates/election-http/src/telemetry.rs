//! Logging through `tracing`: human-readable lines by default, one JSON
//! object per line with `--log-format json` (for journald or a log shipper).
//! The level comes from `RUST_LOG` (default `info`).
//!
//! Human lines are coloured only when standard error, where they go, is a
//! terminal: written to a file or the journal, colour codes are noise that
//! breaks `grep`. `NO_COLOR` (any value) turns colour off on a terminal too.

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber, writing to standard error (standard output
/// is kept for command results such as a new token).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    let _ = result;
}

/// Whether human lines may carry colour codes.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
