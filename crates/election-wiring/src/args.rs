//! The settings every service has, as clap arguments: the top-level
//! [`Cli`] and the groups a subcommand flattens, each spelled per service
//! by its [`Profile`](crate::service::Profile) and able to connect what it
//! names.
//!
//! The groups follow the order `--help` lists the arguments in (clap shows
//! them in the order they are added): [`Postgres`] first, then whatever a
//! service puts between (query's history URL), then the rest of a `serve`
//! subcommand ([`ServeCommon`]) or the rest of [`Stores`] for the
//! reprocessor's. The groups derive no clap `ArgGroup` (`group(skip)`): they
//! constrain nothing, and a group's name could clash with a binary's own
//! (ingest's `Serve`).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use election_http::config::parse_duration;
use election_http::telemetry::LogFormat;
use store_pg::{PgLog, PgPool};
use store_redis::RedisTally;

use crate::connect;
use crate::service::Service;
use crate::serving::Serving;

/// Default PostgreSQL URL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A service's command line: the log format, then its subcommand `C`. The
/// name and description are each binary's ([`crate::start`] sets them).
#[derive(Parser, Debug)]
#[command(version = election_http::build::LONG_VERSION)]
pub struct Cli<C: Subcommand> {
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: C,
}

/// Where PostgreSQL is.
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct Postgres<S: Service> {
    /// PostgreSQL URL (libpq's `sslmode` and `sslrootcert` select TLS).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, help = S::PROFILE.database_url_help)]
    pub database_url: String,
    #[arg(skip)]
    service: PhantomData<S>,
}

impl<S: Service> Postgres<S> {
    /// A pool of `size` connections (see [`connect::postgres`]); nothing
    /// checked (`migrate` makes the schema, `token list` reads only tokens).
    pub fn connect(&self, size: u32) -> anyhow::Result<PgPool> {
        connect::postgres("PostgreSQL", &self.database_url, size, S::PROFILE.name)
    }

    /// A pool of `size` connections, refused on a schema this binary does
    /// not match: what every command that reads or writes the log uses.
    pub fn connect_checked(&self, size: u32) -> anyhow::Result<PgPool> {
        let pool = self.connect(size)?;
        connect::check_schema(&pool)?;
        Ok(pool)
    }

    /// [`Self::connect_checked`] from async code: on the blocking pool, as
    /// both steps wait for the server.
    pub async fn connect_checked_blocking(&self, size: u32) -> anyhow::Result<PgPool> {
        let postgres = self.clone();
        tokio::task::spawn_blocking(move || postgres.connect_checked(size)).await?
    }
}

/// Where Redis is.
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct Redis<S: Service> {
    /// Redis URL (`rediss://` for TLS; a comma-separated list or
    /// `redis+cluster://h1:p1,h2:p2` selects Redis Cluster).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true, help = S::PROFILE.redis_url_help)]
    pub redis_url: String,
    #[arg(skip)]
    service: PhantomData<S>,
}

impl<S: Service> Redis<S> {
    /// The tally, with `pools`' connections and timeout (see
    /// [`connect::redis`]).
    pub fn open(&self, pools: &Pools<S>) -> anyhow::Result<Arc<RedisTally>> {
        connect::redis(&self.redis_url, pools.redis_timeout, pools.redis_pool_size)
    }
}

/// Where to listen.
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct Listen<S: Service> {
    /// The address (`host:port`).
    #[arg(id = "listen", long = "listen", value_name = "LISTEN", env = S::PROFILE.listen.env, default_value = S::PROFILE.listen.default, help = S::PROFILE.listen.help)]
    pub address: String,
    #[arg(skip)]
    service: PhantomData<S>,
}

impl<S: Service> Listen<S> {
    /// Listens on the address, until SIGTERM or SIGINT.
    pub async fn bind(&self) -> anyhow::Result<Serving> {
        Serving::bind(&self.address).await
    }
}

/// How many connections to keep, and how long to wait for Redis.
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct Pools<S: Service> {
    /// PostgreSQL connections.
    #[arg(long, env = S::PROFILE.pg_pool_size.env, default_value = S::PROFILE.pg_pool_size.default, help = S::PROFILE.pg_pool_size.help)]
    pub pg_pool_size: u32,
    /// Redis connections (per node on a Cluster).
    #[arg(long, env = S::PROFILE.redis_pool_size.env, default_value = S::PROFILE.redis_pool_size.default, help = S::PROFILE.redis_pool_size.help)]
    pub redis_pool_size: usize,
    /// Longest wait for a Redis connection or reply.
    #[arg(long, env = S::PROFILE.redis_timeout.env, default_value = S::PROFILE.redis_timeout.default, help = S::PROFILE.redis_timeout.help, value_parser = parse_duration)]
    pub redis_timeout: Duration,
    #[arg(skip)]
    service: PhantomData<S>,
}

/// What a `serve` subcommand (ingest's, query's) takes after its PostgreSQL
/// URL(s), in `--help`'s order: Redis, where to listen, the pools.
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct ServeCommon<S: Service> {
    /// Redis.
    #[command(flatten)]
    pub redis: Redis<S>,
    /// Where to listen.
    #[command(flatten)]
    pub listen: Listen<S>,
    /// Connections and Redis's timeout.
    #[command(flatten)]
    pub pools: Pools<S>,
}

/// Both stores and how patiently to talk to them (the reprocessor's `run`
/// and `reconcile`).
#[derive(Args, Debug, Clone)]
#[group(skip)]
pub struct Stores<S: Service> {
    /// PostgreSQL.
    #[command(flatten)]
    pub database: Postgres<S>,
    /// Redis.
    #[command(flatten)]
    pub redis: Redis<S>,
    /// Connections and Redis's timeout.
    #[command(flatten)]
    pub pools: Pools<S>,
}

impl<S: Service> Stores<S> {
    /// Connects both, refusing a schema this binary does not match. Redis
    /// is connected lazily: a Redis that is down makes calls fail until it
    /// answers.
    pub fn connect(&self) -> anyhow::Result<Connected> {
        let pg = self.database.connect_checked(self.pools.pg_pool_size)?;
        let tally = self.redis.open(&self.pools)?;
        Ok(Connected {
            log: Arc::new(PgLog::new(pg.clone())),
            pg,
            tally,
        })
    }
}

/// The stores, connected.
pub struct Connected {
    /// The PostgreSQL pool.
    pub pg: PgPool,
    /// The report log on it.
    pub log: Arc<PgLog>,
    /// The Redis tally.
    pub tally: Arc<RedisTally>,
}
