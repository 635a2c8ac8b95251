//! Command line and configuration of `election-reprocessor`.
//!
//! Every flag can also come from the environment, so a systemd unit only
//! needs its `EnvironmentFile=`s (the shared one and its own):
//!
//! | variable | flag | default |
//! | --- | --- | --- |
//! | `DATABASE_URL` | `--database-url` | `postgres://postgres@127.0.0.1:5432/postgres` (libpq's `sslmode` and `sslrootcert` select TLS) |
//! | `REDIS_URL` | `--redis-url` | `redis://127.0.0.1:6379` (`rediss://` for TLS; a comma-separated list, or `redis+cluster://h1:p1,h2:p2`, selects Redis Cluster) |
//! | `REPROCESSOR_LISTEN_ADDR` | `--listen` (`run`) | `127.0.0.1:8082` |
//! | `REPROCESSOR_PG_POOL_SIZE` | `--pg-pool-size` | 4 |
//! | `REPROCESSOR_REDIS_POOL_SIZE` | `--redis-pool-size` | 4 |
//! | `REPROCESSOR_REDIS_TIMEOUT` | `--redis-timeout` | `2s` |
//! | `REPROCESS_BATCH_SIZE` | `--batch-size` (`run`) | 500 |
//! | `PENDING_AFTER` | `--pending-after` (`run`) | `30s` |
//! | `CLAIM_LEASE` | `--lease` (`run`) | `60s` |
//! | `IDLE_INTERVAL` | `--interval` (`run`) | `1s` |
//! | `STUCK_ATTEMPTS` | `--stuck-attempts` (`run`) | 5 |
//! | `HEAL_INTERVAL` | `--heal-interval` (`run`) | `15s` (`0s`: off) |
//! | `SEAL_INTERVAL` | `--seal-interval` (`run`) | `1s` (`0` turns sealing off) |
//! | `RECONCILE_ROUNDS` | `--rounds` (`reconcile`) | 20 |
//! | `RECONCILE_ROUND_INTERVAL` | `--round-interval` (`reconcile`) | `150ms` |
//! | `LOG_FORMAT` | `--log-format` | `human` (or `json`) |
//! | `RUST_LOG` | | `info` |
//!
//! Durations are written like `500ms`, `30s`, `10m`, `1h30m` (or `0`; see
//! [`election_http::config`]). The old names `PG_POOL_SIZE`,
//! `REDIS_POOL_SIZE`, `REDIS_TIMEOUT_MS` and `--redis-timeout-ms` are
//! deprecated but still accepted, with a warning in the log; `LISTEN_ADDR`
//! is not read (it was ingest's in the shared environment file).
//!
//! The settings every service has (the stores, the pools, the listen
//! address), their old names included, are `election_wiring::args`,
//! spelled for the reprocessor by `election_wiring::service::Reprocessor`.
//!
//! Database and Redis URLs may hold passwords: they are never logged whole
//! (see `election_http::redact`).

use std::time::Duration;

use clap::{Args, Subcommand};
use election_http::config::parse_duration;
use election_wiring::args::{Listen, Postgres, Stores};
use election_wiring::service::Reprocessor;

/// Exit status of `run --once` when reports are still pending at the end
/// (Redis is down, or reports keep failing): distinct from 1, a failure to
/// run at all (bad settings, PostgreSQL unreachable).
pub const EXIT_LEFT_PENDING: i32 = 3;

/// election-reprocessor: counts every recorded report that was not counted
/// yet, and makes Redis exact again from PostgreSQL (named and described at
/// start-up, `election_wiring::start`).
pub type Cli = election_wiring::Cli<Command>;

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Count reports recorded but not counted (Redis was down, a process
    /// crashed), forever or (--once) until none is left.
    Run(Box<Run>),
    /// Compare every Redis counter of an election with PostgreSQL and print
    /// the drift (exit status 1 when there is any); --repair makes Redis
    /// exact.
    Reconcile(Box<Reconcile>),
    /// Recompute an election's sealed log from the stored reports: exit 0
    /// when intact, 1 naming the first report altered, removed or inserted
    /// since it was sealed, 2 when it could not be checked.
    Verify(Box<Verify>),
}

