//! The group-commit path on a real server: big batches, concurrent batches,
//! what lands in the tables, and agreement with the in-memory log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use election_core::contract::{self, report, unique_election};
use election_core::memory::MemoryLog;
use election_core::{
    BallotBoxId, Claim, Difference, ElectionId, Recorded, Report, ReportId, ReportLog, Revision,
};
use election_test_support::process::wait_until;
use store_pg::PgLog;

use crate::support::{Migrated, execute, execute_on, fresh, lines, number, number_on};

fn votes_for(i: u32, revision: u32) -> Vec<(&'static str, u32)> {
    // Later revisions drop party "e" and move the others.
    let mut votes = vec![
        ("a", i % 97 + revision),
        ("b", i % 13),
        ("c", 1000 + i),
        ("d", 0),
    ];
    if revision == 1 {
        votes.push(("e", 7));
    }
    votes
}

/// Records `rounds` batches from each of `threads` threads, every round
/// started at once by a barrier: round `round` of thread `t` is
/// `batch(t, round)`. Returns every batch's answers, once all threads are
/// done; fails the test naming every batch that failed.
fn record_at_once(
    log: &Arc<PgLog>,
    threads: usize,
    rounds: u32,
    batch: impl Fn(usize, u32) -> Vec<Report> + Send + Sync + 'static,
) -> Vec<Vec<Recorded>> {
    let barrier = Arc::new(Barrier::new(threads));
    let batch = Arc::new(batch);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (log, barrier, batch) = (Arc::clone(log), Arc::clone(&barrier), Arc::clone(&batch));
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let mut failures = Vec::new();
                for round in 0..rounds {
                    let reports = batch(t, round);
                    barrier.wait();
                    // No panic here: a thread that stopped early would leave
                    // the others waiting at the barrier forever.
                    match log.record(&reports) {
                        Ok(recorded) => answers.push(recorded),
                        Err(error) => failures.push(format!("{error:#?}")),
                    }
                }
                (answers, failures)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        let (recorded, failures) = handle.join().unwrap();
        assert!(failures.is_empty(), "batches failed: {failures:?}");
        answers.extend(recorded);
    }
    answers
}

#[test]
fn a_batch_beyond_the_bind_parameter_limit_is_recorded_in_one_call() {
    let db = Migrated::new(2);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("big");
    // 2,500 first reports, then revision 2 of the first 500 boxes: 3,000
    // reports and 14,500 log rows, ~110,000 values, in one transaction.
    let mut batch: Vec<Report> = (0..2500)
        .map(|i| {
            report(
                &e,
                &format!("B{i}"),
                &format!("c{}", i % 50),
                1,
                &votes_for(i, 1),
            )
        })
        .collect();
    batch.extend((0..500).map(|i| {
        report(
            &e,
            &format!("B{i}"),
            &format!("c{}", i % 50),
            2,
            &votes_for(i, 2),
        )
    }));
    let answers = log.record(&batch).unwrap();
    assert_eq!(answers.len(), 3000);

    let ids: Vec<ReportId> = answers.iter().map(|a| fresh(a).report_id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids follow batch order"
    );
    for (i, answer) in answers.iter().enumerate() {
        let counting = fresh(answer);
        let report = &batch[i];
        assert_eq!(counting.ballot_box, *report.ballot_box());
        assert_eq!(counting.city, *report.city());
        assert_eq!(counting.revision, report.revision());
        let previous = (i >= 2500).then(|| batch[i - 2500].votes());
        assert_eq!(
            counting.difference,
            Difference::between(previous, report.votes()),
            "report {i}"
        );
    }
    assert_eq!(log.pending_count(&e).unwrap(), 3000);
    assert_eq!(number(&db.pool, "SELECT count(*) AS n FROM reports"), 3000);
    // Five parties per first revision; revision 2 names all five again
    // (its "e" went to 0).
    assert_eq!(
        number(&db.pool, "SELECT count(*) AS n FROM vote_log"),
        15_000
    );
    assert_eq!(
        number(
            &db.pool,
            "SELECT count(*) AS n FROM ballot_boxes WHERE latest_revision = 2"
        ),
        500
    );

    // The same batch again: every report a replay of its own revision.
    let again = log.record(&batch).unwrap();
    for (answer, id) in again.iter().zip(&ids) {
        assert_eq!(
            *answer,
            Recorded::Replay {
                report_id: *id,
                counted: false
            }
        );
    }
    assert_eq!(number(&db.pool, "SELECT count(*) AS n FROM reports"), 3000);

    // Counting all of it adds up to the latest revisions.
    log.mark_counted(&ids).unwrap();
    let totals = log.counted_totals(&e).unwrap();
    let expected: i64 = (0..2500u32)
        .map(|i| {
            let revision = if i < 500 { 2 } else { 1 };
            votes_for(i, revision)
                .iter()
                .map(|(_, n)| i64::from(*n))
                .sum::<i64>()
        })
        .sum();
    assert_eq!(totals.national().values().sum::<i64>(), expected);
}

