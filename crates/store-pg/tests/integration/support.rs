//! Helpers: a migrated schema with a pool on it, and raw SQL for assertions.

use std::time::Duration;

use diesel::{PgConnection, QueryableByName, RunQueryDsl, sql_types};
use election_core::{
    Claim, Counting, ElectionId, LogAudit, PendingStats, Recorded, Report, ReportId, ReportLog,
    StoreError, Totals,
};
use election_test_support::pg::PgSchema;
use store_pg::{PgLog, PgPool};

/// A pool on a fresh schema, migrated. The schema lives as long as the value.
pub struct Migrated {
    /// Dropped before the schema (fields drop in order).
    pub pool: PgPool,
    _schema: PgSchema,
}

impl Migrated {
    pub fn new(pool_size: u32) -> Migrated {
        let schema = PgSchema::new();
        let pool = store_pg::connect(schema.url(), pool_size, Duration::from_secs(10))
            .expect("building a pool");
        store_pg::migrate(&pool).expect("migrating a fresh schema");
        Migrated {
            pool,
            _schema: schema,
        }
    }
}

/// A [`PgLog`] that owns its schema, for the contract suite's factories.
pub struct SchemaLog {
    log: PgLog,
    /// Kept so the schema is dropped after the log's pool.
    _migrated: Migrated,
}

impl SchemaLog {
    pub fn new(pool_size: u32) -> SchemaLog {
        let migrated = Migrated::new(pool_size);
        SchemaLog {
            log: PgLog::new(migrated.pool.clone()),
            _migrated: migrated,
        }
    }
}

impl ReportLog for SchemaLog {
    fn record(&self, reports: &[Report]) -> Result<Vec<Recorded>, StoreError> {
        self.log.record(reports)
    }
    fn claim_pending(&self, claim: &Claim) -> Result<Vec<Counting>, StoreError> {
        self.log.claim_pending(claim)
    }
    fn mark_counted(&self, ids: &[ReportId]) -> Result<(), StoreError> {
        self.log.mark_counted(ids)
    }
    fn release(&self, ids: &[ReportId], error: &str) -> Result<(), StoreError> {
        self.log.release(ids, error)
    }
    fn counted_totals(&self, election: &ElectionId) -> Result<Totals, StoreError> {
        self.log.counted_totals(election)
    }
    fn pending_count(&self, election: &ElectionId) -> Result<u64, StoreError> {
        self.log.pending_count(election)
    }
    fn counted_revisions(
        &self,
        election: &ElectionId,
        after: Option<ReportId>,
        limit: usize,
    ) -> Result<Vec<Counting>, StoreError> {
        self.log.counted_revisions(election, after, limit)
    }
    fn counted_revisions_newest_first(
        &self,
        election: &ElectionId,
        before: Option<ReportId>,
        limit: usize,
    ) -> Result<Option<Vec<Counting>>, StoreError> {
        self.log
            .counted_revisions_newest_first(election, before, limit)
    }
    fn audit(&self, election: &ElectionId) -> Result<LogAudit, StoreError> {
        self.log.audit(election)
    }
    fn pending_stats(&self, stuck_attempts: u32) -> Result<PendingStats, StoreError> {
        self.log.pending_stats(stuck_attempts)
    }
    fn elections(&self) -> Result<Vec<ElectionId>, StoreError> {
        self.log.elections()
    }
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = sql_types::BigInt)]
    n: i64,
}

/// Runs a query returning one `bigint` column named `n`.
pub fn number(pool: &PgPool, sql: &str) -> i64 {
    number_on(&mut pool.get().expect("a connection"), sql)
}

/// [`number`] on a connection the test holds (inside its transaction).
pub fn number_on(conn: &mut PgConnection, sql: &str) -> i64 {
    let rows: Vec<Number> = diesel::sql_query(sql)
        .load(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows[0].n
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = sql_types::Text)]
    line: String,
}

/// Runs a query returning one `text` column named `line`.
pub fn lines(pool: &PgPool, sql: &str) -> Vec<String> {
    let mut conn = pool.get().expect("a connection");
    let rows: Vec<Line> = diesel::sql_query(sql)
        .load(&mut conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| r.line).collect()
}

/// Runs a statement.
pub fn execute(pool: &PgPool, sql: &str) {
    execute_on(&mut pool.get().expect("a connection"), sql);
}

/// [`execute`] on a connection the test holds (a transaction it opened).
pub fn execute_on(conn: &mut PgConnection, sql: &str) {
    diesel::sql_query(sql)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The fresh answer's counting, or a panic naming what came instead.
#[track_caller]
pub fn fresh(answer: &Recorded) -> &Counting {
    match answer {
        Recorded::Fresh(counting) => counting,
        other => panic!("expected a fresh record, got {other:?}"),
    }
}
