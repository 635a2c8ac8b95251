//! The final check of every scenario: I1-I4 (docs/contract.md §3) against the database and
//! the counters, after the faults.
//!
//! 1. `election-reprocessor run --once --pending-after 0s` counts whatever
//!    is still pending (it must exit 0: nothing left);
//! 2. with repair, `reconcile --election E --repair` must exit 0; then
//!    `reconcile --election E` must exit 0 (Redis exact, per the service's
//!    own comparison);
//! 3. independently of the services' code, this module then asserts:
//!    - every acknowledged `(ballot box, revision)` is a row of `reports`
//!      (I1);
//!    - no revision is pending, and nothing is half-recorded: every report
//!      has a `vote_log` row per party of its payload with the payload's
//!      votes, no `vote_log` row lacks its report, and every box's latest
//!      revision is its highest recorded one;
//!    - every counter, read with a plain `GET` under the contract's key names (docs/contract.md §4),
//!      equals the sum over boxes of their latest recorded revision, equals
//!      the sum of the log's differences, and equals the totals of the
//!      acknowledged posts (I2, I3).
//!
//! The result is a [`Summary`]: reports acknowledged, counters checked, and
//! drift (counters where any of those disagree), which must be 0.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, sql_types};
use redis::Commands;

use crate::load::LoadResult;
use crate::process::{Reprocessor, describe, reprocessor};
use crate::world::World;

/// What a scenario measured at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Posts acknowledged (2xx).
    pub acknowledged: usize,
    /// Counters compared (national and per city, every party).
    pub counters_checked: usize,
    /// Counters whose Redis value, log value and acknowledged value do not
    /// all agree.
    pub drift: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reports acknowledged: {}, counters checked: {}, drift found: {}",
            self.acknowledged, self.counters_checked, self.drift
        )
    }
}

/// Drains what is pending: `election-reprocessor run --once` with no grace
/// period. Reports claimed by a killed reprocessor wait out its lease.
///
/// Returns how many revisions it counted.
///
/// # Panics
/// When it does not exit 0 (something was left pending).
pub fn drain(world: &World, redis_url: &str) -> u64 {
    let output = reprocessor(
        world.database_url(),
        redis_url,
        &["run", "--once", "--pending-after", "0s"],
    );
    assert!(output.status.success(), "run --once: {}", describe(&output));
    // `election-reprocessor: counted N report(s) ...`
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .split("counted ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {}", describe(&output)))
}

/// `reconcile --election E [--repair]`; returns its exit status and output.
pub fn reconcile(world: &World, redis_url: &str, repair: bool) -> (Option<i32>, String) {
    let mut args = vec!["reconcile", "--election", &world.election];
    if repair {
        args.push("--repair");
    }
    let output = reprocessor(world.database_url(), redis_url, &args);
    (output.status.code(), describe(&output))
}

/// How long healing took, as [`heal_during`] saw it.
#[derive(Clone, Copy, Debug)]
pub struct Healed {
    /// From the fault's end to the end of the first `reconcile` that found
    /// everything exact: healing was done by then. Under load a `reconcile`
    /// takes seconds of its own, so this is a bound, not the healing time.
    pub after: std::time::Duration,
    /// When that `reconcile` began (it reads the markers a page at a time,
    /// so healing may have ended while it ran).
    pub check_began: std::time::Duration,
    /// How many `reconcile` runs it took.
    pub checks: u32,
    /// When the running reprocessor logged its first restore: it logs the
    /// first page of lost revisions it applied again at once, and pages go
    /// newest first, so after a failover (which loses the newest) that page
    /// holds them all; after a restart (which loses everything) it is the
    /// first of many.
    pub reported: Option<std::time::Duration>,
}

impl fmt::Display for Healed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reported {
            Some(reported) => write!(
                f,
                "the reprocessor's first restore at {:.1} s",
                reported.as_secs_f64()
            )?,
            None => write!(f, "the reprocessor reported no restore")?,
        }
        write!(
            f,
            "; reconcile found every counter exact by {:.1} s (its run began at {:.1} s; {} runs)",
            self.after.as_secs_f64(),
            self.check_began.as_secs_f64(),
            self.checks
        )
    }
}

