//! The subcommand: `serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use election_core::History;
use election_http::layers::CorsOrigins;
use election_http::redact;
use election_wiring::service::{Query, Service};
use store_pg::PgHistory;

use crate::cli::Serve;
use crate::{Services, Settings};

/// What `/readyz` checks: PostgreSQL and Redis both answer (live totals
/// need Redis, history PostgreSQL).
pub use election_wiring::ready::stores as ready_check;

/// Longest wait of a first request for an election's first snapshot.
const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// `election-query serve`.
pub async fn serve(args: Serve) -> anyhow::Result<()> {
    for (name, value) in [
        (
            "--snapshot-interval (SNAPSHOT_INTERVAL)",
            args.snapshot_interval,
        ),
        (
            "--full-read-interval (FULL_READ_INTERVAL)",
            args.full_read_interval,
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
    let shared = &args.shared;
    let pg_pool_size = shared.pools.pg_pool_size;
    let pg = args.database.connect_checked_blocking(pg_pool_size).await?;
    // History from a replica, when one is given: the same pool size; its
    // schema is the primary's, replicated, so it is not checked again.
    let history = args
        .history_database_url
        .as_deref()
        .map(|url| {
            election_wiring::connect::postgres(
                "the history PostgreSQL",
                url,
                pg_pool_size,
                <Query as Service>::PROFILE.name,
            )
        })
        .transpose()?;
    let tally = shared.redis.open(&shared.pools)?;
    let ready = ready_check(pg.clone(), Arc::clone(&tally));
    let serving = shared.listen.bind().await?;
    tracing::info!(
        listen.addr = %serving.local_addr()?,
        database.url = %redact(&args.database.database_url),
        history.url = %args.history_database_url.as_deref().map_or_else(|| "(DATABASE_URL)".to_owned(), redact),
        redis.url = %redact(&shared.redis.redis_url),
        snapshot.interval = ?args.snapshot_interval,
        runtime.workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "election-query serving; dashboard at http://{}/",
        serving.local_addr()?
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
        full_read_interval: args.full_read_interval,
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
    crate::run(serving, services, settings).await?;
    tracing::info!("election-query stopped");
    Ok(())
}
