//! `reconcile` on the in-memory stores: Phase A after a lost tally, Phase B
//! against hand edits, while other threads keep recording and counting, and
//! the two interleavings the round rules exist for, forced deterministically.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use election_core::contract::{report, unique_election};
use election_core::memory::{Faults, MemoryLog, MemoryTally};
use election_core::reconcile::{self, Config, Fix, Verdict};
use election_core::{
    Applied, CityId, Claim, Counter, Counting, ElectionId, Engine, LogAudit, Outcome, PartyId,
    PendingStats, Recorded, Report, ReportId, ReportLog, Snapshot, StoreError, Tally, Totals,
};

fn party(name: &str) -> PartyId {
    PartyId::parse(name).unwrap()
}

fn city(name: &str) -> CityId {
    CityId::parse(name).unwrap()
}

/// Rounds 1 ms apart, and enough of them to outlast the load of a test.
const PATIENT: Config = Config {
    page_size: 50,
    max_rounds: 5000,
    round_interval: Duration::from_millis(1),
};

/// The night so far: `boxes` ballot boxes over four cities, three parties.
fn night(election: &ElectionId, boxes: u32) -> Vec<Report> {
    (0..boxes)
        .map(|i| {
            report(
                election,
                &format!("B{i}"),
                &format!("c{}", i % 4),
                1,
                &[("a", i % 7), ("b", 10 + i % 3), ("c", 1)],
            )
        })
        .collect()
}

fn submit_all(engine: &Engine, reports: &[Report]) {
    for chunk in reports.chunks(25) {
        for outcome in engine.submit(chunk).unwrap() {
            assert!(matches!(outcome, Outcome::Counted(_)), "{outcome:?}");
        }
    }
}

/// Every counter the log implies, checked against the tally; also against
/// the sum of every ballot box's latest revision, computed independently.
#[track_caller]
fn assert_exact(log: &MemoryLog, tally: &dyn Tally, election: &ElectionId) {
    assert_eq!(log.pending_count(election).unwrap(), 0);
    let expected = log.counted_totals(election).unwrap();
    let held = tally.snapshot(election).unwrap().totals;
    assert_eq!(held.drift(&expected), [], "tally vs log");
    let mut latest = Totals::new();
    for (city, votes) in log.latest_votes(election) {
        for (party, n) in votes.iter() {
            latest.add(Counter::National(party.clone()), i64::from(n));
            latest.add(Counter::City(city.clone(), party.clone()), i64::from(n));
        }
    }
    assert_eq!(held.drift(&latest), [], "tally vs latest revisions");
}

#[test]
fn phase_a_restores_a_flushed_tally_with_its_markers() {
    let log = Arc::new(MemoryLog::new());
    let tally = Arc::new(MemoryTally::with(Faults::new(), 16));
    let engine = Engine::new(log.clone(), tally.clone());
    let e = unique_election("flush");
    submit_all(&engine, &night(&e, 120));
    let markers = tally.marker_count();
    tally.flush();

    let lost = reconcile::compare(&*log, &*tally, &e, &PATIENT).unwrap();
    assert_eq!(lost.drifted().count(), 3 + 4 * 3);
    let a = lost
        .drifted()
        .find(|c| c.counter == Counter::National(party("a")))
        .unwrap();
    assert_eq!((a.tally, a.difference()), (0, -a.expected));

    let repaired = reconcile::repair(&*log, &*tally, &e, &PATIENT).unwrap();
    assert_eq!((repaired.reapplied, repaired.restored), (120, 120));
    assert_eq!(repaired.fixes, [], "markers restored everything");
    assert!(repaired.after.is_exact(), "{:?}", repaired.after);
    assert_eq!(tally.marker_count(), markers, "every marker is back");
    assert_exact(&log, &*tally, &e);
    // The indexes came back too.
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(snapshot.ballot_boxes_reported, 120);
    assert_eq!(snapshot.cities.len(), 4);

    // Repairing an exact tally changes nothing.
    let again = reconcile::repair(&*log, &*tally, &e, &PATIENT).unwrap();
    assert_eq!(
        (again.reapplied, again.restored, again.fixes.len()),
        (120, 0, 0)
    );
}

