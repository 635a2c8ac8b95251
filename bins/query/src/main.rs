//! `election-query`: parses the command line and hands over to the library.

use clap::Parser;
use election_query::cli::{Cli, Command};
use election_query::commands;

fn main() {
    let cli = Cli::parse();
    election_http::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(serve) => commands::serve_blocking(*serve),
    };
    if let Err(error) = result {
        eprintln!("election-query: {error:#}");
        std::process::exit(1);
    }
}
