//! The two store traits (ports) and the values that cross them.
//!
//! [`ReportLog`] is the durable record (PostgreSQL in production): it decides
//! whether a report is fresh, a replay or a conflict, and remembers which
//! recorded revisions have been counted. [`Tally`] is the live counters (Redis
//! in production): it applies each recorded revision's difference exactly once.
//!
//! Exactly-once rests on one rule each side keeps:
//! - the log hands out a revision for counting (from [`ReportLog::record`] or
//!   [`ReportLog::claim_pending`]) until [`ReportLog::mark_counted`] has been
//!   called for it, so nothing recorded is forgotten (I3);
//! - the tally applies a revision's difference to a counter in one atomic step
//!   together with a marker naming that revision, and does nothing when the
//!   marker is already there, so handing a revision out twice counts it once
//!   (I2).
//!
//! Both traits are synchronous: the PostgreSQL and Redis adapters use blocking
//! clients, and async callers go through `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::StoreError;
use crate::grid::{Fingerprint, Grid, JournalCursor, Moved};
use crate::ids::{BallotBoxId, CityId, ElectionId, PartyId};
use crate::report::{Difference, Report, Revision};
use crate::rules::Conflict;

/// Who the tally's servers are, and whether they kept their data
/// ([`Tally::incarnation`]): compare two, never look inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation(pub Vec<String>);

/// The log's id of one recorded revision (a `reports` row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ReportId(pub i64);

impl std::fmt::Display for ReportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One recorded revision as the tally needs it: which counters move, by how
/// much, and the identity its markers carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counting {
    /// The log's id of the revision.
    pub report_id: ReportId,
    /// Its election.
    pub election: ElectionId,
    /// Its ballot box; with `revision`, the identity of the markers.
    pub ballot_box: BallotBoxId,
    /// Its city: the city counters move too.
    pub city: CityId,
    /// Its revision.
    pub revision: Revision,
    /// The change per party (see [`Difference`]).
    pub difference: Difference,
}

/// The log's answer for one report of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Newly and durably recorded; it must now be counted.
    Fresh(Counting),
    /// Identical to a revision recorded earlier; nothing was written.
    Replay {
        /// The id of the earlier revision.
        report_id: ReportId,
        /// Whether that revision has been counted.
        counted: bool,
    },
    /// Refused; nothing was written.
    Conflict(Conflict),
}

/// Which pending reports to claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// At most this many.
    pub limit: usize,
    /// Only reports recorded at least this long ago, so the reprocessor does
    /// not race ingest for reports it is counting right now.
    pub pending_for: Duration,
    /// Claimed reports are not handed out again for this long, unless marked
    /// counted or released first. A worker that dies loses its claim when the
    /// lease runs out.
    pub lease: Duration,
}

