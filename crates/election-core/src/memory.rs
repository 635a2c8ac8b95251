//! In-memory stores with fault injection, for tests (ours and embedders').
//!
//! They keep the same contracts as the PostgreSQL and Redis adapters (the
//! shared contract suite in [`crate::contract`] checks all of them), and add
//! two things real servers cannot offer a test: a [`ManualClock`] so leases
//! expire on command, and [`Faults`] that make any step fail before or after
//! it takes effect, as a crash at that point would. A fault fails with the
//! ordinary [`StoreError::Unavailable`] (its source an [`InjectedFault`]),
//! so the production error enum carries nothing for tests.
//!
//! [`MemoryLog`] also answers the [`crate::History`] port from what it
//! recorded (`memory/history.rs`), so the read API can be tested without
//! PostgreSQL.
//!
//! [`MemoryTally`] can also mimic a Redis Cluster: with `slots > 1` a
//! revision's counters are split into groups by a hash of the counter, each
//! group applied atomically with its own marker, so a fault can leave a
//! revision half-applied exactly as a failing Cluster node would.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use self::history::wall_clock;
use crate::error::StoreError;
use crate::grid::{JournalCursor, Moved};
use crate::ids::{BallotBoxId, CityId, ElectionId, PartyId};
use crate::report::{Difference, Report, Revision, Votes};
use crate::rules::{self, BoxState, Decision, SameRevision};
use crate::store::{
    Applied, Claim, Counter, Counting, Incarnation, LogAudit, PendingStats, Recorded, ReportId,
    ReportLog, Snapshot, StuckReport, Tally, Totals,
};

/// Steps at which the in-memory stores can inject a fault, for crash tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// [`ReportLog::record`].
    Record,
    /// [`ReportLog::claim_pending`].
    Claim,
    /// [`ReportLog::mark_counted`].
    MarkCounted,
    /// [`ReportLog::release`].
    Release,
    /// [`Tally::apply`].
    Apply,
}

/// The source of the error an injected fault fails with: the step's answer
/// is [`StoreError::Unavailable`] (store `memory`), as a crash or a lost
/// connection at that step would be to a real store, and a test that wants
/// to know it was its own fault finds this by downcasting the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at {0:?}")]
pub struct InjectedFault(pub Step);

mod history;

/// When an armed fault strikes, relative to the step's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum When {
    /// Fail before anything happens.
    Before,
    /// Let the step take effect, then fail (the answer is lost).
    After,
    /// For [`Step::Apply`]: apply the first half of the batch's marker groups,
    /// then fail (a crash, or a Cluster node down, part way through).
    Midway,
}

/// One-shot faults shared by the in-memory stores.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<Vec<(Step, When)>>,
}

impl Faults {
    /// No faults armed.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// The next time `step` runs, fail at `when`.
    pub fn arm(&self, step: Step, when: When) {
        lock(&self.armed).push((step, when));
    }

    /// Disarms everything.
    pub fn clear(&self) {
        lock(&self.armed).clear();
    }

    /// Consumes the fault armed for `step`, if any, and says when it strikes.
    fn take(&self, step: Step) -> Option<When> {
        let mut armed = lock(&self.armed);
        let index = armed.iter().position(|(s, _)| *s == step)?;
        Some(armed.remove(index).1)
    }
}

/// The log's notion of "now" for pending ages and leases, in milliseconds.
#[derive(Debug)]
pub struct ManualClock {
    /// `None`: real time since the clock was made; `Some`: moved by hand.
    start: Option<Instant>,
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock at time 0 that only moves when [`ManualClock::advance`]d.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: None,
            millis: AtomicU64::new(0),
        })
    }

    /// A clock that follows real time (and can still be advanced).
    pub fn real() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Some(Instant::now()),
            millis: AtomicU64::new(0),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    fn now(&self) -> u64 {
        let real = self
            .start
            .map_or(0, |start| start.elapsed().as_millis() as u64);
        real + self.millis.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere in a test must not hide this store's state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn injected<T>(step: Step) -> Result<T, StoreError> {
    Err(StoreError::Unavailable {
        store: "memory",
        doing: format!("running step {step:?}"),
        source: Box::new(InjectedFault(step)),
    })
}