/// Threads keep recording and counting reports (new boxes and corrections)
/// while a repair runs after the tally lost everything and two counters were
/// edited by hand: one that the load keeps moving, one it never touches.
/// Every rewrite must remove exactly the hand edit (7), and the tally must
/// be exact at the end without any further repair.
#[test]
fn repair_under_load_loses_no_concurrent_increment() {
    for round in 0..4 {
        let log = Arc::new(MemoryLog::new());
        let tally = Arc::new(MemoryTally::with(Faults::new(), 1 + round * 5));
        let engine = Engine::new(log.clone(), tally.clone());
        let e = unique_election("load");
        submit_all(&engine, &night(&e, 200));
        tally.flush();
        let busy = Counter::National(party("a"));
        let quiet = Counter::City(city("c3"), party("b"));
        tally.tamper(&e, &busy, 7);
        tally.tamper(&e, &quiet, 7);

        let writers = 2;
        let barrier = Arc::new(Barrier::new(writers + 1));
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let engine = engine.clone();
                let barrier = Arc::clone(&barrier);
                let e = e.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..150u32 {
                        // A new box in a busy city, and a correction of an
                        // old one (never in c3): both move the busy counter.
                        let fresh = report(
                            &e,
                            &format!("W{w}-{i}"),
                            &format!("c{}", i % 3),
                            1,
                            &[("a", i % 5 + 1), ("c", 2)],
                        );
                        let old = (w as u32 * 150 + i) % 200;
                        let fix = report(
                            &e,
                            &format!("B{old}"),
                            &format!("c{}", old % 4),
                            2,
                            &[("a", i % 4), ("b", 10 + old % 3), ("c", 1)],
                        );
                        let batch = if old % 4 == 3 {
                            vec![fresh]
                        } else {
                            vec![fresh, fix]
                        };
                        for outcome in engine.submit(&batch).unwrap() {
                            assert!(!matches!(outcome, Outcome::Pending(_)), "{outcome:?}");
                        }
                        if i % 10 == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        let repaired = reconcile::repair(&*log, &*tally, &e, &PATIENT).unwrap();
        for handle in handles {
            handle.join().unwrap();
        }

        let fixed: BTreeSet<&Counter> = repaired.fixes.iter().map(|f| &f.counter).collect();
        assert_eq!(fixed, [&busy, &quiet].into_iter().collect(), "{repaired:?}");
        for fix in &repaired.fixes {
            assert_eq!(
                fix.observed - fix.expected,
                7,
                "{fix:?} removes the hand edit only"
            );
        }
        assert!(repaired.after.is_exact(), "{:?}", repaired.after);
        assert_eq!(
            repaired.restored, 200,
            "exactly the revisions counted before the flush"
        );
        assert_exact(&log, &*tally, &e);
    }
}

/// A log whose `audit` lets a test act right after the log was read and
/// before the tally is (the window the round rules must cover). It forwards
/// every other method but `counted_revisions_newest_first`, which it
/// declines (the default), as an embedder's log may: the healing test uses
/// it for that.
pub(crate) struct AfterAudit {
    inner: Arc<MemoryLog>,
    hook: Mutex<Box<dyn FnMut(usize) + Send>>,
    calls: AtomicUsize,
}

impl AfterAudit {
    /// `inner` with nothing done after its audits.
    pub(crate) fn plain(inner: Arc<MemoryLog>) -> AfterAudit {
        AfterAudit {
            inner,
            hook: Mutex::new(Box::new(|_| {})),
            calls: AtomicUsize::new(0),
        }
    }
}

impl ReportLog for AfterAudit {
    fn record(&self, reports: &[Report]) -> Result<Vec<Recorded>, StoreError> {
        self.inner.record(reports)
    }
    fn claim_pending(&self, claim: &Claim) -> Result<Vec<Counting>, StoreError> {
        self.inner.claim_pending(claim)
    }
    fn mark_counted(&self, ids: &[ReportId]) -> Result<(), StoreError> {
        self.inner.mark_counted(ids)
    }
    fn release(&self, ids: &[ReportId], error: &str) -> Result<(), StoreError> {
        self.inner.release(ids, error)
    }
    fn counted_totals(&self, election: &ElectionId) -> Result<Totals, StoreError> {
        self.inner.counted_totals(election)
    }
    fn pending_count(&self, election: &ElectionId) -> Result<u64, StoreError> {
        self.inner.pending_count(election)
    }
    fn counted_revisions(
        &self,
        election: &ElectionId,
        after: Option<ReportId>,
        limit: usize,
    ) -> Result<Vec<Counting>, StoreError> {
        self.inner.counted_revisions(election, after, limit)
    }
    fn audit(&self, election: &ElectionId) -> Result<LogAudit, StoreError> {
        let audit = self.inner.audit(election)?;
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        (self.hook.lock().unwrap())(call);
        Ok(audit)
    }
    fn pending_stats(&self, stuck_attempts: u32) -> Result<PendingStats, StoreError> {
        self.inner.pending_stats(stuck_attempts)
    }
    fn elections(&self) -> Result<Vec<ElectionId>, StoreError> {
        self.inner.elections()
    }
}

/// A revision recorded and counted between the log read and the tally read
/// of every round shows in the tally but not in the expected values. Were the
/// rewrite decided on one round, it would erase that revision; the rounds see
/// the number of revisions move and wait.
#[test]
fn a_revision_counted_between_the_two_reads_of_a_round_is_not_erased() {
    let inner = Arc::new(MemoryLog::new());
    let tally = Arc::new(MemoryTally::new());
    let e = unique_election("window");
    let engine = Engine::new(inner.clone(), tally.clone());
    submit_all(&engine, &night(&e, 20));
    let labour = Counter::National(party("a"));
    tally.tamper(&e, &labour, 7);

    // During the first six audits, a new box reports party `a` right after
    // the log was read.
    let writer = engine.clone();
    let writer_election = e.clone();
    let mut written = 0;
    let log = AfterAudit {
        inner: inner.clone(),
        hook: Mutex::new(Box::new(move |call| {
            if call < 6 {
                written += 1;
                let late = report(
                    &writer_election,
                    &format!("L{written}"),
                    "c1",
                    1,
                    &[("a", 3)],
                );
                assert!(matches!(
                    writer.submit(&[late]).unwrap()[0],
                    Outcome::Counted(_)
                ));
            }
        })),
        calls: AtomicUsize::new(0),
    };
    let config = Config {
        max_rounds: 50,
        ..PATIENT
    };
    let compared = reconcile::compare(&log, &*tally, &e, &config).unwrap();
    // The first rounds see `a` moving, never a drift of 7 + 3.
    assert!(compared.rounds > 2, "{compared:?}");
    let a = compared
        .checks
        .iter()
        .find(|c| c.counter == labour)
        .unwrap();
    assert_eq!((a.verdict, a.difference()), (Verdict::Drift, 7));

    log.calls.store(0, Ordering::SeqCst);
    let repaired = reconcile::repair(&log, &*tally, &e, &config).unwrap();
    assert_eq!(repaired.fixes.len(), 1, "{repaired:?}");
    assert_eq!(repaired.fixes[0].counter, labour);
    assert_eq!(repaired.fixes[0].observed - repaired.fixes[0].expected, 7);
    assert_exact(&inner, &*tally, &e);
    assert_eq!(inner.revisions(&e).len(), 20 + 6 + 6);
}

/// A tally whose `guarded_add` lets a test count a revision between the last
/// read and the rewrite.
struct BeforeRewrite {
    inner: Arc<MemoryTally>,
    hook: Mutex<Box<dyn FnMut() + Send>>,
    armed: AtomicBool,
}

impl Tally for BeforeRewrite {
    fn apply(&self, batch: &[Counting]) -> Vec<Result<Applied, StoreError>> {
        self.inner.apply(batch)
    }
    fn unapplied(&self, batch: &[Counting]) -> Result<Vec<ReportId>, StoreError> {
        self.inner.unapplied(batch)
    }
    fn snapshot(&self, election: &ElectionId) -> Result<Snapshot, StoreError> {
        self.inner.snapshot(election)
    }
    fn guarded_add(
        &self,
        election: &ElectionId,
        counter: &Counter,
        observed: i64,
        delta: i64,
    ) -> Result<bool, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            (self.hook.lock().unwrap())();
        }
        self.inner.guarded_add(election, counter, observed, delta)
    }
}

