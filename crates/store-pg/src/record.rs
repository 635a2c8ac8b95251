//! The group-commit path: a whole batch of reports recorded in one
//! transaction, with a constant number of statements whatever its size.
//!
//! Ingest gathers concurrent posts into batches, because one durable
//! transaction per report caps near 6,000 reports/s on our hardware while
//! batching is worth ~4x (docs/benchmarks.md). Inside the transaction,
//! [`record_batch`] sends:
//!
//! 0. **begin** with the plan settings ([`hot_transaction`]): no sequential
//!    scans, hash or merge joins for the rest of the transaction (see
//!    below), and the shared side of each election's definition lock, sent
//!    with `BEGIN` in one round trip ([`recording_transaction`]);
//! 1. **definitions and boxes**, one statement: the stored version of each
//!    election's definition, compared with the one each report was checked
//!    against (see below), and its certified cities: a report that would
//!    record something new for a certified city is refused
//!    (`Conflict::Certified`, 409 `certified`), decided here, under the
//!    definition lock that `definitions::certify` holds exclusively, so no
//!    report slips in after a certification commits; and the latest
//!    recorded revision of each of the batch's boxes that has one (its
//!    city, number and votes), the last link of its chain (below);
//! 2. **read** (only when a report's revision is at or below its box's
//!    latest): every recorded revision with the same (box, revision) as an
//!    incoming report, for replays and conflicts;
//! 3. **write**: every fresh report with its per-party arrays and the
//!    revision it replaces, and the batch's `pending_batches` row, as one
//!    statement.
//!
//! Between 2 and 3 each report is decided in batch order with
//! [`rules::decide`] against an in-memory view that earlier reports of the
//! batch update, so revisions 1 and 2 of one box in one batch are fresh and
//! then fresh-with-a-difference, and the same report twice is fresh and then a
//! replay.
//!
//! # Definitions apply at once
//!
//! Ingest checks each report against its election's definition from a copy
//! it keeps for a few seconds (a query per report would cost more than the
//! report). A copy can be stale: "not defined" just before `election load`,
//! or a definition without the registry loaded since. So each report carries
//! the version it was checked against ([`Report::checked_against`]), and the
//! transaction refuses the whole batch with `DefinitionChanged` when the
//! stored version differs; ingest then checks those reports against the new
//! definition and submits them again. The comparison cannot miss a load in
//! progress: `definitions::load` holds the election's advisory lock
//! exclusively until it commits, the transaction takes the same lock shared
//! before it reads the version (in a later statement, so with a later
//! snapshot), and keeps it until it commits. A load therefore waits for the
//! batches already past the check, and every batch after it sees its
//! version. Cost: a subquery per election in the lock statement (it was a
//! statement of its own, a round trip per batch: docs/benchmarks.md, "The
//! definitions read with the lock"), and one lock per election in the
//! `BEGIN` message.
//!
//! # A box's revisions are a chain: no row per box, no lock
//!
//! Two batches must not both decide a new revision of one box against the
//! same latest revision: both would be recorded and counted in full. Each
//! report therefore names the revision it replaces (`reports.replaces`: its
//! box's latest revision when it was decided, 0 for a box's first), and the
//! unique key `reports_chain_key` (election, box, replaces) lets only one
//! report replace a given revision. Two concurrent batches that decided one
//! box against the same latest revision insert the same key: the second
//! waits for the first, fails on the key once the first commits, and the
//! whole transaction is retried at once (`error::is_chain_race`, in
//! `crate::log`, where such losses have a budget of their own: each is
//! another batch's progress, not a fault), now reading the new latest
//! revision. So each box's revisions form one chain, each above the
//! one it replaces, whose last link (the highest `replaces`) is the box's
//! latest revision: statement 1 reads it by one backward step of that
//! index. A retry costs one batch, and happens only when two batches race
//! for one box. The write inserts a batch's reports in box order, so two
//! batches racing for several boxes wait for each other in one order and
//! never deadlock (see `write_fresh`).
//!
//! This replaces a row per box (`ballot_boxes`, now a view over `reports`
//! for readers) that recording locked `FOR UPDATE` for existing boxes and
//! inserted with a new box's first report: its heap tuple, primary key
//! entry, BRIN summary and WAL were a fifth of PostgreSQL's CPU per report
//! when nearly every report is a new box's first (docs/benchmarks.md, "The
//! box row replaced by the revision chain"). The chain key takes the place
//! of the unique (election, box, revision) key, one B-tree entry per report
//! as before, and keeps its guarantee: a revision is recorded only above
//! its box's latest, so none is recorded twice.
//!
//! # Plans that do not depend on statistics
//!
//! On election night the tables start empty and are never analysed before
//! the load arrives. Statements are prepared once per connection
//! ([`crate::prepared`]), and a generic plan made over empty tables scans
//! `reports` sequentially and hash-joins it, and keeps
//! doing so at a million rows (measured: throughput fell to a quarter within
//! a minute). Every statement here reaches rows by a unique key, so the
//! right plan is a nested loop over index lookups whatever the table sizes;
//! the transaction disables the alternatives first, and the statements are
//! shaped so that none needs a hash or merge join: new ids come from one
//! array zipped with the batch's columns by `unnest`, never joined back by
//! key. The test `plans::hot_path_plans_use_indexes` checks every
//! statement's plan on empty, unanalysed, stale and fresh tables.
//!
//! The transaction also forces the generic plan (`plan_cache_mode =
//! force_generic_plan`), so each statement is planned once per connection.
//! Left to choose, PostgreSQL compared the generic plan's estimate with the
//! custom plans' and kept planning the record statements afresh on every
//! batch: planning was ~18 % of PostgreSQL's CPU at 64 connections
//! (docs/benchmarks.md, "Planned once per connection"). The plan test
//! checks exactly the generic plans that this runs, and
//! `plans::hot_path_statements_are_planned_once_per_connection` that no run
//! plans again.
//!
//! Every statement binds whole columns as arrays and expands them with
//! `unnest(...)`, so it has a constant number of bind parameters whatever the
//! batch size: a statement with one parameter per value would hit
//! PostgreSQL's limit of 65,535 bind parameters at a few thousand reports, and
//! would be a different prepared statement for every batch size. A report's
//! own per-party lists travel as one comma-separated text each (ids cannot
//! contain commas) and become arrays with `string_to_array`, because
//! PostgreSQL arrays of arrays must be rectangular.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Int4, Int8, Nullable, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use election_core::rules::{self, BoxState, Decision, SameRevision};
use election_core::{
    CityId, Counting, DefinitionVersion, Difference, PartyId, PayloadHash, Recorded, Report,
    ReportId, Revision, Votes,
};
use foldhash::{HashMap, HashMapExt as _};