#[derive(Debug)]
struct Row {
    report: Report,
    difference: Difference,
    recorded_at: u64,
    /// The wall-clock time it was recorded, shared by its batch (the
    /// history port's `received_at`).
    received_at: DateTime<Utc>,
    counted: bool,
    attempts: u32,
    leased_until: Option<u64>,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct LogState {
    rows: Vec<Row>,
    by_revision: HashMap<(ElectionId, BallotBoxId, Revision), ReportId>,
    latest: HashMap<(ElectionId, BallotBoxId), ReportId>,
}

impl LogState {
    fn row(&self, id: ReportId) -> &Row {
        &self.rows[(id.0 - 1) as usize]
    }

    fn row_mut(&mut self, id: ReportId) -> &mut Row {
        &mut self.rows[(id.0 - 1) as usize]
    }

    fn counting(&self, id: ReportId) -> Counting {
        let row = self.row(id);
        Counting {
            report_id: id,
            election: row.report.election().clone(),
            ballot_box: row.report.ballot_box().clone(),
            city: row.report.city().clone(),
            revision: row.report.revision(),
            difference: row.difference.clone(),
        }
    }
}

/// The report log in memory. Cheap to clone handles via `Arc`.
#[derive(Debug)]
pub struct MemoryLog {
    state: Mutex<LogState>,
    faults: Arc<Faults>,
    clock: Arc<ManualClock>,
}

impl MemoryLog {
    /// An empty log with its own faults, on real time.
    pub fn new() -> MemoryLog {
        MemoryLog::with(Faults::new(), ManualClock::real())
    }

    /// An empty log using the given faults and clock.
    pub fn with(faults: Arc<Faults>, clock: Arc<ManualClock>) -> MemoryLog {
        MemoryLog {
            state: Mutex::new(LogState::default()),
            faults,
            clock,
        }
    }

    /// Every recorded revision of `election`, for tests' own bookkeeping:
    /// `(report id, ballot box, revision, counted)`.
    pub fn revisions(&self, election: &ElectionId) -> Vec<(ReportId, BallotBoxId, Revision, bool)> {
        let state = lock(&self.state);
        state
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.report.election() == election)
            .map(|(i, row)| {
                (
                    ReportId(i as i64 + 1),
                    row.report.ballot_box().clone(),
                    row.report.revision(),
                    row.counted,
                )
            })
            .collect()
    }

    /// The latest recorded votes of every ballot box of `election`, with its
    /// city.
    pub fn latest_votes(&self, election: &ElectionId) -> Vec<(CityId, Votes)> {
        let state = lock(&self.state);
        state
            .latest
            .iter()
            .filter(|((e, _), _)| e == election)
            .map(|(_, &id)| {
                let row = state.row(id);
                (row.report.city().clone(), row.report.votes().clone())
            })
            .collect()
    }

    /// How many times revision `id` was claimed.
    pub fn attempts(&self, id: ReportId) -> u32 {
        lock(&self.state).row(id).attempts
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog::new()
    }
}

