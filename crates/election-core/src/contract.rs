//! The contract suite every store must pass: one set of checks, generic over
//! the traits, run against the in-memory stores, real PostgreSQL, real
//! standalone Redis and a real Redis Cluster. The history port's checks
//! ([`history`]) record through a [`ReportLog`] and read back through the
//! [`History`] over the same records.
//!
//! Each check gets fresh stores from the caller's factory (a fresh schema, a
//! fresh in-memory store) and, for the tally, an election id of its own, so
//! checks can share one Redis server and run in parallel. Embedders who write
//! their own store can run the same suite against it.
//!
//! ```
//! # use std::sync::Arc;
//! use election_core::contract;
//! use election_core::memory::{MemoryLog, MemoryTally};
//! contract::report_log(&|| Arc::new(MemoryLog::new()));
//! contract::tally(&|| Arc::new(MemoryTally::new()));
//! contract::history(&|| {
//!     let log = Arc::new(MemoryLog::new());
//!     (log.clone(), log)
//! });
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::{Engine, Outcome};
use crate::history::{AuditCursor, AuditPage, FlagReason, History, SealHeads, StoodAt, Window};
use crate::ids::{BallotBoxId, CityId, ElectionId, PartyId};
use crate::reconcile::{self, Verdict};
use crate::report::{Difference, Report, Revision};
use crate::rules::Conflict;
use crate::store::{
    Applied, Claim, Counter, Counting, Recorded, ReportId, ReportLog, Tally, Totals,
};

/// Makes a fresh report log.
pub type LogFactory<'a> = &'a dyn Fn() -> Arc<dyn ReportLog>;
/// Makes a tally (fresh or shared: checks use elections of their own).
pub type TallyFactory<'a> = &'a dyn Fn() -> Arc<dyn Tally>;