/// An increment that lands after the counter was read for the last time and
/// before the rewrite makes the guard refuse; the counter is decided again
/// and rewritten correctly once it holds still.
#[test]
fn an_increment_just_before_the_rewrite_makes_the_guard_refuse() {
    let log = Arc::new(MemoryLog::new());
    let inner = Arc::new(MemoryTally::new());
    let e = unique_election("guard");
    let engine = Engine::new(log.clone(), inner.clone());
    submit_all(&engine, &night(&e, 20));
    let a = Counter::National(party("a"));
    inner.tamper(&e, &a, 7);

    let writer = engine.clone();
    let writer_election = e.clone();
    let tally = BeforeRewrite {
        inner: inner.clone(),
        hook: Mutex::new(Box::new(move || {
            let late = report(&writer_election, "LATE", "c2", 1, &[("a", 5)]);
            assert!(matches!(
                writer.submit(&[late]).unwrap()[0],
                Outcome::Counted(_)
            ));
        })),
        armed: AtomicBool::new(true),
    };
    let before = log.counted_totals(&e).unwrap().get(&a);
    let repaired = reconcile::repair(&*log, &tally, &e, &PATIENT).unwrap();
    assert_eq!(repaired.refused, 1, "{repaired:?}");
    assert_eq!(
        repaired.fixes,
        [Fix {
            counter: a.clone(),
            observed: before + 5 + 7,
            expected: before + 5
        }]
    );
    assert!(repaired.after.is_exact());
    assert_exact(&log, &*inner, &e);
}

