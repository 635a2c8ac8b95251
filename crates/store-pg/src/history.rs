//! History and audit reads for `election-query`: election-core's
//! [`History`] port over PostgreSQL ([`PgHistory`]): which cities reported
//! most in a time window, ballot boxes in the order they first reported,
//! votes per time bucket, the full log of every revision, the totals as they
//! stood at an instant, flags, the known elections and the seals' heads.
//!
//! Each method is a plain function on a [`PgPool`]: they read only, each is
//! one statement on one pooled connection (the audit export is paged, one
//! statement per page), and they never hold a connection while the caller
//! waits on something else, so a slow HTTP client cannot pin a database
//! connection. The values they return are the core's (`election_core::history`).
//!
//! Every sum here is a sum of `vote_log.difference`: the change a revision
//! brought to the counters (new minus the previous latest revision of its
//! box). So a correction counts as its difference, possibly negative, and the
//! cumulative sums end exactly at the boxes' latest revisions. PostgreSQL is
//! the record of everything *recorded*: a revision that Redis has not counted
//! yet (named by a `pending_batches` row) already shows here.
//!
//! The indexes these statements rely on, and why each is fast on millions of
//! rows, are noted on each statement.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4, Nullable, Text, Timestamptz};
use election_core::history::{
    AuditCursor, AuditPage, AuditRow, BucketVotes, Buckets, CityActivity, ElectionSummary,
    FirstReport, Flag, FlagReason, History, SealCheckpoint, SealHeads, StoodAt, Window,
};
use election_core::{BallotBoxId, CityId, ElectionId, PartyId, Problem, StoreError};

use crate::error::{PgError, connection, query_error};
use crate::pool::PgPool;
use crate::seal;

/// The [`History`] port over a PostgreSQL pool: the primary, or a streaming
/// replica that takes these scans off it (every call only reads).
#[derive(Clone)]
pub struct PgHistory {
    pool: PgPool,
}

impl PgHistory {
    /// History read through `pool`.
    pub fn new(pool: PgPool) -> PgHistory {
        PgHistory { pool }
    }
}

impl std::fmt::Debug for PgHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHistory").finish_non_exhaustive()
    }
}

impl History for PgHistory {
    fn cities_by_votes(
        &self,
        election: &ElectionId,
        window: Window,
    ) -> Result<Vec<CityActivity>, StoreError> {
        Ok(cities_by_votes(&self.pool, election, window)?)
    }

    fn first_reports(
        &self,
        election: &ElectionId,
        limit: u32,
    ) -> Result<Vec<FirstReport>, StoreError> {
        Ok(first_reports(&self.pool, election, limit)?)
    }

