//! The history port: what the read side asks of the log (which cities
//! reported most in a window, ballot boxes in the order they first reported,
//! net votes per time bucket, the full log page by page, the totals as they
//! stood at an instant, revisions worth a second look, the elections that
//! exist, and the sealed log's published heads).
//!
//! It is a trait, as [`crate::ReportLog`] and [`crate::Tally`] are, so that
//! `election-query` holds an `Arc<dyn History>` rather than a database pool:
//! PostgreSQL answers in the services (`store_pg::PgHistory`, one statement
//! per call), and the in-memory log answers the same questions from what it
//! recorded (`crate::memory::MemoryLog`), so the read API can be tested
//! without a server. `crate::contract::history` is the suite both pass.
//!
//! Every sum here is a sum of differences: the change a revision brought to
//! the counters (new minus the previous latest revision of its box). So a
//! correction counts as its difference, possibly negative, and cumulative
//! sums end exactly at the boxes' latest revisions. The log is the record of
//! everything *recorded*: a revision not counted yet already shows here.
//!
//! The values crossing the trait are plain data; the adapters turn their
//! rows into them and say which store failed in a [`StoreError`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::ids::{BallotBoxId, CityId, ElectionId, PartyId};

/// What the read side asks of the log. Implementations:
/// `store_pg::PgHistory`, [`crate::memory::MemoryLog`].
///
/// # Contract
/// - Calls only read, and each answers from one consistent view of the log
///   (one statement, one lock), except [`History::audit_page`], which is
///   one view per page: every revision recorded before the first page was
///   read is in exactly one page.
/// - A revision's time is when the log recorded it (`received_at`; the
///   whole batch of one [`crate::ReportLog::record`] call shares it).
/// - Orders are total: ties are broken by id in byte order, so two adapters
///   holding the same reports give the same answers (the contract suite
///   compares them field by field).
/// - An election nobody reported to, or that does not exist, gives empty
///   answers, not errors.
///
/// Every method is required: each is one question a page of the read API
/// asks, and none can be answered from the others at a cost the services
/// could pay per request (the one built on another,
/// [`History::timeline`], is a default).
pub trait History: Send + Sync {
    /// The cities whose revisions recorded in `window` brought the most
    /// votes, most first, ties by city name (byte order). Cities with
    /// nothing recorded in the window are absent.
    fn cities_by_votes(
        &self,
        election: &ElectionId,
        window: Window,
    ) -> Result<Vec<CityActivity>, StoreError>;

    /// The first `limit` ballot boxes of an election to report, in the
    /// order they first reported (ties by ballot box id, byte order).
    fn first_reports(
        &self,
        election: &ElectionId,
        limit: u32,
    ) -> Result<Vec<FirstReport>, StoreError>;