/// The durable report log. Implementations: `store_pg::PgLog`,
/// [`crate::memory::MemoryLog`].
///
/// # What an implementation must write
/// Eight methods are required, because each is a question only the store
/// can answer atomically: the counting cycle the [`crate::Engine`] runs
/// ([`record`](ReportLog::record), [`claim_pending`](ReportLog::claim_pending),
/// [`mark_counted`](ReportLog::mark_counted), [`release`](ReportLog::release)),
/// what `reconcile` and healing read ([`audit`](ReportLog::audit), one
/// snapshot; [`counted_revisions`](ReportLog::counted_revisions), paged;
/// [`elections`](ReportLog::elections)), and the reprocessor's metrics
/// ([`pending_stats`](ReportLog::pending_stats), across elections).
/// [`counted_totals`](ReportLog::counted_totals) and
/// [`pending_count`](ReportLog::pending_count) have defaults built on
/// `audit`, so an embedder's log is correct with the eight; a store that
/// can answer them more cheaply than a whole audit (both of ours) overrides
/// them. [`counted_revisions_newest_first`](ReportLog::counted_revisions_newest_first)
/// declines by default (healing then sweeps in id order); both of ours
/// implement it.
///
/// # Contract
/// - [`record`](ReportLog::record) decides each report with
///   [`crate::rules::decide`] against what is recorded for its ballot box,
///   including earlier reports of the same batch, in batch order. Each report
///   is recorded entirely (report, per-party log rows, box state) or not at
///   all, and when the call returns `Ok` every `Fresh` report is durable. When
///   it returns `Err`, nothing of the batch was recorded. Two concurrent calls
///   for the same ballot box are serialised.
/// - `record` refuses the whole batch with [`StoreError::DefinitionChanged`]
///   when a report's [`checked_against`](Report::checked_against) is not the
///   version of its election's definition as the log stores it (`None` when
///   it stores none), decided atomically with the write: a definition stored
///   before the call began is never bypassed by a report checked against an
///   older one (I4 across a load).
/// - A fresh revision stays pending until
///   [`mark_counted`](ReportLog::mark_counted) names it.
/// - [`claim_pending`](ReportLog::claim_pending) returns pending revisions
///   recorded at least `pending_for` ago whose lease has run out (or which
///   were never claimed), oldest first, and leases them; concurrent callers
///   get disjoint sets. Each claim counts as one attempt.
/// - [`mark_counted`](ReportLog::mark_counted) is idempotent.
/// - [`counted_totals`](ReportLog::counted_totals) sums the differences of
///   every counted revision: exactly what the tally must hold once nothing is
///   pending (I2).
/// - [`counted_revisions`](ReportLog::counted_revisions) pages through the
///   counted revisions of an election in id order, so `reconcile --repair`
///   can apply each of them again;
///   [`counted_revisions_newest_first`](ReportLog::counted_revisions_newest_first),
///   where a log offers it, lists the same revisions in the reverse order.
/// - [`audit`](ReportLog::audit) reads everything it returns from **one
///   snapshot** of the log (one transaction at REPEATABLE READ, or one
///   statement): the expected value of every counter, how many revisions
///   touch it, and which counters pending revisions touch. `reconcile` relies
///   on the three agreeing with each other (see `crate::reconcile`).
/// - [`pending_stats`](ReportLog::pending_stats) describes the pending
///   revisions of every election, for the reprocessor's metrics.
pub trait ReportLog: Send + Sync {
    /// Records a batch of reports; one answer per report, in order.
    fn record(&self, reports: &[Report]) -> Result<Vec<Recorded>, StoreError>;

    /// Claims pending revisions for counting.
    fn claim_pending(&self, claim: &Claim) -> Result<Vec<Counting>, StoreError>;

    /// Marks revisions counted, ending their leases.
    fn mark_counted(&self, ids: &[ReportId]) -> Result<(), StoreError>;

    /// Gives up a claim after a failed attempt, keeping `error` for operators;
    /// the revisions stay pending and may be claimed again at once.
    fn release(&self, ids: &[ReportId], error: &str) -> Result<(), StoreError>;

    /// The counters the counted revisions of `election` add up to.
    ///
    /// The default is [`ReportLog::audit`]'s `counted`.
    fn counted_totals(&self, election: &ElectionId) -> Result<Totals, StoreError> {
        self.audit(election).map(|audit| audit.counted)
    }

    /// How many revisions of `election` are recorded but not yet counted.
    ///
    /// The default is [`ReportLog::audit`]'s `pending`.
    fn pending_count(&self, election: &ElectionId) -> Result<u64, StoreError> {
        self.audit(election).map(|audit| audit.pending)
    }

    /// Up to `limit` counted revisions of `election` whose id is greater than
    /// `after` (all when `None`), in id order. Pass the last id of one page as
    /// `after` to get the next; an empty page is the end.
    fn counted_revisions(
        &self,
        election: &ElectionId,
        after: Option<ReportId>,
        limit: usize,
    ) -> Result<Vec<Counting>, StoreError>;

    /// Up to `limit` counted revisions of `election` whose id is less than
    /// `before` (all when `None`), newest first. Pass the last id of one page
    /// as `before` to get the next; an empty page is the end.
    ///
    /// `Ok(None)`, the default, says the log cannot page backwards; a log
    /// answers `None` always or never. The healing sweep goes newest first
    /// when it can (what a failover loses is what was applied last, see
    /// [`crate::heal`]) and in id order with [`counted_revisions`](ReportLog::counted_revisions)
    /// otherwise.
    fn counted_revisions_newest_first(
        &self,
        election: &ElectionId,
        before: Option<ReportId>,
        limit: usize,
    ) -> Result<Option<Vec<Counting>>, StoreError> {
        let _ = (election, before, limit);
        Ok(None)
    }

