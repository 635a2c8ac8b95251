//! The group-commit path: a whole batch of reports recorded in one
//! transaction, with a constant number of statements whatever its size.
//!
//! Ingest gathers concurrent posts into batches of up to ~1,000 reports,
//! because one durable transaction per report caps near 6,000 reports/s on
//! our hardware while batching is worth ~4x (../shared/LIMITS.md). Inside the
//! transaction, [`record_batch`] sends three statements:
//!
//! 1. **lock**: insert the batch's ballot boxes, or lock the existing ones, in
//!    sorted order, so two batches sharing boxes queue up instead of
//!    deadlocking;
//! 2. **read**: in one query, the city, latest revision and latest votes of
//!    each box, and every recorded revision with the same (box, revision) as
//!    an incoming report;
//! 3. **write**: every fresh report, its per-party log rows and the boxes'
//!    new latest revision, as one statement of three multi-row writes.
//!
//! Between 2 and 3 each report is decided in batch order with
//! [`rules::decide`] against an in-memory view that earlier reports of the
//! batch update, so revisions 1 and 2 of one box in one batch are fresh and
//! then fresh-with-a-difference, and the same report twice is fresh and then a
//! replay.
//!
//! Every statement binds whole columns as arrays and expands them with
//! `unnest(...)`, so it has a constant number of bind parameters (3, 5 and 16)
//! whatever the batch size: a statement with one parameter per value would hit
//! PostgreSQL's limit of 65,535 bind parameters at a few thousand reports, and
//! would be a different prepared statement for every batch size. Constant
//! texts are what lets each statement be prepared once per connection
//! ([`crate::prepared`]) instead of parsed and planned for every batch; the
//! generic plans PostgreSQL then settles on (nested loops over the key
//! indexes, hash joins on the CTE's new rows) were measured as fast as custom
//! ones from 32 to 1,000 reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use diesel::sql_types::{Array, Bool, Bytea, Int4, Int8, Nullable, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use election_core::rules::{self, BoxState, Decision, SameRevision};
use election_core::{
    CityId, Counting, Difference, PartyId, PayloadHash, Recorded, Report, ReportId, Revision, Votes,
};

use crate::error::TxError;
use crate::prepared::prepared;

/// Locks every ballot box of the batch, creating those never seen.
///
/// Rows are taken in a fixed order (byte order of election, then box) so that
/// concurrent batches over overlapping boxes always lock them in the same
/// order and wait for each other instead of deadlocking. `ON CONFLICT DO
/// UPDATE ... WHERE false` locks an existing row exactly like
/// `SELECT ... FOR UPDATE` but writes no new row version: a batch of replays
/// costs no writes. A new box gets its city from its first report (always
/// fresh: a box with no history can neither conflict nor replay) and no latest
/// revision until the write statement sets it.
const LOCK_BOXES: &str = "\
INSERT INTO ballot_boxes (election_id, ballot_box_id, city)
SELECT e, b, c FROM unnest($1::text[], $2::text[], $3::text[]) AS t(e, b, c)
ORDER BY e COLLATE \"C\", b COLLATE \"C\"
ON CONFLICT (election_id, ballot_box_id) DO UPDATE SET updated_at = ballot_boxes.updated_at
WHERE false";

/// Reads what is recorded for the batch, after the locks are held (a separate
/// statement, so its snapshot includes whatever the batches we waited for
/// committed).
///
/// `box` rows: one per party of each box's latest revision (or one row with
/// no party for a box created by this transaction). The latest votes come
/// from the latest report's payload rather than from `vote_log`, because the
/// log cannot tell a party posted with 0 votes from a party that a revision
/// omitted (both are logged as 0), and the next difference must name exactly
/// the parties of the two revisions, as [`Difference::between`] does.
///
/// `same` rows: recorded revisions with the same (box, revision) as an
/// incoming report, for replays and conflicts.
const READ_KNOWN: &str = "\
SELECT 'box'::text AS kind, bb.election_id, bb.ballot_box_id, bb.city,
       bb.latest_revision AS revision, bb.latest_report_id AS report_id,
       NULL::bytea AS payload_hash, NULL::boolean AS completed,
       v.key AS party, v.value AS votes
