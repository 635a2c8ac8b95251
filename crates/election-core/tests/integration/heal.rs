//! Healing (I5): counted revisions the tally lost are found by their
//! markers, at any load, and restored exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use election_core::contract::{report, unique_election};
use election_core::heal;
use election_core::memory::{Faults, MemoryLog, MemoryTally};
use election_core::reconcile::{self, Config};
use election_core::{Counting, Engine, Outcome, Recorded, ReportLog, Tally};

use crate::reconcile::AfterAudit;

const QUICK: Config = Config {
    page_size: 7,
    max_rounds: 4,
    round_interval: Duration::from_millis(1),
};

/// `boxes` boxes of 3 parties recorded and counted; their countings.
fn counted(
    engine: &Engine,
    log: &MemoryLog,
    e: &election_core::ElectionId,
    boxes: u32,
) -> Vec<Counting> {
    let reports: Vec<_> = (0..boxes)
        .map(|i| {
            report(
                e,
                &format!("B{i}"),
                &format!("c{}", i % 5),
                1,
                &[("a", i), ("b", 2), ("c", 3)],
            )
        })
        .collect();
    let outcomes = engine.submit(&reports).unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))));
    log.counted_revisions(e, None, usize::MAX).unwrap()
}

#[test]
fn lost_revisions_are_found_and_restored_exactly_once() {
    for slots in [1, 16] {
        let log = Arc::new(MemoryLog::new());
        let tally = Arc::new(MemoryTally::with(Faults::new(), slots));
        let engine = Engine::new(log.clone(), tally.clone());
        let e = unique_election("heal");
        let revisions = counted(&engine, &log, &e, 40);
        let expected = engine.expected_totals(&e).unwrap();
        // A failover to a replica that never got three of them.
        for lost in [&revisions[3], &revisions[17], &revisions[39]] {
            tally.lose(lost);
        }
        assert_ne!(tally.snapshot(&e).unwrap().totals, expected);

        let found = heal::sweep(&*log, &*tally, &e, 7, false).unwrap();
        assert_eq!((found.checked, found.missing, found.restored), (40, 3, 0));
        // Newest first: what a failover loses is what was counted last.
        assert_eq!(
            found.examples,
            [
                revisions[39].report_id,
                revisions[17].report_id,
                revisions[3].report_id
            ]
        );
        // A log that cannot page backwards is swept in id order, the same.
        let forwards = heal::sweep(&AfterAudit::plain(log.clone()), &*tally, &e, 7, false).unwrap();
        assert_eq!((forwards.checked, forwards.missing), (40, 3));
        assert_eq!(
            forwards.examples,
            [
                revisions[3].report_id,
                revisions[17].report_id,
                revisions[39].report_id
            ]
        );
        let comparison = reconcile::compare(&*log, &*tally, &e, &QUICK).unwrap();
        assert!(!comparison.is_exact());
        assert_eq!(comparison.markers.missing, 3);

        let mut told = Vec::new();
        let healed = heal::sweep_telling(&*log, &*tally, &e, 7, true, &mut |ids| {
            told.push(ids.to_vec())
        })
        .unwrap();
        assert_eq!((healed.missing, healed.restored), (3, 3));
        // Told page by page as they were restored, the newest in the first
        // page.
        assert_eq!(
            told,
            [
                vec![revisions[39].report_id],
                vec![revisions[17].report_id],
                vec![revisions[3].report_id]
            ]
        );
        assert_eq!(
            tally.snapshot(&e).unwrap().totals,
            expected,
            "slots {slots}"
        );
        // Once: a second sweep finds nothing and moves nothing.
        let again = heal::sweep(&*log, &*tally, &e, 7, true).unwrap();
        assert_eq!((again.missing, again.restored), (0, 0));
        assert_eq!(tally.snapshot(&e).unwrap().totals, expected);
        assert!(
            reconcile::compare(&*log, &*tally, &e, &QUICK)
                .unwrap()
                .is_exact()
        );
    }
}

/// While reports keep arriving every counter moves, yet a lost revision is
/// still reported: markers do not move.
#[test]
fn reconcile_reports_a_loss_while_every_counter_moves() {
    let log = Arc::new(MemoryLog::new());
    let tally = Arc::new(MemoryTally::new());
    let engine = Engine::new(log.clone(), tally.clone());
    let e = unique_election("moving");
    let revisions = counted(&engine, &log, &e, 10);
    tally.lose(&revisions[4]);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (engine, e, stop) = (engine.clone(), e.clone(), Arc::clone(&stop));
        let started = Arc::clone(&started);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                started.store(n, Ordering::SeqCst);
                // Every city and party moves with every report.
                let r = report(
                    &e,
                    &format!("N{n}"),
                    &format!("c{}", n % 5),
                    1,
                    &[("a", 1), ("b", 1), ("c", 1)],
                );
                engine.submit(&[r]).unwrap();
            }
            n
        })
    };
    // Compare while the writer is already moving every counter (on a busy
    // machine its thread may start late).
    while started.load(Ordering::SeqCst) < 3 {
        std::thread::yield_now();
    }
    let comparison = reconcile::compare(&*log, &*tally, &e, &QUICK).unwrap();
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(written > 0);
    assert_eq!(comparison.markers.missing, 1, "{comparison:?}");
    assert!(!comparison.is_exact());

    heal::sweep(&*log, &*tally, &e, 100, true).unwrap();
    assert_eq!(
        tally.snapshot(&e).unwrap().totals,
        engine.expected_totals(&e).unwrap()
    );
}

/// A pending revision is not counted yet: it is the reprocessor's to apply,
/// not a loss.
#[test]
fn pending_revisions_are_not_losses() {
    let log = Arc::new(MemoryLog::new());
    let tally = Arc::new(MemoryTally::new());
    let e = unique_election("pending");
    let answers = log
        .record(&[report(&e, "B1", "york", 1, &[("a", 1)])])
        .unwrap();
    assert!(matches!(answers[0], Recorded::Fresh(_)));
    let found = heal::sweep(&*log, &*tally, &e, 10, true).unwrap();
    assert_eq!((found.checked, found.missing, found.restored), (0, 0, 0));
    assert!(tally.snapshot(&e).unwrap().totals.is_empty());
}