use crate::error::TxError;
use crate::prepared::prepared;

/// Planner settings for the rest of a hot-path transaction: see the module
/// docs. `SET LOCAL` ends with the transaction, so other statements of the
/// same connection plan as usual. The generic plan is forced, so prepared
/// statements are not planned again on every run. JIT goes too: a disabled
/// path still costs its 10^10 penalty when nothing else can do its job (the
/// scan of the tiny `pending_batches` in a replay's lookup), which would put
/// the statement over `jit_above_cost` and compile it on every execution.
macro_rules! hot_path_settings {
    () => {
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
         SET LOCAL enable_mergejoin = off; SET LOCAL jit = off; \
         SET LOCAL plan_cache_mode = force_generic_plan"
    };
}

/// The settings alone, for the plan test.
#[cfg(test)]
pub(crate) const HOT_PATH_SETTINGS: &str = hot_path_settings!();

/// `BEGIN` and the settings as one message.
const HOT_BEGIN: &str = concat!("BEGIN; ", hot_path_settings!());

/// Runs `f` in a transaction that plans with the hot-path settings, begun in
/// one round trip: committed when `f` succeeds, rolled back when it fails
/// (as diesel's `Connection::transaction` does).
pub(crate) fn hot_transaction<T>(
    conn: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> Result<T, TxError>,
) -> Result<T, TxError> {
    hot_transaction_begun_with(conn, HOT_BEGIN, f)
}

