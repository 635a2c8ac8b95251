//! [`PgLog`]: the [`ReportLog`] contract on PostgreSQL tables.
//!
//! Each method is one transaction of one to a few statements, never one
//! statement per report: `record` is the batch path of `crate::record`; claims
//! lease pending rows with `FOR UPDATE SKIP LOCKED`, so any number of
//! reprocessors take disjoint sets without waiting for each other; marks and
//! releases are single `UPDATE ... WHERE id = ANY($1)` statements.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::{BigInt, Int4, Int8, Nullable, Text};
use election_core::{
    BallotBoxId, CityId, Claim, Counter, Counting, Difference, ElectionId, PartyId, Recorded,
    Report, ReportId, ReportLog, Revision, StoreError, Totals,
};

use crate::error::{PgError, TxError, is_retryable};
use crate::pool::PgPool;
use crate::record::record_batch;
use crate::schema::reports;

/// How many times `record` runs its transaction when PostgreSQL reports a
/// deadlock or a serialization failure. Boxes are locked in a fixed order, so
/// deadlocks should not happen at all; this is the safety net.
const RECORD_ATTEMPTS: u32 = 5;

/// Longest interval handed to PostgreSQL for ages and leases (about 100
/// years): a larger `Duration` would overflow its `interval`.
const MAX_INTERVAL_MICROS: i64 = 100 * 366 * 24 * 3600 * 1_000_000;

/// The report log on PostgreSQL. Cheap to share: clone the pool, or hold it in
/// an `Arc<dyn ReportLog>`.
#[derive(Clone, Debug)]
pub struct PgLog {
    /// Every call takes one connection for its whole duration.
    pool: PgPool,
}

impl PgLog {
    /// A log over `pool`, whose schema must be migrated (see
    /// [`crate::schema_status`]).
    pub fn new(pool: PgPool) -> PgLog {
        PgLog { pool }
    }

    /// The pool, for other queries of the same database (history, tokens).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn connection(
        &self,
        doing: impl FnOnce() -> String,
    ) -> Result<PooledConnection<ConnectionManager<PgConnection>>, PgError> {
        self.pool.get().map_err(|source| PgError::Pool {
            doing: doing(),
            source,
        })
    }
}

/// A [`Duration`] as PostgreSQL microseconds, capped.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).map_or(MAX_INTERVAL_MICROS, |m| m.min(MAX_INTERVAL_MICROS))
}

/// One row of the claim query: a claimed revision and one party of its
/// difference.
#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = Int8)]
    id: i64,
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Int4)]
    revision: i32,
    #[diesel(sql_type = Nullable<Text>)]
    party: Option<String>,
    #[diesel(sql_type = Nullable<Int8>)]
    difference: Option<i64>,
}

/// Leases up to `$1` pending revisions recorded at least `$2` microseconds
/// ago whose lease ran out, oldest first, and returns them with their
/// differences from `vote_log` in the same statement. `SKIP LOCKED` lets
/// concurrent claimers pass over each other's rows instead of waiting, so
/// they get disjoint sets.
const CLAIM: &str = "\
WITH claimed AS (
    UPDATE reports
    SET attempts = attempts + 1, leased_until = now() + $3::bigint * interval '1 microsecond'
    WHERE id IN (
        SELECT id FROM reports
        WHERE NOT completed
          AND received_at <= now() - $2::bigint * interval '1 microsecond'
          AND (leased_until IS NULL OR leased_until <= now())
        ORDER BY id
        LIMIT $1
        FOR UPDATE SKIP LOCKED)
    RETURNING id, election_id, ballot_box_id, city, revision
)
SELECT c.id, c.election_id, c.ballot_box_id, c.city, c.revision, v.party, v.difference
FROM claimed c
LEFT JOIN vote_log v ON v.report_id = c.id
ORDER BY c.id, v.party";

/// One row of the counted totals: a city's total change for a party.
#[derive(QueryableByName)]
struct TotalRow {
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Text)]
    party: String,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