/// An election id no other check, test or process uses.
pub fn unique_election(prefix: &str) -> ElectionId {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ElectionId::parse(&format!(
        "{prefix}-{:x}-{:x}-{n}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    ))
    .expect("generated election ids are valid")
}

/// Builds a report from literals (panics on invalid input: for tests).
pub fn report(
    election: &ElectionId,
    ballot_box: &str,
    city: &str,
    revision: u32,
    votes: &[(&str, u32)],
) -> Report {
    let votes = votes
        .iter()
        .map(|(party, n)| (PartyId::parse(party).unwrap(), *n))
        .collect();
    Report::new(
        election.clone(),
        BallotBoxId::parse(ballot_box).unwrap(),
        CityId::parse(city).unwrap(),
        crate::report::Votes::new(votes).unwrap(),
        Revision::new(i64::from(revision)).unwrap(),
        (revision > 1).then(|| format!("recount {revision}")),
    )
    .unwrap()
}

/// The seed article's example: three ballot boxes in London, Manchester and
/// Edinburgh.
pub fn seed_reports(election: &ElectionId) -> Vec<Report> {
    vec![
        report(
            election,
            "BB-LON-1",
            "london",
            1,
            &[
                ("tories", 120),
                ("labour", 200),
                ("libdems", 45),
                ("reform", 20),
            ],
        ),
        report(
            election,
            "BB-MAN-1",
            "manchester",
            1,
            &[
                ("tories", 90),
                ("labour", 150),
                ("libdems", 30),
                ("reform", 10),
            ],
        ),
        report(
            election,
            "BB-EDI-1",
            "edinburgh",
            1,
            &[
                ("tories", 50),
                ("labour", 80),
                ("libdems", 40),
                ("reform", 5),
            ],
        ),
    ]
}

/// Edinburgh's revision 2 after [`seed_reports`]: the same votes and 300
/// for a new party, `greens` (a correction that adds 300 votes).
pub fn seed_correction(election: &ElectionId) -> Report {
    let edinburgh = &seed_reports(election)[2];
    let mut votes: Vec<(&str, u32)> = edinburgh
        .votes()
        .iter()
        .map(|(party, n)| (party.as_str(), n))
        .collect();
    votes.push(("greens", 300));
    report(election, "BB-EDI-1", "edinburgh", 2, &votes)
}

/// The seed's national totals.
pub const SEED_NATIONAL: [(&str, i64); 4] = [
    ("labour", 430),
    ("libdems", 115),
    ("reform", 35),
    ("tories", 260),
];

fn party(name: &str) -> PartyId {
    PartyId::parse(name).unwrap()
}

fn city(name: &str) -> CityId {
    CityId::parse(name).unwrap()
}

fn national(pairs: &[(&str, i64)]) -> BTreeMap<PartyId, i64> {
    pairs.iter().map(|(p, n)| (party(p), *n)).collect()
}

fn fresh(answer: &Recorded) -> &Counting {
    match answer {
        Recorded::Fresh(counting) => counting,
        other => panic!("expected a fresh record, got {other:?}"),
    }
}

fn claim_now(limit: usize) -> Claim {
    Claim {
        limit,
        pending_for: Duration::ZERO,
        lease: Duration::from_secs(600),
    }
}

/// Runs every report-log check, each on a fresh log.
pub fn report_log(new_log: LogFactory<'_>) {
    log_records_fresh_replay_and_conflicts(new_log());
    log_computes_differences_between_revisions(new_log());
    log_decides_within_a_batch_in_order(new_log());
    log_claims_leases_and_releases(new_log());
    log_claims_are_disjoint_between_concurrent_workers(new_log());
    log_serialises_concurrent_posts_of_one_box(new_log());
    log_totals_sum_counted_differences(new_log());
    log_pages_through_counted_revisions(new_log());
    log_audits_every_counter(new_log());
    log_describes_pending_and_stuck_revisions(new_log());
    log_lists_its_elections(new_log());
    log_refuses_reports_checked_against_another_definition(new_log());
}

/// The log holds no definition for a fresh election, so a report checked
/// against one was checked against something else: the whole batch is
/// refused, its unchecked batch-mate included, and nothing is recorded.
fn log_refuses_reports_checked_against_another_definition(log: Arc<dyn ReportLog>) {
    let e = unique_election("defined");
    let plain = report(&e, "B1", "york", 1, &[("a", 1)]);
    let mut checked = report(&e, "B2", "york", 1, &[("a", 2)]);
    checked.set_checked_against(Some(crate::DefinitionVersion(42)));
    match log.record(&[plain.clone(), checked]) {
        Err(crate::StoreError::DefinitionChanged { election }) => assert_eq!(election, e),
        other => panic!("expected DefinitionChanged, got {other:?}"),
    }
    assert_eq!(log.pending_count(&e).unwrap(), 0);
    assert!(!log.elections().unwrap().contains(&e), "nothing recorded");
    // Checked against no definition, as the log holds none: recorded.
    assert!(matches!(
        log.record(std::slice::from_ref(&plain)).unwrap()[0],
        Recorded::Fresh(_)
    ));
}

fn log_lists_its_elections(log: Arc<dyn ReportLog>) {
    let (a, b) = (unique_election("list"), unique_election("list"));
    log.record(&seed_reports(&b)).unwrap();
    log.record(&[report(&a, "B1", "york", 1, &[("x", 1)])])
        .unwrap();
    let listed = log.elections().unwrap();
    // Other checks may share the log's database: only ours are asserted.
    let ours: Vec<&ElectionId> = listed.iter().filter(|e| **e == a || **e == b).collect();
    let mut expected = vec![&a, &b];
    expected.sort();
    assert_eq!(ours, expected);
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "in id order, once each"
    );
}

fn log_records_fresh_replay_and_conflicts(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let r1 = report(&e, "B1", "london", 1, &[("a", 10), ("b", 5)]);
    let answers = log.record(std::slice::from_ref(&r1)).unwrap();
    let counting = fresh(&answers[0]).clone();
    assert_eq!(counting.election, e);
    assert_eq!(counting.ballot_box.as_str(), "B1");
    assert_eq!(counting.city.as_str(), "london");
    assert_eq!(counting.revision, Revision::FIRST);
    assert_eq!(counting.difference, Difference::between(None, r1.votes()));
    assert_eq!(log.pending_count(&e).unwrap(), 1);

    // The same report again: a replay of the same id, nothing new.
    let again = log.record(std::slice::from_ref(&r1)).unwrap();
    assert_eq!(
        again,
        [Recorded::Replay {
            report_id: counting.report_id,
            counted: false
        }]
    );
    log.mark_counted(&[counting.report_id]).unwrap();
    log.mark_counted(&[counting.report_id]).unwrap(); // idempotent
    let again = log.record(std::slice::from_ref(&r1)).unwrap();
    assert_eq!(
        again,
        [Recorded::Replay {
            report_id: counting.report_id,
            counted: true
        }]
    );

    // Same revision, other content; other city; nothing recorded for either.
    let other = report(&e, "B1", "london", 1, &[("a", 11), ("b", 5)]);
    let moved = report(&e, "B1", "paris", 2, &[("a", 10), ("b", 5)]);
    let answers = log.record(&[other, moved]).unwrap();
    assert_eq!(
        answers[0],
        Recorded::Conflict(Conflict::DifferentPayload {
            revision: Revision::FIRST
        })
    );
    assert_eq!(
        answers[1],
        Recorded::Conflict(Conflict::OtherCity {
            city: city("paris"),
            recorded: city("london")
        })
    );
    assert_eq!(log.pending_count(&e).unwrap(), 0);
    assert!(log.claim_pending(&claim_now(10)).unwrap().is_empty());
}

fn log_computes_differences_between_revisions(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let r1 = report(&e, "B1", "york", 1, &[("a", 10), ("b", 5)]);
    let r3 = report(&e, "B1", "york", 3, &[("a", 12), ("c", 4)]);
    let r2 = report(&e, "B1", "york", 2, &[("a", 1)]);
    let first = log.record(&[r1]).unwrap();
    let third = log.record(std::slice::from_ref(&r3)).unwrap();
    let diff = &fresh(&third[0]).difference;
    let got: Vec<(String, i64)> = diff.iter().map(|(p, n)| (p.to_string(), n)).collect();
    assert_eq!(got, [("a".into(), 2), ("b".into(), -5), ("c".into(), 4)]);
    assert_ne!(fresh(&first[0]).report_id, fresh(&third[0]).report_id);
    // A revision older than the latest arrives late: refused.
    assert_eq!(
        log.record(&[r2]).unwrap(),
        [Recorded::Conflict(Conflict::Stale {
            revision: Revision::new(2).unwrap(),
            latest: Revision::new(3).unwrap()
        })]
    );
    // Replaying the latest is still a replay.
    assert!(matches!(
        log.record(&[r3]).unwrap()[0],
        Recorded::Replay { counted: false, .. }
    ));
}

fn log_decides_within_a_batch_in_order(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let r1 = report(&e, "B1", "york", 1, &[("a", 10)]);
    let r2 = report(&e, "B1", "york", 2, &[("a", 15)]);
    let other = report(&e, "B2", "leeds", 1, &[("a", 1)]);
    let bad = report(&e, "B2", "york", 2, &[("a", 1)]);
    let answers = log
        .record(&[r1.clone(), r1.clone(), r2, other, bad])
        .unwrap();
    let first = fresh(&answers[0]).report_id;
    assert_eq!(
        answers[1],
        Recorded::Replay {
            report_id: first,
            counted: false
        }
    );
    let second = fresh(&answers[2]);
    assert_eq!(
        second.difference.iter().collect::<Vec<_>>(),
        [(&party("a"), 5)]
    );
    assert_eq!(fresh(&answers[3]).city, city("leeds"));
    assert!(matches!(
        answers[4],
        Recorded::Conflict(Conflict::OtherCity { .. })
    ));
    assert_eq!(log.pending_count(&e).unwrap(), 3);
}

fn log_claims_leases_and_releases(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let reports: Vec<Report> = (0..5)
        .map(|i| report(&e, &format!("B{i}"), "york", 1, &[("a", i)]))
        .collect();
    let ids: Vec<ReportId> = log
        .record(&reports)
        .unwrap()
        .iter()
        .map(|r| fresh(r).report_id)
        .collect();

    // Too recent to claim.
    let patient = Claim {
        pending_for: Duration::from_secs(3600),
        ..claim_now(10)
    };
    assert!(log.claim_pending(&patient).unwrap().is_empty());

    // Oldest first, at most `limit`, and each claimed once while leased.
    let first = log.claim_pending(&claim_now(3)).unwrap();
    assert_eq!(
        first.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        ids[..3]
    );
    assert_eq!(
        first[2].difference,
        Difference::between(None, reports[2].votes())
    );
    let second = log.claim_pending(&claim_now(10)).unwrap();
    assert_eq!(
        second.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        ids[3..]
    );
    assert!(log.claim_pending(&claim_now(10)).unwrap().is_empty());

    // Counted ones are gone for good; released ones come back at once.
    log.mark_counted(&ids[..2]).unwrap();
    log.release(&ids[2..3], "redis is unavailable").unwrap();
    let again = log.claim_pending(&claim_now(10)).unwrap();
    assert_eq!(
        again.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        [ids[2]]
    );
    assert_eq!(log.pending_count(&e).unwrap(), 3);

    // An expired lease makes the revision claimable again.
    log.mark_counted(&ids[2..]).unwrap();
    let late = report(&e, "B9", "york", 1, &[("a", 9)]);
    let late_id = fresh(&log.record(&[late]).unwrap()[0]).report_id;
    let short = Claim {
        lease: Duration::from_millis(50),
        ..claim_now(10)
    };
    assert_eq!(log.claim_pending(&short).unwrap().len(), 1);
    assert!(log.claim_pending(&short).unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(120));
    let reclaimed = log.claim_pending(&short).unwrap();
    assert_eq!(
        reclaimed.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        [late_id]
    );
    log.mark_counted(&[late_id]).unwrap();
    assert_eq!(log.pending_count(&e).unwrap(), 0);
}

fn log_claims_are_disjoint_between_concurrent_workers(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let reports: Vec<Report> = (0..200)
        .map(|i| report(&e, &format!("B{i}"), "york", 1, &[("a", 1)]))
        .collect();
    for chunk in reports.chunks(50) {
        log.record(chunk).unwrap();
    }
    let workers = 4;
    let barrier = Arc::new(Barrier::new(workers));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let log = Arc::clone(&log);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::new();
                loop {
                    let batch = log.claim_pending(&claim_now(7)).unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.iter().map(|c| c.report_id));
                }
            })
        })
        .collect();
    let mut all: Vec<ReportId> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!(claimed, 200, "every pending revision is claimed");
    assert_eq!(all.len(), 200, "no revision is claimed twice");
}