impl ReportLog for MemoryLog {
    fn record(&self, reports: &[Report]) -> Result<Vec<Recorded>, StoreError> {
        let fault = self.faults.take(Step::Record);
        if fault == Some(When::Before) {
            return injected(Step::Record);
        }
        // This log stores no definitions, so a report checked against one
        // was checked against a definition it does not hold.
        if let Some(report) = reports.iter().find(|r| r.checked_against().is_some()) {
            return Err(StoreError::DefinitionChanged {
                election: report.election().clone(),
            });
        }
        let mut state = lock(&self.state);
        let now = self.clock.now();
        let received_at = wall_clock();
        let mut answers = Vec::with_capacity(reports.len());
        for report in reports {
            let box_key = (report.election().clone(), report.ballot_box().clone());
            let box_state = state.latest.get(&box_key).map(|&id| {
                let row = state.row(id);
                BoxState {
                    city: row.report.city().clone(),
                    latest_revision: row.report.revision(),
                    latest_votes: row.report.votes().clone(),
                }
            });
            let revision_key = (box_key.0.clone(), box_key.1.clone(), report.revision());
            let same = state.by_revision.get(&revision_key).map(|&id| {
                let row = state.row(id);
                SameRevision {
                    report_id: id,
                    payload_hash: row.report.payload_hash(),
                    counted: row.counted,
                }
            });
            let answer = match rules::decide(report, box_state.as_ref(), same.as_ref()) {
                Decision::Record(difference) => {
                    state.rows.push(Row {
                        report: report.clone(),
                        difference,
                        recorded_at: now,
                        received_at,
                        counted: false,
                        attempts: 0,
                        leased_until: None,
                        last_error: None,
                    });
                    let id = ReportId(state.rows.len() as i64);
                    state.by_revision.insert(revision_key, id);
                    state.latest.insert(box_key, id);
                    Recorded::Fresh(state.counting(id))
                }
                Decision::Replay(same) => Recorded::Replay {
                    report_id: same.report_id,
                    counted: same.counted,
                },
                Decision::Conflict(conflict) => Recorded::Conflict(conflict),
            };
            answers.push(answer);
        }
        if fault.is_some() {
            return injected(Step::Record);
        }
        Ok(answers)
    }