    /// What the log says about every counter of `election`, from one snapshot.
    fn audit(&self, election: &ElectionId) -> Result<LogAudit, StoreError>;

    /// The pending revisions of every election: how many, the oldest's age,
    /// and those claimed at least `stuck_attempts` times.
    fn pending_stats(&self, stuck_attempts: u32) -> Result<PendingStats, StoreError>;

    /// Every election with at least one recorded revision, in id order (what
    /// the reprocessor's healing sweep goes through).
    fn elections(&self) -> Result<Vec<ElectionId>, StoreError>;
}

/// What the log says about the counters of one election, read from one
/// snapshot (see [`ReportLog::audit`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogAudit {
    /// The sum of the differences of the counted revisions: what each counter
    /// must hold once the revisions pending now are counted too, minus their
    /// differences.
    pub counted: Totals,
    /// How many recorded revisions (counted or pending) have a difference for
    /// each counter, zero differences included. Revisions are never deleted,
    /// so this only grows: an unchanged number between two audits means no
    /// revision touching the counter was recorded in between.
    pub revisions_per_counter: BTreeMap<Counter, u64>,
    /// The counters that some pending revision has a difference for.
    pub pending_counters: BTreeSet<Counter>,
    /// How many revisions of the election are pending.
    pub pending: u64,
}

impl LogAudit {
    /// How many recorded revisions touch `counter`.
    pub fn revisions(&self, counter: &Counter) -> u64 {
        self.revisions_per_counter
            .get(counter)
            .copied()
            .unwrap_or(0)
    }
}

/// The pending revisions of every election (see [`ReportLog::pending_stats`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PendingStats {
    /// Revisions recorded but not yet counted.
    pub pending: u64,
    /// How long ago the oldest of them was recorded; `None` when there is
    /// none.
    pub oldest_age: Option<Duration>,
    /// How many of them were claimed at least `stuck_attempts` times.
    pub stuck: u64,
    /// The oldest of those (at most [`PendingStats::STUCK_EXAMPLES`]), for
    /// operators to look at.
    pub stuck_examples: Vec<StuckReport>,
    /// Pending revisions set aside because the log could not read them back
    /// (a row edited by hand, say): never claimed again until an operator
    /// releases them. Included in `pending`.
    pub quarantined: u64,
}

impl PendingStats {
    /// How many stuck revisions [`PendingStats::stuck_examples`] names at
    /// most.
    pub const STUCK_EXAMPLES: usize = 10;
}

/// A pending revision that was claimed many times without being counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckReport {
    /// Its id.
    pub report_id: ReportId,
    /// Its election.
    pub election: ElectionId,
    /// Its ballot box.
    pub ballot_box: BallotBoxId,
    /// Its revision.
    pub revision: Revision,
    /// How many times it was claimed.
    pub attempts: u32,
    /// The error its last release recorded.
    pub last_error: Option<String>,
}

/// Whether [`Tally::apply`] moved counters for a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// At least one counter moved now (the others, if any, had moved before).
    Now,
    /// Every counter had already moved for this revision: a no-op.
    Already,
}

/// The live counters. Implementations: `store_redis::RedisTally`,
/// [`crate::memory::MemoryTally`].
///
/// # Contract
/// - [`apply`](Tally::apply) adds each revision's difference to its national
///   and city counters **exactly once per (revision, counter)**: every counter
///   moves in one atomic step together with a marker for that revision (and
///   the counters sharing the step), and a step whose marker is present does
///   nothing. So applying a revision again, after any delay, from any worker,
///   concurrently or after a partial failure, moves nothing twice. Markers live
///   as long as the counters.
/// - It also records (idempotently) the party, the city and the ballot box as
///   seen, so totals can be read without knowing them in advance.
/// - Answers are per revision, in order; an `Err` means some counters of that
///   revision may not have moved and it must be applied again later.
/// - [`unapplied`](Tally::unapplied) names the revisions of a batch that lack
///   any of their markers (or, where the tally keeps them, their entries in
///   the sets of parties, cities and ballot boxes seen), reading only. For a revision that `apply` answered
///   `Ok`, that means the tally lost it (a restart without persistence, a
///   flush, a failover to a replica that had not received it): its counters
///   went with its markers, so applying it again restores exactly what was
///   lost (see `crate::heal`).
pub trait Tally: Send + Sync {
    /// Applies a batch of revisions; one answer per revision, in order.
    fn apply(&self, batch: &[Counting]) -> Vec<Result<Applied, StoreError>>;