fn log_serialises_concurrent_posts_of_one_box(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let r1 = report(&e, "B1", "york", 1, &[("a", 10)]);
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let log = Arc::clone(&log);
            let barrier = Arc::clone(&barrier);
            let r1 = r1.clone();
            let e = e.clone();
            std::thread::spawn(move || {
                // Half post the same revision 1, half a revision 2 and an
                // unrelated box, so boxes lock in different batches.
                let batch = if i % 2 == 0 {
                    vec![r1]
                } else {
                    vec![
                        report(&e, "B0", "york", 1, &[("a", 1)]),
                        report(&e, "B1", "york", 2, &[("a", 11)]),
                    ]
                };
                barrier.wait();
                log.record(&batch).unwrap()
            })
        })
        .collect();
    let answers: Vec<Recorded> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let fresh: Vec<&Counting> = answers
        .iter()
        .filter_map(|a| match a {
            Recorded::Fresh(c) => Some(c),
            _ => None,
        })
        .collect();
    // B0 once; B1 revision 1 once (unless revision 2 won the race, which makes
    // revision 1 stale); B1 revision 2 once.
    let of = |b: &str, r: u32| {
        fresh
            .iter()
            .filter(|c| c.ballot_box.as_str() == b && c.revision.get() == r)
            .count()
    };
    assert_eq!(of("B0", 1), 1, "{answers:?}");
    assert_eq!(of("B1", 2), 1, "{answers:?}");
    assert!(of("B1", 1) <= 1, "{answers:?}");
    // Whatever the order, the differences of B1 add up to revision 2's votes.
    let b1: i64 = fresh
        .iter()
        .filter(|c| c.ballot_box.as_str() == "B1")
        .flat_map(|c| c.difference.iter().map(|(_, n)| n))
        .sum();
    assert_eq!(b1, 11);
}

fn log_totals_sum_counted_differences(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let mut answers = log.record(&seed_reports(&e)).unwrap();
    answers.extend(
        log.record(&[report(
            &e,
            "BB-LON-1",
            "london",
            2,
            &[("tories", 121), ("labour", 200)],
        )])
        .unwrap(),
    );
    let ids: Vec<ReportId> = answers.iter().map(|a| fresh(a).report_id).collect();
    // Only counted revisions count.
    assert_eq!(log.counted_totals(&e).unwrap(), Totals::new());
    log.mark_counted(&ids[..3]).unwrap();
    assert_eq!(
        log.counted_totals(&e).unwrap().national(),
        national(&SEED_NATIONAL)
    );
    log.mark_counted(&ids[3..]).unwrap();
    let totals = log.counted_totals(&e).unwrap();
    // London lost its libdems (45) and reform (20) votes and gained a tory.
    assert_eq!(
        totals.national(),
        national(&[
            ("labour", 430),
            ("libdems", 70),
            ("reform", 15),
            ("tories", 261)
        ])
    );
    assert_eq!(
        totals.city(&city("london")),
        national(&[
            ("labour", 200),
            ("libdems", 0),
            ("reform", 0),
            ("tories", 121)
        ])
    );
    // Another election's log is not mixed in.
    assert_eq!(
        log.counted_totals(&unique_election("other")).unwrap(),
        Totals::new()
    );
}

fn log_pages_through_counted_revisions(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let other = unique_election("other");
    let mut reports: Vec<Report> = (0..5)
        .map(|i| report(&e, &format!("B{i}"), "york", 1, &[("a", i + 1), ("b", 1)]))
        .collect();
    reports.insert(2, report(&other, "B0", "york", 1, &[("a", 100)]));
    reports.push(report(&e, "B0", "york", 2, &[("a", 7)]));
    let answers = log.record(&reports).unwrap();
    let ids: Vec<ReportId> = answers.iter().map(|a| fresh(a).report_id).collect();
    // Everything counted except B3 (still pending); the other election's
    // report is counted too, but never listed.
    let counted: Vec<ReportId> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, id)| *id)
        .collect();
    log.mark_counted(&counted).unwrap();

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = log.counted_revisions(&e, after, 2).unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 2);
        after = Some(last.report_id);
        pages.push(page);
    }
    let listed: Vec<Counting> = pages.into_iter().flatten().collect();
    let expected_ids = [ids[0], ids[1], ids[3], ids[5], ids[6]];
    assert_eq!(
        listed.iter().map(|c| c.report_id).collect::<Vec<_>>(),
        expected_ids,
        "counted revisions of the election, in id order, pending and other elections left out"
    );
    // Each is the same counting the log handed out when it was recorded.
    for counting in &listed {
        let index = ids.iter().position(|id| *id == counting.report_id).unwrap();
        assert_eq!(counting, fresh(&answers[index]));
    }
    assert_eq!(
        listed[4].difference.iter().collect::<Vec<_>>(),
        [(&party("a"), 6), (&party("b"), -1)]
    );
    assert!(log.counted_revisions(&e, after, 10).unwrap().is_empty());
    assert!(
        log.counted_revisions(&unique_election("none"), None, 10)
            .unwrap()
            .is_empty()
    );

    // Newest first, where the log pages backwards: the same revisions in the
    // reverse order.
    let mut backwards = Vec::new();
    let mut before = None;
    while let Some(page) = log.counted_revisions_newest_first(&e, before, 2).unwrap() {
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 2);
        before = Some(last.report_id);
        backwards.extend(page);
    }
    if before.is_some() {
        backwards.reverse();
        assert_eq!(backwards, listed, "newest first: the same, reversed");
        assert_eq!(
            log.counted_revisions_newest_first(&unique_election("none"), None, 10)
                .unwrap(),
            Some(Vec::new())
        );
    }
}

