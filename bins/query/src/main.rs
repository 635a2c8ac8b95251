//! `election-query`: parses the command line and hands over to the library.

use election_query::cli::{Cli, Command, RENAMED};
use election_query::commands;

fn main() {
    let (cli, warnings) = election_http::config::parse::<Cli>(RENAMED);
    election_http::telemetry::init(cli.log_format);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let result = match cli.command {
        Command::Serve(serve) => commands::serve_blocking(*serve),
    };
    if let Err(error) = result {
        election_http::telemetry::exit_on_error("election-query", &error, 1);
    }
}
