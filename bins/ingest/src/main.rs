//! `election-ingest`: parses the command line and hands over to the library.

use election_ingest::cli::Command;
use election_ingest::commands;
use election_wiring::service::Ingest;

fn main() {
    let (command, warnings) =
        election_wiring::start::<Ingest, Command>(env!("CARGO_PKG_DESCRIPTION"));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let result = match command {
        Command::Migrate(database) => commands::migrate(&database),
        Command::Token(token) => commands::token(token),
        Command::Election(election) => commands::election(election),
        Command::Serve(serve) => election_wiring::block_on(commands::serve(*serve)),
    };
    if let Err(error) = result {
        election_http::telemetry::exit_on_error("election-ingest", &error, 1);
    }
}
