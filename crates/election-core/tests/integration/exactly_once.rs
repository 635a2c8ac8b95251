//! Property tests of I2 (exactly once) and I3 (nothing lost).
//!
//! Random election nights run against the in-memory stores: submits with
//! identical replays, conflicting posts and revisions in any order, from two
//! engines ("workers") sharing the stores, with a crash injected before or
//! after any step (record, apply — including half-way through a revision's
//! marker groups — mark counted, claim, release), leases that expire while a
//! worker is still busy. After the night, the stores are drained the way the
//! reprocessor drains them; then every counter must equal the sum of every
//! ballot box's latest recorded revision, and every acknowledged report must
//! be in the log.
//!
//! The revision rules are checked against an independent model written here,
//! not against `rules::decide`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use election_core::contract::{report, unique_election};
use election_core::memory::Step;
use election_core::memory::{Faults, ManualClock, MemoryLog, MemoryTally, When};
use election_core::{
    Claim, Counter, ElectionId, Engine, Outcome, PayloadHash, Report, ReportLog, Tally, Totals,
};
use proptest::prelude::*;

const BOXES: [(&str, &str); 5] = [
    ("B0", "york"),
    ("B1", "york"),
    ("B2", "leeds"),
    ("B3", "leeds"),
    ("B4", "hull"),
];
const PARTIES: [&str; 3] = ["a", "b", "c"];

/// One report as generated: which box, which revision, and its votes.
#[derive(Clone, Debug)]
struct Draft {
    box_index: usize,
    revision: u32,
    /// Post it under the wrong city (a conflict once the box has reported).
    wrong_city: bool,
    votes: Vec<u32>,
}