fn log_audits_every_counter(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let mut reports = seed_reports(&e);
    // A correction of London (tories 121, the others gone) and a pending box
    // in York with a new party.
    reports.push(report(
        &e,
        "BB-LON-1",
        "london",
        2,
        &[("tories", 121), ("labour", 200)],
    ));
    reports.push(report(
        &e,
        "BB-YRK-1",
        "york",
        1,
        &[("greens", 9), ("labour", 3)],
    ));
    let answers = log.record(&reports).unwrap();
    let ids: Vec<ReportId> = answers.iter().map(|a| fresh(a).report_id).collect();
    log.mark_counted(&ids[..4]).unwrap();
    log.record(&[report(
        &unique_election("other"),
        "B1",
        "york",
        1,
        &[("greens", 1)],
    )])
    .unwrap();

    let audit = log.audit(&e).unwrap();
    assert_eq!(audit.counted, log.counted_totals(&e).unwrap());
    assert_eq!(audit.pending, 1);
    let national = |p: &str| Counter::National(party(p));
    let local = |c: &str, p: &str| Counter::City(city(c), party(p));
    // London's revision 2 touches all four parties (two of them going to 0).
    assert_eq!(audit.revisions(&national("tories")), 4);
    assert_eq!(audit.revisions(&national("labour")), 5);
    assert_eq!(audit.revisions(&national("greens")), 1);
    assert_eq!(audit.revisions(&local("london", "reform")), 2);
    assert_eq!(audit.revisions(&local("york", "labour")), 1);
    assert_eq!(audit.revisions(&local("leeds", "labour")), 0);
    assert_eq!(
        audit.pending_counters,
        [
            national("greens"),
            national("labour"),
            local("york", "greens"),
            local("york", "labour")
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(audit.counted.get(&national("greens")), 0);
    assert_eq!(audit.counted.get(&local("london", "libdems")), 0);
    assert_eq!(audit.counted.get(&national("tories")), 261);

    log.mark_counted(&ids[4..]).unwrap();
    let audit = log.audit(&e).unwrap();
    assert_eq!(audit.pending, 0);
    assert!(audit.pending_counters.is_empty());
    assert_eq!(audit.counted.get(&national("labour")), 433);
    assert_eq!(audit.revisions(&national("labour")), 5);
}

fn log_describes_pending_and_stuck_revisions(log: Arc<dyn ReportLog>) {
    let e = unique_election("log");
    let empty = log.pending_stats(2).unwrap();
    assert_eq!(empty.pending, 0);
    assert_eq!(empty.oldest_age, None);
    assert_eq!(empty.stuck, 0);
    let reports: Vec<Report> = (0..3)
        .map(|i| report(&e, &format!("B{i}"), "york", 1, &[("a", 1)]))
        .collect();
    let ids: Vec<ReportId> = log
        .record(&reports)
        .unwrap()
        .iter()
        .map(|a| fresh(a).report_id)
        .collect();
    // B0 is claimed twice, failing each time; B1 once.
    assert_eq!(log.claim_pending(&claim_now(2)).unwrap().len(), 2);
    log.release(&ids[..1], "redis is unavailable while applying")
        .unwrap();
    assert_eq!(
        log.claim_pending(&claim_now(1)).unwrap()[0].report_id,
        ids[0]
    );
    log.release(&ids[..1], "redis is unavailable again")
        .unwrap();

    let stats = log.pending_stats(2).unwrap();
    assert_eq!(stats.pending, 3);
    assert!(stats.oldest_age.is_some());
    assert_eq!(stats.stuck, 1);
    assert_eq!(stats.stuck_examples.len(), 1);
    let stuck = &stats.stuck_examples[0];
    assert_eq!(stuck.report_id, ids[0]);
    assert_eq!(stuck.election, e);
    assert_eq!(stuck.ballot_box.as_str(), "B0");
    assert_eq!(stuck.revision, Revision::FIRST);
    assert_eq!(stuck.attempts, 2);
    assert_eq!(
        stuck.last_error.as_deref(),
        Some("redis is unavailable again")
    );
    assert_eq!(log.pending_stats(1).unwrap().stuck, 2);
    assert_eq!(log.pending_stats(3).unwrap().stuck, 0);

    log.mark_counted(&ids).unwrap();
    let done = log.pending_stats(1).unwrap();
    assert_eq!((done.pending, done.oldest_age, done.stuck), (0, None, 0));
}

fn counting(
    report_id: i64,
    e: &ElectionId,
    ballot_box: &str,
    city_name: &str,
    revision: u32,
    diff: &[(&str, i64)],
) -> Counting {
    Counting {
        report_id: ReportId(report_id),
        election: e.clone(),
        ballot_box: BallotBoxId::parse(ballot_box).unwrap(),
        city: city(city_name),
        revision: Revision::new(i64::from(revision)).unwrap(),
        difference: Difference::from_parts(diff.iter().map(|(p, n)| (party(p), *n)).collect()),
    }
}

/// Runs every tally check; each uses an election of its own.
pub fn tally(new_tally: TallyFactory<'_>) {
    tally_applies_once_per_revision(new_tally());
    tally_differences_commute(new_tally());
    tally_concurrent_appliers_count_once(new_tally());
    tally_keeps_elections_apart(new_tally());
    tally_handles_large_batches(new_tally());
    tally_adds_only_to_the_value_observed(new_tally());
    tally_names_revisions_without_their_markers(new_tally());
    tally_reads_grids_and_fingerprints(new_tally());
    tally_journals_the_cities_it_moves(new_tally());
}

/// Where a tally keeps a change journal: it names every city `apply` moved
/// since a cursor (maybe more, never fewer), nothing when nothing moved, and
/// `grid_moved` with those cities reads what a whole read would.
fn tally_journals_the_cities_it_moves(tally: Arc<dyn Tally>) {
    let e = unique_election("journal");
    let Some(start) = tally.moved_since(&e, None).unwrap() else {
        return;
    };
    assert_eq!(
        start.cities, None,
        "no cursor given: the journal cannot tell"
    );
    let moved = |since| {
        let moved = tally.moved_since(&e, Some(since)).unwrap().unwrap();
        assert!(moved.cursor >= since, "the cursor never goes back");
        (
            moved.cursor,
            moved
                .cities
                .expect("the journal bridges from its own cursor"),
        )
    };
    let first = [
        counting(1, &e, "B1", "york", 1, &[("labour", 5), ("tories", 2)]),
        counting(2, &e, "B2", "leeds", 1, &[("labour", 1)]),
    ];
    assert!(tally.apply(&first).iter().all(Result::is_ok));
    let (one, cities) = moved(start.cursor);
    assert_eq!(cities, [city("leeds"), city("york")]);
    let known = tally.grid(&e, None).unwrap();

    let (same, cities) = moved(one);
    assert_eq!((same, cities), (one, vec![]), "nothing moved since");

    let second = counting(3, &e, "B1", "york", 2, &[("labour", 4)]);
    assert!(tally.apply(std::slice::from_ref(&second))[0].is_ok());
    let (two, cities) = moved(one);
    assert!(two > one);
    assert_eq!(cities, [city("york")]);
    let read = tally.grid_moved(&e, &known, &cities).unwrap();
    assert_eq!(read, tally.grid(&e, None).unwrap());
    assert_eq!(read.national, [Some(10), Some(2)]);
    assert_eq!(read.row(1), [Some(9), Some(2)]);

    // A new box in a known city moves its box count: the journal names it.
    let third = counting(4, &e, "B3", "leeds", 1, &[("tories", 3)]);
    assert!(tally.apply(std::slice::from_ref(&third))[0].is_ok());
    let (_, cities) = moved(two);
    assert_eq!(cities, [city("leeds")]);
    let read = tally.grid_moved(&e, &read, &cities).unwrap();
    assert_eq!(read, tally.grid(&e, None).unwrap());
    assert_eq!(read.boxes, [2, 1]);

    // A counter rewritten by `guarded_add` (a repair) is journalled too: its
    // city, or for a national counter no city but a new position.
    let (three, _) = moved(two);
    assert!(
        tally
            .guarded_add(&e, &Counter::City(city("york"), party("tories")), 2, 1)
            .unwrap()
    );
    let (four, cities) = moved(three);
    assert!(four > three);
    assert_eq!(cities, [city("york")]);
    let read = tally.grid_moved(&e, &read, &cities).unwrap();
    assert_eq!(read, tally.grid(&e, None).unwrap());
    assert!(
        tally
            .guarded_add(&e, &Counter::National(party("tories")), 5, 1)
            .unwrap()
    );
    let (five, cities) = moved(four);
    assert!(five > four, "a national repair moves the position");
    assert!(cities.is_empty(), "{cities:?}");
    let read = tally.grid_moved(&e, &read, &cities).unwrap();
    assert_eq!(read, tally.grid(&e, None).unwrap());

    // A new city changes the layout: `grid_moved` reads everything.
    let fourth = counting(5, &e, "B4", "hull", 1, &[("green", 7)]);
    assert!(tally.apply(std::slice::from_ref(&fourth))[0].is_ok());
    let (_, cities) = moved(five);
    assert_eq!(cities, [city("hull")]);
    let read = tally.grid_moved(&e, &read, &cities).unwrap();
    assert_eq!(read, tally.grid(&e, None).unwrap());
    assert_eq!(read.cities.len(), 3);
}

/// `grid` reads what `snapshot` reads, also when handed an older grid whose
/// cities or parties are no longer all of them; a fingerprint, where the
/// tally has one, moves with a report and stays put without one.
fn tally_reads_grids_and_fingerprints(tally: Arc<dyn Tally>) {
    let e = unique_election("grid");
    let read = |known: Option<&crate::Grid>| tally.grid(&e, known).unwrap();
    let empty = read(None);
    assert!(empty.cities.is_empty() && empty.parties.is_empty());
    let first = counting(1, &e, "B1", "york", 1, &[("labour", 5), ("tories", 2)]);
    assert!(tally.apply(std::slice::from_ref(&first))[0].is_ok());
    let one = read(Some(&empty));
    assert_eq!(
        one,
        crate::Grid::from_snapshot(&tally.snapshot(&e).unwrap())
    );
    assert_eq!(one.row(0), [Some(5), Some(2)]);
    let before = tally.fingerprint(&e, &one).unwrap();

    // A new city, a new party: the older grid's lists are not trusted.
    let second = counting(2, &e, "B2", "leeds", 1, &[("green", 4), ("labour", 1)]);
    assert!(tally.apply(std::slice::from_ref(&second))[0].is_ok());
    let two = read(Some(&one));
    assert_eq!(
        two,
        crate::Grid::from_snapshot(&tally.snapshot(&e).unwrap())
    );
    assert_eq!(two.cities.len(), 2);
    assert_eq!(two.parties.len(), 3);
    assert_eq!(two.national, [Some(4), Some(6), Some(2)]);
    if let Some(before) = before {
        let after = tally.fingerprint(&e, &one).unwrap();
        assert_ne!(
            after.as_ref(),
            Some(&before),
            "a report moves the fingerprint"
        );
        assert_eq!(tally.fingerprint(&e, &one).unwrap(), after, "nothing moved");
    }

    // A revision in a known city: the same lists, new numbers.
    let third = counting(3, &e, "B1", "york", 2, &[("labour", 1)]);
    assert!(tally.apply(std::slice::from_ref(&third))[0].is_ok());
    let three = read(Some(&two));
    assert!(three.same_layout(&two));
    assert_eq!(
        three,
        crate::Grid::from_snapshot(&tally.snapshot(&e).unwrap())
    );

    // New boxes in known cities, one with a party it had no counter of.
    let more = [
        counting(4, &e, "B3", "leeds", 1, &[("labour", 3), ("tories", 1)]),
        counting(5, &e, "B4", "york", 1, &[("green", 2)]),
    ];
    assert!(tally.apply(&more).iter().all(Result::is_ok));
    let four = read(Some(&three));
    assert_eq!(
        four,
        crate::Grid::from_snapshot(&tally.snapshot(&e).unwrap())
    );
    // A box and a revision at once: the revision's move is not explained by
    // the cities that got a box, so everything is read.
    let both = [
        counting(6, &e, "B5", "leeds", 1, &[("labour", 1)]),
        counting(7, &e, "B1", "york", 3, &[("tories", 4)]),
    ];
    assert!(tally.apply(&both).iter().all(Result::is_ok));
    let five = read(Some(&four));
    assert_eq!(
        five,
        crate::Grid::from_snapshot(&tally.snapshot(&e).unwrap())
    );
    // A city counter rewritten without a report: a read without `known`
    // sees it.
    let york_green = Counter::City(city("york"), party("green"));
    assert!(tally.guarded_add(&e, &york_green, 2, 5).unwrap());
    let healed = read(None);
    assert_eq!(
        healed,
        crate::Grid::from_snapshot(&tally.snapshot(&e).unwrap())
    );
    assert_eq!(healed.row(1)[0], Some(7));
}

fn tally_names_revisions_without_their_markers(tally: Arc<dyn Tally>) {
    let e = unique_election("markers");
    // Many parties, so a revision spans several slots on a Cluster.
    let parties: Vec<(String, i64)> = (0..12).map(|i| (format!("p{i}"), i64::from(i))).collect();
    let diff: Vec<(&str, i64)> = parties.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let applied: Vec<Counting> = (1..=3)
        .map(|i| counting(i, &e, &format!("B{i}"), "york", 1, &diff))
        .collect();
    let never = counting(4, &e, "B4", "leeds", 1, &diff);
    assert!(
        tally.unapplied(&applied).unwrap().len() == 3,
        "nothing applied yet"
    );
    assert!(tally.apply(&applied).iter().all(Result::is_ok));
    let mut batch = applied.clone();
    batch.insert(1, never.clone());
    assert_eq!(tally.unapplied(&batch).unwrap(), [never.report_id]);
    assert!(tally.unapplied(&[]).unwrap().is_empty());
    // Reading changed nothing.
    assert_eq!(
        tally
            .apply(&applied)
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
        [Applied::Already; 3]
    );
}

fn tally_adds_only_to_the_value_observed(tally: Arc<dyn Tally>) {
    let e = unique_election("tally");
    let labour = Counter::National(party("labour"));
    let york = Counter::City(city("york"), party("labour"));
    let read = |counters: &[Counter]| tally.counters(&e, counters).unwrap();

    // An absent counter holds 0.
    assert!(!tally.guarded_add(&e, &labour, 1, 5).unwrap());
    assert!(
        read(std::slice::from_ref(&labour)).is_empty(),
        "a refused call creates nothing"
    );
    assert!(tally.guarded_add(&e, &labour, 0, 5).unwrap());
    assert!(!tally.guarded_add(&e, &labour, 0, 5).unwrap());
    assert!(tally.guarded_add(&e, &labour, 5, -2).unwrap());
    let values = read(&[labour.clone(), york.clone()]);
    assert_eq!(values.get(&labour), 3);
    assert!(!values.contains(&york));

    // It moves no marker: applying a revision afterwards still counts it,
    // once.
    let revision = counting(1, &e, "B1", "york", 1, &[("labour", 10)]);
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    let values = read(&[labour.clone(), york.clone()]);
    assert_eq!((values.get(&labour), values.get(&york)), (13, 10));
    assert_eq!(tally.snapshot(&e).unwrap().totals, values);
    // Other elections' counters of the same name are apart.
    assert!(
        tally
            .counters(&unique_election("tally"), &[labour])
            .unwrap()
            .is_empty()
    );
}

fn tally_applies_once_per_revision(tally: Arc<dyn Tally>) {
    let e = unique_election("tally");
    let a = counting(
        1,
        &e,
        "B1",
        "london",
        1,
        &[("labour", 200), ("tories", 120), ("reform", 0)],
    );
    let b = counting(2, &e, "B2", "leeds", 1, &[("labour", 5)]);
    let answers = tally.apply(&[a.clone(), b.clone()]);
    assert!(
        answers.iter().all(|r| matches!(r, Ok(Applied::Now))),
        "{answers:?}"
    );
    let again = tally.apply(&[a, b]);
    assert!(
        again.iter().all(|r| matches!(r, Ok(Applied::Already))),
        "{again:?}"
    );

    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(
        snapshot.totals.national(),
        national(&[("labour", 205), ("reform", 0), ("tories", 120)])
    );
    assert_eq!(
        snapshot.totals.city(&city("london")),
        national(&[("labour", 200), ("reform", 0), ("tories", 120)])
    );
    assert_eq!(
        snapshot.totals.city(&city("leeds")),
        national(&[("labour", 5)])
    );
    assert_eq!(
        snapshot
            .parties
            .iter()
            .map(PartyId::as_str)
            .collect::<Vec<_>>(),
        ["labour", "reform", "tories"]
    );
    assert_eq!(
        snapshot
            .cities
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect::<Vec<_>>(),
        [("leeds", 1), ("london", 1)]
    );
    assert_eq!(snapshot.ballot_boxes_reported, 2);
}

fn tally_differences_commute(tally: Arc<dyn Tally>) {
    let e = unique_election("tally");
    // Revisions 1, 2 and 3 of one box arrive 3, 1, 2.
    let r1 = counting(1, &e, "B1", "york", 1, &[("a", 10), ("b", 5)]);
    let r2 = counting(2, &e, "B1", "york", 2, &[("a", 2), ("b", -5), ("c", 4)]);
    let r3 = counting(3, &e, "B1", "york", 3, &[("a", -1), ("c", 0)]);
    for batch in [
        vec![r3.clone()],
        vec![r1.clone()],
        vec![r2.clone(), r3.clone(), r1.clone()],
    ] {
        for answer in tally.apply(&batch) {
            answer.unwrap();
        }
    }
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(
        snapshot.totals.national(),
        national(&[("a", 11), ("b", 0), ("c", 4)])
    );
    assert_eq!(snapshot.ballot_boxes_reported, 1);
    assert_eq!(snapshot.cities.get(&city("york")), Some(&1));
}

fn tally_concurrent_appliers_count_once(tally: Arc<dyn Tally>) {
    let e = unique_election("tally");
    let batch: Vec<Counting> = (0..20)
        .map(|i| {
            counting(
                i + 1,
                &e,
                &format!("B{i}"),
                if i % 2 == 0 { "york" } else { "leeds" },
                1,
                &[("a", 1), ("b", 2), ("c", 3)],
            )
        })
        .collect();
    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let tally = Arc::clone(&tally);
            let barrier = Arc::clone(&barrier);
            let batch = batch.clone();
            std::thread::spawn(move || {
                barrier.wait();
                tally.apply(&batch)
            })
        })
        .collect();
    for handle in handles {
        for answer in handle.join().unwrap() {
            answer.unwrap();
        }
    }
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(
        snapshot.totals.national(),
        national(&[("a", 20), ("b", 40), ("c", 60)])
    );
    assert_eq!(
        snapshot.totals.city(&city("york")),
        national(&[("a", 10), ("b", 20), ("c", 30)])
    );
    assert_eq!(snapshot.ballot_boxes_reported, 20);
}

