//! The subcommand: `serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use election_core::History;
use election_http::health::ReadyCheck;
use election_http::layers::CorsOrigins;
use store_pg::{PgHistory, PgPool};
use store_redis::RedisTally;

use crate::cli::Serve;
use crate::{Services, Settings};
use election_http::redact;

/// How long to wait for a PostgreSQL connection before giving up.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait of a first request for an election's first snapshot.
const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses to serve on a schema this binary does not match (the history
/// queries name its tables and columns): the check every service shares.
pub fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    Ok(store_pg::check_schema(pool)?)
}

/// What `/readyz` checks: PostgreSQL and Redis both answer. A Redis whose
/// `maxmemory-policy` may evict keys is named in a note: the service stays
/// ready (reports are still recorded and answered), but nothing is counted
/// until the policy is fixed.
pub fn ready_check(pg: PgPool, tally: Arc<RedisTally>) -> ReadyCheck {
    Arc::new(move || {
        store_pg::ping(&pg).map_err(|e| format!("postgresql: {e}"))?;
        tally.readiness()
    })
}

/// `election-query serve`, on a runtime of its own.
pub fn serve_blocking(args: Serve) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

/// `election-query serve`.
pub async fn serve(args: Serve) -> anyhow::Result<()> {
    for (name, value) in [
        (
            "--snapshot-interval (SNAPSHOT_INTERVAL)",
            args.snapshot_interval,
        ),
        ("--keep-alive (KEEP_ALIVE)", args.keep_alive),
        (
            "--header-timeout (HTTP_HEADER_TIMEOUT)",
            args.header_timeout,
        ),
        (
            "--elections-refresh (ELECTIONS_REFRESH)",
            args.elections_refresh,
        ),
    ] {
        if value.is_zero() {
            bail!("{name} must be more than 0");
        }
    }
    if !(args.flag_correction_share.is_finite() && args.flag_correction_share > 0.0) {
        bail!(
            "--flag-correction-share must be a positive number (0.2: a correction moving a box's total by more than 20% is flagged)"
        );
    }
    let cors_origins = CorsOrigins::parse(&args.cors_allowed_origins)
        .map_err(|why| anyhow::anyhow!("--cors-allowed-origins: {why}"))?;
    let pg = store_pg::connect(&args.database_url, args.pg_pool_size, PG_CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(&args.database_url)))?;
    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || check_schema(&pg)).await??;
    }
    // History from a replica, when one is given: the same pool size; its
    // schema is the primary's, replicated, so it is not checked again.
    let history = match &args.history_database_url {
        Some(url) => Some(
            store_pg::connect(url, args.pg_pool_size, PG_CONNECT_TIMEOUT).with_context(|| {
                format!("connecting to the history PostgreSQL at {}", redact(url))
            })?,
        ),
        None => None,
    };
    let redis_timeout = args.redis_timeout;
    let tally = Arc::new(
        store_redis::open(&args.redis_url, redis_timeout, args.redis_pool_size)
            .with_context(|| format!("connecting to Redis at {}", redact(&args.redis_url)))?,
    );
    let ready = ready_check(pg.clone(), Arc::clone(&tally));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        listen.addr = %listener.local_addr()?,
        database.url = %redact(&args.database_url),
        history.url = %args.history_database_url.as_deref().map_or_else(|| "(DATABASE_URL)".to_owned(), redact),
        redis.url = %redact(&args.redis_url),
        snapshot.interval = ?args.snapshot_interval,
        "election-query serving; dashboard at http://{}/",
        listener.local_addr()?
    );
    let catalog: Arc<dyn History> = Arc::new(PgHistory::new(pg.clone()));
    let history: Arc<dyn History> = match history {
        Some(replica) => Arc::new(PgHistory::new(replica)),
        None => Arc::clone(&catalog),
    };
    let services = Services {
        redis: Some(Arc::clone(&tally)),
        tally,
        pg,
        catalog,
        history,
        ready,
    };
    let settings = Settings {
        snapshot_interval: args.snapshot_interval,
        idle_after: args.idle_after,
        max_elections: args.max_elections,
        first_snapshot_timeout: FIRST_SNAPSHOT_TIMEOUT,
        keep_alive: args.keep_alive,
        stream_history: args.stream_history,
        timeline_cache: args.timeline_cache_ttl,
        timeline_full_refresh: args.timeline_full_refresh,
        flag_correction_share: args.flag_correction_share,
        serve: election_http::ServeConfig {
            header_read_timeout: args.header_timeout,
        },
        live_max_age_secs: args.cache_max_age.as_secs(),
        history_max_age_secs: args.history_cache_max_age.as_secs(),
        elections_refresh: args.elections_refresh,
        cors_origins,
    };
    crate::run(
        listener,
        services,
        settings,
        election_http::shutdown::signal(),
    )
    .await?;
    tracing::info!("election-query stopped");
    Ok(())
}
