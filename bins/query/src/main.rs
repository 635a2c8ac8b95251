//! `election-query`: parses the command line and hands over to the library.

use election_query::cli::Command;
use election_query::commands;
use election_wiring::service::Query;

fn main() {
    let (Command::Serve(serve), warnings) =
        election_wiring::start::<Query, Command>(env!("CARGO_PKG_DESCRIPTION"));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if let Err(error) =
        election_wiring::block_on_with(Some(serve.worker_threads()), commands::serve(*serve))
    {
        election_http::telemetry::exit_on_error("election-query", &error, 1);
    }
}