FROM unnest($1::text[], $2::text[]) AS k(e, b)
JOIN ballot_boxes bb ON bb.election_id = k.e AND bb.ballot_box_id = k.b
LEFT JOIN reports r ON r.id = bb.latest_report_id
LEFT JOIN LATERAL json_each_text(r.payload -> 'votes') AS v ON true
UNION ALL
SELECT 'same'::text, r.election_id, r.ballot_box_id, r.city,
       r.revision, r.id, r.payload_hash, r.completed, NULL::text, NULL::text
FROM unnest($3::text[], $4::text[], $5::int4[]) AS k(e, b, rev)
JOIN reports r ON r.election_id = k.e AND r.ballot_box_id = k.b AND r.revision = k.rev";

/// Writes every fresh report, its per-party log rows and its box's latest
/// revision in one statement (one round trip; data-modifying CTEs all run).
///
/// Ids are assigned in batch order, so "oldest first" claims follow it. The
/// log rows and box updates find their report's id by (election, box,
/// revision), unique among the fresh reports of a batch; the final SELECT
/// returns the same key with each id, because RETURNING order is not
/// something to rely on. `reports.received_at` and `vote_log.reported_at`
/// are both the transaction's `now()`.
const WRITE_FRESH: &str = "\
WITH new_reports AS (
    INSERT INTO reports (election_id, ballot_box_id, city, revision, reason, payload, payload_hash)
    SELECT e, b, c, rev, reason, payload::json, hash
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], $7::bytea[])
         WITH ORDINALITY AS t(e, b, c, rev, reason, payload, hash, ord)
    ORDER BY ord
    RETURNING id, election_id, ballot_box_id, city, revision
), logged AS (
    INSERT INTO vote_log
        (report_id, election_id, ballot_box_id, city, party, revision, votes, difference, reported_at)
    SELECT n.id, n.election_id, n.ballot_box_id, n.city, v.party, n.revision, v.votes, v.difference, now()
    FROM unnest($8::text[], $9::text[], $10::int4[], $11::text[], $12::int4[], $13::int8[])
         AS v(e, b, rev, party, votes, difference)
    JOIN new_reports n ON n.election_id = v.e AND n.ballot_box_id = v.b AND n.revision = v.rev
), latest AS (
    UPDATE ballot_boxes bb
    SET latest_revision = n.revision, latest_report_id = n.id, updated_at = now()
    FROM unnest($14::text[], $15::text[], $16::int4[]) AS u(e, b, rev)
    JOIN new_reports n ON n.election_id = u.e AND n.ballot_box_id = u.b AND n.revision = u.rev
    WHERE bb.election_id = u.e AND bb.ballot_box_id = u.b
)
SELECT id, election_id, ballot_box_id, revision FROM new_reports";

/// One row of [`READ_KNOWN`].
#[derive(QueryableByName)]
struct KnownRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Nullable<Int4>)]
    revision: Option<i32>,
    #[diesel(sql_type = Nullable<Int8>)]
    report_id: Option<i64>,
    #[diesel(sql_type = Nullable<Bytea>)]
    payload_hash: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bool>)]
    completed: Option<bool>,
    #[diesel(sql_type = Nullable<Text>)]
    party: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    votes: Option<String>,
}

/// One row of [`WRITE_FRESH`]'s result.
#[derive(QueryableByName)]
struct WrittenRow {
    #[diesel(sql_type = Int8)]
    id: i64,
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Int4)]
    revision: i32,
}

/// A ballot box, as keys of the in-memory view (owned text: rows read back
/// and reports meet here).
type BoxKey = (String, String);
/// A revision of a ballot box.
type RevisionKey = (String, String, i32);

