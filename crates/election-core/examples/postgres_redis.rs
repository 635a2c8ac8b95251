//! An embedder's production setup: the same engine over the PostgreSQL log
//! (store-pg) and the Redis tally (store-redis), as the services wire them.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run -p election-core --example postgres_redis
//! ```
//!
//! `DATABASE_URL` and `REDIS_URL` default to what the services default to.
//! It migrates that database (as `election-ingest migrate` does) and counts
//! into election `example`: run again, the reports are replays and nothing
//! moves. The two stores go together: a fresh database beside a Redis that
//! already counted `example` fails the final check (the tally holds more
//! than the log), which is what `reconcile` would report.

mod common;

use std::sync::Arc;
use std::time::Duration;

use election_core::{ElectionId, Engine};
use store_pg::PgLog;

/// The services' defaults (`--database-url`, `--redis-url`).
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());

    // Neither opens a connection yet: the first call that needs one does,
    // and waits at most the timeout for it.
    let pool = store_pg::connect(&database_url, 2, Duration::from_secs(2))?;
    let applied = store_pg::migrate(&pool)?;
    if !applied.is_empty() {
        println!("applied migrations: {}", applied.join(", "));
    }
    let tally = store_redis::open(&redis_url, Duration::from_secs(2), 2)?;

    let engine = Engine::new(Arc::new(PgLog::new(pool)), Arc::new(tally));
    let election = ElectionId::parse("example")?;
    common::election_night(&engine, &election)
}
