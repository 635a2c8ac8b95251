//! `election-ingest`: parses the command line and hands over to the library.

use election_ingest::cli::Command;
use election_ingest::commands;
use election_wiring::service::Ingest;

/// jemalloc rather than glibc's allocator: under load glibc's functions
/// (`_int_malloc`, `_int_free`, `malloc_consolidate`, `unlink_chunk`, ...)
/// were about a quarter of this process's `perf` samples. jemalloc took
/// ingest's CPU per report down 9–19 % (single reports and batches) for
/// 20–60 MiB more resident memory, which stayed flat through 90 s at 512
/// connections (mimalloc, tried before, saved as much but grew for as long
/// as the load lasted). election-query gained nothing measurable from it
/// and keeps glibc's. docs/benchmarks.md, "jemalloc for ingest".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