    fn votes_per_bucket(
        &self,
        election: &ElectionId,
        bucket_seconds: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Buckets, StoreError> {
        Ok(votes_per_bucket(
            &self.pool,
            election,
            bucket_seconds,
            since,
        )?)
    }

    fn audit_page(
        &self,
        election: &ElectionId,
        after: Option<AuditCursor>,
        reports_per_page: u32,
    ) -> Result<AuditPage, StoreError> {
        Ok(audit_page(&self.pool, election, after, reports_per_page)?)
    }

    fn known_elections(&self) -> Result<Vec<ElectionId>, StoreError> {
        Ok(known_elections(&self.pool)?)
    }

    fn election_exists(&self, election: &ElectionId) -> Result<bool, StoreError> {
        Ok(election_exists(&self.pool, election)?)
    }

    fn elections_summary(&self) -> Result<Vec<ElectionSummary>, StoreError> {
        Ok(elections_summary(&self.pool)?)
    }

    fn stood_at(&self, election: &ElectionId, at: DateTime<Utc>) -> Result<StoodAt, StoreError> {
        Ok(stood_at(&self.pool, election, at)?)
    }

    fn flags(&self, election: &ElectionId, correction_share: f64) -> Result<Vec<Flag>, StoreError> {
        Ok(flags(&self.pool, election, correction_share)?)
    }

    /// The seals' heads (store-pg `seal::audit_heads`).
    fn seal_heads(
        &self,
        election: &ElectionId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<SealHeads, StoreError> {
        let heads = seal::audit_heads(&self.pool, election, before, limit)?;
        let checkpoint = |c: seal::Checkpoint| SealCheckpoint {
            sealed_through_report_id: c.sealed_through_report_id,
            sealed_count: c.sealed_count,
            head: c.head.0,
            sealed_at: c.sealed_at,
        };
        Ok(SealHeads {
            latest: heads.latest.map(checkpoint),
            earlier: heads.earlier.into_iter().map(checkpoint).collect(),
            more: heads.more,
        })
    }
}

fn corrupt(doing: &str) -> impl Fn(Problem) -> PgError + '_ {
    move |problem| PgError::Corrupt {
        doing: doing.to_owned(),
        detail: problem.to_string(),
    }
}

/// Cities by net votes recorded in a window.
///
/// Reads `vote_log` through its `(election_id, reported_at)` index, so only
/// the window's rows are touched, however long the election's history. The
/// inner aggregate makes one row per revision (a revision's log rows share
/// its city and instant), so counting revisions needs no `DISTINCT` sort: two
/// hash aggregates, measured at ~0.7 s for a window of 1,000,000 log rows
/// against ~1.7 s with `count(DISTINCT report_id)`. Open bounds are
/// infinities rather than `$2 IS NULL OR ...`, so even a generic (cached)
/// plan keeps an index range on `reported_at`. `COLLATE "C"` makes the
/// tie-break byte order whatever the database's collation.
const CITIES_IN_WINDOW: &str = "\
SELECT city, sum(votes)::bigint AS votes, count(*)::bigint AS reports
FROM (
    SELECT city, report_id, sum(difference) AS votes
    FROM vote_log
    WHERE election_id = $1
      AND reported_at >= coalesce($2::timestamptz, '-infinity')
      AND reported_at < coalesce($3::timestamptz, 'infinity')
    GROUP BY city, report_id
) per_revision
GROUP BY city
ORDER BY votes DESC, city COLLATE \"C\"";

#[derive(QueryableByName)]
struct CityRow {
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = BigInt)]
    votes: i64,
    #[diesel(sql_type = BigInt)]
    reports: i64,
}

/// The cities whose revisions recorded in `window` brought the most votes,
/// most first, ties by city name (byte order). Cities with nothing recorded
/// in the window are absent; an empty window gives an empty list.
fn cities_by_votes(
    pool: &PgPool,
    election: &ElectionId,
    window: Window,
) -> Result<Vec<CityActivity>, PgError> {
    let doing = format!("ranking the cities of election {election} by votes in a window");
    let mut conn = connection(pool, &doing)?;
    let rows: Vec<CityRow> = diesel::sql_query(CITIES_IN_WINDOW)
        .bind::<Text, _>(election.as_str())
        .bind::<Nullable<Timestamptz>, _>(window.from)
        .bind::<Nullable<Timestamptz>, _>(window.to)
        .load(&mut conn)
        .map_err(query_error(&doing))?;
    rows.into_iter()
        .map(|row| {
            Ok(CityActivity {
                city: CityId::parse(&row.city).map_err(corrupt(&doing))?,
                votes: row.votes,
                reports: row.reports,
            })
        })
        .collect()
}

/// Ballot boxes in reporting order: a top-`limit` sort of the election's
/// boxes' first reports (`replaces = 0`, see the box-chain migration). There
/// is deliberately no B-tree that could hand them out in order: on a table
/// without statistics the planner took one for the write path's key lookups
/// (see the write-path migration), so this listing reads the election's
/// reports: measured 0.82 s at a million boxes (1,050,000 reports;
/// migrations/README.md, the box chain).
const FIRST_REPORTS: &str = "\
SELECT ballot_box_id, city, received_at AS first_reported_at
FROM reports
WHERE election_id = $1 AND replaces = 0
ORDER BY received_at, ballot_box_id COLLATE \"C\"
LIMIT $2";

#[derive(QueryableByName)]
struct FirstReportRow {
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Timestamptz)]
    first_reported_at: DateTime<Utc>,
}

