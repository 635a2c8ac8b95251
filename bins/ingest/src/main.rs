//! `election-ingest`: parses the command line and hands over to the library.

use clap::Parser;
use election_ingest::cli::{Cli, Command};
use election_ingest::commands;

fn main() {
    let cli = Cli::parse();
    election_http::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Migrate(database) => commands::migrate(&database),
        Command::Token(token) => commands::token(token),
        Command::Election(election) => commands::election(election),
        Command::Serve(serve) => commands::serve_blocking(*serve),
    };
    if let Err(error) = result {
        eprintln!("election-ingest: {error:#}");
        std::process::exit(1);
    }
}
