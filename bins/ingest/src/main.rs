//! `election-ingest`: parses the command line and hands over to the library.

use election_ingest::cli::{Cli, Command, RENAMED};
use election_ingest::commands;

fn main() {
    let (cli, warnings) = election_http::config::parse::<Cli>(RENAMED);
    election_http::telemetry::init(cli.log_format);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let result = match cli.command {
        Command::Migrate(database) => commands::migrate(&database),
        Command::Token(token) => commands::token(token),
        Command::Election(election) => commands::election(election),
        Command::Serve(serve) => commands::serve_blocking(*serve),
    };
    if let Err(error) = result {
        election_http::telemetry::exit_on_error("election-ingest", &error, 1);
    }
}
