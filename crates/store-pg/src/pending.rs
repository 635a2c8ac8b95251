//! Which recorded revisions are not counted yet: `pending_batches`.
//!
//! The record transaction inserts one row per batch naming its fresh
//! revisions; once the engine has applied them to Redis it marks them
//! counted, which deletes the row. So the per-report cost of "pending" is a
//! share of one small row, where a `completed` flag on every report cost a
//! second, non-HOT version of each report row with an entry in all of its
//! indexes (docs/benchmarks.md). Whatever is not in a row here is counted.
//!
//! A row's `report_ids` are the revisions of one batch still pending, and its
//! key `first_report_id` is the smallest of them. The common cases touch only
//! rows found by that key:
//! - **mark a whole batch** ([`MARK_WHOLE`]): the engine marks exactly the
//!   ids it recorded (or claimed) together, so a row whose ids all appear in
//!   the call is deleted, found by its key among the ids. Its commit does
//!   not wait for its WAL flush (`synchronous_commit` off for that one
//!   transaction, set by the statement itself): a mark lost in a crash only
//!   brings the row back, and the reprocessor's re-apply of revisions whose
//!   markers are all set moves nothing and marks them again (the crash table
//!   in docs/ARCHITECTURE.md, "after applying, before marking"). Waiting for
//!   that second flush per batch cost 7–14 % of ingest's rate
//!   (docs/benchmarks.md); the record transaction, which I1 is about, still
//!   waits for its own;
//! - **claim** ([`CLAIM_ROWS`]): rows whose lease ran out, oldest first,
//!   `FOR UPDATE SKIP LOCKED`, so concurrent claimers take disjoint rows.
//!
//! Anything finer (a claim limit that ends inside a batch, a mark or release
//! of part of a batch after a partial Redis failure) rewrites the rows
//! concerned: delete, then insert each part under its own smallest id with
//! the attributes it should have ([`rewrite`]). That is the failure path,
//! one transaction with the rows locked.
//!
//! The hot path's statements ([`MARK_WHOLE`], [`CLAIM_ROWS`], [`LEASE_ROWS`],
//! [`CLAIMED_REPORTS`]) are raw SQL with typed binds, prepared once per
//! connection (`crate::prepared`) and checked by `crate::plans`; the failure
//! path's lookup and rewrite go through diesel's DSL.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Int8, Nullable, Text, Timestamptz};
use election_core::Claim;

use crate::error::TxError;
use crate::prepared::prepared;
use crate::schema::pending_batches;

/// Deletes the rows whose ids all appear in `$1`, found by their key (which
/// is one of those ids). Returns the ids they held. Once it deletes a row it
/// turns `synchronous_commit` off for its own transaction (`set_config`'s
/// `is_local`; see the module docs): the commit returns without waiting for
/// the WAL flush, and the setting ends with the transaction, so nothing else
/// on the connection commits that way. In the statement, rather than a
/// `SET LOCAL` before it, so a mark stays one round trip.
pub(crate) const MARK_WHOLE: &str = "\
DELETE FROM pending_batches
WHERE first_report_id = ANY($1::bigint[]) AND report_ids <@ $1::bigint[]
  AND set_config('synchronous_commit', 'off', true) = 'off'
RETURNING report_ids";

/// Locks up to `$1` claimable rows (recorded at least `$2` µs ago, lease run
/// out or never leased), oldest first; rows other claimers hold are skipped.
pub(crate) const CLAIM_ROWS: &str = "\
SELECT first_report_id, report_ids, recorded_at, attempts, leased_until, last_error
FROM pending_batches
WHERE recorded_at <= now() - $2::bigint * interval '1 microsecond'
  AND (leased_until IS NULL OR leased_until <= now())
ORDER BY first_report_id
LIMIT $1
FOR UPDATE SKIP LOCKED";

/// Leases the rows `$1` (claimed whole) for `$2` µs and counts the attempt.
pub(crate) const LEASE_ROWS: &str = "\
UPDATE pending_batches
SET attempts = attempts + 1, leased_until = now() + $2::bigint * interval '1 microsecond'
WHERE first_report_id = ANY($1::bigint[])";

/// The claimed revisions with their differences, by primary key.
pub(crate) const CLAIMED_REPORTS: &str = "\
SELECT r.id, r.election_id, r.ballot_box_id, r.city, r.revision, r.parties, r.differences
FROM reports r
WHERE r.id = ANY($1::bigint[])
ORDER BY r.id";