#[test]
fn a_large_batchs_pending_row_is_stored_uncompressed() {
    let db = Migrated::new(1);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("inline");
    // 600 reports: ids of 4.8 KB, over the ~2 KB beyond which PostgreSQL
    // compresses a row by default.
    let batch: Vec<Report> = (0..600)
        .map(|i| report(&e, &format!("B{i}"), "c", 1, &votes_for(i, 1)))
        .collect();
    log.record(&batch).unwrap();
    assert_eq!(
        lines(
            &db.pool,
            "SELECT cardinality(report_ids) || ' ' || coalesce(pg_column_compression(report_ids), 'plain') AS line \
             FROM pending_batches"
        ),
        vec!["600 plain".to_owned()],
        "the batch's pending row: its ids, stored uncompressed"
    );
}

#[test]
fn concurrent_batches_over_overlapping_boxes_never_fail_or_double_record() {
    let db = Migrated::new(8);
    let log = Arc::new(PgLog::new(db.pool.clone()));
    // Boxes of two elections, so the lock order spans both keys.
    let elections = [unique_election("race"), unique_election("race")];
    let boxes: Vec<(ElectionId, String)> = (0..60)
        .map(|i| (elections[i % 2].clone(), format!("B{i}")))
        .collect();
    let rounds = 4u32;
    let answers: Vec<Recorded> = record_at_once(&log, 8, rounds, {
        let boxes = boxes.clone();
        move |t, round| {
            // Every thread posts the same revision of every box, each in its
            // own order: rotated, and reversed for odd threads.
            let mut order: Vec<usize> = (0..boxes.len()).collect();
            order.rotate_left(t * 7 % boxes.len());
            if t % 2 == 1 {
                order.reverse();
            }
            let revision = round + 1;
            order
                .iter()
                .map(|&i| {
                    let (e, b) = &boxes[i];
                    report(e, b, "york", revision, &[("a", revision * 10 + i as u32)])
                })
                .collect()
        }
    })
    .into_iter()
    .flatten()
    .collect();

    // Exactly one fresh answer per (box, revision); every other post of it
    // is a replay of that same id.
    let mut fresh_ids: HashMap<(ElectionId, BallotBoxId, Revision), ReportId> = HashMap::new();
    for answer in &answers {
        if let Recorded::Fresh(c) = answer {
            let key = (c.election.clone(), c.ballot_box.clone(), c.revision);
            assert!(
                fresh_ids.insert(key, c.report_id).is_none(),
                "recorded twice: {c:?}"
            );
        }
    }
    assert_eq!(fresh_ids.len(), boxes.len() * rounds as usize);
    let fresh_set: std::collections::HashSet<ReportId> = fresh_ids.values().copied().collect();
    for answer in &answers {
        match answer {
            Recorded::Fresh(_) => {}
            Recorded::Replay { report_id, .. } => assert!(fresh_set.contains(report_id)),
            Recorded::Conflict(c) => panic!("unexpected conflict {c:?}"),
        }
    }
    assert_eq!(
        number(
            &db.pool,
            "SELECT count(*) - count(DISTINCT (election_id, ballot_box_id, revision)) AS n \
             FROM reports"
        ),
        0
    );
    assert_eq!(
        number(&db.pool, "SELECT count(*) AS n FROM reports"),
        (boxes.len() * rounds as usize) as i64
    );
    // The differences of each box add up to its last revision.
    let ids: Vec<ReportId> = fresh_ids.values().copied().collect();
    log.mark_counted(&ids).unwrap();
    for e in &elections {
        let expected: i64 = boxes
            .iter()
            .enumerate()
            .filter(|(_, (be, _))| be == e)
            .map(|(i, _)| i64::from(rounds * 10 + i as u32))
            .sum();
        let totals = log.counted_totals(e).unwrap();
        assert_eq!(totals.national().values().sum::<i64>(), expected);
    }
}

