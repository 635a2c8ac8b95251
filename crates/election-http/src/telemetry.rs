//! Logging through `tracing`: human-readable lines by default, one JSON
//! object per line with `--log-format json` (for journald or a log shipper).
//! The level comes from `RUST_LOG` (default `info`).
//!
//! Human lines are coloured only when standard error, where they go, is a
//! terminal: written to a file or the journal, colour codes are noise that
//! breaks `grep`. `NO_COLOR` (any value) turns colour off on a terminal too.
//!
//! Everything a service says goes through the subscriber, so that with
//! `LOG_FORMAT=json` a log shipper never meets a line it cannot parse:
//! [`init`] replaces the panic hook (whose default prints free text) with one
//! that logs the panic as an error event, and [`exit_on_error`] logs a
//! start-up or command failure before exiting non-zero, where `main` used to
//! print it with `eprintln!`.

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
    init_writing_to(format, colour(), std::io::stderr);
}

/// [`init`] writing to `writer` (tests read what was logged from it).
pub fn init_writing_to<W>(format: LogFormat, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // JSON lines carry the event's span (`span`) but not the list of every
    // span it is in (`spans`): no span is nested in another, so the list only
    // repeated `span`, a third of an access line's bytes.
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    let _ = result;
    std::panic::set_hook(Box::new(log_panic));
}

/// The panic hook: one error event with the panic's message, where it
/// happened and the thread, instead of the default hook's free text. A panic
/// in a request handler is also answered 500 and logged by the HTTP layers;
/// this line adds where it happened.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(a panic without a message)");
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    tracing::error!(
        panic.message = %message,
        panic.location = %location,
        panic.thread = thread.name().unwrap_or("unnamed"),
        "panicked"
    );
}

/// Ends the process with `code` after logging `error` (with its causes)
/// through the subscriber, so that start-up failures are JSON lines too with
/// `LOG_FORMAT=json`. `program` names the binary in the event.
pub fn exit_on_error(program: &str, error: &anyhow::Error, code: i32) -> ! {
    tracing::error!(program, exit_code = code, "{error:#}");
    std::process::exit(code)
}

/// Whether human lines may carry colour codes.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