/// The sum of the differences of every counted revision of an election, per
/// city and party (SPEC I2: what the Redis counters must hold). `vote_log`
/// has no foreign key to `reports`; the join is explicit.
const COUNTED_TOTALS: &str = "\
SELECT v.city, v.party, sum(v.difference)::bigint AS total
FROM vote_log v
JOIN reports r ON r.id = v.report_id
WHERE v.election_id = $1 AND r.completed
GROUP BY v.city, v.party";

fn corrupt(doing: &str, detail: String) -> PgError {
    PgError::Corrupt {
        doing: doing.to_owned(),
        detail,
    }
}

fn query_error(doing: &str) -> impl FnOnce(diesel::result::Error) -> PgError + '_ {
    move |source| PgError::Query {
        doing: doing.to_owned(),
        source,
    }
}

impl PgLog {
    fn record_inner(&self, reports: &[Report]) -> Result<Vec<Recorded>, PgError> {
        let doing = || format!("recording {} reports", reports.len());
        let started = Instant::now();
        let mut conn = self.connection(doing)?;
        let mut attempt = 1;
        loop {
            // diesel's default transaction: READ COMMITTED, synchronous
            // commit as the connection has it (on; see `crate::pool`).
            match conn.transaction(|conn| record_batch(conn, reports)) {
                Ok(answers) => {
                    tracing::debug!(
                        batch.reports = reports.len(),
                        batch.fresh = answers
                            .iter()
                            .filter(|a| matches!(a, Recorded::Fresh(_)))
                            .count(),
                        batch.attempts = attempt,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "recorded a batch of reports"
                    );
                    return Ok(answers);
                }
                Err(TxError::Diesel(error))
                    if attempt < RECORD_ATTEMPTS && is_retryable(&error) =>
                {
                    tracing::warn!(
                        batch.reports = reports.len(),
                        batch.attempts = attempt,
                        error = %error,
                        "recording a batch failed on a transient conflict; retrying"
                    );
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                    attempt += 1;
                }
                Err(error) => return Err(error.context(doing())),
            }
        }
    }

    fn claim_inner(&self, claim: &Claim) -> Result<Vec<Counting>, PgError> {
        const DOING: &str = "claiming pending reports";
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.connection(|| DOING.to_owned())?;
        let rows: Vec<ClaimedRow> = diesel::sql_query(CLAIM)
            .bind::<BigInt, _>(i64::try_from(claim.limit).unwrap_or(i64::MAX))
            .bind::<BigInt, _>(micros(claim.pending_for))
            .bind::<BigInt, _>(micros(claim.lease))
            .load(&mut conn)
            .map_err(query_error(DOING))?;

        // Rows come ordered by id, one per party: fold each run into one
        // revision.
        let mut claimed: Vec<(Counting, BTreeMap<PartyId, i64>)> = Vec::new();
        for row in rows {
            if claimed.last().is_none_or(|(c, _)| c.report_id.0 != row.id) {
                let bad =
                    |e: election_core::Problem| corrupt(DOING, format!("report {}: {e}", row.id));
                let counting = Counting {
                    report_id: ReportId(row.id),
                    election: ElectionId::parse(&row.election_id).map_err(bad)?,
                    ballot_box: BallotBoxId::parse(&row.ballot_box_id).map_err(bad)?,
                    city: CityId::parse(&row.city).map_err(bad)?,
                    revision: Revision::new(i64::from(row.revision)).map_err(bad)?,
                    difference: Difference::default(),
                };
                claimed.push((counting, BTreeMap::new()));
            }
            let Some((_, parts)) = claimed.last_mut() else {
                continue;
            };
            if let (Some(party), Some(difference)) = (row.party, row.difference) {
                let party = PartyId::parse(&party)
                    .map_err(|e| corrupt(DOING, format!("log of report {}: {e}", row.id)))?;
                parts.insert(party, difference);
            }
        }
        claimed
            .into_iter()
            .map(|(mut counting, parts)| {
                if parts.is_empty() {
                    // Every recorded revision has at least one party; without
                    // its log rows it could only be counted as nothing.
                    return Err(corrupt(
                        DOING,
                        format!("report {} has no vote_log rows", counting.report_id),
                    ));
                }
                counting.difference = Difference::from_parts(parts);
                Ok(counting)
            })
            .collect()
    }