/// The first `limit` ballot boxes of an election to report, in the order
/// they first reported (ties by ballot box id, byte order).
fn first_reports(
    pool: &PgPool,
    election: &ElectionId,
    limit: u32,
) -> Result<Vec<FirstReport>, PgError> {
    let doing = format!("listing the first ballot boxes of election {election} to report");
    let mut conn = connection(pool, &doing)?;
    let rows: Vec<FirstReportRow> = diesel::sql_query(FIRST_REPORTS)
        .bind::<Text, _>(election.as_str())
        .bind::<BigInt, _>(i64::from(limit))
        .load(&mut conn)
        .map_err(query_error(&doing))?;
    rows.into_iter()
        .map(|row| {
            Ok(FirstReport {
                ballot_box: BallotBoxId::parse(&row.ballot_box_id).map_err(corrupt(&doing))?,
                city: CityId::parse(&row.city).map_err(corrupt(&doing))?,
                first_reported_at: row.first_reported_at,
            })
        })
        .collect()
}

/// Net votes per party per bucket, from `$3` on (or from the start). Buckets
/// are aligned on 2000-01-01T00:00:00Z, so 1-day buckets are UTC days and
/// every bucket of a size that divides a day (1 m, 5 m, 15 m, 1 h, 1 d) is
/// made of whole 1-minute buckets.
///
/// From the start this reads every log row of the election once (~1–3 s for
/// 5,000,000 rows here): callers keep the answer and ask again only from a
/// recent instant on, which the `(election_id, reported_at)` index serves by
/// reading just the rows since then (see `election-query`'s timeline).
const BUCKETS: &str = "\
SELECT date_bin($2::bigint * interval '1 second', reported_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
         AS bucket_start,
       party, sum(difference)::bigint AS votes
FROM vote_log
WHERE election_id = $1
  AND reported_at >= coalesce($3::timestamptz, '-infinity')
GROUP BY bucket_start, party
ORDER BY bucket_start, party COLLATE \"C\"";

#[derive(QueryableByName)]
struct BucketRow {
    #[diesel(sql_type = Timestamptz)]
    bucket_start: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    party: String,
    #[diesel(sql_type = BigInt)]
    votes: i64,
}

#[derive(QueryableByName)]
struct Now {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// Net votes per party per `bucket_seconds` bucket, for buckets starting at
/// or after `since` (which should be a bucket start), or every bucket.
fn votes_per_bucket(
    pool: &PgPool,
    election: &ElectionId,
    bucket_seconds: u32,
    since: Option<DateTime<Utc>>,
) -> Result<Buckets, PgError> {
    let doing = format!("summing the votes of election {election} per time bucket");
    if bucket_seconds == 0 {
        return Err(PgError::Config(
            "a time bucket must be longer than 0 s".into(),
        ));
    }
    let mut conn = connection(pool, &doing)?;
    let rows: Vec<BucketRow> = diesel::sql_query(BUCKETS)
        .bind::<Text, _>(election.as_str())
        .bind::<BigInt, _>(i64::from(bucket_seconds))
        .bind::<Nullable<Timestamptz>, _>(since)
        .load(&mut conn)
        .map_err(query_error(&doing))?;
    let now: Now = diesel::sql_query("SELECT now() AS now")
        .get_result(&mut conn)
        .map_err(query_error(&doing))?;
    let rows = rows
        .into_iter()
        .map(|row| {
            Ok(BucketVotes {
                start: row.bucket_start,
                party: PartyId::parse(&row.party).map_err(corrupt(&doing))?,
                votes: row.votes,
            })
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    Ok(Buckets {
        rows,
        read_at: now.now,
    })
}

/// A page of the audit log: up to `$2` revisions of election `$1` with an id
/// above `$3`, in id order (the order they were recorded), each with its
/// per-party rows (the report's own arrays). The primary key gives the order
/// and the cursor. Whether each revision is counted comes from
/// `pending_batches`, read once per page.
const AUDIT_PAGE: &str = "\
WITH page AS (
    SELECT id, ballot_box_id, city, revision, reason, received_at, parties, votes, differences,
           sha256(convert_to(payload::text, 'UTF8')) AS payload_sha256, payload_hash
    FROM reports
    WHERE election_id = $1 AND id > $3
    ORDER BY id
    LIMIT $2
), pending_ids AS MATERIALIZED (SELECT DISTINCT unnest(report_ids) AS id FROM pending_batches)
SELECT p.id AS report_id, p.ballot_box_id, p.city, p.revision, p.reason,
       p.received_at, NOT EXISTS (SELECT 1 FROM pending_ids i WHERE i.id = p.id) AS counted,
       v.party, coalesce(v.votes, 0) AS votes, v.votes IS NULL AS omitted, v.difference,
       p.payload_sha256, p.payload_hash
FROM page p
CROSS JOIN LATERAL unnest(p.parties, p.votes, p.differences) AS v(party, votes, difference)
ORDER BY p.id, v.party COLLATE \"C\"";

#[derive(QueryableByName)]
struct AuditSqlRow {
    #[diesel(sql_type = BigInt)]
    report_id: i64,
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Int4)]
    revision: i32,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    counted: bool,
    #[diesel(sql_type = Text)]
    party: String,
    #[diesel(sql_type = Int4)]
    votes: i32,
    #[diesel(sql_type = Bool)]
    omitted: bool,
    #[diesel(sql_type = BigInt)]
    difference: i64,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    payload_sha256: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    payload_hash: Vec<u8>,
}