/// New revisions of one box posted at once by several batches, each above
/// the latest recorded when it was sent: every recorded one replaces the
/// one recorded before it (one chain), so the box's differences add up to
/// its latest revision's votes. Two batches that decided against the same
/// latest revision and were both recorded would count the box twice; the
/// chain key makes the later one retry and decide again.
#[test]
fn concurrent_new_revisions_of_one_box_form_one_chain() {
    let db = Migrated::new(8);
    let log = Arc::new(PgLog::new(db.pool.clone()));
    let e = unique_election("chain");
    let threads = 6u32;
    let rounds = 12u32;
    let batches = record_at_once(&log, threads as usize, rounds, {
        let e = e.clone();
        move |t, round| {
            // Each thread its own revision, all above the last round's.
            let revision = 1 + round * threads + t as u32;
            vec![
                report(&e, "X", "york", revision, &[("a", revision * 10)]),
                report(&e, &format!("N{revision}"), "leeds", 1, &[("a", 1)]),
            ]
        }
    });
    let mut fresh_ids = Vec::new();
    // Box X's answer comes first in each batch's.
    for answer in batches
        .into_iter()
        .filter_map(|batch| batch.into_iter().next())
    {
        match answer {
            Recorded::Fresh(c) => fresh_ids.push(c.report_id),
            // Decided after a higher revision was recorded: stale.
            Recorded::Conflict(_) => {}
            Recorded::Replay { .. } => panic!("no revision was posted twice"),
        }
    }
    let latest = number(
        &db.pool,
        &format!(
            "SELECT max(revision)::bigint AS n FROM reports \
             WHERE election_id = '{e}' AND ballot_box_id = 'X'"
        ),
    );
    assert_eq!(
        number(
            &db.pool,
            &format!(
                "SELECT count(*) AS n FROM reports WHERE election_id = '{e}' AND ballot_box_id = 'X'"
            )
        ),
        fresh_ids.len() as i64,
        "one row per fresh answer"
    );
    // Every recorded revision replaces the one recorded just below it.
    assert_eq!(
        number(
            &db.pool,
            &format!(
                "SELECT count(*) AS n FROM reports r WHERE election_id = '{e}' AND ballot_box_id = 'X' \
                 AND replaces <> coalesce((SELECT max(p.revision) FROM reports p \
                   WHERE p.election_id = r.election_id AND p.ballot_box_id = 'X' \
                     AND p.revision < r.revision), 0)"
            )
        ),
        0
    );
    // Counted once: the box's differences add up to its latest votes.
    log.mark_counted(&fresh_ids).unwrap();
    let x_total = number(
        &db.pool,
        &format!(
            "SELECT coalesce(sum(difference), 0)::bigint AS n FROM vote_log \
             WHERE election_id = '{e}' AND ballot_box_id = 'X'"
        ),
    );
    assert_eq!(x_total, latest * 10);
    assert!(
        latest >= i64::from(threads * (rounds - 1)),
        "the last round recorded one"
    );
}

