//! The three services side by side: what each one calls the settings they
//! all have, its defaults, and every old setting name it still accepts.
//!
//! Every service connects to PostgreSQL and Redis and listens somewhere, but
//! each sizes its pools, waits for Redis and listens on its own terms, so
//! those settings carry the service's prefix (`INGEST_PG_POOL_SIZE`; why:
//! `election_http::config`). One table for the three means a setting added
//! to the stores' arguments is added to every service at once, and the
//! spellings cannot drift apart. Help lines are written as `--help` shows
//! them (no final period).
//!
//! The old names (deprecated, still accepted with a warning) are here for
//! the services' own settings too: they were renamed together (one duration
//! format, a prefix per service) and will stop being read together, and one
//! table shows an operator every name still read.
//!
//! A service is a type ([`Ingest`], [`Query`], [`Reprocessor`]) because
//! clap builds arguments from types: `Pools<Ingest>` is `serve`'s pool
//! settings as ingest spells them.

use std::fmt::Debug;

use election_http::config::{Renamed, Unit};

/// One setting as one service spells it.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// Its environment variable.
    pub env: &'static str,
    /// Its default, as typed on a command line.
    pub default: &'static str,
    /// Its line in `--help`.
    pub help: &'static str,
}

/// What one service calls the settings every service has.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// The program's name (`--version`, the event logged on a fatal error).
    pub name: &'static str,
    /// The subcommands taking the pool settings (and the listen address,
    /// where it was renamed): where their old names are still accepted.
    pub subcommands: &'static [&'static str],
    /// `--database-url`'s help line.
    pub database_url_help: &'static str,
    /// `--redis-url`'s help line.
    pub redis_url_help: &'static str,
    /// `--listen`.
    pub listen: Setting,
    /// The listen address's environment variable before it had the
    /// service's prefix, still accepted (ingest's: the others never read
    /// it, it was ingest's in a shared environment file).
    pub listen_old_env: Option<&'static str>,
    /// `--pg-pool-size` (formerly `PG_POOL_SIZE`).
    pub pg_pool_size: Setting,
    /// `--redis-pool-size` (formerly `REDIS_POOL_SIZE`).
    pub redis_pool_size: Setting,
    /// `--redis-timeout` (formerly `REDIS_TIMEOUT_MS`, `--redis-timeout-ms`).
    pub redis_timeout: Setting,
    /// The old names of the service's own settings, still accepted (each
    /// `arg` is a field of the binary's subcommand: its tests parse them).
    pub old_names: &'static [Renamed],
}

impl Profile {
    /// Every renamed setting whose old name is still accepted: the shared
    /// ones, then the service's own.
    #[rustfmt::skip]
    pub fn renamed(&self) -> Vec<Renamed> {
        let renamed = |arg, old_env, old_flag, new: &Setting, new_flag, unit| Renamed {
            subcommands: self.subcommands, arg, old_env: Some(old_env), old_flag, new_env: new.env, new_flag, unit,
        };
        let listen = self.listen_old_env.map(|old_env| renamed("listen", old_env, None, &self.listen, "--listen", Unit::Same));
        listen
            .into_iter()
            .chain([
                renamed("pg_pool_size", "PG_POOL_SIZE", None, &self.pg_pool_size, "--pg-pool-size", Unit::Same),
                renamed("redis_pool_size", "REDIS_POOL_SIZE", None, &self.redis_pool_size, "--redis-pool-size", Unit::Same),
                renamed("redis_timeout", "REDIS_TIMEOUT_MS", Some("--redis-timeout-ms"), &self.redis_timeout, "--redis-timeout", Unit::Millis),
            ])
            .chain(self.old_names.iter().copied())
            .collect()
    }
}

/// A service: its [`Profile`].
pub trait Service: Clone + Copy + Debug + Send + Sync + 'static {
    /// What it calls the shared settings.
    const PROFILE: Profile;
}

/// The Redis URL's help line of the services that only count.
const REDIS_URL_HELP: &str =
    "Redis URL; a comma-separated list or `redis+cluster://h1:p1,h2:p2` selects Redis Cluster";