fn tally_keeps_elections_apart(tally: Arc<dyn Tally>) {
    let e1 = unique_election("tally");
    let e2 = unique_election("tally");
    // Same box, revision and report id in two elections: both count.
    tally.apply(&[counting(1, &e1, "B1", "york", 1, &[("a", 1)])])[0]
        .as_ref()
        .unwrap();
    tally.apply(&[counting(1, &e2, "B1", "york", 1, &[("a", 2)])])[0]
        .as_ref()
        .unwrap();
    assert_eq!(
        tally.snapshot(&e1).unwrap().totals.national(),
        national(&[("a", 1)])
    );
    assert_eq!(
        tally.snapshot(&e2).unwrap().totals.national(),
        national(&[("a", 2)])
    );
    let empty = tally.snapshot(&unique_election("tally")).unwrap();
    assert_eq!(empty.totals, Totals::new());
    assert_eq!(empty.ballot_boxes_reported, 0);
}

fn tally_handles_large_batches(tally: Arc<dyn Tally>) {
    let e = unique_election("tally");
    // 500 boxes, 10 parties, 20 cities in one call: one round trip per node
    // for the adapters, and every counter exact.
    let parties: Vec<String> = (0..10).map(|p| format!("p{p}")).collect();
    let batch: Vec<Counting> = (0..500)
        .map(|i| {
            let diff: Vec<(&str, i64)> = parties.iter().map(|p| (p.as_str(), 1)).collect();
            counting(
                i + 1,
                &e,
                &format!("B{i}"),
                &format!("c{}", i % 20),
                1,
                &diff,
            )
        })
        .collect();
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
    let snapshot = tally.snapshot(&e).unwrap();
    for p in &parties {
        assert_eq!(snapshot.totals.get(&Counter::National(party(p))), 500);
        assert_eq!(
            snapshot.totals.get(&Counter::City(city("c7"), party(p))),
            25
        );
    }
    assert_eq!(snapshot.cities.len(), 20);
    assert_eq!(snapshot.ballot_boxes_reported, 500);
}

