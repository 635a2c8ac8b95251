//! Comparing the tally with the log, and making the tally exact again.
//!
//! [`compare`] says, for every counter the log implies, whether the tally
//! holds what the counted revisions add up to. [`repair`] makes it so, in two
//! phases, also while ingest and reprocessors keep recording and counting:
//!
//! [`compare`] also checks that every counted revision still has its
//! markers ([`crate::heal::sweep`]): unlike the counters, that holds at any
//! load, so a loss is reported even while every counter keeps moving.
//!
//! - **Phase A** applies every counted revision again through
//!   [`Tally::apply`], in id order, a page at a time. The markers make every
//!   part the tally still has a no-op and restore exactly what it lost *with
//!   its markers*: a `FLUSHALL`, a restart without persistence, a failover
//!   that lost unreplicated writes. (A marker and its counters are written by
//!   one script in one slot, so they are lost together.) Pending revisions
//!   are left to the reprocessor (`election-reprocessor run`), which applies
//!   and marks them as it always does; until then their counters are "in
//!   flight" below.
//! - **Phase B** rewrites a counter that drifted some other way (someone
//!   `SET` or `INCRBY` it by hand), with [`Tally::guarded_add`], only when
//!   two consecutive rounds of observation prove that no revision can be in
//!   flight for it. Each round reads, in this order, the log's
//!   [`ReportLog::audit`] (one snapshot) and then the tally.
//!
//! # Why a guarded rewrite loses no concurrent increment
//!
//! Write `P1, R1, P2, R2` for the log and tally reads of two consecutive
//! rounds and `F` for the guarded call. A counter `k` is rewritten only when
//! both rounds saw the same tally value `V`, the same expected value `E`,
//! the same number of recorded revisions touching `k`, and no pending
//! revision touching `k`; the call adds `E - V` only if `k` still holds `V`.
//! Revisions are applied only after their commit (ingest records, then
//! applies; the reprocessor claims what was committed), and marked counted
//! only after they were applied. So:
//!
//! 1. every revision counted at `P2` was applied before `P2`, and its
//!    difference is in `E`;
//! 2. a revision applied to `k` before `F` that is not counted at `P2` was
//!    not pending at `P2` either (no pending revision touches `k`), so it was
//!    committed, hence applied, after `P2`, i.e. after `R1`;
//! 3. a revision applied to `k` after `R1` that *is* counted at `P2` was
//!    either pending at `P1` (excluded) or committed after `P1` (then the
//!    count of revisions touching `k` would differ between `P1` and `P2`,
//!    also excluded);
//! 4. hence the revisions applied to `k` in `(R1, F]` are exactly those
//!    committed after `P2`, and the counter's value did not change over that
//!    interval (`R1` and `R2` read `V`, the guard checks `V` at `F`): their
//!    differences add up to 0, unless someone else wrote `k` in that very
//!    interval too;
//! 5. so the revisions applied to `k` up to `F` add up to exactly `E`, and
//!    setting `k` to `E` (adding `E - V`) removes the drift and nothing
//!    else. An increment applied after `R2` and before `F` changes the value,
//!    so the guard refuses (unless that increment is 0, which changes
//!    nothing); the next rounds see it and decide again.
//!
//! Reading the tally *before* the log would break step 2: a revision
//! committed and applied between the two reads would be in the tally but
//! not in `E`, and the rewrite would erase it.
//!
//! What the argument assumes: nothing but revisions writes `k` during the
//! two rounds and the call (a hand edit or a Redis data loss *during* the
//! repair is a new drift: run `repair` again), and one repair of an election
//! runs at a time (another repair's Phase A re-applying lost revisions is
//! such a write). A Phase B rewrite of a counter whose markers were lost
//! (possible only when a revision's counters were lost after Phase A passed
//! it) leaves it exact but without those markers; a later Phase A would then
//! count that revision again, and its Phase B would take it back out.
//!
//! # In flight
//!
//! [`compare`] classifies each counter with two consecutive rounds: a counter
//! touched by a revision pending at the first round, or by a revision
//! recorded between the two, is **in flight** ([`Verdict::Pending`],
//! [`Verdict::Moving`]): its value may legitimately differ from the counted
//! total at that instant, so it is not reported as drift. Any other counter
//! is [`Verdict::Exact`] or [`Verdict::Drift`], with the first round's
//! values; no revision touching it was committed between the two reads of
//! that round, so its difference is real.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::error::StoreError;
use crate::heal::{self, Sweep};
use crate::ids::ElectionId;
use crate::store::{Applied, Counter, LogAudit, ReportId, ReportLog, Tally, Totals};

/// How a reconcile runs. There is no `Default`: callers start from
/// [`Config::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Counted revisions read and applied per page in Phase A.
    pub page_size: usize,
    /// Most rounds of observation, per comparison and for Phase B (at least
    /// 2 are always made).
    pub max_rounds: u32,
    /// Pause between two rounds, so revisions in flight can land.
    pub round_interval: Duration,
}