    fn claim_pending(&self, claim: &Claim) -> Result<Vec<Counting>, StoreError> {
        let fault = self.faults.take(Step::Claim);
        if fault == Some(When::Before) {
            return injected(Step::Claim);
        }
        let mut state = lock(&self.state);
        let now = self.clock.now();
        let pending_for = claim.pending_for.as_millis() as u64;
        let lease = claim.lease.as_millis() as u64;
        let ids: Vec<ReportId> = state
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| {
                !row.counted
                    && row.recorded_at + pending_for <= now
                    && row.leased_until.is_none_or(|until| until <= now)
            })
            .map(|(i, _)| ReportId(i as i64 + 1))
            .take(claim.limit)
            .collect();
        let mut batch = Vec::with_capacity(ids.len());
        for id in ids {
            let row = state.row_mut(id);
            row.attempts += 1;
            row.leased_until = Some(now + lease);
            batch.push(state.counting(id));
        }
        if fault.is_some() {
            return injected(Step::Claim);
        }
        Ok(batch)
    }

    fn mark_counted(&self, ids: &[ReportId]) -> Result<(), StoreError> {
        let fault = self.faults.take(Step::MarkCounted);
        if fault == Some(When::Before) {
            return injected(Step::MarkCounted);
        }
        let mut state = lock(&self.state);
        for &id in ids {
            let row = state.row_mut(id);
            row.counted = true;
            row.leased_until = None;
        }
        if fault.is_some() {
            return injected(Step::MarkCounted);
        }
        Ok(())
    }

    fn release(&self, ids: &[ReportId], error: &str) -> Result<(), StoreError> {
        let fault = self.faults.take(Step::Release);
        if fault == Some(When::Before) {
            return injected(Step::Release);
        }
        let mut state = lock(&self.state);
        for &id in ids {
            let row = state.row_mut(id);
            if !row.counted {
                row.leased_until = None;
                row.last_error = Some(error.to_owned());
            }
        }
        if fault.is_some() {
            return injected(Step::Release);
        }
        Ok(())
    }

    fn counted_totals(&self, election: &ElectionId) -> Result<Totals, StoreError> {
        let state = lock(&self.state);
        let mut totals = Totals::new();
        for row in state
            .rows
            .iter()
            .filter(|row| row.counted && row.report.election() == election)
        {
            totals.add_difference(row.report.city(), &row.difference);
        }
        Ok(totals)
    }

    fn pending_count(&self, election: &ElectionId) -> Result<u64, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .rows
            .iter()
            .filter(|row| !row.counted && row.report.election() == election)
            .count() as u64)
    }

    fn elections(&self) -> Result<Vec<ElectionId>, StoreError> {
        let state = lock(&self.state);
        let elections: BTreeSet<ElectionId> = state
            .rows
            .iter()
            .map(|row| row.report.election().clone())
            .collect();
        Ok(elections.into_iter().collect())
    }

    fn counted_revisions(
        &self,
        election: &ElectionId,
        after: Option<ReportId>,
        limit: usize,
    ) -> Result<Vec<Counting>, StoreError> {
        let state = lock(&self.state);
        let first = after.map_or(0, |id| usize::try_from(id.0).unwrap_or(0));
        Ok(state
            .rows
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, row)| row.counted && row.report.election() == election)
            .take(limit)
            .map(|(i, _)| state.counting(ReportId(i as i64 + 1)))
            .collect())
    }

    fn counted_revisions_newest_first(
        &self,
        election: &ElectionId,
        before: Option<ReportId>,
        limit: usize,
    ) -> Result<Option<Vec<Counting>>, StoreError> {
        let state = lock(&self.state);
        // Ids are positions + 1: the rows below `before` are its first
        // `before - 1`.
        let below = before.map_or(state.rows.len(), |id| {
            usize::try_from(id.0.saturating_sub(1)).unwrap_or(0)
        });
        Ok(Some(
            state
                .rows
                .iter()
                .enumerate()
                .take(below)
                .rev()
                .filter(|(_, row)| row.counted && row.report.election() == election)
                .take(limit)
                .map(|(i, _)| state.counting(ReportId(i as i64 + 1)))
                .collect(),
        ))
    }

    fn audit(&self, election: &ElectionId) -> Result<LogAudit, StoreError> {
        // One lock: one snapshot.
        let state = lock(&self.state);
        let mut audit = LogAudit::default();
        for row in state
            .rows
            .iter()
            .filter(|row| row.report.election() == election)
        {
            let city = row.report.city();
            for (party, n) in row.difference.iter() {
                for counter in [
                    Counter::National(party.clone()),
                    Counter::City(city.clone(), party.clone()),
                ] {
                    *audit
                        .revisions_per_counter
                        .entry(counter.clone())
                        .or_insert(0) += 1;
                    if row.counted {
                        audit.counted.add(counter, n);
                    } else {
                        audit.pending_counters.insert(counter);
                    }
                }
            }
            if !row.counted {
                audit.pending += 1;
            }
        }
        Ok(audit)
    }

    fn pending_stats(&self, stuck_attempts: u32) -> Result<PendingStats, StoreError> {
        let state = lock(&self.state);
        let now = self.clock.now();
        let mut stats = PendingStats::default();
        for (i, row) in state.rows.iter().enumerate() {
            if row.counted {
                continue;
            }
            stats.pending += 1;
            let age = Duration::from_millis(now.saturating_sub(row.recorded_at));
            stats.oldest_age = Some(stats.oldest_age.map_or(age, |oldest| oldest.max(age)));
            if row.attempts >= stuck_attempts {
                stats.stuck += 1;
                if stats.stuck_examples.len() < PendingStats::STUCK_EXAMPLES {
                    stats.stuck_examples.push(StuckReport {
                        report_id: ReportId(i as i64 + 1),
                        election: row.report.election().clone(),
                        ballot_box: row.report.ballot_box().clone(),
                        revision: row.report.revision(),
                        attempts: row.attempts,
                        last_error: row.last_error.clone(),
                    });
                }
            }
        }
        Ok(stats)
    }
}

/// A marker: this revision's group of counters has been applied.
type Marker = (ElectionId, BallotBoxId, Revision, Counter);

#[derive(Debug, Default)]
struct TallyState {
    counters: HashMap<(ElectionId, Counter), i64>,
    markers: HashSet<Marker>,
    parties: HashMap<ElectionId, BTreeSet<PartyId>>,
    city_boxes: HashMap<(ElectionId, CityId), BTreeSet<BallotBoxId>>,
    boxes: HashMap<ElectionId, BTreeSet<BallotBoxId>>,
    /// The change journal per election: its position, and the position at
    /// which each city last moved (as the Redis adapter keeps it).
    journal: HashMap<ElectionId, (u64, BTreeMap<CityId, u64>)>,
}

/// The live counters in memory.
#[derive(Debug)]
pub struct MemoryTally {
    state: Mutex<TallyState>,
    faults: Arc<Faults>,
    slots: u64,
    /// How many times [`MemoryTally::flush`] restarted it: its
    /// [`Tally::incarnation`].
    restarts: AtomicU64,
}