/// What the reprocessor logs when a sweep restores lost revisions
/// (`bins/reprocessor/src/healer.rs`): at the first page, and at the end.
const RESTORED: &str = "Redis had lost counted revisions";

/// Waits until `reconcile --election E` exits 0 (every counter exact, every
/// counted revision present in Redis) with no repair run, as the running
/// reprocessor's healing makes it. Says, from `since`, when the exact run
/// ended and began and how many runs it took (`reported` is left to
/// [`heal_during`]).
///
/// # Panics
/// When it does not within `limit` of `since`, with the last output.
pub fn wait_healed(
    world: &World,
    redis_url: &str,
    since: std::time::Instant,
    limit: std::time::Duration,
) -> Healed {
    let mut checks = 0;
    loop {
        let check_began = since.elapsed();
        let (status, output) = reconcile(world, redis_url, false);
        checks += 1;
        if status == Some(0) {
            return Healed {
                after: since.elapsed(),
                check_began,
                checks,
                reported: None,
            };
        }
        assert!(
            since.elapsed() < limit,
            "not healed within {limit:?} without a repair: {output}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// How many restores the reprocessor has logged so far: read it before a
/// fault ends, for [`heal_during`].
pub fn restores_logged(reprocessor: &Reprocessor) -> usize {
    reprocessor.process().log_text().matches(RESTORED).count()
}

/// Runs `load` (the rest of a night) while [`wait_healed`] checks, from
/// `since`, beside it, and while the reprocessor's log is watched for a
/// restore beyond the `restores_before` it had logged before the fault
/// ended: healing is measured while the posts go on, not after them.
/// Returns what `load` returned and how long healing took.
///
/// # Panics
/// As [`wait_healed`] does, once `load` has returned.
pub fn heal_during<T>(
    world: &World,
    redis_url: &str,
    (reprocessor, restores_before): (&Reprocessor, usize),
    since: std::time::Instant,
    limit: std::time::Duration,
    load: impl FnOnce() -> T,
) -> (T, Healed) {
    let exact = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let healing = scope.spawn(|| {
            let healed = wait_healed(world, redis_url, since, limit);
            exact.store(true, Ordering::SeqCst);
            healed
        });
        let reported = scope.spawn(|| {
            // Once `reconcile` found everything exact, the restore is logged
            // (the first page's line follows its apply at once) or was
            // never needed: a last second, then no answer.
            let mut exact_since = None;
            loop {
                if restores_logged(reprocessor) > restores_before {
                    return Some(since.elapsed());
                }
                if exact.load(Ordering::SeqCst) {
                    let first = *exact_since.get_or_insert_with(std::time::Instant::now);
                    if first.elapsed() > std::time::Duration::from_secs(1) {
                        return None;
                    }
                }
                if since.elapsed() >= limit {
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let loaded = load();
        let healed = healing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let reported = reported.join().ok().flatten();
        (loaded, Healed { reported, ..healed })
    })
}

/// Drains, repairs when `repair` says so, and checks everything (see the
/// module docs). Prints and returns the summary.
///
/// # Panics
/// On any drift or any broken invariant, with the first differences.
#[track_caller]
pub fn verify(
    name: &str,
    world: &World,
    redis_url: &str,
    load: &LoadResult,
    repair: bool,
) -> Summary {
    let drained = drain(world, redis_url);
    if repair {
        let (status, output) = reconcile(world, redis_url, true);
        assert_eq!(status, Some(0), "reconcile --repair: {output}");
    }
    let (status, output) = reconcile(world, redis_url, false);
    assert_eq!(status, Some(0), "reconcile finds drift: {output}");

    let mut conn = PgConnection::establish(world.database_url())
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", world.database_url()));
    let election = world.election.as_str();

    let recorded: BTreeSet<(String, i32)> = rows::<BoxRevision>(
        &mut conn,
        "SELECT ballot_box_id, revision FROM reports WHERE election_id = $1",
        election,
    )
    .into_iter()
    .map(|row| (row.ballot_box_id, row.revision))
    .collect();
    let acknowledged = load.acknowledged_revisions();
    let missing: Vec<&(String, i32)> = acknowledged
        .iter()
        .filter(|revision| !recorded.contains(*revision))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged revisions are not in PostgreSQL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_integrity(&mut conn, election);

    let drift = measure(world, redis_url, load);
    let summary = Summary {
        acknowledged: load.acknowledged(),
        counters_checked: drift.counters_checked,
        drift: drift.differences.len(),
    };
    println!("{name}: {}", load.describe());
    println!("{name}: the reprocessor counted {drained} revisions left pending");
    println!("{name}: {summary}");
    assert!(
        drift.differences.is_empty(),
        "{name}: {} counters drift (key, redis, log latest, log differences, acknowledged), e.g.:\n{}",
        drift.differences.len(),
        drift.first_lines(10)
    );
    summary
}

/// Counters compared, and those that differ.
#[derive(Debug)]
pub struct Drift {
    /// Counters compared.
    pub counters_checked: usize,
    /// `(key, redis, latest revisions, log differences, acknowledged)` of
    /// every counter where they do not all agree.
    pub differences: Vec<(String, i64, i64, i64, i64)>,
}

impl Drift {
    fn first_lines(&self, n: usize) -> String {
        self.differences
            .iter()
            .take(n)
            .map(|(key, redis, latest, differences, acknowledged)| {
                format!("  {key} {redis} {latest} {differences} {acknowledged}\n")
            })
            .collect()
    }
}

/// Compares every counter, without draining or repairing first (to show a
/// fault really lost something before the repair).
pub fn measure(world: &World, redis_url: &str, load: &LoadResult) -> Drift {
    let mut conn = PgConnection::establish(world.database_url())
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", world.database_url()));
    let election = world.election.as_str();
    let latest = counters(
        election,
        rows::<CityPartySum>(
            &mut conn,
            "SELECT b.city, l.party, sum(l.votes)::bigint AS votes \
             FROM ballot_boxes b JOIN vote_log l ON l.report_id = b.latest_report_id \
             WHERE b.election_id = $1 GROUP BY b.city, l.party",
            election,
        ),
    );
    let differences = counters(
        election,
        rows::<CityPartySum>(
            &mut conn,
            "SELECT city, party, sum(difference)::bigint AS votes \
             FROM vote_log WHERE election_id = $1 GROUP BY city, party",
            election,
        ),
    );
    let acknowledged = load.expected_counters(election);
    let keys: BTreeSet<&String> = latest
        .keys()
        .chain(differences.keys())
        .chain(acknowledged.keys())
        .collect();
    let keys: Vec<String> = keys.into_iter().cloned().collect();
    let held = read_counters(redis_url, &keys);
    let mut drift = Drift {
        counters_checked: keys.len(),
        differences: Vec::new(),
    };
    for (key, redis) in keys.iter().zip(held) {
        let values = (
            redis.unwrap_or(0),
            latest.get(key).copied().unwrap_or(0),
            differences.get(key).copied().unwrap_or(0),
            acknowledged.get(key).copied().unwrap_or(0),
        );
        if values.0 != values.1 || values.1 != values.2 || values.2 != values.3 {
            drift
                .differences
                .push((key.clone(), values.0, values.1, values.2, values.3));
        }
    }
    drift
}

/// Runs a query returning one `bigint` column `n`, with the election as
/// `$1` (for scenarios watching the log while they inject faults).
pub fn count(world: &World, sql: &str) -> i64 {
    let mut conn = PgConnection::establish(world.database_url())
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", world.database_url()));
    rows::<Count>(&mut conn, sql, &world.election)[0].n
}

/// Nothing pending, nothing half-recorded.
#[track_caller]
fn assert_integrity(conn: &mut PgConnection, election: &str) {
    let checks = [
        (
            "revisions still pending",
            "SELECT count(*) AS n FROM pending_reports WHERE election_id = $1",
        ),
        (
            "payload parties without their vote_log row and votes",
            "SELECT count(*) AS n FROM reports r, json_each_text(r.payload -> 'votes') v \
             WHERE r.election_id = $1 AND NOT EXISTS (SELECT 1 FROM vote_log l \
             WHERE l.report_id = r.id AND l.party = v.key AND l.votes = v.value::int)",
        ),
        (
            "vote_log rows without their report",
            "SELECT count(*) AS n FROM vote_log l WHERE l.election_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.id = l.report_id)",
        ),
        (
            "reports without vote_log rows",
            "SELECT count(*) AS n FROM reports r WHERE r.election_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM vote_log l WHERE l.report_id = r.id)",
        ),
        (
            "ballot boxes whose latest revision is not their highest recorded one",
            "SELECT count(*) AS n FROM ballot_boxes b WHERE b.election_id = $1 \
             AND (b.latest_report_id IS NULL OR b.latest_revision IS DISTINCT FROM \
             (SELECT max(r.revision) FROM reports r WHERE r.election_id = b.election_id \
             AND r.ballot_box_id = b.ballot_box_id) OR NOT EXISTS (SELECT 1 FROM reports r \
             WHERE r.id = b.latest_report_id AND r.revision = b.latest_revision))",
        ),
    ];
    for (what, sql) in checks {
        let n = rows::<Count>(conn, sql, election)[0].n;
        assert_eq!(n, 0, "{n} {what}");
    }
}

/// Reads `keys` with plain `GET`s (a Cluster client for a
/// `redis+cluster://` URL).
fn read_counters(redis_url: &str, keys: &[String]) -> Vec<Option<i64>> {
    if let Some(nodes) = redis_url.strip_prefix("redis+cluster://") {
        let nodes: Vec<String> = nodes
            .split(',')
            .map(|node| format!("redis://{node}"))
            .collect();
        let client = redis::cluster::ClusterClient::new(nodes)
            .unwrap_or_else(|e| panic!("cluster client for {redis_url}: {e}"));
        let mut conn = client
            .get_connection()
            .unwrap_or_else(|e| panic!("connecting to {redis_url}: {e}"));
        keys.iter()
            .map(|key| {
                conn.get(key)
                    .unwrap_or_else(|e| panic!("GET {key} on {redis_url}: {e}"))
            })
            .collect()
    } else {
        let mut conn = election_test_support::redis::connection(redis_url);
        let mut pipeline = redis::pipe();
        for key in keys {
            pipeline.get(key);
        }
        pipeline
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("GET of {} keys on {redis_url}: {e}", keys.len()))
    }
}

fn counters(election: &str, sums: Vec<CityPartySum>) -> BTreeMap<String, i64> {
    let mut counters = BTreeMap::new();
    for row in sums {
        *counters
            .entry(format!("election:{election}:party:{}", row.party))
            .or_insert(0) += row.votes;
        *counters
            .entry(format!(
                "election:{election}:city:{}:party:{}",
                row.city, row.party
            ))
            .or_insert(0) += row.votes;
    }
    counters
}

fn rows<T: QueryableByName<diesel::pg::Pg> + 'static>(
    conn: &mut PgConnection,
    sql: &str,
    election: &str,
) -> Vec<T> {
    diesel::sql_query(sql)
        .bind::<sql_types::Text, _>(election)
        .load(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[derive(QueryableByName)]
struct BoxRevision {
    #[diesel(sql_type = sql_types::Text)]
    ballot_box_id: String,
    #[diesel(sql_type = sql_types::Integer)]
    revision: i32,
}

#[derive(QueryableByName)]
struct CityPartySum {
    #[diesel(sql_type = sql_types::Text)]
    city: String,
    #[diesel(sql_type = sql_types::Text)]
    party: String,
    #[diesel(sql_type = sql_types::BigInt)]
    votes: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = sql_types::BigInt)]
    n: i64,
}