impl Config {
    /// 500 revisions a page; up to 20 rounds, 150 ms apart.
    pub const DEFAULT: Config = Config {
        page_size: 500,
        max_rounds: 20,
        round_interval: Duration::from_millis(150),
    };
}

/// One round: the log's audit, then the tally's values of every counter the
/// audit names and every counter the tally knows of.
#[derive(Clone, Debug)]
pub struct Observation {
    /// Read first.
    pub audit: LogAudit,
    /// Read second.
    pub tally: Totals,
}

impl Observation {
    /// Every counter either side knows.
    fn counters(&self) -> BTreeSet<&Counter> {
        self.audit
            .counted
            .iter()
            .map(|(counter, _)| counter)
            .chain(self.audit.revisions_per_counter.keys())
            .chain(&self.audit.pending_counters)
            .chain(self.tally.iter().map(|(counter, _)| counter))
            .collect()
    }
}

/// Reads the log, then the tally (the order matters: see the module docs).
pub fn observe(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    election: &ElectionId,
) -> Result<Observation, StoreError> {
    let audit = log.audit(election)?;
    let mut values = tally.snapshot(election)?.totals;
    // Counters the log implies but the tally's indexes did not lead to (lost,
    // or never written): read them by name.
    let unseen: Vec<Counter> = audit
        .counted
        .iter()
        .map(|(counter, _)| counter)
        .chain(audit.revisions_per_counter.keys())
        .filter(|counter| !values.contains(counter))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !unseen.is_empty() {
        for (counter, n) in tally.counters(election, &unseen)?.iter() {
            values.add(counter.clone(), n);
        }
    }
    Ok(Observation {
        audit,
        tally: values,
    })
}

/// What a comparison concluded about one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The tally holds what the counted revisions add up to.
    Exact,
    /// It does not, and no revision in flight explains it.
    Drift,
    /// In flight: a pending revision touches it; the reprocessor will count
    /// it.
    Pending,
    /// In flight: a revision touching it was recorded during the comparison
    /// (ingest is counting right now).
    Moving,
}

impl Verdict {
    /// [`Verdict::Pending`] or [`Verdict::Moving`].
    pub fn is_in_flight(self) -> bool {
        matches!(self, Verdict::Pending | Verdict::Moving)
    }
}

/// One counter compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterCheck {
    /// Which counter.
    pub counter: Counter,
    /// What the tally held (absent: 0).
    pub tally: i64,
    /// What the counted revisions add up to.
    pub expected: i64,
    /// The conclusion.
    pub verdict: Verdict,
}

impl CounterCheck {
    /// `tally - expected`: positive when the tally holds too much.
    pub fn difference(&self) -> i64 {
        self.tally - self.expected
    }
}

/// The result of [`compare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// Every counter the log implies or the tally holds, in counter order
    /// (national first).
    pub checks: Vec<CounterCheck>,
    /// Revisions of the election pending at the first of the two rounds.
    pub pending_revisions: u64,
    /// Rounds of observation made.
    pub rounds: u32,
    /// The markers of every counted revision, checked after the rounds: a
    /// counted revision missing one was lost by the tally, whatever the
    /// counters show while they move (see `crate::heal`).
    pub markers: Sweep,
}

impl Comparison {
    /// The counters that drifted.
    pub fn drifted(&self) -> impl Iterator<Item = &CounterCheck> + '_ {
        self.checks.iter().filter(|c| c.verdict == Verdict::Drift)
    }

    /// The counters in flight.
    pub fn in_flight(&self) -> impl Iterator<Item = &CounterCheck> + '_ {
        self.checks.iter().filter(|c| c.verdict.is_in_flight())
    }

    /// How many counters are exact.
    pub fn exact(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Exact)
            .count()
    }

    /// True when no counter drifted (counters in flight are not drift) and
    /// every counted revision has its markers.
    pub fn is_exact(&self) -> bool {
        self.drifted().next().is_none() && self.markers.missing == 0
    }
}

/// Classifies every counter of `first` using `second` (the next round) to
/// tell which revisions were recorded in between.
pub fn classify(first: &Observation, second: &Observation) -> Vec<CounterCheck> {
    let counters: BTreeSet<&Counter> = first
        .counters()
        .union(&second.counters())
        .copied()
        .collect();
    counters
        .into_iter()
        .map(|counter| {
            let tally = first.tally.get(counter);
            let expected = first.audit.counted.get(counter);
            let verdict = if first.audit.pending_counters.contains(counter) {
                Verdict::Pending
            } else if first.audit.revisions(counter) != second.audit.revisions(counter) {
                Verdict::Moving
            } else if tally == expected {
                Verdict::Exact
            } else {
                Verdict::Drift
            };
            CounterCheck {
                counter: counter.clone(),
                tally,
                expected,
                verdict,
            }
        })
        .collect()
}