/// Makes the recording transaction's commit wait for its WAL flush when
/// `synchronous_commit` is `off` at the time it begins: a report answered as
/// recorded must survive a PostgreSQL crash (I1), and `off` is common
/// "tuning" advice that loses the last ~0.6 s of commits in a crash (three
/// times `wal_writer_delay`). The pool turns `off` into `on` for every new
/// connection and warns (`pool`'s `DurableCommits`), but a connection that
/// found `on` keeps following the server's configuration, so `off` set and
/// reloaded while ingest runs would reach it; this closes that gap. Only
/// `off` is raised, to `on`; `local`, `remote_write`, `on` and
/// `remote_apply` all wait for the local flush and stay as set. A column of
/// the first lock statement, so it costs no statement of its own; `SET
/// LOCAL` semantics (`set_config(..., true)`), so nothing else on the
/// connection changes.
const DURABLE_COMMIT: &str = ", CASE WHEN current_setting('synchronous_commit') = 'off' \
     THEN set_config('synchronous_commit', 'on', true) END";

/// [`hot_transaction`] for recording `reports`: the same message also takes
/// the shared side of each of their elections' definition locks (see
/// "Definitions apply at once" in the module docs) and makes the commit
/// durable whatever `synchronous_commit` says ([`DURABLE_COMMIT`]).
pub(crate) fn recording_transaction<T>(
    conn: &mut PgConnection,
    reports: &[Report],
    f: impl FnOnce(&mut PgConnection) -> Result<T, TxError>,
) -> Result<T, TxError> {
    let elections: BTreeSet<&str> = reports.iter().map(|r| r.election().as_str()).collect();
    let mut begin =
        String::with_capacity(HOT_BEGIN.len() + DURABLE_COMMIT.len() + 90 * elections.len());
    begin.push_str(HOT_BEGIN);
    if elections.is_empty() {
        begin.push_str("; SELECT NULL");
        begin.push_str(DURABLE_COMMIT);
    }
    for (n, election) in elections.into_iter().enumerate() {
        // Election ids are `[a-z0-9_-]` (`ElectionId::parse`), so the literal
        // needs no quoting; doubling quotes keeps it safe regardless.
        let _ = write!(
            begin,
            "; SELECT pg_advisory_xact_lock_shared(hashtext('{}' || '{}'))",
            crate::definitions::LOCK_PREFIX,
            election.replace('\'', "''")
        );
        if n == 0 {
            begin.push_str(DURABLE_COMMIT);
        }
    }
    hot_transaction_begun_with(conn, &begin, f)
}

fn hot_transaction_begun_with<T>(
    conn: &mut PgConnection,
    begin: &str,
    f: impl FnOnce(&mut PgConnection) -> Result<T, TxError>,
) -> Result<T, TxError> {
    AnsiTransactionManager::begin_transaction_sql(conn, begin)?;
    match f(conn) {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(error) => match AnsiTransactionManager::rollback_transaction(conn) {
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
            Err(rollback) => Err(rollback.into()),
        },
    }
}

/// Reads each election's definition and the latest revision of each of the
/// batch's boxes, in one statement (one round trip).
///
/// `definition` rows, one per election of `$3`: the stored version of its
/// definition (NULL: not defined) and its certified cities. The statement
/// runs after [`recording_transaction`] took the definition locks (in the
/// round trip before), so its snapshot includes a load or a certification
/// that committed while a lock was awaited, and none can commit while the
/// transaction holds them.
///
/// `box` rows: for each box of `$1`/`$2` that has a recorded revision, its
/// latest (the last link of its chain, see "A box's revisions are a chain"
/// in the module docs): its city, number, parties and votes. A NULL vote is
/// a party that revision omitted; the next difference must name exactly
/// the parties of the two revisions, as [`Difference::between`] does.
/// Nothing is locked: a batch that commits a later link first makes this
/// one's insert fail on the chain key, and it is retried.
pub(crate) const READ_BOXES: &str = "\
SELECT 'definition'::text AS kind, e.id AS election_id, NULL::text AS ballot_box_id,
       NULL::text AS city, NULL::int4 AS latest_revision,
       NULL::text[] AS parties, NULL::int4[] AS votes,
       (SELECT (extract(epoch FROM d.loaded_at) * 1000000)::bigint
        FROM election_definitions d WHERE d.election_id = e.id) AS version,
       ARRAY(SELECT c.city FROM certified_cities c WHERE c.election_id = e.id) AS certified
FROM unnest($3::text[]) AS e(id)
UNION ALL
SELECT 'box', h.election_id, h.ballot_box_id, h.city, h.revision, h.parties, h.votes,
       NULL, NULL