/// Runs the engine checks over a fresh log and a tally.
pub fn engine(new_stores: &dyn Fn() -> (Arc<dyn ReportLog>, Arc<dyn Tally>)) {
    engine_counts_the_seed_example(new_stores());
    engine_answers_replays_and_conflicts(new_stores());
    engine_drains_pending_reports(new_stores());
    engine_reconcile_finds_and_repairs_drift(new_stores());
}

fn engine_counts_the_seed_example((log, tally): (Arc<dyn ReportLog>, Arc<dyn Tally>)) {
    let engine = Engine::new(log, tally);
    let e = unique_election("engine");
    let outcomes = engine.submit(&seed_reports(&e)).unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))),
        "{outcomes:?}"
    );
    let snapshot = engine.tally().snapshot(&e).unwrap();
    assert_eq!(snapshot.totals.national(), national(&SEED_NATIONAL));
    assert_eq!(
        snapshot.totals.city(&city("london")),
        national(&[
            ("labour", 200),
            ("libdems", 45),
            ("reform", 20),
            ("tories", 120)
        ])
    );
    assert_eq!(snapshot.ballot_boxes_reported, 3);
    assert_eq!(snapshot.totals, engine.expected_totals(&e).unwrap());
}

fn engine_answers_replays_and_conflicts((log, tally): (Arc<dyn ReportLog>, Arc<dyn Tally>)) {
    let engine = Engine::new(log, tally);
    let e = unique_election("engine");
    let r1 = report(&e, "B1", "york", 1, &[("a", 10)]);
    let Outcome::Counted(id) = engine.submit(std::slice::from_ref(&r1)).unwrap()[0] else {
        panic!("first post is counted")
    };
    let outcomes = engine
        .submit(&[
            r1.clone(),
            report(&e, "B1", "york", 1, &[("a", 11)]),
            report(&e, "B1", "leeds", 2, &[("a", 11)]),
        ])
        .unwrap();
    assert_eq!(
        outcomes[0],
        Outcome::Replay {
            report_id: id,
            counted: true
        }
    );
    assert!(matches!(
        outcomes[1],
        Outcome::Conflict(Conflict::DifferentPayload { .. })
    ));
    assert!(matches!(
        outcomes[2],
        Outcome::Conflict(Conflict::OtherCity { .. })
    ));
    let outcomes = engine
        .submit(&[report(&e, "B1", "york", 2, &[("a", 7), ("b", 1)])])
        .unwrap();
    assert!(matches!(outcomes[0], Outcome::Counted(_)));
    let snapshot = engine.tally().snapshot(&e).unwrap();
    assert_eq!(snapshot.totals.national(), national(&[("a", 7), ("b", 1)]));
    assert_eq!(snapshot.totals, engine.expected_totals(&e).unwrap());
}

fn engine_drains_pending_reports((log, tally): (Arc<dyn ReportLog>, Arc<dyn Tally>)) {
    // Recorded through the log alone, as if the tally had been down.
    let e = unique_election("engine");
    let recorded = log.record(&seed_reports(&e)).unwrap();
    assert_eq!(recorded.len(), 3);
    let engine = Engine::new(Arc::clone(&log), tally);
    assert_eq!(log.pending_count(&e).unwrap(), 3);
    let mut counted = 0;
    loop {
        let round = engine.count_pending(&claim_now(2)).unwrap();
        if round.claimed == 0 {
            break;
        }
        counted += round.counted;
    }
    assert_eq!(counted, 3);
    assert_eq!(log.pending_count(&e).unwrap(), 0);
    let snapshot = engine.tally().snapshot(&e).unwrap();
    assert_eq!(snapshot.totals.national(), national(&SEED_NATIONAL));
    assert_eq!(snapshot.totals, engine.expected_totals(&e).unwrap());
}

/// Rounds a few milliseconds apart: checks need no real load to settle.
const QUICK: reconcile::Config = reconcile::Config {
    page_size: 2,
    max_rounds: 20,
    round_interval: Duration::from_millis(5),
};