/// A batch that loses the race for its box again and again still records.
/// PostgreSQL raises the chain key's violation only once the other holder of
/// the key has committed, so every loss is another revision of the box
/// recorded first: progress, not a fault, and the losses have a budget of
/// their own. Here the test holds `LOSSES` transactions open, each with the
/// next link of box X's chain (revision k + 1 replacing k), and commits
/// them one by one, each once the batch waits on it: the batch decides
/// against the latest committed link, waits on the open transaction with
/// the same key, loses, and decides again. Counted against the five
/// attempts allowed for deadlocks, as they once were, it failed.
#[test]
fn a_batch_that_loses_its_boxs_race_again_and_again_still_records() {
    const LOSSES: i32 = 8;
    let db = Migrated::new(LOSSES as u32 + 2);
    let log = Arc::new(PgLog::new(db.pool.clone()));
    let e = unique_election("losses");
    log.record(&[report(&e, "X", "york", 1, &[("a", 1)])])
        .unwrap();
    let held: Vec<_> = (1..=LOSSES)
        .map(|k| {
            let mut conn = db.pool.get().expect("a connection");
            execute_on(&mut conn, "BEGIN");
            execute_on(
                &mut conn,
                &format!(
                    "INSERT INTO reports (id, election_id, ballot_box_id, city, revision, reason, \
                       payload, payload_hash, received_at, parties, votes, differences, replaces) \
                     VALUES (nextval('reports_id_seq'), '{e}', 'X', 'york', {}, 'held', '{{}}', \
                       sha256(''), now(), '{{a}}', '{{1}}', '{{0}}', {k})",
                    k + 1
                ),
            );
            let pid = number_on(&mut conn, "SELECT pg_backend_pid()::bigint AS n");
            (conn, pid)
        })
        .collect();
    let batch = std::thread::spawn({
        let (log, e) = (Arc::clone(&log), e.clone());
        move || log.record(&[report(&e, "X", "york", 100, &[("a", 100)])])
    });
    for (mut conn, pid) in held {
        // A batch that gave up waits on nothing: its error is the answer.
        wait_until(
            &format!("the batch waiting on the transaction of backend {pid}, or done"),
            Duration::from_secs(30),
            || {
                batch.is_finished()
                    || number(
                        &db.pool,
                        &format!(
                            "SELECT count(*) AS n FROM pg_stat_activity \
                             WHERE {pid} = ANY(pg_blocking_pids(pid))"
                        ),
                    ) == 1
            },
        );
        execute_on(&mut conn, "COMMIT");
    }
    let answers = batch
        .join()
        .unwrap()
        .expect("recorded after losing every race");
    let recorded = fresh(&answers[0]);
    assert_eq!(recorded.revision, Revision::new(100).unwrap());
    assert_eq!(
        number(
            &db.pool,
            &format!(
                "SELECT replaces::bigint AS n FROM reports WHERE id = {}",
                recorded.report_id.0
            )
        ),
        i64::from(LOSSES + 1),
        "it replaces the last link committed before it"
    );
}

/// Two batches posting the same new revisions of the same existing boxes in
/// opposite orders, twenty rounds at once: every revision is recorded once
/// (one batch's post fresh, the other's a replay) and the server detects no
/// deadlock. The reports are inserted in box order, so two batches wait for
/// each other's chain keys in one order; inserted in batch order, this
/// counted 8 to 16 deadlocks in 20 rounds (each a second of
/// `deadlock_timeout` and a retry).
#[test]
fn batches_over_the_same_boxes_in_opposite_orders_never_deadlock() {
    let db = Migrated::new(4);
    let log = Arc::new(PgLog::new(db.pool.clone()));
    let e = unique_election("order");
    let boxes: Vec<String> = (0..200).map(|i| format!("B{i:03}")).collect();
    let first: Vec<Report> = boxes
        .iter()
        .map(|b| report(&e, b, "york", 1, &[("a", 1)]))
        .collect();
    log.record(&first).unwrap();
    let deadlocks =
        "SELECT deadlocks AS n FROM pg_stat_database WHERE datname = current_database()";
    let before = number(&db.pool, deadlocks);
    let rounds = 20u32;
    let batches = record_at_once(&log, 2, rounds, {
        let (boxes, e) = (boxes.clone(), e.clone());
        move |t, round| {
            let revision = round + 2;
            let mut batch: Vec<Report> = boxes
                .iter()
                .map(|b| report(&e, b, "york", revision, &[("a", revision)]))
                .collect();
            if t == 1 {
                batch.reverse();
            }
            batch
        }
    });
    let mut fresh = 0;
    for answer in batches.into_iter().flatten() {
        match answer {
            Recorded::Fresh(_) => fresh += 1,
            Recorded::Replay { .. } => {}
            Recorded::Conflict(c) => panic!("unexpected conflict {c:?}"),
        }
    }
    assert_eq!(fresh, boxes.len() * rounds as usize);
    assert_eq!(
        number(
            &db.pool,
            &format!("SELECT count(*) AS n FROM reports WHERE election_id = '{e}'")
        ),
        (boxes.len() * (rounds as usize + 1)) as i64
    );
    assert_eq!(
        number(&db.pool, deadlocks) - before,
        0,
        "deadlocks detected"
    );
}