/// `election-ingest`.
#[derive(Clone, Copy, Debug)]
pub enum Ingest {}

impl Service for Ingest {
    #[rustfmt::skip]
    const PROFILE: Profile = Profile {
        name: "election-ingest",
        subcommands: &["serve"],
        database_url_help: "PostgreSQL URL",
        redis_url_help: REDIS_URL_HELP,
        listen: Setting { env: "INGEST_LISTEN_ADDR", default: "127.0.0.1:8080", help: "Address to listen on" },
        listen_old_env: Some("LISTEN_ADDR"),
        pg_pool_size: Setting { env: "INGEST_PG_POOL_SIZE", default: "8", help: "PostgreSQL connections" },
        redis_pool_size: Setting { env: "INGEST_REDIS_POOL_SIZE", default: "8", help: "Redis connections (per node on a Cluster)" },
        redis_timeout: Setting {
            env: "INGEST_REDIS_TIMEOUT",
            default: "500ms",
            help: "Longest wait for Redis before a report is answered 202 and left to the reprocessor",
        },
        old_names: &[
            Renamed::serve("batch_linger", "BATCH_LINGER_MS", Some("--batch-linger-ms"), "BATCH_LINGER", "--batch-linger", Unit::Millis),
            Renamed::serve("token_cache_ttl", "TOKEN_CACHE_SECS", Some("--token-cache-secs"), "TOKEN_CACHE_TTL", "--token-cache-ttl", Unit::Secs),
            Renamed::serve("definition_cache_ttl", "DEFINITION_CACHE_SECS", Some("--definition-cache-secs"), "DEFINITION_CACHE_TTL", "--definition-cache-ttl", Unit::Secs),
            Renamed::serve("header_timeout", "HTTP_HEADER_TIMEOUT_MS", Some("--header-timeout-ms"), "HTTP_HEADER_TIMEOUT", "--header-timeout", Unit::Millis),
            Renamed::serve("body_timeout", "INGEST_BODY_TIMEOUT_MS", Some("--body-timeout-ms"), "INGEST_BODY_TIMEOUT", "--body-timeout", Unit::Millis),
        ],
    };
}

/// `election-query`.
#[derive(Clone, Copy, Debug)]
pub enum Query {}

impl Service for Query {
    // The listen address (docs/contract.md §6).
    #[rustfmt::skip]
    const PROFILE: Profile = Profile {
        name: "election-query",
        subcommands: &["serve"],
        database_url_help: "PostgreSQL URL (history and audit)",
        redis_url_help: "Redis URL (live totals); a comma-separated list or `redis+cluster://h1:p1,h2:p2` selects Redis Cluster",
        listen: Setting { env: "QUERY_LISTEN_ADDR", default: "127.0.0.1:8081", help: "Address to listen on" },
        listen_old_env: None,
        pg_pool_size: Setting { env: "QUERY_PG_POOL_SIZE", default: "4", help: "PostgreSQL connections (history queries and exports)" },
        redis_pool_size: Setting { env: "QUERY_REDIS_POOL_SIZE", default: "4", help: "Redis connections (per node on a Cluster)" },
        redis_timeout: Setting { env: "QUERY_REDIS_TIMEOUT", default: "1s", help: "Longest wait for a Redis reply" },
        old_names: &[
            Renamed::serve("snapshot_interval", "SNAPSHOT_INTERVAL_MS", Some("--snapshot-interval-ms"), "SNAPSHOT_INTERVAL", "--snapshot-interval", Unit::Millis),
            Renamed::serve("idle_after", "IDLE_AFTER_SECS", Some("--idle-after-secs"), "IDLE_AFTER", "--idle-after", Unit::Secs),
            Renamed::serve("keep_alive", "KEEP_ALIVE_SECS", Some("--keep-alive-secs"), "KEEP_ALIVE", "--keep-alive", Unit::Secs),
            Renamed::serve("timeline_cache_ttl", "TIMELINE_CACHE_MS", Some("--timeline-cache-ms"), "TIMELINE_CACHE_TTL", "--timeline-cache-ttl", Unit::Millis),
            Renamed::serve("timeline_full_refresh", "TIMELINE_FULL_REFRESH_SECS", Some("--timeline-full-refresh-secs"), "TIMELINE_FULL_REFRESH", "--timeline-full-refresh", Unit::Secs),
            Renamed::serve("header_timeout", "HTTP_HEADER_TIMEOUT_MS", Some("--header-timeout-ms"), "HTTP_HEADER_TIMEOUT", "--header-timeout", Unit::Millis),
            Renamed::serve("cache_max_age", "CACHE_MAX_AGE_SECS", Some("--cache-max-age-secs"), "CACHE_MAX_AGE", "--cache-max-age", Unit::Secs),
            Renamed::serve("history_cache_max_age", "HISTORY_CACHE_MAX_AGE_SECS", Some("--history-cache-max-age-secs"), "HISTORY_CACHE_MAX_AGE", "--history-cache-max-age", Unit::Secs),
            Renamed::serve("elections_refresh", "ELECTIONS_REFRESH_SECS", Some("--elections-refresh-secs"), "ELECTIONS_REFRESH", "--elections-refresh", Unit::Secs),
        ],
    };
}

