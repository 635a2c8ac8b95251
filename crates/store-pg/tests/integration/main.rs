//! store-pg against a real PostgreSQL: the shared contract suite, the
//! migrations, and what only a real server can show (batches beyond the
//! bind-parameter limit, concurrent batches over the same boxes, an
//! unreachable server).
//!
//! Every test works in a schema of its own (`election_test_support::pg::PgSchema`), so
//! they run in parallel on one server. PostgreSQL must be running: see
//! `DATABASE_URL` in election-test-support.

mod batches;
mod definitions;
mod migrations;
mod schema;
mod seals;
mod support;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use election_core::memory::MemoryTally;
use election_core::{History, ReportLog, StoreError, Tally, contract};
use store_pg::{PgError, PgHistory, PgLog};

use crate::support::{Migrated, SchemaLog};

#[test]
fn pg_log_passes_the_report_log_contract() {
    // Claims are not filtered by election, so every check needs a log of its
    // own: a fresh, migrated schema each time.
    contract::report_log(&|| Arc::new(SchemaLog::new(8)) as Arc<dyn ReportLog>);
    // The contract checks pages newest first where a log offers them: this
    // one does (healing relies on it).
    let log = SchemaLog::new(1);
    let none = contract::unique_election("none");
    assert_eq!(
        log.counted_revisions_newest_first(&none, None, 1).unwrap(),
        Some(Vec::new())
    );
}

#[test]
fn pg_history_passes_the_history_contract() {
    // One schema for every check: they use elections of their own and only
    // read what they recorded.
    let migrated = Migrated::new(4);
    contract::history(&|| {
        (
            Arc::new(PgLog::new(migrated.pool.clone())) as Arc<dyn ReportLog>,
            Arc::new(PgHistory::new(migrated.pool.clone())) as Arc<dyn History>,
        )
    });
}

#[test]
fn pg_log_passes_the_engine_contract() {
    contract::engine(&|| {
        (
            Arc::new(SchemaLog::new(4)) as Arc<dyn ReportLog>,
            Arc::new(MemoryTally::new()) as Arc<dyn Tally>,
        )
    });
}

#[test]
fn an_unreachable_server_is_unavailable_quickly() {
    let started = Instant::now();
    // Port 1 refuses connections at once; the pool gives up after its
    // timeout instead of hanging.
    let pool = store_pg::connect(
        "postgres://postgres@127.0.0.1:1/x",
        2,
        Duration::from_secs(1),
    )
    .expect("building a pool opens no connection");
    let log = PgLog::new(pool.clone());
    let e = contract::unique_election("down");
    let error = log.record(&contract::seed_reports(&e)).unwrap_err();
    match &error {
        StoreError::Unavailable { store, doing, .. } => {
            assert_eq!(*store, "postgresql");
            assert_eq!(doing, "recording 3 reports");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(log.pending_count(&e).unwrap_err().is_unavailable());
    let migrate_error = store_pg::migrate(&pool).unwrap_err();
    assert!(
        matches!(migrate_error, PgError::Pool { .. }) && migrate_error.is_unavailable(),
        "{migrate_error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn impossible_pool_settings_are_errors_not_panics() {
    let url = "postgres://postgres@127.0.0.1:1/x";
    assert!(matches!(
        store_pg::connect(url, 0, Duration::from_secs(1)),
        Err(PgError::Config(_))
    ));
    assert!(matches!(
        store_pg::connect(url, 1, Duration::ZERO),
        Err(PgError::Config(_))
    ));
}