FROM unnest($1::text[], $2::text[]) AS k(e, b)
CROSS JOIN LATERAL (
    SELECT r.election_id, r.ballot_box_id, r.city, r.revision, r.parties, r.votes
    FROM reports r
    WHERE r.election_id = k.e AND r.ballot_box_id = k.b
    ORDER BY r.replaces DESC
    LIMIT 1
) h";

/// Reads every recorded revision with the same (box, revision) as an
/// incoming report, for replays and conflicts, with whether each is counted
/// (not in `pending_batches`). A separate statement, so its snapshot
/// includes whatever committed since [`READ_BOXES`]; a revision committed
/// after it is a race the chain key settles (module docs).
pub(crate) const READ_KNOWN: &str = "\
SELECT r.id, r.election_id, r.ballot_box_id, r.revision, r.payload_hash,
       NOT EXISTS (SELECT 1 FROM pending_batches p WHERE p.report_ids @> ARRAY[r.id]) AS counted
FROM unnest($1::text[], $2::text[], $3::int4[]) AS k(e, b, rev)
JOIN reports r ON r.election_id = k.e AND r.ballot_box_id = k.b AND r.revision = k.rev";

/// Writes every fresh report, with the revision it replaces, and the batch's
/// pending row in one statement (one round trip; data-modifying CTEs all
/// run).
///
/// `ids` draws one id per fresh report, in batch order; the reports come in
/// (election, box) order (see `write_fresh`), each with its position in the
/// batch (`$12`, 1-based), and every part takes its id by position
/// (`unnest` of several arrays zips them; `a[pos]` picks one), so nothing
/// is joined back by key. `reports.received_at` is
/// the transaction's `now()`. The result is the ids with their positions.
pub(crate) const WRITE_FRESH: &str = "\
WITH ids AS (
    SELECT array_agg(nextval('reports_id_seq') ORDER BY g) AS a
    FROM generate_series(1, cardinality($1::text[])) AS g
), new_reports AS (
    INSERT INTO reports
        (id, election_id, ballot_box_id, city, revision, replaces, reason, payload,
         payload_hash, parties, votes, differences)
    SELECT ids.a[t.pos], t.e, t.b, t.c, t.rev, t.replaces, t.reason, t.payload::json, t.hash,
           string_to_array(t.parties, ','), string_to_array(t.votes, ',', '')::int4[],
           string_to_array(t.differences, ',')::int8[]
    FROM ids, unnest($12::int4[], $1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[],
                     $6::text[], $7::text[], $8::bytea[], $9::text[], $10::text[], $11::text[])
         AS t(pos, e, b, c, rev, replaces, reason, payload, hash, parties, votes, differences)
), pending AS (
    INSERT INTO pending_batches (first_report_id, report_ids)
    SELECT ids.a[1], ids.a FROM ids
)
SELECT x.id, x.pos FROM ids, unnest(ids.a) WITH ORDINALITY AS x(id, pos)";

/// One row of [`READ_BOXES`]: a `definition` (the last two columns) or a
/// `box` (the five before them).
#[derive(QueryableByName)]
struct BoxRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    ballot_box_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    city: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    latest_revision: Option<i32>,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    parties: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<Array<Nullable<Int4>>>)]
    votes: Option<Vec<Option<i32>>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    certified: Option<Vec<String>>,
}

/// One row of [`READ_KNOWN`].
#[derive(QueryableByName)]
struct KnownRow {
    #[diesel(sql_type = Int8)]
    id: i64,
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Int4)]
    revision: i32,
    #[diesel(sql_type = Bytea)]
    payload_hash: Vec<u8>,
    #[diesel(sql_type = Bool)]
    counted: bool,
}

/// One row of [`WRITE_FRESH`]'s result.
#[derive(QueryableByName)]
struct WrittenRow {
    #[diesel(sql_type = Int8)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    pos: i64,
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

/// A fresh report, the difference it brings, and the revision it replaces
/// (0 for its box's first).
struct Fresh<'a> {
    report: &'a Report,
    difference: Difference,
    replaces: i32,
}

