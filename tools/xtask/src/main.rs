//! `cargo xtask`: the repository's tasks that are more than a one-line
//! recipe, in Rust rather than shell (the `justfile` recipes call them).
//!
//! - `setup` (`just setup`): installs what the tests and the demo need and
//!   starts PostgreSQL and Redis when they do not answer.
//! - `demo` (`just demo`): the whole system, the seed's three-city example,
//!   then a simulated election night, until Ctrl-C.
//! - `demo-definition`: the election definition of the demo's night
//!   (`demo/demo-night.toml`).
//! - `api-fuzz` (`just api-fuzz`): schemathesis against both services.
//! - `arch-check` (`just arch-check`): the direction of the crates'
//!   dependencies.
//! - `bench` (`just bench`): builds the release binaries and runs
//!   `election-bench` on them, installing wrk first when it is missing.
//! - `deny` (`just deny`): cargo-deny's checks of deny.toml (licenses,
//!   bans, sources).
//! - `example NAME` (`just examples`): runs an example as `cargo test
//!   --workspace --all-features` built it (`built` says why not `cargo run`).
//!
//! Why Rust: the tasks start and stop servers, make and drop databases, and
//! must undo all of it however they end; shell got long doing that (about
//! 400 lines of bash), and a typed program says what each step needs. The
//! tasks still run the same command-line tools the bash did (`psql`,
//! `redis-cli`, `curl`, `pg_ctl`, `schemathesis`), so they need what it
//! needed and nothing more, and this crate depends on no database driver:
//! `cargo xtask setup` builds on a fresh machine before libpq is installed.
//! The audit verifier (`scripts/verify_audit.py`) stays in Python on purpose:
//! it is the outsider's independent check (docs/audit.md).

mod api_fuzz;
mod arch;
mod bench;
mod built;
mod definition;
mod demo;
mod deny;
mod setup;
mod shell;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "The repository's tasks (see tools/xtask)."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the tests and the demo need and start PostgreSQL and
    /// Redis when they do not answer.
    Setup,
    /// The system with the seed's three-city example, then a simulated
    /// election night (Ctrl-C stops it).
    Demo,
    /// Write the demo night's election definition to standard output.
    DemoDefinition(definition::Sizes),
    /// schemathesis against both services, checked against docs/openapi.yaml.
    ApiFuzz(api_fuzz::Args),
    /// The direction of the crates' dependencies (election-core on no
    /// server or async crate, election-http on no store).
    ArchCheck,
    /// Build the release binaries and run `election-bench` on them (wrk is
    /// installed first when it is missing). `--help` is the bench's.
    #[command(disable_help_flag = true)]
    Bench {
        /// `election-bench`'s flags (`--quick`, `--bulk-only`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<String>,
    },
    /// The dependency policy (deny.toml): licenses, bans and sources.
    Deny,
    /// Run an example as `cargo test --workspace --all-features` built it
    /// (no build of its own after the tests).
    Example {
        /// The example's name (`in_memory`).
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    // Every task works from the repository's root, whatever the caller's
    // directory: paths such as `target/demo` and `docs/openapi.yaml` are
    // relative to it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if let Err(error) = std::env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {error}", root.display());
        std::process::exit(1);
    }
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo => demo::run(),
        Task::DemoDefinition(sizes) => {
            print!("{}", definition::generate(&sizes));
            Ok(())
        }
        Task::ApiFuzz(args) => api_fuzz::run(&args),
        Task::ArchCheck => arch::run(),
        Task::Bench { flags } => bench::run(&flags),
        Task::Deny => deny::run(),
        Task::Example { name } => built::TestBuild::get()
            .and_then(|built| built.path("example", &name))
            .and_then(|path| shell::run(&mut std::process::Command::new(path))),
    };
    if let Err(error) = result {
        eprintln!("{error:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }
}