/// `run` settings.
#[derive(Args, Debug, Clone)]
pub struct Run {
    /// The stores.
    #[command(flatten)]
    pub stores: Stores<Reprocessor>,
    /// Drain what is pending now, then exit: 0 when nothing is left pending,
    /// 3 when reports are still pending (Redis down, reports failing), 1
    /// when it could not run (settings, PostgreSQL).
    #[arg(long)]
    pub once: bool,
    /// Where to serve /healthz, /readyz and /metrics (not with --once).
    #[command(flatten)]
    pub listen: Listen<Reprocessor>,
    /// Most reports claimed per round.
    #[arg(long, env = "REPROCESS_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Only count reports recorded at least this long ago (ingest counts the younger ones itself).
    #[arg(long, env = "PENDING_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub pending_after: Duration,
    /// How long claimed reports stay ours; a reprocessor that dies loses them after this.
    #[arg(long, env = "CLAIM_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Pause after a round that found nothing to count.
    #[arg(long, env = "IDLE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Claims after which a report still not counted is reported as stuck (log and metric).
    #[arg(long, env = "STUCK_ATTEMPTS", default_value_t = 5)]
    pub stuck_attempts: u32,
    /// Pause between sweeps that check every counted revision's markers in Redis and apply the
    /// lost ones again (a restart, a flush, a failover); 0s turns healing off. A Redis master
    /// restarted or replaced (a new run id) or a change journal gone back (a flush), both
    /// asked every second, is swept for at once.
    #[arg(long, env = "HEAL_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heal_interval: Duration,
    /// Pause between sealing rounds, which seal every recorded report into its election's hash
    /// chain (docs/audit.md; a report is sealed within about two intervals); 0s turns sealing off.
    #[arg(long, env = "SEAL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub seal_interval: Duration,
}

/// `verify` settings: PostgreSQL only.
#[derive(Args, Debug, Clone)]
pub struct Verify {
    /// PostgreSQL.
    #[command(flatten)]
    pub database: Postgres<Reprocessor>,
    /// The election to verify.
    #[arg(long)]
    pub election: String,
    /// A head noted earlier (64 hex digits, from `GET /v1/elections/{e}/audit`): it must still be
    /// one of the checkpoints, else the seals themselves were rewritten.
    #[arg(long)]
    pub head: Option<String>,
    /// Most findings printed (the first is the one that matters; 0: all kept).
    #[arg(long, default_value_t = 20)]
    pub max_rows: usize,
}

/// `reconcile` settings.
#[derive(Args, Debug, Clone)]
pub struct Reconcile {
    /// The stores.
    #[command(flatten)]
    pub stores: Stores<Reprocessor>,
    /// The election to compare.
    #[arg(long)]
    pub election: String,
    /// Make Redis exact: re-apply every counted report, then rewrite what still drifts.
    #[arg(long)]
    pub repair: bool,
    /// Most rounds of observation (each reads PostgreSQL, then Redis).
    #[arg(long, env = "RECONCILE_ROUNDS", default_value_t = 20)]
    pub rounds: u32,
    /// Pause between two rounds.
    #[arg(long, env = "RECONCILE_ROUND_INTERVAL", default_value = "150ms", value_parser = parse_duration)]
    pub round_interval: Duration,
    /// Most rows printed per table (0: all).
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_follow_the_specification() {
        let cli = Cli::try_parse_from(["election-reprocessor", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.pending_after, Duration::from_secs(30));
        assert_eq!(run.lease, Duration::from_secs(60));
        assert_eq!(run.interval, Duration::from_secs(1));
        assert_eq!(run.batch_size, 500);
        assert!(!run.once);
        let cli = Cli::try_parse_from([
            "election-reprocessor",
            "reconcile",
            "--election",
            "2025",
            "--repair",
        ])
        .unwrap();
        let Command::Reconcile(reconcile) = cli.command else {
            panic!("reconcile")
        };
        assert!(reconcile.repair);
        assert_eq!(reconcile.round_interval, Duration::from_millis(150));
        let cli = Cli::try_parse_from(["election-reprocessor", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.seal_interval, Duration::from_secs(1));
        let cli =
            Cli::try_parse_from(["election-reprocessor", "verify", "--election", "2025"]).unwrap();
        let Command::Verify(verify) = cli.command else {
            panic!("verify")
        };
        assert_eq!(verify.election, "2025");
        assert_eq!(verify.head, None);
    }

    #[test]
    fn verify_cli() {
        election_wiring::command::<Reprocessor, Command>(env!("CARGO_PKG_DESCRIPTION"))
            .debug_assert();
    }
}