    /// Net votes per party per `bucket_seconds` bucket, for buckets starting
    /// at or after `since` (which should be a bucket start), or every
    /// bucket. Buckets are aligned on 2000-01-01T00:00:00Z, so 1-day buckets
    /// are UTC days. A `bucket_seconds` of 0 is an error.
    fn votes_per_bucket(
        &self,
        election: &ElectionId,
        bucket_seconds: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Buckets, StoreError>;

    /// Cumulative totals per party at the end of every `bucket_seconds`
    /// bucket in which something was recorded, oldest first, read in full.
    ///
    /// Buckets without reports are absent (the totals did not move in them).
    /// Each point lists every party seen up to then, so the last point
    /// equals the sum of every box's latest revision. The default folds
    /// [`History::votes_per_bucket`] with [`cumulate`].
    fn timeline(
        &self,
        election: &ElectionId,
        bucket_seconds: u32,
    ) -> Result<Vec<TimelinePoint>, StoreError> {
        let buckets = self.votes_per_bucket(election, bucket_seconds, None)?;
        let step = chrono::Duration::seconds(i64::from(bucket_seconds));
        Ok(cumulate(
            buckets
                .rows
                .into_iter()
                .map(|row| (row.start + step, row.party, row.votes)),
        ))
    }

    /// One page of the audit log: up to `reports_per_page` revisions (at
    /// least 1; with all their party rows) after `after`, or from the start.
    fn audit_page(
        &self,
        election: &ElectionId,
        after: Option<AuditCursor>,
        reports_per_page: u32,
    ) -> Result<AuditPage, StoreError>;

    /// Every election that is defined or has been reported to, in id order.
    fn known_elections(&self) -> Result<Vec<ElectionId>, StoreError>;

    /// Whether `election` is defined or has been reported to.
    fn election_exists(&self, election: &ElectionId) -> Result<bool, StoreError>;

    /// Every election that is defined or has been reported to, with its
    /// name, reported ballot boxes and last report time, in id order.
    fn elections_summary(&self) -> Result<Vec<ElectionSummary>, StoreError>;

    /// What stood at `at` in `election`: each ballot box's latest revision
    /// received by that instant, summed (a party the revision omitted
    /// counts 0).
    fn stood_at(&self, election: &ElectionId, at: DateTime<Utc>) -> Result<StoodAt, StoreError>;

    /// The flagged revisions of `election`, in the order recorded: more
    /// votes than the box's electorate, or a correction moving the box's
    /// total by more than `correction_share` of its previous total (at
    /// least 1). A revision may be flagged for both reasons (two flags, the
    /// electorate's first).
    fn flags(&self, election: &ElectionId, correction_share: f64) -> Result<Vec<Flag>, StoreError>;

    /// The newest seal checkpoint of `election` and up to `limit` earlier
    /// ones, newest first, those sealed through a report id below `before`
    /// when given (docs/audit.md). A log that seals nothing answers none.
    fn seal_heads(
        &self,
        election: &ElectionId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<SealHeads, StoreError>;
}

/// One checkpoint of an election's sealed log (docs/audit.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealCheckpoint {
    /// Every report of the election with an id up to this one is in the
    /// chain up to here (and no other).
    pub sealed_through_report_id: i64,
    /// Reports in the chain up to here.
    pub sealed_count: i64,
    /// The chain's head after them (a SHA-256).
    pub head: [u8; 32],
    /// When the checkpoint was written.
    pub sealed_at: DateTime<Utc>,
}

/// What `GET /audit` publishes: the newest checkpoint and a page of earlier
/// ones (see [`History::seal_heads`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SealHeads {
    /// The newest checkpoint; `None` before the first.
    pub latest: Option<SealCheckpoint>,
    /// Earlier checkpoints, newest first.
    pub earlier: Vec<SealCheckpoint>,
    /// Whether older checkpoints than the last of `earlier` exist.
    pub more: bool,
}

/// A time window: `from` inclusive, `to` exclusive; an absent bound is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Window {
    /// First instant in the window.
    pub from: Option<DateTime<Utc>>,
    /// First instant after the window.
    pub to: Option<DateTime<Utc>>,
}

/// One city's activity in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CityActivity {
    /// The city.
    pub city: CityId,
    /// Net votes the city's revisions recorded in the window brought to its
    /// totals (sum of their differences).
    pub votes: i64,
    /// Revisions recorded in the window.
    pub reports: i64,
}

/// A ballot box and when it first reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstReport {
    /// The ballot box.
    pub ballot_box: BallotBoxId,
    /// Its city.
    pub city: CityId,
    /// When its first revision was recorded.
    pub first_reported_at: DateTime<Utc>,
}

/// The cumulative totals at the end of one time bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelinePoint {
    /// The end of the bucket (exclusive): totals include everything recorded
    /// before this instant.
    pub at: DateTime<Utc>,
    /// Cumulative votes per party, every party seen so far in the election
    /// (0 before its first report), in party order.
    pub parties: Vec<(PartyId, i64)>,
}

/// One row of the audit log: one party of one recorded revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// The revision's id (`reports.id`).
    pub report_id: i64,
    /// Its ballot box.
    pub ballot_box: BallotBoxId,
    /// Its city.
    pub city: CityId,
    /// Its revision number.
    pub revision: i32,
    /// Why it replaced an earlier revision (absent for revision 1).
    pub reason: Option<String>,
    /// The party.
    pub party: PartyId,
    /// The revision's count for the party (0 for a party it omitted).
    pub votes: i32,
    /// Whether the revision omitted the party (stored as a NULL vote; the
    /// sealed log tells it apart from a posted 0).
    pub omitted: bool,
    /// The change it brought to the party's counters.
    pub difference: i64,
    /// When the revision was recorded.
    pub received_at: DateTime<Utc>,
    /// Whether it has reached the live counters (false while pending).
    pub counted: bool,
    /// SHA-256 of the revision's body as stored (`reports.payload`), for
    /// the sealed log (docs/audit.md).
    pub payload_sha256: Vec<u8>,
    /// `reports.payload_hash` as stored, for the sealed log.
    pub payload_hash: Vec<u8>,
}