fn box_key(report: &Report) -> BoxKey {
    (
        report.election().as_str().to_owned(),
        report.ballot_box().as_str().to_owned(),
    )
}

fn revision_key(report: &Report) -> RevisionKey {
    (
        report.election().as_str().to_owned(),
        report.ballot_box().as_str().to_owned(),
        sql_revision(report.revision()),
    )
}

/// A revision as PostgreSQL's `integer`. [`Revision`] is capped at
/// `i32::MAX` when built, so this never saturates.
fn sql_revision(revision: Revision) -> i32 {
    i32::try_from(revision.get()).unwrap_or(i32::MAX)
}

/// What the batch decided for one report, before fresh reports have ids.
enum Draft {
    /// The `n`th fresh report of the batch.
    Fresh(usize),
    /// A replay of a revision recorded earlier, or earlier in this batch.
    Replay { earlier: Earlier, counted: bool },
    /// Refused; nothing is written for it.
    Conflict(election_core::Conflict),
}

/// A revision a replay refers to.
#[derive(Clone, Copy)]
enum Earlier {
    /// Committed before this batch.
    Recorded(ReportId),
    /// The `n`th fresh report of this batch.
    InBatch(usize),
}

/// A revision with the same number as an incoming report, as the view keeps
/// it: [`SameRevision`] for [`rules::decide`], plus where it comes from.
struct Same {
    earlier: Earlier,
    payload_hash: PayloadHash,
    counted: bool,
}

/// A fresh report and the difference it brings.
struct Fresh<'a> {
    report: &'a Report,
    difference: Difference,
}

/// Records `reports` on `conn`, which must be inside a transaction. See the
/// module docs.
pub(crate) fn record_batch(
    conn: &mut PgConnection,
    reports: &[Report],
) -> Result<Vec<Recorded>, TxError> {
    // Sorted, so the lock statement's input is deterministic too (its ORDER
    // BY is what fixes the lock order). The city is the first report's.
    let mut boxes: BTreeMap<BoxKey, &CityId> = BTreeMap::new();
    for report in reports {
        boxes.entry(box_key(report)).or_insert(report.city());
    }
    let revisions: BTreeSet<RevisionKey> = reports.iter().map(revision_key).collect();

    lock_boxes(conn, &boxes)?;
    let Known {
        mut states,
        mut same,
    } = read_known(conn, &boxes, &revisions)?;

    let mut fresh: Vec<Fresh<'_>> = Vec::new();
    let mut drafts = Vec::with_capacity(reports.len());
    for report in reports {
        let key = box_key(report);
        let rev_key = revision_key(report);
        let earlier = same.get(&rev_key).map(|s| (s.earlier, s.counted));
        let same_revision = same.get(&rev_key).map(|s| SameRevision {
            // `decide` only compares hashes and hands this back in a replay;
            // the id that matters is `Same::earlier`.
            report_id: match s.earlier {
                Earlier::Recorded(id) => id,
                Earlier::InBatch(_) => ReportId(0),
            },
            payload_hash: s.payload_hash,
            counted: s.counted,
        });
        let draft = match rules::decide(report, states.get(&key), same_revision.as_ref()) {
            Decision::Record(difference) => {
                let index = fresh.len();
                fresh.push(Fresh { report, difference });
                states.insert(
                    key,
                    BoxState {
                        city: report.city().clone(),
                        latest_revision: report.revision(),
                        latest_votes: report.votes().clone(),
                    },
                );
                same.insert(
                    rev_key,
                    Same {
                        earlier: Earlier::InBatch(index),
                        payload_hash: report.payload_hash(),
                        counted: false,
                    },
                );
                Draft::Fresh(index)
            }
            // `decide` answers a replay only when given a same revision.
            Decision::Replay(_) => match earlier {
                Some((earlier, counted)) => Draft::Replay { earlier, counted },
                None => {
                    return Err(TxError::Corrupt(format!(
                        "revision {} of ballot box {:?} decided as a replay of nothing",
                        report.revision(),
                        report.ballot_box().as_str()
                    )));
                }
            },
            Decision::Conflict(conflict) => Draft::Conflict(conflict),
        };
        drafts.push(draft);
    }

    let ids = if fresh.is_empty() {
        Vec::new()
    } else {
        write_fresh(conn, &fresh)?
    };

    Ok(drafts
        .into_iter()
        .map(|draft| match draft {
            Draft::Fresh(index) => {
                let Fresh { report, difference } = &fresh[index];
                Recorded::Fresh(Counting {
                    report_id: ids[index],
                    election: report.election().clone(),
                    ballot_box: report.ballot_box().clone(),
                    city: report.city().clone(),
                    revision: report.revision(),
                    difference: difference.clone(),
                })
            }
            Draft::Replay { earlier, counted } => Recorded::Replay {
                report_id: match earlier {
                    Earlier::Recorded(id) => id,
                    Earlier::InBatch(index) => ids[index],
                },
                counted,
            },
            Draft::Conflict(conflict) => Recorded::Conflict(conflict),
        })
        .collect())
}