#[test]
fn payloads_are_kept_verbatim_and_the_log_names_every_party() {
    let db = Migrated::new(2);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("audit");
    let body = "{ \"ballot_box_id\": \"BB1\",\n  \"city\": \"london\", \"votes\": {\"labour\": 200, \"tories\": 120} }";
    let first = Report::from_json(&e, body.as_bytes()).unwrap();
    let second = report(&e, "BB1", "london", 2, &[("labour", 201), ("reform", 0)]);
    let answers = log.record(&[first.clone(), second]).unwrap();
    let second_id = fresh(&answers[1]).report_id;

    assert_eq!(
        lines(
            &db.pool,
            &format!(
                "SELECT payload::text AS line FROM reports WHERE id = {}",
                fresh(&answers[0]).report_id
            )
        ),
        [body]
    );
    assert_eq!(
        lines(
            &db.pool,
            "SELECT encode(payload_hash, 'hex') AS line FROM reports ORDER BY id LIMIT 1"
        )[0]
        .len(),
        64
    );
    // Revision 2's rows: the tories went to 0, reform was posted as 0.
    assert_eq!(
        lines(
            &db.pool,
            &format!(
                "SELECT party || ' ' || votes || ' ' || difference || ' ' || city || ' ' || revision AS line \
                 FROM vote_log WHERE report_id = {second_id} ORDER BY party"
            )
        ),
        [
            "labour 201 1 london 2",
            "reform 0 0 london 2",
            "tories 0 -120 london 2"
        ]
    );
    assert_eq!(
        lines(
            &db.pool,
            "SELECT city || ' ' || latest_revision AS line FROM ballot_boxes"
        ),
        ["london 2"]
    );
}

/// A normalised answer, comparable between logs whose ids differ: fresh
/// answers by content, replays by the (box, revision) they point to.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Fresh(String, u32, String, Difference),
    Replay(String, u32, bool),
    Conflict(String),
}

fn normalise(answers: &[Recorded], ids: &mut BTreeMap<ReportId, (String, u32)>) -> Vec<Answer> {
    answers
        .iter()
        .map(|answer| match answer {
            Recorded::Fresh(c) => {
                ids.insert(
                    c.report_id,
                    (c.ballot_box.as_str().to_owned(), c.revision.get()),
                );
                Answer::Fresh(
                    c.ballot_box.as_str().to_owned(),
                    c.revision.get(),
                    c.city.as_str().to_owned(),
                    c.difference.clone(),
                )
            }
            Recorded::Replay { report_id, counted } => {
                let (b, r) = ids[report_id].clone();
                Answer::Replay(b, r, *counted)
            }
            Recorded::Conflict(c) => Answer::Conflict(format!("{c:?}")),
        })
        .collect()
}

#[test]
fn answers_agree_with_the_in_memory_log() {
    let db = Migrated::new(2);
    let pg = PgLog::new(db.pool.clone());
    let memory = MemoryLog::new();
    let e = unique_election("same");
    let r = |b: &str, city: &str, revision: u32, votes: &[(&str, u32)]| {
        report(&e, b, city, revision, votes)
    };
    let batches: Vec<Vec<Report>> = vec![
        vec![
            r("B1", "york", 1, &[("a", 10), ("b", 5)]),
            r("B1", "york", 1, &[("a", 10), ("b", 5)]),
            r("B1", "york", 2, &[("a", 12)]),
            r("B2", "leeds", 1, &[("a", 0), ("c", 3)]),
            r("B2", "york", 2, &[("a", 1)]),
            r("B1", "york", 1, &[("a", 11), ("b", 5)]),
        ],
        vec![
            // Party b left in revision 2; revision 3 must not name it again.
            r("B1", "york", 3, &[("a", 12), ("c", 1)]),
            r("B1", "york", 2, &[("a", 12)]),
            r("B1", "york", 2, &[("a", 13)]),
            r("B2", "leeds", 3, &[("c", 0)]),
            r("B2", "leeds", 2, &[("c", 4)]),
            r("B3", "hull", 1, &[("z", 1)]),
            r("B3", "hull", 5, &[("y", 2)]),
        ],
    ];
    let (mut pg_ids, mut memory_ids) = (BTreeMap::new(), BTreeMap::new());
    let mut all_pg = Vec::new();
    let mut all_memory = Vec::new();
    for batch in &batches {
        let pg_answers = pg.record(batch).unwrap();
        let memory_answers = memory.record(batch).unwrap();
        assert_eq!(
            normalise(&pg_answers, &mut pg_ids),
            normalise(&memory_answers, &mut memory_ids),
            "{batch:?}"
        );
        all_pg.extend(pg_answers.iter().filter_map(|a| match a {
            Recorded::Fresh(c) => Some(c.report_id),
            _ => None,
        }));
        all_memory.extend(memory_answers.iter().filter_map(|a| match a {
            Recorded::Fresh(c) => Some(c.report_id),
            _ => None,
        }));
    }
    // Claims hand out the same differences as `record` did.
    let claim = Claim {
        limit: 100,
        pending_for: Duration::ZERO,
        lease: Duration::from_secs(60),
    };
    let claimed: Vec<_> = pg.claim_pending(&claim).unwrap();
    let from_memory: Vec<_> = memory.claim_pending(&claim).unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|c| (c.ballot_box.clone(), c.revision, c.difference.clone()))
            .collect::<Vec<_>>(),
        from_memory
            .iter()
            .map(|c| (c.ballot_box.clone(), c.revision, c.difference.clone()))
            .collect::<Vec<_>>(),
    );
    pg.mark_counted(&all_pg).unwrap();
    memory.mark_counted(&all_memory).unwrap();
    assert_eq!(
        pg.counted_totals(&e).unwrap(),
        memory.counted_totals(&e).unwrap()
    );
    assert_eq!(pg.pending_count(&e).unwrap(), 0);
}