impl MemoryTally {
    /// A tally that applies each revision in one atomic step (like standalone
    /// Redis), with its own faults.
    pub fn new() -> MemoryTally {
        MemoryTally::with(Faults::new(), 1)
    }

    /// A tally using `faults`, whose counters fall into `slots` groups (1 for
    /// standalone-like, more for Cluster-like partial application).
    pub fn with(faults: Arc<Faults>, slots: u64) -> MemoryTally {
        MemoryTally {
            state: Mutex::new(TallyState::default()),
            faults,
            slots: slots.max(1),
            restarts: AtomicU64::new(0),
        }
    }

    /// Loses every counter and marker, as a Redis restarted without
    /// persistence would: its [`Tally::incarnation`] changes too.
    pub fn flush(&self) {
        *lock(&self.state) = TallyState::default();
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// Loses one applied revision, markers and counters together, as a
    /// failover to a replica that never received it would.
    pub fn lose(&self, counting: &Counting) {
        let groups = self.groups(counting);
        let mut state = lock(&self.state);
        for group in groups {
            let marker = (
                counting.election.clone(),
                counting.ballot_box.clone(),
                counting.revision,
                group[0].0.clone(),
            );
            if state.markers.remove(&marker) {
                for (counter, n) in group {
                    *state
                        .counters
                        .entry((counting.election.clone(), counter))
                        .or_insert(0) -= n;
                }
            }
        }
    }

    /// Number of markers held (for tests of marker economy).
    pub fn marker_count(&self) -> usize {
        lock(&self.state).markers.len()
    }

    /// Adds `delta` to a counter without any marker, as someone typing
    /// `INCRBY` by hand would: a drift only `reconcile --repair` undoes.
    pub fn tamper(&self, election: &ElectionId, counter: &Counter, delta: i64) {
        *lock(&self.state)
            .counters
            .entry((election.clone(), counter.clone()))
            .or_insert(0) += delta;
    }

    fn slot(&self, counter: &Counter) -> u64 {
        let mut hasher = DefaultHasher::new();
        counter.hash(&mut hasher);
        hasher.finish() % self.slots
    }

    /// A revision's counters grouped by slot: each group is one atomic step
    /// with one marker, anchored on its first counter.
    fn groups(&self, counting: &Counting) -> Vec<Vec<(Counter, i64)>> {
        let mut groups: BTreeMap<u64, Vec<(Counter, i64)>> = BTreeMap::new();
        for (party, n) in counting.difference.iter() {
            for counter in [
                Counter::National(party.clone()),
                Counter::City(counting.city.clone(), party.clone()),
            ] {
                groups
                    .entry(self.slot(&counter))
                    .or_default()
                    .push((counter, n));
            }
        }
        groups.into_values().collect()
    }
}

impl Default for MemoryTally {
    fn default() -> Self {
        MemoryTally::new()
    }
}

impl Tally for MemoryTally {
    fn apply(&self, batch: &[Counting]) -> Vec<Result<Applied, StoreError>> {
        let fault = self.faults.take(Step::Apply);
        if fault == Some(When::Before) {
            return batch.iter().map(|_| injected(Step::Apply)).collect();
        }
        let all_groups: Vec<Vec<Vec<(Counter, i64)>>> =
            batch.iter().map(|c| self.groups(c)).collect();
        let total_groups: usize = all_groups.iter().map(Vec::len).sum();
        let mut budget = match fault {
            Some(When::Midway) => total_groups / 2,
            _ => usize::MAX,
        };
        let mut answers = Vec::with_capacity(batch.len());
        for (counting, groups) in batch.iter().zip(all_groups) {
            // Each group is one atomic step, as one Lua script is in Redis;
            // taking the lock per group lets concurrent appliers interleave
            // between groups, as they can between scripts.
            let mut moved = false;
            let mut complete = true;
            {
                let mut state = lock(&self.state);
                let election = counting.election.clone();
                for (party, _) in counting.difference.iter() {
                    state
                        .parties
                        .entry(election.clone())
                        .or_default()
                        .insert(party.clone());
                }
                state
                    .city_boxes
                    .entry((election.clone(), counting.city.clone()))
                    .or_default()
                    .insert(counting.ballot_box.clone());
                state
                    .boxes
                    .entry(election)
                    .or_default()
                    .insert(counting.ballot_box.clone());
            }
            for group in groups {
                if budget == 0 {
                    complete = false;
                    break;
                }
                budget -= 1;
                let mut state = lock(&self.state);
                let marker = (
                    counting.election.clone(),
                    counting.ballot_box.clone(),
                    counting.revision,
                    group[0].0.clone(),
                );
                if state.markers.insert(marker) {
                    moved = true;
                    for (counter, n) in group {
                        *state
                            .counters
                            .entry((counting.election.clone(), counter))
                            .or_insert(0) += n;
                    }
                }
            }
            if moved || !complete {
                // Journalled after the counters, once per revision that may
                // have moved something (a batch is one step in Redis; here
                // each revision is, which a reader cannot tell apart).
                let mut state = lock(&self.state);
                let (position, cities) =
                    state.journal.entry(counting.election.clone()).or_default();
                *position += 1;
                cities.insert(counting.city.clone(), *position);
            }
            answers.push(if !complete || fault.is_some() {
                injected(Step::Apply)
            } else if moved {
                Ok(Applied::Now)
            } else {
                Ok(Applied::Already)
            });
        }
        answers
    }