/// Statement 1: see [`LOCK_BOXES`].
fn lock_boxes(conn: &mut PgConnection, boxes: &BTreeMap<BoxKey, &CityId>) -> Result<(), TxError> {
    let elections: Vec<&str> = boxes.keys().map(|(e, _)| e.as_str()).collect();
    let ballot_boxes: Vec<&str> = boxes.keys().map(|(_, b)| b.as_str()).collect();
    let cities: Vec<&str> = boxes.values().map(|c| c.as_str()).collect();
    prepared(LOCK_BOXES)
        .bind::<Array<Text>, _>(elections)
        .bind::<Array<Text>, _>(ballot_boxes)
        .bind::<Array<Text>, _>(cities)
        .execute(conn)?;
    Ok(())
}

/// What is recorded for a batch's boxes and revisions, as [`READ_KNOWN`]
/// returns it; the view that [`record_batch`] then updates report by report.
#[derive(Default)]
struct Known {
    /// The state of every box with a recorded revision.
    states: HashMap<BoxKey, BoxState>,
    /// Recorded revisions named by the batch.
    same: HashMap<RevisionKey, Same>,
}

/// A box's latest revision, gathered row by row (one row per party).
struct Latest {
    city: CityId,
    revision: Revision,
    votes: BTreeMap<PartyId, u32>,
}

/// Statement 2: see [`READ_KNOWN`].
fn read_known(
    conn: &mut PgConnection,
    boxes: &BTreeMap<BoxKey, &CityId>,
    revisions: &BTreeSet<RevisionKey>,
) -> Result<Known, TxError> {
    let box_elections: Vec<&str> = boxes.keys().map(|(e, _)| e.as_str()).collect();
    let box_ids: Vec<&str> = boxes.keys().map(|(_, b)| b.as_str()).collect();
    let revision_elections: Vec<&str> = revisions.iter().map(|(e, _, _)| e.as_str()).collect();
    let revision_boxes: Vec<&str> = revisions.iter().map(|(_, b, _)| b.as_str()).collect();
    let revision_numbers: Vec<i32> = revisions.iter().map(|&(_, _, r)| r).collect();
    let rows: Vec<KnownRow> = prepared(READ_KNOWN)
        .bind::<Array<Text>, _>(box_elections)
        .bind::<Array<Text>, _>(box_ids)
        .bind::<Array<Text>, _>(revision_elections)
        .bind::<Array<Text>, _>(revision_boxes)
        .bind::<Array<Int4>, _>(revision_numbers)
        .load(conn)?;

    let mut latest: HashMap<BoxKey, Latest> = HashMap::new();
    let mut known = Known::default();
    for row in rows {
        match row.kind.as_str() {
            "box" => add_latest_vote(&mut latest, row)?,
            "same" => {
                let (key, same) = same_revision(row)?;
                known.same.insert(key, same);
            }
            other => return Err(TxError::Corrupt(format!("unexpected row kind {other:?}"))),
        }
    }
    for (
        key,
        Latest {
            city,
            revision,
            votes,
        },
    ) in latest
    {
        let latest_votes = Votes::new(votes).map_err(|problem| {
            TxError::Corrupt(format!(
                "latest votes of ballot box {:?} of election {:?}: {problem}",
                key.1, key.0
            ))
        })?;
        known.states.insert(
            key,
            BoxState {
                city,
                latest_revision: revision,
                latest_votes,
            },
        );
    }
    Ok(known)
}