/// `election-reprocessor`.
#[derive(Clone, Copy, Debug)]
pub enum Reprocessor {}

impl Service for Reprocessor {
    // It listens for health and metrics only, and not with `run --once`.
    #[rustfmt::skip]
    const PROFILE: Profile = Profile {
        name: "election-reprocessor",
        subcommands: &["run", "reconcile"],
        database_url_help: "PostgreSQL URL",
        redis_url_help: REDIS_URL_HELP,
        listen: Setting {
            env: "REPROCESSOR_LISTEN_ADDR",
            default: "127.0.0.1:8082",
            help: "Address to serve /healthz, /readyz and /metrics on (not with --once)",
        },
        listen_old_env: None,
        pg_pool_size: Setting { env: "REPROCESSOR_PG_POOL_SIZE", default: "4", help: "PostgreSQL connections" },
        redis_pool_size: Setting { env: "REPROCESSOR_REDIS_POOL_SIZE", default: "4", help: "Redis connections kept (per node on a Cluster)" },
        redis_timeout: Setting { env: "REPROCESSOR_REDIS_TIMEOUT", default: "2s", help: "Longest wait for a Redis connection or reply" },
        old_names: &[],
    };
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{FromArgMatches, Subcommand};

    use super::*;
    use crate::args::{Cli, Listen, Postgres, ServeCommon, Stores};

    /// A `serve` as ingest's and query's flatten the shared settings.
    #[derive(Subcommand, Debug)]
    enum ServeLike<S: Service> {
        Serve {
            #[command(flatten)]
            database: Postgres<S>,
            #[command(flatten)]
            common: ServeCommon<S>,
        },
    }

    /// The reprocessor's two subcommands taking the stores.
    #[derive(Subcommand, Debug)]
    enum Counting {
        Run {
            #[command(flatten)]
            stores: Stores<Reprocessor>,
            #[command(flatten)]
            listen: Listen<Reprocessor>,
        },
        Reconcile {
            #[command(flatten)]
            stores: Stores<Reprocessor>,
        },
    }

    /// Parses `args` as service `S` would, with `env` as the old names'
    /// environment (the new names come from the process's, unset here).
    fn parse<S: Service, C: Subcommand>(args: &[&str], env: &[(&str, &str)]) -> (C, Vec<String>) {
        let (matches, warnings) = election_http::config::parse_matches_from(
            crate::command::<S, C>("test"),
            &S::PROFILE.renamed(),
            [S::PROFILE.name].iter().chain(args),
            |name| {
                env.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            },
        )
        .unwrap();
        (
            Cli::<C>::from_arg_matches(&matches).unwrap().command,
            warnings,
        )
    }

