//! [`PgLog`]: the [`ReportLog`] contract on PostgreSQL tables.
//!
//! Each method is one transaction of one to a few statements, never one
//! statement per report: `record` is the batch path of `crate::record`;
//! claims, marks and releases work on the rows of `pending_batches`
//! (`crate::pending`). The statements of the hot path (record, claim, mark)
//! are prepared once per connection (`crate::prepared`). "Counted" means
//! "named by no `pending_batches` row": the sums and pages below exclude the
//! pending ids with an anti-join over that small table.
//!
//! The hot path's statements are raw SQL by design (their text and plans are
//! what `crate::plans` checks); so are the sums, pages and statistics below,
//! which need what diesel's DSL cannot say (`MATERIALIZED` CTEs, a recursive
//! CTE, `FILTER` aggregates). Every raw statement binds typed parameters and
//! loads its rows into a `QueryableByName` struct. The pending count and the
//! stuck examples are plain reads of the `pending_reports` view, through the
//! DSL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::{Array, BigInt, Int4, Int8, Nullable, Text};
use election_core::{
    BallotBoxId, CityId, Claim, Counter, Counting, Difference, ElectionId, LogAudit, PartyId,
    PendingStats, Recorded, Report, ReportId, ReportLog, Revision, StoreError, StuckReport, Totals,
};

use crate::error::{PgError, TxError, is_chain_race, is_retryable, query_error};
use crate::pending;
use crate::pool::PgPool;
use crate::prepared::prepared;
use crate::record::{hot_transaction, record_batch, recording_transaction};
use crate::schema::pending_reports;

/// How many times `record` runs its transaction when PostgreSQL reports a
/// deadlock or a serialization failure. Batches insert their boxes in one
/// order, so deadlocks should not happen at all; this is the safety net.
const RECORD_ATTEMPTS: u32 = 5;

/// How many chain races (`error::is_chain_race`) one `record` call may lose
/// and still retry. A lost race is not a fault: PostgreSQL raises it only
/// once the winner has committed, so every loss is another batch's revision
/// of one of this batch's boxes recorded, and the retry, at once, reads it.
/// `n` batches posting revisions of one box at the same moment settle in at
/// most `n` attempts, the last loser losing `n - 1` times. Counted against
/// the budget of deadlocks above, as they once were, six such batches
/// failed one now and then (`concurrent_new_revisions_of_one_box_form_one_chain`
/// in CI). This bound is only there so that a bug cannot loop for ever.
const CHAIN_RACES: u32 = 100;

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

/// A recorded revision with its differences, as the claim and the counted
/// pages read it.
#[derive(QueryableByName)]
struct RevisionRow {
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
    #[diesel(sql_type = Array<Text>)]
    parties: Vec<String>,
    #[diesel(sql_type = Array<Int8>)]
    differences: Vec<i64>,
}

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
/// city and party (I2: what the Redis counters must hold).
const COUNTED_TOTALS: &str = concat!(
    "WITH ",
    "pending_ids AS MATERIALIZED (SELECT DISTINCT unnest(report_ids) AS id FROM pending_batches)",
    "
SELECT v.city, v.party, sum(v.difference)::bigint AS total
FROM vote_log v
LEFT JOIN pending_ids p ON p.id = v.report_id
WHERE v.election_id = $1 AND p.id IS NULL
GROUP BY v.city, v.party"
);