/// One page of the audit log: up to `reports_per_page` revisions (with all
/// their party rows) after `after`, or from the start.
///
/// Paging by a cursor rather than holding a database cursor open keeps each
/// page a short statement on a pooled connection, whatever the reader's
/// speed. Every revision committed before the first page was read is in
/// exactly one page; revisions committed while paging may or may not be.
fn audit_page(
    pool: &PgPool,
    election: &ElectionId,
    after: Option<AuditCursor>,
    reports_per_page: u32,
) -> Result<AuditPage, PgError> {
    let doing = format!("reading the audit log of election {election}");
    let mut conn = connection(pool, &doing)?;
    let limit = i64::from(reports_per_page.max(1));
    let rows: Vec<AuditSqlRow> = diesel::sql_query(AUDIT_PAGE)
        .bind::<Text, _>(election.as_str())
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(after.map_or(0, |cursor| cursor.report_id))
        .load(&mut conn)
        .map_err(query_error(&doing))?;

    let mut reports_seen = 0_i64;
    let mut last: Option<AuditCursor> = None;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if last.is_none_or(|cursor| cursor.report_id != row.report_id) {
            reports_seen += 1;
            last = Some(AuditCursor {
                report_id: row.report_id,
            });
        }
        let bad = corrupt(&doing);
        out.push(AuditRow {
            report_id: row.report_id,
            ballot_box: BallotBoxId::parse(&row.ballot_box_id).map_err(&bad)?,
            city: CityId::parse(&row.city).map_err(&bad)?,
            revision: row.revision,
            reason: row.reason,
            party: PartyId::parse(&row.party).map_err(&bad)?,
            votes: row.votes,
            omitted: row.omitted,
            difference: row.difference,
            received_at: row.received_at,
            counted: row.counted,
            payload_sha256: row.payload_sha256,
            payload_hash: row.payload_hash,
        });
    }
    // A short page is the last one. (A revision without log rows is never
    // written, so every revision of the page shows up in the rows.)
    let next = if reports_seen < limit { None } else { last };
    Ok(AuditPage { rows: out, next })
}

/// Every election that exists for the read API: defined (a row in
/// `election_definitions`) or reported to (a row in `reports`), in id
/// order. The reported ones are found by a skip scan of `reports_chain_key`
/// (one index probe per election, not one row per report), so this stays
/// cheap at a million boxes and can be read every few seconds.
const KNOWN_ELECTIONS: &str = "\
WITH RECURSIVE e AS (
    (SELECT election_id FROM reports ORDER BY election_id LIMIT 1)
    UNION ALL
    SELECT (SELECT b.election_id FROM reports b
            WHERE b.election_id > e.election_id
            ORDER BY b.election_id LIMIT 1)
    FROM e
    WHERE e.election_id IS NOT NULL
)
SELECT election_id FROM e WHERE election_id IS NOT NULL
UNION
SELECT election_id FROM election_definitions
ORDER BY 1";

/// Whether one election exists: two primary-key probes.
const ELECTION_EXISTS: &str = "\
SELECT EXISTS (SELECT 1 FROM election_definitions WHERE election_id = $1)
    OR EXISTS (SELECT 1 FROM reports WHERE election_id = $1) AS exists";