#[test]
fn releases_keep_the_error_and_claims_count_attempts() {
    let db = Migrated::new(2);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("retry");
    let id = fresh(&log.record(&contract::seed_reports(&e)[..1]).unwrap()[0]).report_id;
    let claim = Claim {
        limit: 10,
        pending_for: Duration::ZERO,
        lease: Duration::from_secs(60),
    };
    assert_eq!(log.claim_pending(&claim).unwrap().len(), 1);
    log.release(&[id], "redis is unavailable").unwrap();
    assert_eq!(log.claim_pending(&claim).unwrap().len(), 1);
    assert_eq!(
        lines(
            &db.pool,
            "SELECT attempts || ' ' || last_error || ' ' || (leased_until IS NOT NULL) AS line \
             FROM pending_reports"
        ),
        ["2 redis is unavailable true"]
    );
    log.mark_counted(&[id]).unwrap();
    // Releasing a counted revision changes nothing.
    log.release(&[id], "late").unwrap();
    assert_eq!(
        number(&db.pool, "SELECT count(*) AS n FROM pending_batches"),
        0
    );
    assert_eq!(number(&db.pool, "SELECT count(*) AS n FROM reports"), 1);
}

#[test]
fn statements_stay_prepared_and_a_new_connection_prepares_them_again() {
    // One connection, so the assertions below run on the log's connection.
    let db = Migrated::new(1);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("prepared");
    let prepared = "SELECT count(*) AS n FROM pg_prepared_statements \
                    WHERE statement LIKE '%unnest%' OR statement LIKE '%pending_batches%'";
    let mut counted = Vec::new();
    for i in 0..3 {
        let answers = log
            .record(&[report(&e, &format!("B{i}"), "c", 1, &votes_for(i, 1))])
            .unwrap();
        counted.push(fresh(&answers[0]).report_id);
        log.mark_counted(&counted).unwrap();
    }
    // Definitions with the lock, write and mark (every box is new, so
    // nothing is read), and the DSL's lookup of the rows a mark of ids
    // counted already overlaps (diesel prepares its DSL statements too):
    // prepared once, executed by name since.
    assert_eq!(number(&db.pool, prepared), 4);

    // The server drops the connection (a restart, a failover): the next call
    // may fail as unavailable, then a new connection prepares again.
    {
        let mut conn = db.pool.get().unwrap();
        let _ = diesel::RunQueryDsl::execute(
            diesel::sql_query("SELECT pg_terminate_backend(pg_backend_pid())"),
            &mut conn,
        );
    }
    let again = report(&e, "B9", "c", 1, &votes_for(9, 1));
    let answers = (0..3)
        .find_map(|_| log.record(std::slice::from_ref(&again)).ok())
        .expect("recording on a new connection");
    log.mark_counted(&[fresh(&answers[0]).report_id]).unwrap();
    // The same three hot-path statements; this mark names no counted id.
    assert_eq!(number(&db.pool, prepared), 3);
    assert_eq!(number(&db.pool, "SELECT count(*) AS n FROM reports"), 4);
    assert_eq!(
        number(&db.pool, "SELECT count(*) AS n FROM pending_batches"),
        0
    );
}

