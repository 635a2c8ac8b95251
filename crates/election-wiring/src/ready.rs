//! What `/readyz` checks (`election_http::health` runs it, with a time
//! limit). Which stores a service needs to be ready differs: ingest still
//! records reports without Redis, the others cannot work without it.

use std::sync::Arc;

use election_http::health::ReadyCheck;
use store_pg::PgPool;
use store_redis::RedisTally;

/// Ready when PostgreSQL and Redis both answer. A Redis whose
/// `maxmemory-policy` may evict keys is named in a note: the service stays
/// ready (reports are still recorded and answered), but nothing is counted
/// until the policy is fixed.
pub fn stores(pg: PgPool, tally: Arc<RedisTally>) -> ReadyCheck {
    Arc::new(move || {
        store_pg::ping(&pg).map_err(|e| format!("postgresql: {e}"))?;
        tally.readiness()
    })
}

/// Ready when PostgreSQL answers; Redis's state (down, or a policy that may
/// evict keys) is a note, followed by `meanwhile`: what the service still
/// does without it.
pub fn postgres(pg: PgPool, tally: Arc<RedisTally>, meanwhile: &'static str) -> ReadyCheck {
    Arc::new(move || {
        store_pg::ping(&pg).map_err(|e| format!("postgresql: {e}"))?;
        Ok(tally
            .readiness()
            .unwrap_or_else(|why| vec![format!("{why}; {meanwhile}")]))
    })
}