/// Where the next audit page starts: after this revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditCursor {
    /// The last revision's id.
    pub report_id: i64,
}

/// One page of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    /// Rows in order: by report id (the order recorded), then party.
    pub rows: Vec<AuditRow>,
    /// Where the next page starts; `None` when this page was the last.
    pub next: Option<AuditCursor>,
}

/// Net votes one party gained in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketVotes {
    /// The start of the bucket (inclusive).
    pub start: DateTime<Utc>,
    /// The party.
    pub party: PartyId,
    /// The sum of the differences recorded in the bucket for the party.
    pub votes: i64,
}

/// The answer of [`History::votes_per_bucket`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    /// Rows by bucket, then party (byte order); buckets without a recorded
    /// revision are absent.
    pub rows: Vec<BucketVotes>,
    /// PostgreSQL's clock right after the read, so that a caller reading
    /// again "from a little before now" uses the clock `reported_at` was
    /// written with, not its own.
    pub read_at: DateTime<Utc>,
}

/// One election of [`History::elections_summary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionSummary {
    /// The election.
    pub election: ElectionId,
    /// Its display name, when it is defined.
    pub name: Option<String>,
    /// Ballot boxes that reported (at least once).
    pub ballot_boxes_reported: u64,
    /// When a ballot box last reported (a first report or a correction).
    pub last_report_at: Option<DateTime<Utc>>,
}

/// What stood at an instant: every ballot box's latest revision received by
/// then, summed (`GET .../totals?as_of=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoodAt {
    /// Votes per city and party.
    pub votes: BTreeMap<(CityId, PartyId), i64>,
    /// Ballot boxes that had reported, per city.
    pub boxes: BTreeMap<CityId, u64>,
}

/// Why a recorded revision is flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagReason {
    /// Its votes exceed its ballot box's electorate.
    OverElectorate,
    /// A correction that moved its box's total by more than the configured
    /// share of the previous total.
    LargeCorrection,
}

impl FlagReason {
    /// The reason as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagReason::OverElectorate => "over_electorate",
            FlagReason::LargeCorrection => "large_correction",
        }
    }
}

/// A recorded (and counted) revision that deserves a second look.
#[derive(Clone, Debug, PartialEq)]
pub struct Flag {
    /// The revision's id.
    pub report_id: i64,
    /// Its ballot box.
    pub ballot_box: BallotBoxId,
    /// Its city.
    pub city: CityId,
    /// Its revision number.
    pub revision: i32,
    /// Why it is flagged.
    pub reason: FlagReason,
    /// Its total votes.
    pub total_votes: i64,
    /// The box's previous total (corrections).
    pub previous_total: Option<i64>,
    /// The box's electorate (over-electorate flags).
    pub electorate: Option<i64>,
    /// When it was recorded.
    pub received_at: DateTime<Utc>,
}

/// Folds `(bucket end, party, votes in the bucket)` rows, sorted by bucket
/// end, into cumulative points: one per bucket end, each listing every party
/// seen so far.
pub fn cumulate(
    rows: impl IntoIterator<Item = (DateTime<Utc>, PartyId, i64)>,
) -> Vec<TimelinePoint> {
    let mut running: BTreeMap<PartyId, i64> = BTreeMap::new();
    let mut points: Vec<TimelinePoint> = Vec::new();
    let mut current: Option<DateTime<Utc>> = None;
    let point = |at, running: &BTreeMap<PartyId, i64>| TimelinePoint {
        at,
        parties: running.iter().map(|(p, n)| (p.clone(), *n)).collect(),
    };
    for (at, party, votes) in rows {
        if let Some(previous) = current
            && previous != at
        {
            points.push(point(previous, &running));
        }
        current = Some(at);
        *running.entry(party).or_insert(0) += votes;
    }
    if let Some(at) = current {
        points.push(point(at, &running));
    }
    points
}