/// Every known election with its name, boxes and last report. Counts every
/// box's first report (`replaces = 0`; a scan of `reports`: callers cache
/// the answer).
const ELECTIONS_SUMMARY: &str = "\
WITH boxes AS (
    SELECT election_id, count(*) FILTER (WHERE replaces = 0) AS ballot_boxes,
           max(received_at) AS last_report_at
    FROM reports GROUP BY election_id
)
SELECT coalesce(b.election_id, d.election_id) AS election_id, d.name,
       coalesce(b.ballot_boxes, 0) AS ballot_boxes, b.last_report_at
FROM boxes b FULL OUTER JOIN election_definitions d ON d.election_id = b.election_id
ORDER BY 1";

#[derive(QueryableByName)]
struct ElectionIdRow {
    #[diesel(sql_type = Text)]
    election_id: String,
}

#[derive(QueryableByName)]
struct ExistsRow {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

#[derive(QueryableByName)]
struct SummarySqlRow {
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = BigInt)]
    ballot_boxes: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_report_at: Option<DateTime<Utc>>,
}

/// Every election that is defined or has been reported to, in id order.
fn known_elections(pool: &PgPool) -> Result<Vec<ElectionId>, PgError> {
    let doing = "listing the known elections";
    let mut conn = connection(pool, doing)?;
    let rows: Vec<ElectionIdRow> = diesel::sql_query(KNOWN_ELECTIONS)
        .load(&mut conn)
        .map_err(query_error(doing))?;
    rows.into_iter()
        .map(|row| ElectionId::parse(&row.election_id).map_err(corrupt(doing)))
        .collect()
}

/// Whether `election` is defined or has been reported to.
fn election_exists(pool: &PgPool, election: &ElectionId) -> Result<bool, PgError> {
    let doing = format!("checking whether election {election} exists");
    let mut conn = connection(pool, &doing)?;
    let row: ExistsRow = diesel::sql_query(ELECTION_EXISTS)
        .bind::<Text, _>(election.as_str())
        .get_result(&mut conn)
        .map_err(query_error(&doing))?;
    Ok(row.exists)
}

/// Every election that is defined or has been reported to, with its name,
/// reported ballot boxes and last report time, in id order.
fn elections_summary(pool: &PgPool) -> Result<Vec<ElectionSummary>, PgError> {
    let doing = "summarising the known elections";
    let mut conn = connection(pool, doing)?;
    let rows: Vec<SummarySqlRow> = diesel::sql_query(ELECTIONS_SUMMARY)
        .load(&mut conn)
        .map_err(query_error(doing))?;
    rows.into_iter()
        .map(|row| {
            Ok(ElectionSummary {
                election: ElectionId::parse(&row.election_id).map_err(corrupt(doing))?,
                name: row.name,
                ballot_boxes_reported: u64::try_from(row.ballot_boxes).unwrap_or(0),
                last_report_at: row.last_report_at,
            })
        })
        .collect()
}

/// The totals as they stood at an instant, from the log.
///
/// `DISTINCT ON` walks the election's revisions in the order of the unique
/// `(election_id, ballot_box_id, revision)` key, newest revision of each box
/// first, skipping revisions received after the instant, so each box
/// contributes its latest revision received by then: corrections that
/// arrived later do not show. The per-party arrays of that revision are
/// unnested and summed (a party it omitted has a NULL vote: 0). The first
/// branch counts the boxes per city. The whole election's revisions are read
/// once: measured 1 to 1.5 s for 100,000 boxes on a busy 2-core machine
/// (docs/benchmarks.md).
const STOOD_AT: &str = "\
WITH latest AS (
    SELECT DISTINCT ON (ballot_box_id) ballot_box_id, city, parties, votes
    FROM reports
    WHERE election_id = $1 AND received_at <= $2
    ORDER BY ballot_box_id, revision DESC
)
SELECT city, NULL::text AS party, count(*)::bigint AS n FROM latest GROUP BY city
UNION ALL
SELECT l.city, u.party, sum(coalesce(u.votes, 0))::bigint
FROM latest l, unnest(l.parties, l.votes) AS u(party, votes)
GROUP BY l.city, u.party";

#[derive(QueryableByName)]
struct StoodRow {
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Nullable<Text>)]
    party: Option<String>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// What stood at `at` in `election`: each ballot box's latest revision