    /// The revisions of `batch` some of whose markers (or index entries) are
    /// absent, in batch order; reads only.
    fn unapplied(&self, batch: &[Counting]) -> Result<Vec<ReportId>, StoreError>;

    /// Every counter of `election` with the parties, cities and ballot boxes
    /// seen.
    fn snapshot(&self, election: &ElectionId) -> Result<Snapshot, StoreError>;

    /// What [`Tally::snapshot`] reads, as a [`Grid`]. `known` is a grid this
    /// caller read before: an adapter may trust its parties and cities while
    /// the numbers of them seen stay the same, instead of listing them again
    /// (a caller passes `None` now and then to have them listed afresh).
    ///
    /// The default converts [`Tally::snapshot`].
    fn grid(&self, election: &ElectionId, known: Option<&Grid>) -> Result<Grid, StoreError> {
        let _ = known;
        self.snapshot(election)
            .map(|snapshot| Grid::from_snapshot(&snapshot))
    }

    /// A [`Fingerprint`] of `election` read much more cheaply than a grid,
    /// with the parties of `known`; `None` when the adapter has none (the
    /// default), so a caller reads the whole grid every time.
    fn fingerprint(
        &self,
        election: &ElectionId,
        known: &Grid,
    ) -> Result<Option<Fingerprint>, StoreError> {
        let _ = (election, known);
        Ok(None)
    }

    /// The cities whose counters moved in `election` since `since` (a
    /// cursor an earlier call answered), from a change journal that
    /// [`Tally::apply`] and [`Tally::guarded_add`] write after the counters
    /// they move (a national counter moved alone moves the cursor, naming
    /// no city); `None` when the adapter keeps no journal (the default). See
    /// [`crate::grid::Moved`]: `cities` is `None` when the journal cannot
    /// bridge from `since`.
    fn moved_since(
        &self,
        election: &ElectionId,
        since: Option<JournalCursor>,
    ) -> Result<Option<Moved>, StoreError> {
        let _ = (election, since);
        Ok(None)
    }

    /// What changes whenever the tally's servers may have lost what they
    /// held: by restarting, by being replaced, or by being emptied while
    /// they run (Redis: every master's run id, and a witness key the
    /// adapter sets on each), for healing to sweep at once instead of at
    /// its next interval; `None` when the adapter cannot tell (the default).
    /// A loss of some keys only (a deleted counter) does not change it:
    /// periodic sweeps stay.
    fn incarnation(&self) -> Result<Option<Incarnation>, StoreError> {
        Ok(None)
    }

    /// What [`Tally::grid`] with `known` would read, for a caller that
    /// knows only `cities` (and the national counters and the sets of
    /// parties, cities and ballot boxes) may have moved since it read
    /// `known`, as [`Tally::moved_since`] tells: an adapter may read just
    /// those rows. When the parties or cities seen are no longer `known`'s,
    /// or `known` names unreadable counters, it reads everything.
    ///
    /// The default reads everything ([`Tally::grid`]).
    fn grid_moved(
        &self,
        election: &ElectionId,
        known: &Grid,
        cities: &[CityId],
    ) -> Result<Grid, StoreError> {
        let _ = cities;
        self.grid(election, Some(known))
    }

    /// Adds `delta` to `counter` **only if** it holds `observed` (an absent
    /// counter holds 0), as one atomic step; returns whether it did. It moves
    /// no marker: it is how `reconcile --repair` rewrites a counter that
    /// drifted without losing an increment applied since it was read (see
    /// `crate::reconcile`). One counter per call, so on a Redis Cluster it is
    /// one key in one slot.
    fn guarded_add(
        &self,
        election: &ElectionId,
        counter: &Counter,
        observed: i64,
        delta: i64,
    ) -> Result<bool, StoreError>;