/// The statement of [`COUNTED_REVISIONS`] in either direction: the
/// comparison with the cursor, the order, and which end of the page the
/// next one starts from.
macro_rules! counted_page {
    ($beyond:literal, $order:literal, $end:literal) => {
        concat!(
            "
WITH page AS (
    SELECT id, election_id, ballot_box_id, city, revision, parties, differences
    FROM reports
    WHERE id ",
            $beyond,
            " $2
    ORDER BY id ",
            $order,
            "
    LIMIT $3
), pending_ids AS MATERIALIZED (
    SELECT DISTINCT unnest(report_ids) AS id FROM pending_batches
)
SELECT p.id, p.election_id, p.ballot_box_id, p.city, p.revision, p.parties, p.differences,
       (SELECT ",
            $end,
            "(id) FROM page) AS last_id
FROM page p
WHERE p.election_id = $1 AND NOT EXISTS (SELECT 1 FROM pending_ids i WHERE i.id = p.id)
UNION ALL
-- A page with nothing counted still says where it ended.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, (SELECT ",
            $end,
            "(id) FROM page)
ORDER BY 1 ",
            $order,
            " NULLS LAST"
        )
    };
}

/// A page of revisions with an id above `$2`, `$3` of them in id order (a
/// range of the primary key, whatever their election), then those of other
/// elections than `$1` and the pending ones left out: `last_id` is the page's
/// last id before that, where the next page starts. Filtering after the
/// `LIMIT` keeps every page a short range of the primary key: with the
/// election in the range's condition, the planner (without statistics) read
/// the whole election through another index and sorted it, for every page
/// (measured: 14 s to page through 119,000 revisions; 240 pages of ~50 ms).
pub(crate) const COUNTED_REVISIONS: &str = counted_page!(">", "", "max");

/// [`COUNTED_REVISIONS`] backwards: a page of revisions with an id below
/// `$2`, newest first; `last_id` is the page's lowest id, below which the
/// next page starts. Backwards on the same primary key: the healing sweep reads
/// what was counted last first (`election_core::heal`).
pub(crate) const COUNTED_REVISIONS_NEWEST_FIRST: &str = counted_page!("<", "DESC", "min");

/// A row of [`COUNTED_REVISIONS`]: a counted revision, or (all NULL but
/// `last_id`) the page's end.
#[derive(QueryableByName)]
struct PageRow {
    #[diesel(sql_type = Nullable<Int8>)]
    id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    election_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    ballot_box_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    city: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    revision: Option<i32>,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    parties: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<Array<Int8>>)]
    differences: Option<Vec<i64>>,
    #[diesel(sql_type = Nullable<Int8>)]
    last_id: Option<i64>,
}

/// One row of the audit: what the log says about one party in one city.
#[derive(QueryableByName)]
struct AuditRow {
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Text)]
    party: String,
    /// The sum of the differences of the counted revisions.
    #[diesel(sql_type = BigInt)]
    counted: i64,
    /// How many counted revisions there are (a sum of 0 is still a counter).
    #[diesel(sql_type = BigInt)]
    counted_revisions: i64,
    /// How many revisions there are, counted or pending.
    #[diesel(sql_type = BigInt)]
    revisions: i64,
    /// How many of them are pending.
    #[diesel(sql_type = BigInt)]
    pending_revisions: i64,
}

/// Per city and party of election `$1`: the counted sum, and how many
/// revisions (counted, all, pending) touch it. Run with [`AUDIT_PENDING`] in
/// one REPEATABLE READ transaction, so both see the same snapshot.
const AUDIT: &str = concat!(
    "WITH ",
    "pending_ids AS MATERIALIZED (SELECT DISTINCT unnest(report_ids) AS id FROM pending_batches)",
    "
SELECT v.city, v.party,
       coalesce(sum(v.difference) FILTER (WHERE p.id IS NULL), 0)::bigint AS counted,
       count(*) FILTER (WHERE p.id IS NULL) AS counted_revisions,
       count(*) AS revisions,
       count(*) FILTER (WHERE p.id IS NOT NULL) AS pending_revisions
FROM vote_log v
LEFT JOIN pending_ids p ON p.id = v.report_id
WHERE v.election_id = $1
GROUP BY v.city, v.party"
);

/// Every election with a ballot box, in id order: a loose index scan of
/// `reports_chain_key` (one index probe per election, however many reports
/// each has).
const ELECTIONS: &str = "\
WITH RECURSIVE e AS (
    (SELECT election_id FROM reports ORDER BY election_id LIMIT 1)
    UNION ALL
    SELECT (SELECT b.election_id FROM reports b
            WHERE b.election_id > e.election_id
            ORDER BY b.election_id LIMIT 1)
    FROM e
    WHERE e.election_id IS NOT NULL
)
SELECT election_id FROM e WHERE election_id IS NOT NULL";

#[derive(QueryableByName)]
struct ElectionRow {
    #[diesel(sql_type = Text)]
    election_id: String,
}

