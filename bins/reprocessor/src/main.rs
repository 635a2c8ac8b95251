//! `election-reprocessor`: parses the command line and hands over to the
//! library.
//!
//! Exit status:
//! - `run --once`: 0 when every pending report was counted, 3
//!   ([`EXIT_LEFT_PENDING`]) when reports are still pending at the end
//!   (Redis down, reports that keep failing: run it again later), 1 when it
//!   could not run (bad settings, PostgreSQL unreachable).
//! - `reconcile`: 0 when Redis is exact, 1 when it drifts, 2 when it could
//!   not compare (a store is down, a bad argument).
//! - `verify`: 0 intact, 1 a report altered, removed or inserted since it
//!   was sealed, 2 when it could not check.
//!
//! Failures are logged through `tracing` (JSON with `LOG_FORMAT=json`).

use election_reprocessor::cli::{Command, EXIT_LEFT_PENDING};
use election_reprocessor::commands;
use election_wiring::service::Reprocessor;

fn main() {
    let (command, warnings) =
        election_wiring::start::<Reprocessor, Command>(env!("CARGO_PKG_DESCRIPTION"));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let (result, unfinished_status, failure_status) = match command {
        Command::Run(run) => (commands::run(*run), EXIT_LEFT_PENDING, 1),
        Command::Reconcile(reconcile) => (commands::reconcile(*reconcile), 1, 2),
        Command::Verify(verify) => (commands::verify(*verify), 1, 2),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(unfinished_status),
        Err(error) => {
            election_http::telemetry::exit_on_error("election-reprocessor", &error, failure_status)
        }
    }
}