fn engine_reconcile_finds_and_repairs_drift((log, tally): (Arc<dyn ReportLog>, Arc<dyn Tally>)) {
    let engine = Engine::new(Arc::clone(&log), Arc::clone(&tally));
    let e = unique_election("engine");
    let outcomes = engine.submit(&seed_reports(&e)).unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))));
    // A box recorded while the tally was down: pending, not drift.
    log.record(&[report(&e, "BB-YRK-1", "york", 1, &[("greens", 9)])])
        .unwrap();
    let exact = reconcile::compare(&*log, &*tally, &e, &QUICK).unwrap();
    assert!(exact.is_exact(), "{exact:?}");
    assert_eq!(exact.pending_revisions, 1);
    assert_eq!(
        exact
            .in_flight()
            .map(|c| c.counter.clone())
            .collect::<Vec<_>>(),
        [
            Counter::National(party("greens")),
            Counter::City(city("york"), party("greens"))
        ]
    );
    assert!(exact.in_flight().all(|c| c.verdict == Verdict::Pending));
    assert_eq!(exact.exact(), 4 + 12);

    // Someone adds 7 to a counter by hand (a guarded add of a value just
    // read is exactly that).
    let labour = Counter::National(party("labour"));
    assert!(tally.guarded_add(&e, &labour, 430, 7).unwrap());
    let drifted = reconcile::compare(&*log, &*tally, &e, &QUICK).unwrap();
    assert!(!drifted.is_exact());
    let drift: Vec<(Counter, i64, i64, i64)> = drifted
        .drifted()
        .map(|c| (c.counter.clone(), c.tally, c.expected, c.difference()))
        .collect();
    assert_eq!(drift, [(labour.clone(), 437, 430, 7)]);

    let repaired = reconcile::repair(&*log, &*tally, &e, &QUICK).unwrap();
    assert_eq!(
        repaired.reapplied, 3,
        "every counted revision, a page at a time"
    );
    assert_eq!(repaired.restored, 0, "no marker was lost");
    assert_eq!(
        repaired.fixes,
        [reconcile::Fix {
            counter: labour,
            observed: 437,
            expected: 430
        }]
    );
    assert!(repaired.after.is_exact(), "{:?}", repaired.after);
    assert_eq!(
        tally.snapshot(&e).unwrap().totals.national(),
        national(&SEED_NATIONAL)
    );
    // The pending box is left to the reprocessor, which counts it once.
    let round = engine.count_pending(&claim_now(10)).unwrap();
    assert_eq!(round.counted, 1);
    let after = reconcile::compare(&*log, &*tally, &e, &QUICK).unwrap();
    assert!(
        after.is_exact() && after.in_flight().next().is_none(),
        "{after:?}"
    );
    assert_eq!(
        tally.snapshot(&e).unwrap().totals,
        engine.expected_totals(&e).unwrap()
    );
    // Every counted revision has its markers.
    let swept = crate::heal::sweep(&*log, &*tally, &e, 2, false).unwrap();
    assert_eq!((swept.checked, swept.missing), (4, 0), "{swept:?}");
}

/// Makes a fresh log and the history port over the same records.
pub type HistoryFactory<'a> = &'a dyn Fn() -> (Arc<dyn ReportLog>, Arc<dyn History>);

/// Runs every history check, each on fresh stores: reports are recorded
/// through the log and read back through the port.
pub fn history(new_stores: HistoryFactory<'_>) {
    history_ranks_cities_and_lists_first_reports(new_stores());
    history_pages_through_the_audit_log(new_stores());
    history_sums_votes_per_bucket(new_stores());
    history_tells_what_stood_at_an_instant(new_stores());
    history_flags_large_corrections(new_stores());
    history_knows_its_elections(new_stores());
}

/// Long enough for two instants on either side of it to be told apart by
/// both the test's clock and the store's.
const APART: Duration = Duration::from_millis(50);

fn history_ranks_cities_and_lists_first_reports(
    (log, history): (Arc<dyn ReportLog>, Arc<dyn History>),
) {
    let e = unique_election("history");
    log.record(&seed_reports(&e)).unwrap();
    std::thread::sleep(APART);
    let between = chrono::Utc::now();
    std::thread::sleep(APART);
    let correction = seed_correction(&e);
    log.record(&[correction]).unwrap();

    let ranked = |window: Window| -> Vec<(String, i64, i64)> {
        history
            .cities_by_votes(&e, window)
            .unwrap()
            .into_iter()
            .map(|c| (c.city.to_string(), c.votes, c.reports))
            .collect()
    };
    assert_eq!(
        ranked(Window::default()),
        [
            ("edinburgh".to_owned(), 475, 2),
            ("london".to_owned(), 385, 1),
            ("manchester".to_owned(), 280, 1)
        ]
    );
    assert_eq!(
        ranked(Window {
            from: Some(between),
            to: None
        }),
        [("edinburgh".to_owned(), 300, 1)]
    );
    assert_eq!(
        ranked(Window {
            from: None,
            to: Some(between)
        }),
        [
            ("london".to_owned(), 385, 1),
            ("manchester".to_owned(), 280, 1),
            ("edinburgh".to_owned(), 175, 1)
        ]
    );
    assert!(
        history
            .cities_by_votes(&unique_election("history"), Window::default())
            .unwrap()
            .is_empty()
    );

    // One batch, one instant: ties by ballot box id. A correction does not
    // move a box's first report.
    let first = history.first_reports(&e, 10).unwrap();
    assert_eq!(
        first
            .iter()
            .map(|f| (f.ballot_box.as_str(), f.city.as_str()))
            .collect::<Vec<_>>(),
        [
            ("BB-EDI-1", "edinburgh"),
            ("BB-LON-1", "london"),
            ("BB-MAN-1", "manchester")
        ]
    );
    assert!(first.iter().all(|f| f.first_reported_at < between));
    assert!(
        first
            .windows(2)
            .all(|w| w[0].first_reported_at == w[1].first_reported_at)
    );
    assert_eq!(history.first_reports(&e, 2).unwrap(), first[..2]);
}

fn history_pages_through_the_audit_log((log, history): (Arc<dyn ReportLog>, Arc<dyn History>)) {
    let e = unique_election("audit");
    let r1 = report(&e, "B1", "york", 1, &[("a", 10), ("b", 5)]);
    let r2 = report(&e, "B2", "leeds", 1, &[("a", 1)]);
    let first = log.record(&[r1.clone(), r2.clone()]).unwrap();
    let r3 = report(&e, "B1", "york", 2, &[("a", 12), ("c", 4)]);
    let third = log.record(std::slice::from_ref(&r3)).unwrap();
    let (id1, id2, id3) = (
        fresh(&first[0]).report_id,
        fresh(&first[1]).report_id,
        fresh(&third[0]).report_id,
    );
    log.mark_counted(&[id1]).unwrap();

    /// One audit row: report id, box, revision, party, votes, omitted,
    /// difference, counted.
    type Row = (i64, String, i32, String, i32, bool, i64, bool);
    let rows = |page: &AuditPage| -> Vec<Row> {
        page.rows
            .iter()
            .map(|r| {
                (
                    r.report_id,
                    r.ballot_box.to_string(),
                    r.revision,
                    r.party.to_string(),
                    r.votes,
                    r.omitted,
                    r.difference,
                    r.counted,
                )
            })
            .collect()
    };
    let page = history.audit_page(&e, None, 2).unwrap();
    assert_eq!(
        rows(&page),
        [
            (id1.0, "B1".into(), 1, "a".into(), 10, false, 10, true),
            (id1.0, "B1".into(), 1, "b".into(), 5, false, 5, true),
            (id2.0, "B2".into(), 1, "a".into(), 1, false, 1, false),
        ]
    );
    assert_eq!(page.next, Some(AuditCursor { report_id: id2.0 }));
    let row = &page.rows[0];
    assert_eq!(row.city.as_str(), "york");
    assert_eq!(row.reason, None);
    assert_eq!(row.payload_hash, r1.payload_hash().0);
    assert_eq!(row.payload_sha256, sha256(r1.payload()));
    assert_eq!(page.rows[2].payload_sha256, sha256(r2.payload()));
    assert_eq!(page.rows[0].received_at, page.rows[2].received_at);

    // The last page is short: no cursor after it. A party the correction
    // left out is a 0 it did not post.
    let last = history.audit_page(&e, page.next, 2).unwrap();
    assert_eq!(
        rows(&last),
        [
            (id3.0, "B1".into(), 2, "a".into(), 12, false, 2, false),
            (id3.0, "B1".into(), 2, "b".into(), 0, true, -5, false),
            (id3.0, "B1".into(), 2, "c".into(), 4, false, 4, false),
        ]
    );
    assert_eq!(last.rows[0].reason.as_deref(), Some("recount 2"));
    assert_eq!(last.rows[0].payload_sha256, sha256(r3.payload()));
    assert_eq!(last.next, None);
    assert!(last.rows[0].received_at > page.rows[0].received_at);

    // A page holds at least one revision; a cursor past the end is empty.
    let single = history.audit_page(&e, None, 0).unwrap();
    assert_eq!(single.rows.len(), 2);
    assert_eq!(single.next, Some(AuditCursor { report_id: id1.0 }));
    let beyond = history
        .audit_page(&e, Some(AuditCursor { report_id: id3.0 }), 10)
        .unwrap();
    assert_eq!(
        beyond,
        AuditPage {
            rows: Vec::new(),
            next: None
        }
    );
}