/// How many revisions of `election` are pending.
fn pending_in(conn: &mut PgConnection, election: &ElectionId) -> QueryResult<u64> {
    let n: i64 = pending_reports::table
        .filter(pending_reports::election_id.eq(election.as_str()))
        .count()
        .get_result(conn)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The pending revisions of every election: how many, the oldest's age in
/// microseconds (NULL when none), and how many were claimed at least `$1`
/// times. Reads only `pending_batches`.
const PENDING_STATS: &str = "\
SELECT coalesce(sum(cardinality(report_ids)), 0)::bigint AS pending,
       (extract(epoch FROM now() - min(recorded_at)) * 1000000)::bigint AS oldest_micros,
       coalesce(sum(cardinality(report_ids)) FILTER (WHERE attempts >= $1), 0)::bigint AS stuck,
       coalesce(sum(cardinality(report_ids)) FILTER (WHERE leased_until >= $2), 0)::bigint
         AS quarantined
FROM pending_batches";

#[derive(QueryableByName)]
struct PendingRow {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    oldest_micros: Option<i64>,
    #[diesel(sql_type = BigInt)]
    stuck: i64,
    #[diesel(sql_type = BigInt)]
    quarantined: i64,
}

/// Up to `limit` revisions claimed at least `attempts` times, oldest first.
fn stuck(conn: &mut PgConnection, attempts: i32, limit: i64) -> QueryResult<Vec<StuckRow>> {
    pending_reports::table
        .filter(pending_reports::attempts.ge(attempts))
        .order(pending_reports::report_id)
        .limit(limit)
        .select(StuckRow::as_select())
        .load(conn)
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = pending_reports, check_for_backend(diesel::pg::Pg))]
struct StuckRow {
    #[diesel(column_name = report_id)]
    id: i64,
    election_id: String,
    ballot_box_id: String,
    revision: i32,
    attempts: i32,
    last_error: Option<String>,
}

/// Turns revision rows into [`Counting`]s.
fn countings(rows: Vec<RevisionRow>, doing: &str) -> Result<Vec<Counting>, PgError> {
    rows.into_iter()
        .map(|row| counting(row).map_err(|detail| corrupt(doing, detail)))
        .collect()
}

/// One revision row as a [`Counting`], or what is wrong with it.
fn counting(row: RevisionRow) -> Result<Counting, String> {
    let id = row.id;
    let bad = |e: election_core::Problem| format!("report {id}: {e}");
    if row.parties.is_empty() || row.parties.len() != row.differences.len() {
        // Every recorded revision has at least one party; without them it
        // could only be counted as nothing.
        return Err(format!(
            "report {id} has {} parties and {} differences",
            row.parties.len(),
            row.differences.len()
        ));
    }
    let mut parts = BTreeMap::new();
    for (party, difference) in row.parties.iter().zip(&row.differences) {
        parts.insert(PartyId::parse(party).map_err(bad)?, *difference);
    }
    Ok(Counting {
        report_id: ReportId(id),
        election: ElectionId::parse(&row.election_id).map_err(bad)?,
        ballot_box: BallotBoxId::parse(&row.ballot_box_id).map_err(bad)?,
        city: CityId::parse(&row.city).map_err(bad)?,
        revision: Revision::new(i64::from(row.revision)).map_err(bad)?,
        difference: Difference::from_parts(parts),
    })
}

fn corrupt(doing: &str, detail: String) -> PgError {
    PgError::Corrupt {
        doing: doing.to_owned(),
        detail,
    }
}

