//! Connecting to the stores, with errors that say which store and where:
//! `connecting to PostgreSQL at postgres://app:***@db/x: ...`. URLs may hold
//! passwords, so they appear only through `election_http::redact`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use election_http::redact;
use store_pg::PgPool;
use store_redis::RedisTally;

/// How long to wait for a PostgreSQL connection before giving up.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool of `size` connections to the PostgreSQL at `url`; `what` names it
/// in the error (`PostgreSQL`, `the history PostgreSQL`). Each connection
/// names `program` as its `application_name` (what `pg_stat_activity`
/// shows) unless the URL or `PGAPPNAME` names another
/// ([`store_pg::with_fallback_application_name`]).
pub fn postgres(what: &str, url: &str, size: u32, program: &str) -> anyhow::Result<PgPool> {
    let named = store_pg::with_fallback_application_name(url, program);
    store_pg::connect(&named, size, PG_CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {what} at {}", redact(url)))
}

/// Refuses a schema this binary does not match (older or newer migrations):
/// the check every service runs before it reads or writes the log.
pub fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    Ok(store_pg::check_schema(pool)?)
}

/// The Redis tally at `url` (a Cluster for a list of nodes), keeping
/// `pool_size` connections per node and waiting `timeout` for each.
pub fn redis(url: &str, timeout: Duration, pool_size: usize) -> anyhow::Result<Arc<RedisTally>> {
    let tally = store_redis::open(url, timeout, pool_size)
        .with_context(|| format!("connecting to Redis at {}", redact(url)))?;
    Ok(Arc::new(tally))
}