/// Counters touched by pending revisions are in flight: never drift, never
/// rewritten, whatever their value, until the reprocessor counts them.
#[test]
fn counters_of_pending_revisions_are_in_flight_not_drift() {
    let log = Arc::new(MemoryLog::new());
    let tally = Arc::new(MemoryTally::new());
    let engine = Engine::new(log.clone(), tally.clone());
    let e = unique_election("pending");
    submit_all(&engine, &night(&e, 8));
    // Recorded, applied, not yet marked: the tally is ahead of the counted
    // totals for these counters.
    let late = report(&e, "LATE", "c0", 1, &[("a", 4)]);
    let Recorded::Fresh(counting) = log.record(std::slice::from_ref(&late)).unwrap().remove(0)
    else {
        panic!("fresh")
    };
    tally.apply(std::slice::from_ref(&counting))[0]
        .as_ref()
        .unwrap();
    let compared = reconcile::compare(&*log, &*tally, &e, &PATIENT).unwrap();
    assert!(compared.is_exact());
    assert_eq!(compared.pending_revisions, 1);
    let in_flight: BTreeMap<Counter, (i64, Verdict)> = compared
        .in_flight()
        .map(|c| (c.counter.clone(), (c.difference(), c.verdict)))
        .collect();
    assert_eq!(
        in_flight,
        [
            (Counter::National(party("a")), (4, Verdict::Pending)),
            (Counter::City(city("c0"), party("a")), (4, Verdict::Pending)),
        ]
        .into_iter()
        .collect()
    );
    // Phase B keeps looking for its 20 rounds (the pending revision might
    // hide a drift), then gives up on these two: left in flight.
    let brief = Config {
        max_rounds: 20,
        ..PATIENT
    };
    let repaired = reconcile::repair(&*log, &*tally, &e, &brief).unwrap();
    assert_eq!(repaired.fixes, []);
    assert_eq!(repaired.rounds, 20);
    assert_eq!(repaired.after.in_flight().count(), 2);
    // The reprocessor marks it (its re-apply is a no-op), and all is exact.
    let round = engine
        .count_pending(&Claim {
            limit: 10,
            pending_for: Duration::ZERO,
            lease: Duration::from_secs(60),
        })
        .unwrap();
    assert_eq!(round.counted, 1);
    assert_exact(&log, &*tally, &e);
}