/// One row of `pending_batches`: loaded by name from the raw [`CLAIM_ROWS`],
/// and through the DSL from the rows of a partial mark or release.
#[derive(QueryableByName, Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = pending_batches, check_for_backend(diesel::pg::Pg))]
pub(crate) struct BatchRow {
    #[diesel(sql_type = Int8)]
    first_report_id: i64,
    #[diesel(sql_type = Array<Int8>)]
    report_ids: Vec<i64>,
    #[diesel(sql_type = Timestamptz)]
    recorded_at: DateTime<Utc>,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    leased_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
}

#[derive(QueryableByName)]
struct HeldIds {
    #[diesel(sql_type = Array<Int8>)]
    report_ids: Vec<i64>,
}

/// Marks `ids` counted: see the module docs. Idempotent: ids found in no row
/// are counted already.
pub(crate) fn mark_counted(conn: &mut PgConnection, ids: &[i64]) -> Result<(), TxError> {
    let deleted: Vec<HeldIds> =
        prepared(MARK_WHOLE, |q| q.bind::<Array<Int8>, _>(ids)).load(conn)?;
    let covered: BTreeSet<i64> = deleted.into_iter().flat_map(|r| r.report_ids).collect();
    let rest: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !covered.contains(id))
        .collect();
    if rest.is_empty() {
        return Ok(());
    }
    conn.transaction(|conn| {
        let rest_set: BTreeSet<i64> = rest.iter().copied().collect();
        for row in overlapping(conn, &rest)? {
            let remaining: Vec<i64> = row
                .report_ids
                .iter()
                .copied()
                .filter(|id| !rest_set.contains(id))
                .collect();
            rewrite(conn, &row, &[(remaining, row.clone())])?;
        }
        Ok(())
    })
}

/// Gives up the claim of `ids` after a failed attempt: their rows (or the
/// parts of them holding `ids`) lose their lease and keep `error`.
pub(crate) fn release(conn: &mut PgConnection, ids: &[i64], error: &str) -> Result<(), TxError> {
    conn.transaction(|conn| {
        let released: BTreeSet<i64> = ids.iter().copied().collect();
        for row in overlapping(conn, ids)? {
            let (mine, others): (Vec<i64>, Vec<i64>) =
                row.report_ids.iter().partition(|id| released.contains(id));
            let freed = BatchRow {
                leased_until: None,
                last_error: Some(error.to_owned()),
                ..row.clone()
            };
            rewrite(conn, &row, &[(mine, freed), (others, row.clone())])?;
        }
        Ok(())
    })
}

/// Claims up to `claim.limit` pending revisions: see the module docs.
/// Returns their ids, oldest first; the caller runs this inside a
/// `hot_transaction` and reads them in the same transaction.
pub(crate) fn claim(conn: &mut PgConnection, claim: &Claim) -> Result<Vec<i64>, TxError> {
    let rows: Vec<BatchRow> = prepared(CLAIM_ROWS, |q| {
        q.bind::<BigInt, _>(i64::try_from(claim.limit).unwrap_or(i64::MAX))
            .bind::<BigInt, _>(micros(claim.pending_for))
    })
    .load(conn)?;
    let lease = micros(claim.lease);
    let mut taken = Vec::new();
    let mut whole = Vec::new();
    for row in rows {
        let room = claim.limit.saturating_sub(taken.len());
        if room == 0 {
            break;
        }
        let mut ids = row.report_ids.clone();
        ids.sort_unstable();
        if ids.len() <= room {
            whole.push(row.first_report_id);
            taken.extend(ids);
            continue;
        }
        // The limit ends inside this batch: lease its oldest part only.
        let rest = ids.split_off(room);
        let leased = BatchRow {
            attempts: row.attempts.saturating_add(1),
            leased_until: Some(Utc::now() + chrono::Duration::microseconds(lease)),
            ..row.clone()
        };
        rewrite(conn, &row, &[(ids.clone(), leased), (rest, row.clone())])?;
        taken.extend(ids);
    }
    if !whole.is_empty() {
        prepared(LEASE_ROWS, |q| {
            q.bind::<Array<Int8>, _>(whole).bind::<BigInt, _>(lease)
        })
        .execute(conn)?;
    }
    taken.sort_unstable();
    Ok(taken)
}

/// The lease of a quarantined revision: the end of year 9999, "never" for
/// every claim (and `pending_stats` counts what is leased this far out).
pub(crate) const QUARANTINED: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 0) {
    Some(at) => at,
    None => DateTime::<Utc>::MAX_UTC,
};