impl PgLog {
    fn record_inner(&self, reports: &[Report]) -> Result<Vec<Recorded>, PgError> {
        let doing = || format!("recording {} reports", reports.len());
        let started = Instant::now();
        let mut conn = self.connection(doing)?;
        let mut attempt = 1;
        let mut races_lost = 0;
        loop {
            // READ COMMITTED, and a commit that waits for its flush whatever
            // the connection's `synchronous_commit` says
            // (`recording_transaction`).
            match recording_transaction(&mut conn, reports, |conn| record_batch(conn, reports)) {
                Ok(answers) => {
                    tracing::debug!(
                        batch.reports = reports.len(),
                        batch.fresh = answers
                            .iter()
                            .filter(|a| matches!(a, Recorded::Fresh(_)))
                            .count(),
                        batch.attempts = attempt,
                        batch.races_lost = races_lost,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "recorded a batch of reports"
                    );
                    return Ok(answers);
                }
                Err(TxError::Diesel(error))
                    if is_chain_race(&error) && races_lost < CHAIN_RACES =>
                {
                    // The winner has committed: decide again now, no wait.
                    races_lost += 1;
                    tracing::debug!(
                        batch.reports = reports.len(),
                        batch.races_lost = races_lost,
                        "another batch recorded a revision of one of this batch's boxes first; \
                         deciding again"
                    );
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
        hot_transaction(&mut conn, |conn| -> Result<Vec<Counting>, TxError> {
            let ids = pending::claim(conn, claim)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let rows: Vec<RevisionRow> = prepared(pending::CLAIMED_REPORTS, |q| {
                q.bind::<Array<Int8>, _>(ids.as_slice())
            })
            .load(conn)?;
            // A claimed revision that cannot be read back would fail every
            // claim that takes it, and its batch-mates with it: set it aside.
            let found: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
            let mut unreadable: Vec<(i64, String)> = ids
                .iter()
                .filter(|id| !found.contains(id))
                .map(|id| (*id, "its reports row is missing".to_owned()))
                .collect();
            let mut read = Vec::with_capacity(rows.len());
            for row in rows {
                let id = row.id;
                match counting(row) {
                    Ok(counting) => read.push(counting),
                    Err(problem) => unreadable.push((id, problem)),
                }
            }
            if !unreadable.is_empty() {
                pending::quarantine(conn, &unreadable)?;
            }
            Ok(read)
        })
        .map_err(|error| error.context(DOING))
    }

    fn mark_counted_inner(&self, ids: &[ReportId]) -> Result<(), PgError> {
        if ids.is_empty() {
            return Ok(());
        }
        let doing = || format!("marking {} reports counted", ids.len());
        let mut conn = self.connection(doing)?;
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        pending::mark_counted(&mut conn, &ids).map_err(|error| error.context(doing()))
    }

    fn release_inner(&self, ids: &[ReportId], error: &str) -> Result<(), PgError> {
        if ids.is_empty() {
            return Ok(());
        }
        let doing = || format!("releasing {} claimed reports", ids.len());
        let mut conn = self.connection(doing)?;
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        pending::release(&mut conn, &ids, error).map_err(|e| e.context(doing()))
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

    pub(crate) fn elections_inner(&self) -> Result<Vec<ElectionId>, PgError> {
        const DOING: &str = "listing the elections";
        let mut conn = self.connection(|| DOING.to_owned())?;
        let rows: Vec<ElectionRow> = diesel::sql_query(ELECTIONS)
            .load(&mut conn)
            .map_err(query_error(DOING))?;
        rows.into_iter()
            .map(|row| {
                ElectionId::parse(&row.election_id).map_err(|e| corrupt(DOING, e.to_string()))
            })
            .collect()
    }

    fn pending_count_inner(&self, election: &ElectionId) -> Result<u64, PgError> {
        let doing = format!("counting the pending reports of election {election}");
        let mut conn = self.connection(|| doing.clone())?;
        pending_in(&mut conn, election).map_err(query_error(&doing))
    }
}

impl PgLog {
    /// A page of counted revisions beyond `cursor`: above it in id order,
    /// or below it newest first.
    fn counted_revisions_inner(
        &self,
        election: &ElectionId,
        cursor: Option<ReportId>,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Counting>, PgError> {
        let doing = format!("reading the counted reports of election {election}");
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.connection(|| doing.clone())?;
        let (statement, start) = if newest_first {
            (COUNTED_REVISIONS_NEWEST_FIRST, i64::MAX)
        } else {
            (COUNTED_REVISIONS, 0)
        };
        // A page whose revisions are all pending is skipped, not returned
        // empty: an empty page means the end.
        let mut cursor = cursor.map_or(start, |id| id.0);
        loop {
            let rows: Vec<PageRow> = diesel::sql_query(statement)
                .bind::<Text, _>(election.as_str())
                .bind::<BigInt, _>(cursor)
                .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
                .load(&mut conn)
                .map_err(query_error(&doing))?;
            let Some(last) = rows.iter().find_map(|row| row.last_id) else {
                return Ok(Vec::new());
            };
            let revisions: Vec<RevisionRow> = rows
                .into_iter()
                .filter_map(|row| {
                    Some(RevisionRow {
                        id: row.id?,
                        election_id: row.election_id?,
                        ballot_box_id: row.ballot_box_id?,
                        city: row.city?,
                        revision: row.revision?,
                        parties: row.parties?,
                        differences: row.differences?,
                    })
                })
                .collect();
            if !revisions.is_empty() {
                return countings(revisions, &doing);
            }
            cursor = last;
        }
    }

    fn audit_inner(&self, election: &ElectionId) -> Result<LogAudit, PgError> {
        let doing = format!("auditing the log of election {election}");
        let mut conn = self.connection(|| doing.clone())?;
        // Both statements see one snapshot: the counters, their revisions and
        // the pending ones must agree (see election_core::reconcile).
        let (rows, pending) = conn
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(|conn| -> Result<(Vec<AuditRow>, u64), TxError> {
                let rows = diesel::sql_query(AUDIT)
                    .bind::<Text, _>(election.as_str())
                    .load(conn)?;
                Ok((rows, pending_in(conn, election)?))
            })
            .map_err(|error| error.context(doing.clone()))?;
        let mut audit = LogAudit {
            pending,
            ..LogAudit::default()
        };
        for row in rows {
            let bad = |e: election_core::Problem| corrupt(&doing, e.to_string());
            let city = CityId::parse(&row.city).map_err(bad)?;
            let party = PartyId::parse(&row.party).map_err(bad)?;
            for counter in [Counter::National(party.clone()), Counter::City(city, party)] {
                if row.counted_revisions > 0 {
                    audit.counted.add(counter.clone(), row.counted);
                }
                *audit
                    .revisions_per_counter
                    .entry(counter.clone())
                    .or_insert(0) += u64::try_from(row.revisions).unwrap_or(0);
                if row.pending_revisions > 0 {
                    audit.pending_counters.insert(counter);
                }
            }
        }
        Ok(audit)
    }

    fn pending_stats_inner(&self, stuck_attempts: u32) -> Result<PendingStats, PgError> {
        const DOING: &str = "describing the pending reports";
        let mut conn = self.connection(|| DOING.to_owned())?;
        let attempts = i32::try_from(stuck_attempts).unwrap_or(i32::MAX);
        let rows: Vec<PendingRow> = diesel::sql_query(PENDING_STATS)
            .bind::<Int4, _>(attempts)
            .bind::<diesel::sql_types::Timestamptz, _>(pending::QUARANTINED)
            .load(&mut conn)
            .map_err(query_error(DOING))?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(PendingStats::default());
        };
        let mut stats = PendingStats {
            pending: u64::try_from(row.pending).unwrap_or(0),
            oldest_age: row
                .oldest_micros
                .map(|micros| Duration::from_micros(u64::try_from(micros).unwrap_or(0))),
            stuck: u64::try_from(row.stuck).unwrap_or(0),
            stuck_examples: Vec::new(),
            quarantined: u64::try_from(row.quarantined).unwrap_or(0),
        };
        if stats.stuck > 0 {
            let rows = stuck(&mut conn, attempts, PendingStats::STUCK_EXAMPLES as i64)
                .map_err(query_error(DOING))?;
            for row in rows {
                let bad =
                    |e: election_core::Problem| corrupt(DOING, format!("report {}: {e}", row.id));
                stats.stuck_examples.push(StuckReport {
                    report_id: ReportId(row.id),
                    election: ElectionId::parse(&row.election_id).map_err(bad)?,
                    ballot_box: BallotBoxId::parse(&row.ballot_box_id).map_err(bad)?,
                    revision: Revision::new(i64::from(row.revision)).map_err(bad)?,
                    attempts: u32::try_from(row.attempts).unwrap_or(0),
                    last_error: row.last_error,
                });
            }
        }
        Ok(stats)
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

    fn counted_revisions(
        &self,
        election: &ElectionId,
        after: Option<ReportId>,
        limit: usize,
    ) -> Result<Vec<Counting>, StoreError> {
        Ok(self.counted_revisions_inner(election, after, limit, false)?)
    }

    fn counted_revisions_newest_first(
        &self,
        election: &ElectionId,
        before: Option<ReportId>,
        limit: usize,
    ) -> Result<Option<Vec<Counting>>, StoreError> {
        Ok(Some(
            self.counted_revisions_inner(election, before, limit, true)?,
        ))
    }

    fn audit(&self, election: &ElectionId) -> Result<LogAudit, StoreError> {
        Ok(self.audit_inner(election)?)
    }

    fn pending_stats(&self, stuck_attempts: u32) -> Result<PendingStats, StoreError> {
        Ok(self.pending_stats_inner(stuck_attempts)?)
    }

    fn elections(&self) -> Result<Vec<ElectionId>, StoreError> {
        Ok(self.elections_inner()?)
    }
}