impl Draft {
    fn build(&self, election: &ElectionId) -> Report {
        let (ballot_box, city) = BOXES[self.box_index];
        let city = if self.wrong_city { "elsewhere" } else { city };
        let votes: Vec<(&str, u32)> = PARTIES
            .iter()
            .zip(&self.votes)
            .filter(|(_, n)| **n != u32::MAX)
            .map(|(p, n)| (*p, *n))
            .collect();
        report(election, ballot_box, city, self.revision, &votes)
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Worker `worker` submits a batch.
    Submit { worker: usize, batch: Vec<Draft> },
    /// Repeat the last batch byte for byte (a client retrying).
    Retry { worker: usize },
    /// Worker `worker` runs one reprocessor round.
    Drain { worker: usize, limit: usize },
    /// Arm a one-shot crash for the next time `step` runs.
    Crash { step: Step, when: When },
    /// Let leases and pending ages run out.
    Wait,
}

fn draft() -> impl Strategy<Value = Draft> {
    (
        0..BOXES.len(),
        1..=4u32,
        prop::bool::weighted(0.05),
        // u32::MAX marks a party absent from the report (at least one stays).
        prop::collection::vec(prop_oneof![4 => 0..50u32, 1 => Just(u32::MAX)], 3),
    )
        .prop_map(|(box_index, revision, wrong_city, mut votes)| {
            if votes.iter().all(|&n| n == u32::MAX) {
                votes[0] = 1;
            }
            // Small vote ranges make identical replays of a revision likely.
            Draft {
                box_index,
                revision,
                wrong_city,
                votes,
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    let step = prop_oneof![
        Just(Step::Record),
        Just(Step::Apply),
        Just(Step::MarkCounted),
        Just(Step::Claim),
        Just(Step::Release),
    ];
    let when = prop_oneof![Just(When::Before), Just(When::After), Just(When::Midway)];
    prop_oneof![
        6 => (0..2usize, prop::collection::vec(draft(), 1..6))
            .prop_map(|(worker, batch)| Op::Submit { worker, batch }),
        2 => (0..2usize).prop_map(|worker| Op::Retry { worker }),
        2 => (0..2usize, 1..6usize).prop_map(|(worker, limit)| Op::Drain { worker, limit }),
        3 => (step, when).prop_map(|(step, when)| Op::Crash { step, when }),
        1 => Just(Op::Wait),
    ]
}

/// What the model knows of one ballot box: its city and every recorded
/// revision's content and votes.
#[derive(Default)]
struct ModelBox {
    city: Option<String>,
    revisions: BTreeMap<u32, (PayloadHash, BTreeMap<String, u32>)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Fresh,
    Replay,
    Conflict,
}

/// An independent statement of docs/contract.md §2.
fn model_decide(model: &HashMap<String, ModelBox>, report: &Report) -> Expect {
    let Some(state) = model.get(report.ballot_box().as_str()) else {
        return Expect::Fresh;
    };
    let revision = report.revision().get();
    if let Some((hash, _)) = state.revisions.get(&revision) {
        return if *hash == report.payload_hash() {
            Expect::Replay
        } else {
            Expect::Conflict
        };
    }
    if state
        .city
        .as_deref()
        .is_some_and(|c| c != report.city().as_str())
    {
        return Expect::Conflict;
    }
    if state
        .revisions
        .keys()
        .next_back()
        .is_some_and(|&latest| latest > revision)
    {
        return Expect::Conflict;
    }
    Expect::Fresh
}

fn model_record(model: &mut HashMap<String, ModelBox>, report: &Report) {
    let state = model.entry(report.ballot_box().to_string()).or_default();
    state.city = Some(report.city().to_string());
    let votes = report
        .votes()
        .iter()
        .map(|(p, n)| (p.to_string(), n))
        .collect();
    state
        .revisions
        .insert(report.revision().get(), (report.payload_hash(), votes));
}

/// The counters the model's latest revisions add up to.
fn model_totals(model: &HashMap<String, ModelBox>) -> Totals {
    let mut totals = Totals::new();
    for state in model.values() {
        let Some((_, votes)) = state.revisions.values().next_back() else {
            continue;
        };
        let city = state.city.as_deref().unwrap();
        for (party, &n) in votes {
            let party = party.parse().unwrap();
            totals.add(Counter::National(Clone::clone(&party)), i64::from(n));
            totals.add(Counter::City(city.parse().unwrap(), party), i64::from(n));
        }
    }
    totals
}

/// Drops zero counters so totals compare by value.
fn nonzero(totals: &Totals) -> Vec<(Counter, i64)> {
    totals
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(c, n)| (c.clone(), n))
        .collect()
}

fn run_night(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let faults = Faults::new();
    let clock = ManualClock::new();
    let log = Arc::new(MemoryLog::with(Arc::clone(&faults), Arc::clone(&clock)));
    // 4 slots: revisions span several marker groups, so a crash can leave one
    // half-applied, as a Cluster node failure would.
    let tally = Arc::new(MemoryTally::with(Arc::clone(&faults), 4));
    let workers = [
        Engine::new(log.clone(), tally.clone()),
        Engine::new(log.clone(), tally.clone()),
    ];
    let election = unique_election("prop");
    let mut model: HashMap<String, ModelBox> = HashMap::new();
    let mut acknowledged: Vec<Report> = Vec::new();
    let mut last_batch: Vec<Report> = Vec::new();
    let mut record_faults: std::collections::VecDeque<When> = Default::default();
    let claim = |limit| Claim {
        limit,
        pending_for: Duration::ZERO,
        lease: Duration::from_secs(30),
    };

    for op in ops {
        match op {
            Op::Crash { step, when } => {
                if step == Step::Record {
                    record_faults.push_back(when);
                }
                faults.arm(step, when);
            }
            Op::Wait => clock.advance(Duration::from_secs(60)),
            Op::Drain { worker, limit } => {
                // A failed round (crash while claiming) loses nothing: the
                // claimed revisions come back when their lease runs out.
                let _ = workers[worker].count_pending(&claim(limit));
            }
            Op::Submit { .. } | Op::Retry { .. } => {
                let (worker, batch) = match op {
                    Op::Submit { worker, batch } => {
                        (worker, batch.iter().map(|d| d.build(&election)).collect())
                    }
                    Op::Retry { worker } => (worker, last_batch.clone()),
                    _ => unreachable!(),
                };
                if batch.is_empty() {
                    continue;
                }
                // What the model expects, deciding in batch order.
                let mut expected = Vec::new();
                let mut after: HashMap<String, ModelBox> = HashMap::new();
                for report in &batch {
                    let key = report.ballot_box().to_string();
                    let view = after.remove(&key).or_else(|| {
                        model.get(&key).map(|b| ModelBox {
                            city: b.city.clone(),
                            revisions: b.revisions.clone(),
                        })
                    });
                    let mut one = HashMap::new();
                    if let Some(view) = view {
                        one.insert(key.clone(), view);
                    }
                    let expect = model_decide(&one, report);
                    if expect == Expect::Fresh {
                        model_record(&mut one, report);
                    }
                    if let Some(view) = one.remove(&key) {
                        after.insert(key, view);
                    }
                    expected.push(expect);
                }
                let fault = record_faults.pop_front();
                match workers[worker].submit(&batch) {
                    Ok(outcomes) => {
                        prop_assert_eq!(outcomes.len(), batch.len());
                        for ((report, outcome), expect) in
                            batch.iter().zip(&outcomes).zip(&expected)
                        {
                            let kind = match outcome {
                                Outcome::Counted(_) | Outcome::Pending(_) => Expect::Fresh,
                                Outcome::Replay { .. } => Expect::Replay,
                                Outcome::Conflict(_) => Expect::Conflict,
                                Outcome::Failed { error, .. } => {
                                    return Err(TestCaseError::fail(format!(
                                        "no report fails alone here: {error}"
                                    )));
                                }
                            };
                            prop_assert_eq!(&kind, expect, "{:?}", report);
                            if kind != Expect::Conflict {
                                acknowledged.push(report.clone());
                            }
                        }
                        for (key, view) in after {
                            model.insert(key, view);
                        }
                    }
                    Err(error) => {
                        prop_assert!(error.is_unavailable(), "{error}");
                        // A crash after the commit: recorded, but the client
                        // never heard. Before it: nothing recorded.
                        if fault == Some(When::After) || fault == Some(When::Midway) {
                            for (key, view) in after {
                                model.insert(key, view);
                            }
                        }
                    }
                }
                last_batch = batch;
            }
        }
    }

    // The reprocessor drains what is left, with no more crashes.
    faults.clear();
    clock.advance(Duration::from_secs(3600));
    for _ in 0..1000 {
        if workers[0].count_pending(&claim(7))?.claimed == 0 {
            break;
        }
    }
    prop_assert_eq!(
        log.pending_count(&election)?,
        0,
        "I3: nothing stays pending"
    );

    // I2: the counters are the sum of every box's latest revision; the log
    // agrees with the model and with the tally.
    let snapshot = tally.snapshot(&election)?;
    let expected = model_totals(&model);
    prop_assert_eq!(nonzero(&snapshot.totals), nonzero(&expected));
    prop_assert_eq!(nonzero(&log.counted_totals(&election)?), nonzero(&expected));
    let reported = model.values().filter(|b| !b.revisions.is_empty()).count() as u64;
    prop_assert_eq!(snapshot.ballot_boxes_reported, reported);

    // Every acknowledged report is in the log.
    let recorded = log.revisions(&election);
    for report in &acknowledged {
        prop_assert!(
            recorded
                .iter()
                .any(|(_, b, r, counted)| b == report.ballot_box()
                    && *r == report.revision()
                    && *counted),
            "acknowledged {:?} revision {} is missing",
            report.ballot_box(),
            report.revision()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1500,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn crashes_and_retries_never_lose_or_double_count(ops in prop::collection::vec(op(), 1..40)) {
        run_night(ops)?;
    }
}

/// Real threads: four workers submit overlapping batches (the same reports
/// posted concurrently, revisions out of order) while two reprocessors with
/// zero lease claim everything pending at the same time as ingest counts it.
/// Markers alone must keep every counter exact.
#[test]
fn racing_workers_count_each_revision_once() {
    for round in 0..20 {
        let log = Arc::new(MemoryLog::new());
        let tally = Arc::new(MemoryTally::with(Faults::new(), 4));
        let election = unique_election("race");
        let reports: Vec<Report> = (0..40u32)
            .flat_map(|i| {
                let ballot_box = format!("B{}", i % 10);
                let city = if i % 10 < 5 { "york" } else { "leeds" };
                let revision = i / 10 + 1;
                let e = election.clone();
                std::iter::once(report(
                    &e,
                    &ballot_box,
                    city,
                    revision,
                    &[("a", revision * 10 + i % 10), ("b", round)],
                ))
            })
            .collect();
        let barrier = Arc::new(Barrier::new(6));
        let mut handles = Vec::new();
        for worker in 0..4 {
            let engine = Engine::new(log.clone(), tally.clone());
            let mut mine = reports.clone();
            if worker % 2 == 1 {
                mine.reverse();
            }
            let barrier = Arc::clone(&barrier);
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                for chunk in mine.chunks(3) {
                    engine.submit(chunk).unwrap();
                }
            }));
        }
        for _ in 0..2 {
            let engine = Engine::new(log.clone(), tally.clone());
            let barrier = Arc::clone(&barrier);
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                let greedy = Claim {
                    limit: 1000,
                    pending_for: Duration::ZERO,
                    lease: Duration::ZERO,
                };
                for _ in 0..50 {
                    engine.count_pending(&greedy).unwrap();
                }
            }));
        }
        for handle in handles {
            handle.join().unwrap();
        }
        let engine = Engine::new(log.clone(), tally.clone());
        while engine
            .count_pending(&Claim {
                limit: 100,
                pending_for: Duration::ZERO,
                lease: Duration::from_secs(60),
            })
            .unwrap()
            .claimed
            > 0
        {}
        // Each box ends at its latest accepted revision, whichever won.
        let mut expected = Totals::new();
        for (city, votes) in log.latest_votes(&election) {
            for (party, n) in votes.iter() {
                expected.add(Counter::National(party.clone()), i64::from(n));
                expected.add(Counter::City(city.clone(), party.clone()), i64::from(n));
            }
        }
        let snapshot = tally.snapshot(&election).unwrap();
        assert_eq!(
            nonzero(&snapshot.totals),
            nonzero(&expected),
            "round {round}"
        );
        assert_eq!(
            nonzero(&log.counted_totals(&election).unwrap()),
            nonzero(&expected)
        );
        assert_eq!(snapshot.ballot_boxes_reported, 10);
    }
}