/// received by that instant (see `STOOD_AT`).
fn stood_at(pool: &PgPool, election: &ElectionId, at: DateTime<Utc>) -> Result<StoodAt, PgError> {
    let doing = format!("reading the totals of election {election} as they stood at {at}");
    let mut conn = connection(pool, &doing)?;
    let rows: Vec<StoodRow> = diesel::sql_query(STOOD_AT)
        .bind::<Text, _>(election.as_str())
        .bind::<Timestamptz, _>(at)
        .load(&mut conn)
        .map_err(query_error(&doing))?;
    let mut stood = StoodAt::default();
    for row in rows {
        let city = CityId::parse(&row.city).map_err(corrupt(&doing))?;
        match row.party {
            None => {
                stood
                    .boxes
                    .insert(city, u64::try_from(row.n).unwrap_or_default());
            }
            Some(party) => {
                let party = PartyId::parse(&party).map_err(corrupt(&doing))?;
                stood.votes.insert((city, party), row.n);
            }
        }
    }
    Ok(stood)
}

/// Revisions to flag, computed from the log and the definition whenever
/// asked: flags are a function of what is recorded, so the hot path stays
/// as it is and a changed threshold or electorate applies to the whole night
/// at once. Each revision's total is the sum of its votes; `lag` over the
/// box's revisions (the unique `(election, box, revision)` key's order) gives
/// the previous total. A revision may be flagged for both reasons (two rows).
const FLAGS: &str = "\
WITH totals AS (
    SELECT r.id, r.ballot_box_id, r.city, r.revision, r.received_at,
           (SELECT coalesce(sum(v), 0) FROM unnest(r.votes) AS v)::bigint AS total
    FROM reports r
    WHERE r.election_id = $1
), revisions AS (
    SELECT t.*, lag(t.total) OVER (PARTITION BY t.ballot_box_id ORDER BY t.revision) AS previous
    FROM totals t
)
SELECT x.id, x.ballot_box_id, x.city, x.revision, x.received_at, x.total, x.previous,
       e.electorate::bigint AS electorate,
       (e.electorate IS NOT NULL AND x.total > e.electorate) AS over_electorate,
       (x.previous IS NOT NULL AND abs(x.total - x.previous) > $2 * greatest(x.previous, 1)) AS large_correction
FROM revisions x
LEFT JOIN election_box_electorates e ON e.election_id = $1 AND e.ballot_box_id = x.ballot_box_id
WHERE (e.electorate IS NOT NULL AND x.total > e.electorate)
   OR (x.previous IS NOT NULL AND abs(x.total - x.previous) > $2 * greatest(x.previous, 1))
ORDER BY x.id";

#[derive(QueryableByName)]
struct FlagRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Int4)]
    revision: i32,
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    previous: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    electorate: Option<i64>,
    #[diesel(sql_type = Bool)]
    over_electorate: bool,
    #[diesel(sql_type = Bool)]
    large_correction: bool,
}

/// The flagged revisions of `election`, in the order recorded: more votes
/// than the box's electorate, or a correction moving the box's total by
/// more than `correction_share` of its previous total.
fn flags(
    pool: &PgPool,
    election: &ElectionId,
    correction_share: f64,
) -> Result<Vec<Flag>, PgError> {
    let doing = format!("computing the flags of election {election}");
    let mut conn = connection(pool, &doing)?;
    let rows: Vec<FlagRow> = diesel::sql_query(FLAGS)
        .bind::<Text, _>(election.as_str())
        .bind::<diesel::sql_types::Double, _>(correction_share)
        .load(&mut conn)
        .map_err(query_error(&doing))?;
    let mut flags = Vec::new();
    for row in rows {
        let ballot_box = BallotBoxId::parse(&row.ballot_box_id).map_err(corrupt(&doing))?;
        let city = CityId::parse(&row.city).map_err(corrupt(&doing))?;
        for (flagged, reason) in [
            (row.over_electorate, FlagReason::OverElectorate),
            (row.large_correction, FlagReason::LargeCorrection),
        ] {
            if flagged {
                flags.push(Flag {
                    report_id: row.id,
                    ballot_box: ballot_box.clone(),
                    city: city.clone(),
                    revision: row.revision,
                    reason,
                    total_votes: row.total,
                    previous_total: row.previous,
                    electorate: row.electorate,
                    received_at: row.received_at,
                });
            }
        }
    }
    Ok(flags)
}