/// Names a row's box in error messages.
fn which_box(row: &KnownRow) -> String {
    format!(
        "ballot box {:?} of election {:?}",
        row.ballot_box_id, row.election_id
    )
}

/// Adds one party of a box's latest revision (a `box` row) to `latest`.
fn add_latest_vote(latest: &mut HashMap<BoxKey, Latest>, row: KnownRow) -> Result<(), TxError> {
    // A box without a latest revision was created by this transaction's lock
    // statement: nothing is recorded for it yet.
    let Some(revision) = row.revision else {
        return Ok(());
    };
    let corrupt = |detail: String| TxError::Corrupt(format!("{}: {detail}", which_box(&row)));
    let (Some(party), Some(votes)) = (&row.party, &row.votes) else {
        return Err(corrupt(format!(
            "its latest report {:?} has no votes",
            row.report_id
        )));
    };
    let party = PartyId::parse(party).map_err(|p| corrupt(format!("latest payload: {p}")))?;
    let votes: u32 = votes.parse().map_err(|e| {
        corrupt(format!(
            "latest payload: votes of {party} are {votes:?}: {e}"
        ))
    })?;
    let key = (row.election_id.clone(), row.ballot_box_id.clone());
    if !latest.contains_key(&key) {
        let city = CityId::parse(&row.city).map_err(|p| corrupt(p.to_string()))?;
        let revision = Revision::new(i64::from(revision)).map_err(|p| corrupt(p.to_string()))?;
        latest.insert(
            key.clone(),
            Latest {
                city,
                revision,
                votes: BTreeMap::new(),
            },
        );
    }
    if let Some(entry) = latest.get_mut(&key) {
        entry.votes.insert(party, votes);
    }
    Ok(())
}

/// A recorded revision with the number of an incoming report (a `same` row).
fn same_revision(row: KnownRow) -> Result<(RevisionKey, Same), TxError> {
    let corrupt = |detail: String| TxError::Corrupt(format!("{}: {detail}", which_box(&row)));
    let (Some(revision), Some(report_id), Some(hash), Some(completed)) = (
        row.revision,
        row.report_id,
        row.payload_hash.as_deref(),
        row.completed,
    ) else {
        return Err(corrupt("incomplete report row".to_owned()));
    };
    let payload_hash = <[u8; 32]>::try_from(hash).map_err(|_| {
        corrupt(format!(
            "report {report_id} has a payload hash of {} bytes",
            hash.len()
        ))
    })?;
    let same = Same {
        earlier: Earlier::Recorded(ReportId(report_id)),
        payload_hash: PayloadHash(payload_hash),
        counted: completed,
    };
    Ok(((row.election_id, row.ballot_box_id, revision), same))
}