    #[test]
    fn each_service_has_its_defaults() {
        let (ServeLike::Serve { database, common }, _) =
            parse::<Ingest, ServeLike<Ingest>>(&["serve"], &[]);
        assert_eq!(database.database_url, crate::args::DEFAULT_DATABASE_URL);
        assert_eq!(common.redis.redis_url, crate::args::DEFAULT_REDIS_URL);
        assert_eq!(common.listen.address, "127.0.0.1:8080");
        let pools = common.pools;
        assert_eq!((pools.pg_pool_size, pools.redis_pool_size), (8, 8));
        assert_eq!(pools.redis_timeout, Duration::from_millis(500));

        let (ServeLike::Serve { common, .. }, _) =
            parse::<Query, ServeLike<Query>>(&["serve"], &[]);
        assert_eq!(common.listen.address, "127.0.0.1:8081");
        let pools = common.pools;
        assert_eq!((pools.pg_pool_size, pools.redis_pool_size), (4, 4));
        assert_eq!(pools.redis_timeout, Duration::from_secs(1));

        let (command, _) = parse::<Reprocessor, Counting>(&["run"], &[]);
        let Counting::Run { stores, listen } = command else {
            panic!("run: {command:?}")
        };
        assert_eq!(listen.address, "127.0.0.1:8082");
        let pools = stores.pools;
        assert_eq!((pools.pg_pool_size, pools.redis_pool_size), (4, 4));
        assert_eq!(pools.redis_timeout, Duration::from_secs(2));
    }

    #[test]
    fn old_names_of_the_shared_settings_still_work() {
        let old = [
            ("LISTEN_ADDR", "0.0.0.0:9"),
            ("PG_POOL_SIZE", "3"),
            ("REDIS_POOL_SIZE", "2"),
            ("REDIS_TIMEOUT_MS", "300"),
        ];
        let (ServeLike::Serve { common, .. }, warnings) =
            parse::<Ingest, ServeLike<Ingest>>(&["serve"], &old);
        assert_eq!(common.listen.address, "0.0.0.0:9");
        let pools = common.pools;
        assert_eq!((pools.pg_pool_size, pools.redis_pool_size), (3, 2));
        assert_eq!(pools.redis_timeout, Duration::from_millis(300));
        assert_eq!(
            warnings,
            [
                "LISTEN_ADDR is deprecated: set INGEST_LISTEN_ADDR=0.0.0.0:9 instead",
                "PG_POOL_SIZE is deprecated: set INGEST_PG_POOL_SIZE=3 instead",
                "REDIS_POOL_SIZE is deprecated: set INGEST_REDIS_POOL_SIZE=2 instead",
                "REDIS_TIMEOUT_MS is deprecated: set INGEST_REDIS_TIMEOUT=300ms instead",
            ]
        );

        // `LISTEN_ADDR` was ingest's: query does not read it.
        let (ServeLike::Serve { common, .. }, warnings) =
            parse::<Query, ServeLike<Query>>(&["serve"], &old);
        assert_eq!(common.listen.address, "127.0.0.1:8081");
        assert_eq!(common.pools.pg_pool_size, 3);
        assert_eq!(warnings.len(), 3, "{warnings:?}");

        // The reprocessor's old names hold for both subcommands, its old
        // flag in both spellings.
        let (command, warnings) =
            parse::<Reprocessor, Counting>(&["reconcile", "--redis-timeout-ms", "7"], &old);
        let Counting::Reconcile { stores } = command else {
            panic!("reconcile: {command:?}")
        };
        assert_eq!(stores.pools.redis_timeout, Duration::from_millis(7));
        assert_eq!(stores.pools.redis_pool_size, 2);
        assert_eq!(
            warnings[0],
            "--redis-timeout-ms is deprecated: use --redis-timeout 7ms instead"
        );
        let (command, _) = parse::<Reprocessor, Counting>(&["run", "--redis-timeout-ms=8"], &[]);
        let Counting::Run { stores, listen } = command else {
            panic!("run: {command:?}")
        };
        assert_eq!(stores.pools.redis_timeout, Duration::from_millis(8));
        assert_eq!(listen.address, "127.0.0.1:8082");
    }
}