/// Records `reports` on `conn`, which must be inside a [`hot_transaction`].
/// See the module docs.
pub(crate) fn record_batch(
    conn: &mut PgConnection,
    reports: &[Report],
) -> Result<Vec<Recorded>, TxError> {
    let Found {
        certified,
        mut states,
    } = read_boxes(conn, reports)?;
    let mut same = read_same(conn, reports, &states)?;

    let mut fresh: Vec<Fresh<'_>> = Vec::with_capacity(reports.len());
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
            // A certified city records nothing new; an identical replay of a
            // revision recorded before is still answered as one.
            Decision::Record(_)
                if certified.contains(&(
                    report.election().as_str().to_owned(),
                    report.city().as_str().to_owned(),
                )) =>
            {
                Draft::Conflict(election_core::Conflict::Certified {
                    city: report.city().clone(),
                })
            }
            Decision::Record(difference) => {
                let index = fresh.len();
                let replaces = states
                    .get(&key)
                    .map_or(0, |state| sql_revision(state.latest_revision));
                fresh.push(Fresh {
                    report,
                    difference,
                    replaces,
                });
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
                let Fresh {
                    report, difference, ..
                } = &fresh[index];
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

/// What [`READ_BOXES`] found.
struct Found {
    /// The certified (election, city) pairs of the batch's elections.
    certified: BTreeSet<(String, String)>,
    /// The latest recorded revision of each of the batch's boxes that has
    /// one; boxes not here have none yet.
    states: HashMap<BoxKey, BoxState>,
}

/// Statement 1: see [`READ_BOXES`]. Refuses the batch when a report was
/// checked against another version than the stored one.
fn read_boxes(conn: &mut PgConnection, reports: &[Report]) -> Result<Found, TxError> {
    let elections: BTreeSet<&str> = reports.iter().map(|r| r.election().as_str()).collect();
    // Sorted and distinct, so the statement's input is deterministic.
    let boxes: BTreeSet<BoxKey> = reports.iter().map(box_key).collect();
    let rows: Vec<BoxRow> = prepared(READ_BOXES, |q| {
        q.bind::<Array<Text>, _>(boxes.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(boxes.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(elections.into_iter().collect::<Vec<_>>())
    })
    .load(conn)?;
    let mut certified = BTreeSet::new();
    let mut stored: HashMap<String, Option<DefinitionVersion>> = HashMap::new();
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        match row.kind.as_str() {
            "definition" => {
                for city in row.certified.unwrap_or_default() {
                    certified.insert((row.election_id.clone(), city));
                }
                stored.insert(row.election_id, row.version.map(DefinitionVersion));
            }
            "box" => {
                let state = box_state(&row)?;
                let Some(ballot_box) = row.ballot_box_id else {
                    return Err(TxError::Corrupt("a box row without its box".to_owned()));
                };
                states.insert((row.election_id, ballot_box), state);
            }
            other => return Err(TxError::Corrupt(format!("unexpected row kind {other:?}"))),
        }
    }
    for report in reports {
        let current = stored.get(report.election().as_str()).copied().flatten();
        if report.checked_against() != current {
            return Err(TxError::DefinitionChanged(report.election().clone()));
        }
    }
    Ok(Found { certified, states })
}

/// A `box` row's state: the city, number and votes of the box's latest
/// revision (a NULL vote is a party it omitted).
fn box_state(row: &BoxRow) -> Result<BoxState, TxError> {
    let corrupt = |detail: String| {
        TxError::Corrupt(format!(
            "latest revision of ballot box {:?} of election {:?}: {detail}",
            row.ballot_box_id, row.election_id
        ))
    };
    let (Some(city), Some(revision), Some(parties), Some(votes)) = (
        row.city.as_deref(),
        row.latest_revision,
        &row.parties,
        &row.votes,
    ) else {
        return Err(corrupt("a box row without its state".to_owned()));
    };
    if parties.len() != votes.len() {
        return Err(corrupt(format!(
            "{} parties but {} votes",
            parties.len(),
            votes.len()
        )));
    }
    let mut posted = BTreeMap::new();
    for (party, votes) in parties.iter().zip(votes) {
        let Some(votes) = votes else { continue };
        let party = PartyId::parse(party).map_err(|p| corrupt(p.to_string()))?;
        let votes = u32::try_from(*votes).map_err(|_| corrupt(format!("{votes} votes")))?;
        posted.insert(party, votes);
    }
    Ok(BoxState {
        city: CityId::parse(city).map_err(|p| corrupt(p.to_string()))?,
        latest_revision: Revision::new(i64::from(revision)).map_err(|p| corrupt(p.to_string()))?,
        latest_votes: Votes::new(posted).map_err(|p| corrupt(p.to_string()))?,
    })
}

/// Statement 2: see [`READ_KNOWN`]. Skipped when no report's revision is at
/// or below its box's latest: only there can a recorded revision share its
/// number.
fn read_same(
    conn: &mut PgConnection,
    reports: &[Report],
    states: &HashMap<BoxKey, BoxState>,
) -> Result<HashMap<RevisionKey, Same>, TxError> {
    let revisions: BTreeSet<RevisionKey> = reports
        .iter()
        .filter(|r| {
            states
                .get(&box_key(r))
                .is_some_and(|state| r.revision() <= state.latest_revision)
        })
        .map(revision_key)
        .collect();
    if revisions.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<KnownRow> = prepared(READ_KNOWN, |q| {
        q.bind::<Array<Text>, _>(
            revisions
                .iter()
                .map(|(e, _, _)| e.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            revisions
                .iter()
                .map(|(_, b, _)| b.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Int4>, _>(revisions.iter().map(|&(_, _, r)| r).collect::<Vec<_>>())
    })
    .load(conn)?;
    rows.into_iter().map(same_revision).collect()
}

/// A recorded revision with the number of an incoming report (a `same` row).
fn same_revision(row: KnownRow) -> Result<(RevisionKey, Same), TxError> {
    let corrupt = |detail: String| {
        TxError::Corrupt(format!(
            "report {} of ballot box {:?} of election {:?}: {detail}",
            row.id, row.ballot_box_id, row.election_id
        ))
    };
    let payload_hash = <[u8; 32]>::try_from(row.payload_hash.as_slice()).map_err(|_| {
        corrupt(format!(
            "a payload hash of {} bytes",
            row.payload_hash.len()
        ))
    })?;
    let same = Same {
        earlier: Earlier::Recorded(ReportId(row.id)),
        payload_hash: PayloadHash(payload_hash),
        counted: row.counted,
    };
    Ok(((row.election_id, row.ballot_box_id, row.revision), same))
}

/// A report's per-party columns, as comma-separated texts (see the module
/// docs): every party of its difference, the votes it posted for each (empty
/// for a party it omitted), and the change each brings.
fn party_columns(fresh: &Fresh<'_>) -> (String, String, String) {
    let n = fresh.difference.len();
    let mut parties = String::with_capacity(n * 16);
    let mut votes = String::with_capacity(n * 8);
    let mut differences = String::with_capacity(n * 8);
    // Both lists are in party order, so the posted votes are walked alongside.
    let mut posted = fresh.report.votes().iter().peekable();
    let mut number = itoa::Buffer::new();
    for (i, (party, change)) in fresh.difference.iter().enumerate() {
        if i > 0 {
            parties.push(',');
            votes.push(',');
            differences.push(',');
        }
        parties.push_str(party.as_str());
        while posted.next_if(|&(p, _)| p < party).is_some() {}
        if let Some((_, count)) = posted.next_if(|&(p, _)| p == party) {
            votes.push_str(number.format(count));
        }
        differences.push_str(number.format(change));
    }
    (parties, votes, differences)
}

/// Statement 3: see [`WRITE_FRESH`]. Returns the id of each fresh report, in
/// the order of `fresh`.
fn write_fresh(conn: &mut PgConnection, fresh: &[Fresh<'_>]) -> Result<Vec<ReportId>, TxError> {
    let n = fresh.len();
    let mut elections = Vec::with_capacity(n);
    let mut ballot_boxes = Vec::with_capacity(n);
    let mut cities = Vec::with_capacity(n);
    let mut revisions = Vec::with_capacity(n);
    let mut replaces = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut parties = Vec::with_capacity(n);
    let mut votes = Vec::with_capacity(n);
    let mut differences = Vec::with_capacity(n);

    // Inserted in (election, box) order, each box's revisions rising as in
    // the batch (a stable sort): two batches racing for the same boxes then
    // wait for each other's chain keys in one order, never in a cycle. In
    // batch order, two batches posting revisions of the same existing boxes
    // in opposite orders deadlocked (8–16 times in 20 rounds of 200 boxes: a
    // second lost each, `deadlock_timeout`, and a retry); the box rows'
    // locks, taken in sorted order, used to prevent it. Ids are drawn in
    // batch order still (the log's contract: ids in recording order), and
    // each row takes its own by its position in the batch.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&index| {
        let report = fresh[index].report;
        (report.election().as_str(), report.ballot_box().as_str())
    });

    let mut positions = Vec::with_capacity(n);
    for &index in &order {
        let f = &fresh[index];
        let report = f.report;
        positions.push(i32::try_from(index + 1).unwrap_or(i32::MAX));
        elections.push(report.election().as_str());
        ballot_boxes.push(report.ballot_box().as_str());
        cities.push(report.city().as_str());
        revisions.push(sql_revision(report.revision()));
        replaces.push(f.replaces);
        reasons.push(report.reason());
        payloads.push(report.payload());
        hashes.push(report.payload_hash().0.to_vec());
        let (p, v, d) = party_columns(f);
        parties.push(p);
        votes.push(v);
        differences.push(d);
    }

    let rows: Vec<WrittenRow> = prepared(WRITE_FRESH, |q| {
        q.bind::<Array<Text>, _>(elections)
            .bind::<Array<Text>, _>(ballot_boxes)
            .bind::<Array<Text>, _>(cities)
            .bind::<Array<Int4>, _>(revisions)
            .bind::<Array<Int4>, _>(replaces)
            .bind::<Array<Nullable<Text>>, _>(reasons)
            .bind::<Array<Text>, _>(payloads)
            .bind::<Array<Bytea>, _>(hashes)
            .bind::<Array<Text>, _>(parties)
            .bind::<Array<Text>, _>(votes)
            .bind::<Array<Text>, _>(differences)
            .bind::<Array<Int4>, _>(positions)
    })
    .load(conn)?;

    let mut ids = vec![None; n];
    for row in rows {
        if let Some(slot) = usize::try_from(row.pos - 1)
            .ok()
            .and_then(|i| ids.get_mut(i))
        {
            *slot = Some(ReportId(row.id));
        }
    }
    ids.into_iter()
        .enumerate()
        .map(|(index, id)| {
            id.ok_or_else(|| {
                TxError::Corrupt(format!(
                    "inserting revision {} of ballot box {:?} returned no id",
                    fresh[index].report.revision(),
                    fresh[index].report.ballot_box().as_str()
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_commit_waits_for_its_flush_whatever_the_connection_says() {
        use crate::plans::synchronous_commit;
        use diesel::connection::SimpleConnection as _;

        let (_schema, mut conn) = crate::plans::migrated();
        let election = election_core::ElectionId::parse("2025").unwrap();
        let report = Report::from_json(
            &election,
            br#"{"ballot_box_id":"b1","city":"c1","votes":{"p1":1}}"#,
        )
        .unwrap();
        let inside = |conn: &mut PgConnection, reports: &[Report]| {
            recording_transaction(conn, reports, |conn| Ok(synchronous_commit(conn))).unwrap()
        };
        // `off` as a reload of the server's configuration would leave it on
        // a connection that found `on`: raised inside the transaction only.
        conn.batch_execute("SET synchronous_commit = off").unwrap();
        assert_eq!(inside(&mut conn, std::slice::from_ref(&report)), "on");
        assert_eq!(inside(&mut conn, &[]), "on");
        assert_eq!(synchronous_commit(&mut conn), "off");
        // Every setting that waits for the local flush is left as it is.
        for setting in ["local", "remote_write", "on", "remote_apply"] {
            conn.batch_execute(&format!("SET synchronous_commit = {setting}"))
                .unwrap();
            assert_eq!(inside(&mut conn, std::slice::from_ref(&report)), setting);
            assert_eq!(synchronous_commit(&mut conn), setting);
        }
    }

    #[test]
    fn statements_have_a_constant_number_of_binds() {
        // 12 binds at most whatever the batch size, far under PostgreSQL's
        // 65,535.
        for (sql, binds) in [(READ_BOXES, 3), (READ_KNOWN, 3), (WRITE_FRESH, 12)] {
            assert!(sql.contains(&format!("${binds}::")), "{sql}");
            assert!(!sql.contains(&format!("${}", binds + 1)), "{sql}");
        }
    }
}
