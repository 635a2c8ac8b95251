//! `election-query`: parses the command line and hands over to the library.

use election_query::cli::Command;
use election_query::commands;
use election_wiring::service::Query;

/// mimalloc rather than glibc's malloc: at saturation glibc's malloc, free
/// and their consolidation took a quarter of ingest's CPU, spread over many
/// short-lived allocations per request (docs/benchmarks.md, "The allocator
/// and the per-request state").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let (Command::Serve(serve), warnings) =
        election_wiring::start::<Query, Command>(env!("CARGO_PKG_DESCRIPTION"));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if let Err(error) = election_wiring::block_on(commands::serve(*serve)) {
        election_http::telemetry::exit_on_error("election-query", &error, 1);
    }
}