/// One report whose box's stored state is corrupt fails its batch as a
/// whole; the engine then records the batch report by report, so only that
/// one fails and its batch-mates are recorded and counted.
#[test]
fn one_bad_report_fails_alone_and_its_batch_mates_are_recorded() {
    let db = Migrated::new(2);
    let log = Arc::new(PgLog::new(db.pool.clone()));
    let tally = Arc::new(election_core::memory::MemoryTally::new());
    let engine = election_core::Engine::new(log.clone(), tally);
    let e = unique_election("isolate");
    let first = engine
        .submit(&[report(&e, "BAD", "york", 1, &votes_for(1, 1))])
        .unwrap();
    assert!(matches!(first[0], election_core::Outcome::Counted(_)));
    // A hand edit: the box's latest revision now holds negative votes.
    execute(
        &db.pool,
        "UPDATE reports SET votes = array_fill(-1, ARRAY[cardinality(parties)]) \
         WHERE ballot_box_id = 'BAD'",
    );
    let batch = [
        report(&e, "G1", "york", 1, &votes_for(2, 1)),
        Report::from_json(
            &e,
            br#"{"ballot_box_id":"BAD","city":"york","revision":2,"reason":"recount","votes":{"a":5}}"#,
        )
        .unwrap(),
        report(&e, "G2", "leeds", 1, &votes_for(4, 1)),
    ];
    assert!(log.record(&batch).is_err(), "the batch fails as a whole");
    let outcomes = engine.submit(&batch).unwrap();
    assert!(
        matches!(outcomes[0], election_core::Outcome::Counted(_)),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], election_core::Outcome::Counted(_)),
        "{outcomes:?}"
    );
    match &outcomes[1] {
        election_core::Outcome::Failed { unavailable, error } => {
            assert!(!unavailable);
            assert!(error.contains("BAD"), "the error names the box: {error}");
        }
        other => panic!("expected the bad report to fail alone, got {other:?}"),
    }
    assert_eq!(
        number(
            &db.pool,
            "SELECT count(*) AS n FROM reports WHERE ballot_box_id IN ('G1', 'G2')"
        ),
        2
    );
    assert_eq!(
        number(
            &db.pool,
            "SELECT count(*) AS n FROM reports WHERE ballot_box_id = 'BAD'"
        ),
        1,
        "nothing recorded for the bad one"
    );
}

/// A pending revision that cannot be read back (edited by hand) is set
/// aside with its problem instead of failing every claim with its
/// batch-mates; the others are claimed and counted as usual.
#[test]
fn an_unreadable_pending_report_is_quarantined_not_released_forever() {
    let db = Migrated::new(2);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("quarantine");
    let answers = log
        .record(&[
            report(&e, "Q1", "york", 1, &votes_for(1, 1)),
            report(&e, "Q2", "york", 1, &votes_for(2, 1)),
            report(&e, "Q3", "york", 1, &votes_for(3, 1)),
        ])
        .unwrap();
    let ids: Vec<_> = answers.iter().map(|a| fresh(a).report_id).collect();
    execute(
        &db.pool,
        &format!(
            "UPDATE reports SET city = 'Not A City' WHERE id = {}",
            ids[1].0
        ),
    );
    let claim = Claim {
        limit: 10,
        pending_for: Duration::ZERO,
        lease: Duration::from_millis(1),
    };
    let claimed = log.claim_pending(&claim).unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    let stats = log.pending_stats(100).unwrap();
    assert_eq!((stats.pending, stats.quarantined), (3, 1));
    let why = lines(
        &db.pool,
        &format!(
            "SELECT last_error AS line FROM pending_reports WHERE report_id = {}",
            ids[1].0
        ),
    );
    assert!(why[0].contains("quarantined: report"), "{why:?}");
    // Leases run out; the quarantined one is never handed out again.
    std::thread::sleep(Duration::from_millis(20));
    let again = log.claim_pending(&claim).unwrap();
    assert_eq!(
        again.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    log.mark_counted(&[ids[0], ids[2]]).unwrap();
    assert_eq!(log.pending_count(&e).unwrap(), 1);
    assert!(log.claim_pending(&claim).unwrap().is_empty());
}
