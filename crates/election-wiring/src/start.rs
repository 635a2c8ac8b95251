//! Start-up: the command line parsed into a service's [`Cli`], with the
//! old names of renamed settings rewritten (`election_http::config`), and
//! logging set up; and the runtime the async commands run on.

use std::future::Future;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Subcommand};

use crate::args::Cli;
use crate::service::Service;

/// Service `S`'s command line as [`start`] parses it: [`Cli`] with the
/// subcommands `C`, named by `S`'s profile and described by `about`.
pub fn command<S: Service, C: Subcommand>(about: &'static str) -> clap::Command {
    Cli::<C>::command()
        .name(S::PROFILE.name)
        .about(about)
        .long_about(None)
}

/// Parses the process's command line and environment as service `S`
/// ([`command`]; `about` is the binary's Cargo description), accepting the
/// old names of its settings (`Profile::renamed`); sets up logging in the format asked for, and returns the
/// subcommand and a warning per old name used. The caller logs the warnings,
/// now that logging is set up, so that they carry its log target (`target`
/// of a `tracing` event is a constant: it cannot be the caller's from here).
/// A bad command line exits with clap's message and status 2, as
/// `Parser::parse` does.
pub fn start<S: Service, C: Subcommand>(about: &'static str) -> (C, Vec<String>) {
    let parsed = election_http::config::parse_matches_from(
        command::<S, C>(about),
        &S::PROFILE.renamed(),
        std::env::args_os(),
        |name| std::env::var(name).ok(),
    )
    .and_then(|(matches, warnings)| Ok((Cli::<C>::from_arg_matches(&matches)?, warnings)));
    let (cli, warnings) = parsed.unwrap_or_else(|error| error.exit());
    election_http::telemetry::init(cli.log_format);
    (cli.command, warnings)
}

/// Runs `future` to completion on a multi-threaded runtime of its own (a
/// command's whole life: a service serving, a drain), with tokio's number
/// of worker threads (one per core, or `TOKIO_WORKER_THREADS`).
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    block_on_with(None, future)
}

/// [`block_on`] with `workers` worker threads when given (a service's own
/// setting, such as query's `QUERY_WORKER_THREADS`).
pub fn block_on_with<T>(
    workers: Option<usize>,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}