/// Sets claimed revisions that cannot be read back aside, each with its
/// problem: their rows' parts holding them get a lease that never ends
/// ([`QUARANTINED`]) and the problem as `last_error`. An operator who fixed
/// the row releases them with
/// `UPDATE pending_batches SET leased_until = NULL WHERE leased_until = '9999-12-31 23:59:59+00'`.
pub(crate) fn quarantine(conn: &mut PgConnection, bad: &[(i64, String)]) -> Result<(), TxError> {
    let ids: Vec<i64> = bad.iter().map(|(id, _)| *id).collect();
    for (id, problem) in bad {
        tracing::warn!(
            report.id = id,
            problem = %problem,
            "a pending report cannot be read back; quarantined (never claimed again until released)"
        );
    }
    let set: BTreeSet<i64> = ids.iter().copied().collect();
    let problems = bad
        .iter()
        .map(|(id, problem)| format!("report {id}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ");
    for row in overlapping(conn, &ids)? {
        let (mine, others): (Vec<i64>, Vec<i64>) =
            row.report_ids.iter().partition(|id| set.contains(id));
        let set_aside = BatchRow {
            leased_until: Some(QUARANTINED),
            last_error: Some(format!("quarantined: {problems}")),
            ..row.clone()
        };
        rewrite(conn, &row, &[(mine, set_aside), (others, row.clone())])?;
    }
    Ok(())
}

/// Locks and returns the rows holding any of `ids`, in key order (the
/// failure path of marks and releases; a sequential scan of a table that
/// holds only batches in flight).
fn overlapping(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<BatchRow>, TxError> {
    Ok(pending_batches::table
        .filter(pending_batches::report_ids.overlaps_with(ids))
        .order(pending_batches::first_report_id)
        .for_update()
        .select(BatchRow::as_select())
        .load(conn)?)
}

/// Replaces the locked row `old` by one row per non-empty part, each keyed
/// by its smallest id and carrying the attributes given with it.
fn rewrite(
    conn: &mut PgConnection,
    old: &BatchRow,
    parts: &[(Vec<i64>, BatchRow)],
) -> Result<(), TxError> {
    diesel::delete(
        pending_batches::table.filter(pending_batches::first_report_id.eq(old.first_report_id)),
    )
    .execute(conn)?;
    for (ids, attributes) in parts {
        let Some(&first) = ids.iter().min() else {
            continue;
        };
        diesel::insert_into(pending_batches::table)
            .values((
                pending_batches::first_report_id.eq(first),
                pending_batches::report_ids.eq(ids),
                pending_batches::recorded_at.eq(attributes.recorded_at),
                pending_batches::attempts.eq(attributes.attempts),
                pending_batches::leased_until.eq(attributes.leased_until),
                pending_batches::last_error.eq(attributes.last_error.as_deref()),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Longest interval handed to PostgreSQL for ages and leases (about 100
/// years): a larger `Duration` would overflow its `interval`.
const MAX_INTERVAL_MICROS: i64 = 100 * 366 * 24 * 3600 * 1_000_000;

/// A [`Duration`] as PostgreSQL microseconds, capped.
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).map_or(MAX_INTERVAL_MICROS, |m| m.min(MAX_INTERVAL_MICROS))
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::sql_types::Text;
    use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};

    use super::mark_counted;
    use crate::plans::synchronous_commit;

    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = Text)]
        value: String,
    }

    fn read(conn: &mut PgConnection, sql: &str) -> String {
        diesel::sql_query(sql)
            .get_result::<Value>(conn)
            .unwrap()
            .value
    }

    #[test]
    fn a_whole_mark_commits_without_waiting_for_its_flush_and_nothing_else_does() {
        let (_schema, mut conn) = crate::plans::migrated();
        conn.batch_execute(
            "INSERT INTO pending_batches (first_report_id, report_ids, recorded_at) \
             VALUES (1, '{1,2}', now()), (3, '{3}', now()), (4, '{4,5}', now())",
        )
        .unwrap();
        assert_eq!(synchronous_commit(&mut conn), "on");

        // Inside the mark's transaction, once it deleted a row: off.
        conn.transaction(|conn| -> Result<(), crate::error::TxError> {
            mark_counted(conn, &[1, 2])?;
            assert_eq!(synchronous_commit(conn), "off");
            Ok(())
        })
        .unwrap();
        // The transaction is over: the connection commits synchronously again.
        assert_eq!(synchronous_commit(&mut conn), "on");

        // On its own (its own implicit transaction), as the engine runs it:
        // the next statement on the connection is not affected.
        mark_counted(&mut conn, &[3]).unwrap();
        assert_eq!(synchronous_commit(&mut conn), "on");

        // A mark that deletes nothing (ids already counted) changes nothing.
        mark_counted(&mut conn, &[1, 2, 3]).unwrap();
        assert_eq!(
            read(
                &mut conn,
                "SELECT string_agg(first_report_id::text, ',') AS value FROM pending_batches"
            ),
            "4"
        );
        assert_eq!(synchronous_commit(&mut conn), "on");
    }
}