/// Statement 3: see [`WRITE_FRESH`]. Returns the id of each fresh report, in
/// the order of `fresh`.
fn write_fresh(conn: &mut PgConnection, fresh: &[Fresh<'_>]) -> Result<Vec<ReportId>, TxError> {
    let n_reports = fresh.len();
    let mut elections = Vec::with_capacity(n_reports);
    let mut ballot_boxes = Vec::with_capacity(n_reports);
    let mut cities = Vec::with_capacity(n_reports);
    let mut revisions = Vec::with_capacity(n_reports);
    let mut reasons = Vec::with_capacity(n_reports);
    let mut payloads = Vec::with_capacity(n_reports);
    let mut hashes = Vec::with_capacity(n_reports);

    let n_rows: usize = fresh.iter().map(|f| f.difference.len()).sum();
    let mut log_elections = Vec::with_capacity(n_rows);
    let mut log_boxes = Vec::with_capacity(n_rows);
    let mut log_revisions = Vec::with_capacity(n_rows);
    let mut log_parties = Vec::with_capacity(n_rows);
    let mut log_votes = Vec::with_capacity(n_rows);
    let mut log_differences = Vec::with_capacity(n_rows);

    // The latest fresh revision of each box: fresh revisions of a box rise
    // in batch order, so the last one wins.
    let mut latest: BTreeMap<(&str, &str), i32> = BTreeMap::new();

    for Fresh { report, difference } in fresh {
        let election = report.election().as_str();
        let ballot_box = report.ballot_box().as_str();
        let revision = sql_revision(report.revision());
        elections.push(election);
        ballot_boxes.push(ballot_box);
        cities.push(report.city().as_str());
        revisions.push(revision);
        reasons.push(report.reason());
        payloads.push(report.payload());
        hashes.push(report.payload_hash().0.to_vec());
        // The difference names every party of this revision and of the one
        // it replaces, so parties that went to 0 get their row too.
        for (party, change) in difference.iter() {
            log_elections.push(election);
            log_boxes.push(ballot_box);
            log_revisions.push(revision);
            log_parties.push(party.as_str());
            // Votes are at most 10,000,000 (checked when the report was
            // built), so they always fit an `integer`.
            log_votes.push(i32::try_from(report.votes().get(party)).unwrap_or(i32::MAX));
            log_differences.push(change);
        }
        latest.insert((election, ballot_box), revision);
    }

    let rows: Vec<WrittenRow> = prepared(WRITE_FRESH)
        .bind::<Array<Text>, _>(elections)
        .bind::<Array<Text>, _>(ballot_boxes)
        .bind::<Array<Text>, _>(cities)
        .bind::<Array<Int4>, _>(revisions)
        .bind::<Array<Nullable<Text>>, _>(reasons)
        .bind::<Array<Text>, _>(payloads)
        .bind::<Array<Bytea>, _>(hashes)
        .bind::<Array<Text>, _>(log_elections)
        .bind::<Array<Text>, _>(log_boxes)
        .bind::<Array<Int4>, _>(log_revisions)
        .bind::<Array<Text>, _>(log_parties)
        .bind::<Array<Int4>, _>(log_votes)
        .bind::<Array<Int8>, _>(log_differences)
        .bind::<Array<Text>, _>(latest.keys().map(|(e, _)| *e).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(latest.keys().map(|(_, b)| *b).collect::<Vec<_>>())
        .bind::<Array<Int4>, _>(latest.values().copied().collect::<Vec<_>>())
        .load(conn)?;

    let by_key: HashMap<RevisionKey, i64> = rows
        .into_iter()
        .map(|row| ((row.election_id, row.ballot_box_id, row.revision), row.id))
        .collect();
    fresh
        .iter()
        .map(|f| {
            by_key
                .get(&revision_key(f.report))
                .map(|&id| ReportId(id))
                .ok_or_else(|| {
                    TxError::Corrupt(format!(
                        "inserting revision {} of ballot box {:?} returned no id",
                        f.report.revision(),
                        f.report.ballot_box().as_str()
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_a_constant_number_of_binds() {
        // 16 binds whatever the batch size, far under PostgreSQL's 65,535.
        for (sql, binds) in [(LOCK_BOXES, 3), (READ_KNOWN, 5), (WRITE_FRESH, 16)] {
            assert!(sql.contains(&format!("${binds}::")), "{sql}");
            assert!(!sql.contains(&format!("${}", binds + 1)), "{sql}");
        }
    }
}