fn sha256(text: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).to_vec()
}

fn history_sums_votes_per_bucket((log, history): (Arc<dyn ReportLog>, Arc<dyn History>)) {
    let e = unique_election("buckets");
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    log.record(&seed_reports(&e)).unwrap();
    let buckets = history.votes_per_bucket(&e, 60, None).unwrap();
    let start = buckets.rows[0].start;
    assert!(start > before - chrono::Duration::seconds(60) && start <= buckets.read_at);
    assert_eq!(start.timestamp() % 60, 0, "aligned on whole minutes");
    assert_eq!(
        buckets
            .rows
            .iter()
            .map(|r| (r.start, r.party.as_str(), r.votes))
            .collect::<Vec<_>>(),
        SEED_NATIONAL
            .iter()
            .map(|(p, n)| (start, *p, *n))
            .collect::<Vec<_>>()
    );
    // From an instant after everything: nothing.
    let later = history
        .votes_per_bucket(&e, 60, Some(start + chrono::Duration::minutes(1)))
        .unwrap();
    assert!(later.rows.is_empty());
    assert_eq!(
        history.votes_per_bucket(&e, 60, Some(start)).unwrap().rows,
        buckets.rows
    );
    assert!(history.votes_per_bucket(&e, 0, None).is_err());

    // A correction counts as its difference; the timeline ends at the
    // latest revisions.
    log.record(&[report(
        &e,
        "BB-LON-1",
        "london",
        2,
        &[("tories", 20), ("labour", 200), ("libdems", 45)],
    )])
    .unwrap();
    let timeline = history.timeline(&e, 86_400).unwrap();
    let last = timeline.last().expect("a point");
    assert_eq!(last.at.timestamp() % 86_400, 0, "UTC days");
    assert_eq!(
        last.parties
            .iter()
            .map(|(p, n)| (p.as_str(), *n))
            .collect::<Vec<_>>(),
        [
            ("labour", 430),
            ("libdems", 115),
            ("reform", 15),
            ("tories", 160)
        ]
    );
    assert!(
        history
            .timeline(&unique_election("buckets"), 60)
            .unwrap()
            .is_empty()
    );
}

fn history_tells_what_stood_at_an_instant((log, history): (Arc<dyn ReportLog>, Arc<dyn History>)) {
    let e = unique_election("asof");
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    log.record(&[report(&e, "B1", "york", 1, &[("a", 10), ("b", 5)])])
        .unwrap();
    std::thread::sleep(APART);
    let between = chrono::Utc::now();
    std::thread::sleep(APART);
    log.record(&[
        report(&e, "B1", "york", 2, &[("a", 8)]),
        report(&e, "B2", "york", 1, &[("a", 1)]),
        report(&e, "B3", "leeds", 1, &[("c", 3)]),
    ])
    .unwrap();
    let votes = |stood: &StoodAt| -> Vec<(String, String, i64)> {
        stood
            .votes
            .iter()
            .map(|((c, p), n)| (c.to_string(), p.to_string(), *n))
            .collect()
    };
    let then = history.stood_at(&e, between).unwrap();
    assert_eq!(
        votes(&then),
        [
            ("york".to_owned(), "a".to_owned(), 10),
            ("york".to_owned(), "b".to_owned(), 5)
        ]
    );
    assert_eq!(then.boxes, BTreeMap::from([(city("york"), 1)]));
    let now = history
        .stood_at(&e, chrono::Utc::now() + chrono::Duration::seconds(1))
        .unwrap();
    assert_eq!(
        votes(&now),
        [
            ("leeds".to_owned(), "c".to_owned(), 3),
            ("york".to_owned(), "a".to_owned(), 9),
            ("york".to_owned(), "b".to_owned(), 0)
        ]
    );
    assert_eq!(
        now.boxes,
        BTreeMap::from([(city("leeds"), 1), (city("york"), 2)])
    );
    assert_eq!(history.stood_at(&e, before).unwrap(), StoodAt::default());
}

fn history_flags_large_corrections((log, history): (Arc<dyn ReportLog>, Arc<dyn History>)) {
    let e = unique_election("flags");
    let mut ids = Vec::new();
    for (ballot_box, revision, votes) in [
        ("B1", 1, 100),
        ("B1", 2, 110), // 10%: not flagged at 20%
        ("B2", 1, 0),
        ("B1", 3, 200), // 82%
        ("B2", 2, 1),   // from 0: compared with 1
    ] {
        let answer = log
            .record(&[report(&e, ballot_box, "york", revision, &[("a", votes)])])
            .unwrap();
        ids.push(fresh(&answer[0]).report_id.0);
    }
    let flags = history.flags(&e, 0.2).unwrap();
    assert_eq!(
        flags
            .iter()
            .map(|f| (
                f.report_id,
                f.ballot_box.as_str(),
                f.revision,
                f.reason,
                f.total_votes,
                f.previous_total,
                f.electorate
            ))
            .collect::<Vec<_>>(),
        [
            (
                ids[3],
                "B1",
                3,
                FlagReason::LargeCorrection,
                200,
                Some(110),
                None
            ),
            (
                ids[4],
                "B2",
                2,
                FlagReason::LargeCorrection,
                1,
                Some(0),
                None
            ),
        ]
    );
    assert!(flags.iter().all(|f| f.city.as_str() == "york"));
    assert_eq!(history.flags(&e, 0.05).unwrap().len(), 3);
}

fn history_knows_its_elections((log, history): (Arc<dyn ReportLog>, Arc<dyn History>)) {
    let (a, b, never) = (
        unique_election("known"),
        unique_election("known"),
        unique_election("known"),
    );
    log.record(&seed_reports(&a)).unwrap();
    log.record(&[report(&b, "B1", "york", 1, &[("x", 1)])])
        .unwrap();
    log.record(&[report(&b, "B1", "york", 2, &[("x", 2)])])
        .unwrap();
    let known = history.known_elections().unwrap();
    // Other checks may share the store: only ours are asserted.
    let mut expected = vec![&a, &b];
    expected.sort();
    assert_eq!(
        known
            .iter()
            .filter(|e| **e == a || **e == b || **e == never)
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        known.windows(2).all(|w| w[0] < w[1]),
        "in id order, once each"
    );
    assert!(history.election_exists(&a).unwrap());
    assert!(!history.election_exists(&never).unwrap());

    let summary = history.elections_summary().unwrap();
    let ours: Vec<(&ElectionId, Option<&str>, u64)> = summary
        .iter()
        .filter(|s| s.election == a || s.election == b)
        .map(|s| (&s.election, s.name.as_deref(), s.ballot_boxes_reported))
        .collect();
    let mut expected = vec![(&a, None, 3), (&b, None, 1)];
    expected.sort();
    assert_eq!(ours, expected);
    let last_of = |e: &ElectionId| {
        summary
            .iter()
            .find(|s| s.election == *e)
            .unwrap()
            .last_report_at
    };
    let b_rows = history.audit_page(&b, None, 10).unwrap().rows;
    assert_eq!(last_of(&b), Some(b_rows[1].received_at), "the correction's");

    // Nothing sealed: no heads.
    assert_eq!(
        history.seal_heads(&a, None, 10).unwrap(),
        SealHeads::default()
    );
}