    fn unapplied(&self, batch: &[Counting]) -> Result<Vec<ReportId>, StoreError> {
        let state = lock(&self.state);
        Ok(batch
            .iter()
            .filter(|counting| {
                self.groups(counting).iter().any(|group| {
                    !state.markers.contains(&(
                        counting.election.clone(),
                        counting.ballot_box.clone(),
                        counting.revision,
                        group[0].0.clone(),
                    ))
                })
            })
            .map(|counting| counting.report_id)
            .collect())
    }

    fn snapshot(&self, election: &ElectionId) -> Result<Snapshot, StoreError> {
        let state = lock(&self.state);
        let mut snapshot = Snapshot::default();
        for ((e, counter), &n) in &state.counters {
            if e == election {
                snapshot.totals.add(counter.clone(), n);
            }
        }
        snapshot.parties = state.parties.get(election).cloned().unwrap_or_default();
        for ((e, city), boxes) in &state.city_boxes {
            if e == election {
                snapshot.cities.insert(city.clone(), boxes.len() as u64);
            }
        }
        snapshot.ballot_boxes_reported = state.boxes.get(election).map_or(0, |b| b.len() as u64);
        Ok(snapshot)
    }

    fn incarnation(&self) -> Result<Option<Incarnation>, StoreError> {
        let restarts = self.restarts.load(Ordering::SeqCst);
        Ok(Some(Incarnation(vec![format!(
            "memory, restarted {restarts} times"
        )])))
    }

    fn moved_since(
        &self,
        election: &ElectionId,
        since: Option<JournalCursor>,
    ) -> Result<Option<Moved>, StoreError> {
        let state = lock(&self.state);
        let (position, moved) = state
            .journal
            .get(election)
            .map_or((0, None), |(position, moved)| (*position, Some(moved)));
        let cities = match since {
            // A journal behind the cursor was lost since (a flush).
            Some(JournalCursor(since)) if since <= position => Some(
                moved
                    .into_iter()
                    .flatten()
                    .filter(|&(_, &at)| at > since)
                    .map(|(city, _)| city.clone())
                    .collect(),
            ),
            _ => None,
        };
        Ok(Some(Moved {
            cursor: JournalCursor(position),
            cities,
        }))
    }

    fn guarded_add(
        &self,
        election: &ElectionId,
        counter: &Counter,
        observed: i64,
        delta: i64,
    ) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        let key = (election.clone(), counter.clone());
        // An absent counter holds 0; a refused call creates nothing.
        if state.counters.get(&key).copied().unwrap_or(0) != observed {
            return Ok(false);
        }
        *state.counters.entry(key).or_insert(0) += delta;
        let (position, cities) = state.journal.entry(election.clone()).or_default();
        *position += 1;
        if let Counter::City(city, _) = counter {
            cities.insert(city.clone(), *position);
        }
        Ok(true)
    }
}