    /// The values of `counters` (absent ones are left out, i.e. read as 0).
    ///
    /// The default reads the whole [`Tally::snapshot`] and keeps the ones
    /// asked for, which finds only counters of parties and cities the tally
    /// has seen; adapters whose indexes can be lost separately from the
    /// counters read the counters themselves.
    fn counters(&self, election: &ElectionId, counters: &[Counter]) -> Result<Totals, StoreError> {
        let snapshot = self.snapshot(election)?;
        let mut totals = Totals::new();
        for counter in counters {
            if let Some(n) = snapshot.totals.counters.get(counter) {
                totals.add(counter.clone(), *n);
            }
        }
        Ok(totals)
    }
}

/// One Redis counter, by what it counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// `election:<e>:party:<p>`.
    National(PartyId),
    /// `election:<e>:city:<c>:party:<p>`.
    City(CityId, PartyId),
}

/// Values of counters; a counter absent from the map is 0.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Totals {
    counters: BTreeMap<Counter, i64>,
}

impl Totals {
    /// No counters.
    pub fn new() -> Totals {
        Totals::default()
    }

    /// Adds `n` to a counter.
    pub fn add(&mut self, counter: Counter, n: i64) {
        *self.counters.entry(counter).or_insert(0) += n;
    }

    /// Adds a revision's difference to its national and city counters.
    pub fn add_difference(&mut self, city: &CityId, difference: &Difference) {
        for (party, n) in difference.iter() {
            self.add(Counter::National(party.clone()), n);
            self.add(Counter::City(city.clone(), party.clone()), n);
        }
    }

    /// A counter's value (0 when absent).
    pub fn get(&self, counter: &Counter) -> i64 {
        self.counters.get(counter).copied().unwrap_or(0)
    }

    /// Whether the counter is present (possibly with 0).
    pub fn contains(&self, counter: &Counter) -> bool {
        self.counters.contains_key(counter)
    }

    /// How many counters are present.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// True when no counter is present.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Every counter present, in order (national first).
    pub fn iter(&self) -> impl Iterator<Item = (&Counter, i64)> + '_ {
        self.counters.iter().map(|(c, &n)| (c, n))
    }

    /// National totals per party.
    pub fn national(&self) -> BTreeMap<PartyId, i64> {
        self.iter()
            .filter_map(|(c, n)| match c {
                Counter::National(p) => Some((p.clone(), n)),
                Counter::City(..) => None,
            })
            .collect()
    }

    /// Totals per party of one city.
    pub fn city(&self, city: &CityId) -> BTreeMap<PartyId, i64> {
        self.iter()
            .filter_map(|(c, n)| match c {
                Counter::City(c, p) if c == city => Some((p.clone(), n)),
                _ => None,
            })
            .collect()
    }

    /// Every counter where `self` and `other` differ, with both values
    /// (absent counts as 0): `(counter, self, other)`.
    pub fn drift(&self, other: &Totals) -> Vec<(Counter, i64, i64)> {
        let keys: BTreeSet<&Counter> = self.counters.keys().chain(other.counters.keys()).collect();
        keys.into_iter()
            .filter_map(|k| {
                let (a, b) = (self.get(k), other.get(k));
                (a != b).then(|| (k.clone(), a, b))
            })
            .collect()
    }
}

/// What the tally holds for an election.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every counter.
    pub totals: Totals,
    /// Parties seen.
    pub parties: BTreeSet<PartyId>,
    /// Cities seen, with the number of ballot boxes counted in each.
    pub cities: BTreeMap<CityId, u64>,
    /// Ballot boxes counted in the whole election.
    pub ballot_boxes_reported: u64,
    /// The names of counter keys that hold something that is not an
    /// integer (written by hand or by something else than the tally), in
    /// order. They are left out of `totals`, so every other counter can still
    /// be read; the tally refuses to move them. Always empty for a tally that
    /// cannot hold such values.
    pub unreadable: Vec<String>,
}