/// The seed's recipe ("if the marker is absent: INCRBY, then SET marker")
/// double counts after a crash between its two steps. The engine's path,
/// with the same crash, does not. This pins the difference down.
#[test]
fn a_crash_between_increment_and_marker_does_not_double_count() {
    let faults = Faults::new();
    let clock = ManualClock::new();
    let log = Arc::new(MemoryLog::with(faults.clone(), clock.clone()));
    let tally = Arc::new(MemoryTally::with(faults.clone(), 1));
    let engine = Engine::new(log.clone(), tally.clone());
    let election = unique_election("seed");
    let r1 = report(&election, "BB123", "london", 1, &[("labour", 200)]);
    // The counters move, then the process dies before anything else.
    faults.arm(Step::Apply, When::After);
    let outcome = engine.submit(&[r1]).unwrap();
    assert!(matches!(outcome[0], Outcome::Pending(_)));
    // The reprocessor re-applies: the marker set in the same step stops it.
    clock.advance(Duration::from_secs(60));
    let drained = engine
        .count_pending(&Claim {
            limit: 10,
            pending_for: Duration::from_secs(30),
            lease: Duration::from_secs(30),
        })
        .unwrap();
    assert_eq!(drained.counted, 1);
    let snapshot = tally.snapshot(&election).unwrap();
    assert_eq!(snapshot.totals.national().values().sum::<i64>(), 200);
    assert_eq!(tally.marker_count(), 1);
}

#[test]
fn reports_left_pending_come_with_why_counting_failed() {
    let faults = Faults::new();
    let engine = Engine::new(
        Arc::new(MemoryLog::new()),
        Arc::new(MemoryTally::with(Arc::clone(&faults), 4)),
    );
    let election = unique_election("why");
    let reports = election_core::contract::seed_reports(&election);

    faults.arm(Step::Apply, When::Before);
    let (outcomes, why) = engine.submit_explained(&reports).unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Pending(_))));
    let why = why.expect("a reason when reports are left pending");
    assert!(
        why.contains("injected fault at Apply"),
        "says what failed: {why}"
    );

    // Counted: no reason.
    let more = election_core::contract::seed_reports(&unique_election("why"));
    let (outcomes, why) = engine.submit_explained(&more).unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))));
    assert_eq!(why, None);
}
