//! `election-reprocessor`: parses the command line and hands over to the
//! library. Exit status: 0 success (`run --once`: nothing left pending;
//! `reconcile`: Redis exact), 1 otherwise (reports left pending, drift), and
//! 2 when `reconcile` could not compare (a store is down, a bad argument).
//! `verify`: 0 intact, 1 a report altered, removed or inserted since it was
//! sealed, 2 when it could not check.

use clap::Parser;
use election_reprocessor::cli::{Cli, Command};
use election_reprocessor::commands;

fn main() {
    let cli = Cli::parse();
    election_http::telemetry::init(cli.log_format);
    let (result, failure_status) = match cli.command {
        Command::Run(run) => (commands::run(*run), 1),
        Command::Reconcile(reconcile) => (commands::reconcile(*reconcile), 2),
        Command::Verify(verify) => (commands::verify(*verify), 2),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("election-reprocessor: {error:#}");
            std::process::exit(failure_status);
        }
    }
}