/// Compares the tally with the log for `election`: rounds of observation
/// until no counter is moving (or `config.max_rounds`), then the verdicts of
/// the last two.
pub fn compare(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    election: &ElectionId,
    config: &Config,
) -> Result<Comparison, StoreError> {
    let mut first = observe(log, tally, election)?;
    let mut rounds = 1;
    loop {
        std::thread::sleep(config.round_interval);
        let second = observe(log, tally, election)?;
        rounds += 1;
        let checks = classify(&first, &second);
        let moving = checks.iter().any(|c| c.verdict == Verdict::Moving);
        if !moving || rounds >= config.max_rounds.max(2) {
            let markers = heal::sweep(log, tally, election, config.page_size, false)?;
            return Ok(Comparison {
                checks,
                pending_revisions: first.audit.pending,
                rounds,
                markers,
            });
        }
        first = second;
    }
}

/// One counter rewritten by Phase B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    /// Which counter.
    pub counter: Counter,
    /// The value it held, twice in a row and at the rewrite.
    pub observed: i64,
    /// The value it was given.
    pub expected: i64,
}

/// The result of [`repair`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Phase A: counted revisions applied again.
    pub reapplied: u64,
    /// Of those, how many moved counters (their markers had been lost).
    pub restored: u64,
    /// Phase B: counters rewritten.
    pub fixes: Vec<Fix>,
    /// Phase B: rewrites the guard refused because the counter moved after it
    /// was read (they were decided again in the next rounds).
    pub refused: u64,
    /// Phase B: rounds of observation made.
    pub rounds: u32,
    /// A comparison made after both phases.
    pub after: Comparison,
}

/// Makes the tally of `election` exact: Phase A, Phase B, then a final
/// [`compare`] (see the module docs). Safe while ingest and reprocessors
/// run; run one repair of an election at a time.
pub fn repair(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    election: &ElectionId,
    config: &Config,
) -> Result<Repair, StoreError> {
    let (reapplied, restored) = reapply_counted(log, tally, election, config.page_size)?;
    let mut fixes = Vec::new();
    let mut refused = 0;
    let mut first = observe(log, tally, election)?;
    let mut rounds = 1;
    while rounds < config.max_rounds.max(2) {
        std::thread::sleep(config.round_interval);
        let second = observe(log, tally, election)?;
        rounds += 1;
        let checks = classify(&first, &second);
        let fixable: Vec<&CounterCheck> = checks
            .iter()
            .filter(|c| c.verdict == Verdict::Drift && is_stable(c, &second))
            .collect();
        // Counters in flight may hide a drift: keep looking while there are
        // any (a revision pending for long, e.g. while Redis is down for its
        // slot, keeps Phase B going for its `max_rounds`).
        let unsettled = checks.iter().any(|c| c.verdict != Verdict::Exact);
        if fixable.is_empty() && !unsettled {
            break;
        }
        for check in fixable {
            let delta = check.expected - check.tally;
            if tally.guarded_add(election, &check.counter, check.tally, delta)? {
                fixes.push(Fix {
                    counter: check.counter.clone(),
                    observed: check.tally,
                    expected: check.expected,
                });
            } else {
                refused += 1;
            }
        }
        first = second;
    }
    let after = compare(log, tally, election, config)?;
    Ok(Repair {
        reapplied,
        restored,
        fixes,
        refused,
        rounds,
        after,
    })
}

/// Whether a counter that drifted in the first round shows the very same
/// picture in the second: same tally value, same expected value, nothing
/// pending. (The same number of revisions is what made it [`Verdict::Drift`]
/// rather than [`Verdict::Moving`].)
fn is_stable(check: &CounterCheck, second: &Observation) -> bool {
    !second.audit.pending_counters.contains(&check.counter)
        && second.tally.get(&check.counter) == check.tally
        && second.audit.counted.get(&check.counter) == check.expected
}

/// Phase A: applies every counted revision of `election` again, a page at a
/// time; returns how many were applied and how many of those moved counters.
pub fn reapply_counted(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    election: &ElectionId,
    page_size: usize,
) -> Result<(u64, u64), StoreError> {
    let mut after: Option<ReportId> = None;
    let (mut reapplied, mut restored) = (0, 0);
    loop {
        let page = log.counted_revisions(election, after, page_size.max(1))?;
        let Some(last) = page.last() else {
            return Ok((reapplied, restored));
        };
        after = Some(last.report_id);
        for answer in tally.apply(&page) {
            if answer? == Applied::Now {
                restored += 1;
            }
        }
        reapplied += page.len() as u64;
    }
}