    fn mark_counted_inner(&self, ids: &[ReportId]) -> Result<(), PgError> {
        if ids.is_empty() {
            return Ok(());
        }
        let doing = || format!("marking {} reports counted", ids.len());
        let mut conn = self.connection(doing)?;
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        // Rows already completed are left alone: idempotent, and the first
        // `counted_at` stays.
        diesel::update(
            reports::table
                .filter(reports::id.eq_any(ids))
                .filter(reports::completed.eq(false)),
        )
        .set((
            reports::completed.eq(true),
            reports::counted_at.eq(diesel::dsl::now),
            reports::leased_until.eq(None::<chrono::DateTime<chrono::Utc>>),
        ))
        .execute(&mut conn)
        .map_err(|source| PgError::Query {
            doing: doing(),
            source,
        })?;
        Ok(())
    }

    fn release_inner(&self, ids: &[ReportId], error: &str) -> Result<(), PgError> {
        if ids.is_empty() {
            return Ok(());
        }
        let doing = || format!("releasing {} claimed reports", ids.len());
        let mut conn = self.connection(doing)?;
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        diesel::update(
            reports::table
                .filter(reports::id.eq_any(ids))
                .filter(reports::completed.eq(false)),
        )
        .set((
            reports::leased_until.eq(None::<chrono::DateTime<chrono::Utc>>),
            reports::last_error.eq(Some(error)),
        ))
        .execute(&mut conn)
        .map_err(|source| PgError::Query {
            doing: doing(),
            source,
        })?;
        Ok(())
    }

    fn counted_totals_inner(&self, election: &ElectionId) -> Result<Totals, PgError> {
        let doing = format!("summing the counted reports of election {election}");
        let mut conn = self.connection(|| doing.clone())?;
        let rows: Vec<TotalRow> = diesel::sql_query(COUNTED_TOTALS)
            .bind::<Text, _>(election.as_str())
            .load(&mut conn)
            .map_err(query_error(&doing))?;
        let mut totals = Totals::new();
        for row in rows {
            let bad = |e: election_core::Problem| corrupt(&doing, e.to_string());
            let city = CityId::parse(&row.city).map_err(bad)?;
            let party = PartyId::parse(&row.party).map_err(bad)?;
            totals.add(Counter::National(party.clone()), row.total);
            totals.add(Counter::City(city, party), row.total);
        }
        Ok(totals)
    }

    fn pending_count_inner(&self, election: &ElectionId) -> Result<u64, PgError> {
        let doing = || format!("counting the pending reports of election {election}");
        let mut conn = self.connection(doing)?;
        let pending: i64 = reports::table
            .filter(reports::election_id.eq(election.as_str()))
            .filter(reports::completed.eq(false))
            .count()
            .get_result(&mut conn)
            .map_err(|source| PgError::Query {
                doing: doing(),
                source,
            })?;
        Ok(u64::try_from(pending).unwrap_or(0))
    }
}

impl ReportLog for PgLog {
    fn record(&self, reports: &[Report]) -> Result<Vec<Recorded>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.record_inner(reports)?)
    }

    fn claim_pending(&self, claim: &Claim) -> Result<Vec<Counting>, StoreError> {
        Ok(self.claim_inner(claim)?)
    }

    fn mark_counted(&self, ids: &[ReportId]) -> Result<(), StoreError> {
        Ok(self.mark_counted_inner(ids)?)
    }

    fn release(&self, ids: &[ReportId], error: &str) -> Result<(), StoreError> {
        Ok(self.release_inner(ids, error)?)
    }

    fn counted_totals(&self, election: &ElectionId) -> Result<Totals, StoreError> {
        Ok(self.counted_totals_inner(election)?)
    }

    fn pending_count(&self, election: &ElectionId) -> Result<u64, StoreError> {
        Ok(self.pending_count_inner(election)?)
    }
}
