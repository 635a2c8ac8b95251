//! The history port over the in-memory log: the questions
//! `store_pg::PgHistory` answers with SQL, answered from the recorded rows,
//! so the read API can be tested without PostgreSQL. The contract suite
//! (`crate::contract::history`) checks that both give the same answers for
//! the same reports.
//!
//! This log holds no definitions (so no names and no electorates) and seals
//! nothing (so no checkpoints): those answers are empty, as PostgreSQL's are
//! for an election never defined or sealed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{MemoryLog, Row, lock};
use crate::error::StoreError;
use crate::history::{
    AuditCursor, AuditPage, AuditRow, BucketVotes, Buckets, CityActivity, ElectionSummary,
    FirstReport, Flag, FlagReason, History, SealHeads, StoodAt, Window,
};
use crate::ids::{BallotBoxId, CityId, ElectionId, PartyId};

/// Now, to the microsecond: PostgreSQL keeps instants in microseconds, and
/// so does this log, so both adapters give the same instants back.
pub(super) fn wall_clock() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// 2000-01-01T00:00:00Z in Unix seconds: the origin buckets are aligned on
/// (PostgreSQL's `date_bin` origin in `store_pg::history`).
const BUCKET_ORIGIN_SECONDS: i64 = 946_684_800;

/// The start of the `seconds`-long bucket holding `at`.
fn bucket_start(at: DateTime<Utc>, seconds: u32) -> DateTime<Utc> {
    let origin = BUCKET_ORIGIN_SECONDS * 1_000_000;
    let stride = i64::from(seconds) * 1_000_000;
    let offset = at.timestamp_micros() - origin;
    DateTime::from_timestamp_micros(origin + offset.div_euclid(stride) * stride).unwrap_or(at)
}

/// The parties a row names (its difference's: those of the revision and of
/// the one it replaced), each with the votes it posted (`None`: omitted).
fn party_votes(row: &Row) -> impl Iterator<Item = (&PartyId, Option<u32>, i64)> + '_ {
    let posted: BTreeMap<&PartyId, u32> = row.report.votes().iter().collect();
    row.difference
        .iter()
        .map(move |(party, change)| (party, posted.get(party).copied(), change))
}

/// A revision's total votes (what it posted).
fn total(row: &Row) -> i64 {
    row.report.votes().iter().map(|(_, n)| i64::from(n)).sum()
}

fn memory_failed(doing: String, detail: &str) -> StoreError {
    StoreError::Failed {
        store: "memory",
        doing,
        source: detail.into(),
    }
}

impl MemoryLog {
    /// The rows of `election` with their ids, in the order recorded.
    fn with_rows<T>(
        &self,
        election: &ElectionId,
        f: impl FnOnce(&mut dyn Iterator<Item = (i64, &Row)>) -> T,
    ) -> T {
        let state = lock(&self.state);
        let mut rows = state
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.report.election() == election)
            .map(|(i, row)| (i as i64 + 1, row));
        f(&mut rows)
    }
}

impl History for MemoryLog {
    fn cities_by_votes(
        &self,
        election: &ElectionId,
        window: Window,
    ) -> Result<Vec<CityActivity>, StoreError> {
        let per_city = self.with_rows(election, |rows| {
            let mut per_city: BTreeMap<CityId, (i64, i64)> = BTreeMap::new();
            for (_, row) in rows.filter(|(_, row)| {
                window.from.is_none_or(|from| row.received_at >= from)
                    && window.to.is_none_or(|to| row.received_at < to)
                    && !row.difference.is_empty()
            }) {
                let entry = per_city.entry(row.report.city().clone()).or_default();
                entry.0 += row.difference.iter().map(|(_, n)| n).sum::<i64>();
                entry.1 += 1;
            }
            per_city
        });
        let mut cities: Vec<CityActivity> = per_city
            .into_iter()
            .map(|(city, (votes, reports))| CityActivity {
                city,
                votes,
                reports,
            })
            .collect();
        cities.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| a.city.cmp(&b.city)));
        Ok(cities)
    }

    fn first_reports(
        &self,
        election: &ElectionId,
        limit: u32,
    ) -> Result<Vec<FirstReport>, StoreError> {
        let mut first = self.with_rows(election, |rows| {
            let mut first: HashMap<BallotBoxId, FirstReport> = HashMap::new();
            for (_, row) in rows {
                first
                    .entry(row.report.ballot_box().clone())
                    .or_insert_with(|| FirstReport {
                        ballot_box: row.report.ballot_box().clone(),
                        city: row.report.city().clone(),
                        first_reported_at: row.received_at,
                    });
            }
            first.into_values().collect::<Vec<_>>()
        });
        first.sort_by(|a, b| {
            a.first_reported_at
                .cmp(&b.first_reported_at)
                .then_with(|| a.ballot_box.cmp(&b.ballot_box))
        });
        first.truncate(limit as usize);
        Ok(first)
    }

    fn votes_per_bucket(
        &self,
        election: &ElectionId,
        bucket_seconds: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Buckets, StoreError> {
        if bucket_seconds == 0 {
            return Err(memory_failed(
                format!("summing the votes of election {election} per time bucket"),
                "a time bucket must be longer than 0 s",
            ));
        }
        let sums = self.with_rows(election, |rows| {
            let mut sums: BTreeMap<(DateTime<Utc>, PartyId), i64> = BTreeMap::new();
            for (_, row) in rows.filter(|(_, row)| since.is_none_or(|at| row.received_at >= at)) {
                let start = bucket_start(row.received_at, bucket_seconds);
                for (party, n) in row.difference.iter() {
                    *sums.entry((start, party.clone())).or_insert(0) += n;
                }
            }
            sums
        });
        Ok(Buckets {
            rows: sums
                .into_iter()
                .map(|((start, party), votes)| BucketVotes {
                    start,
                    party,
                    votes,
                })
                .collect(),
            read_at: wall_clock(),
        })
    }

    fn audit_page(
        &self,
        election: &ElectionId,
        after: Option<AuditCursor>,
        reports_per_page: u32,
    ) -> Result<AuditPage, StoreError> {
        let limit = reports_per_page.max(1) as usize;
        let after = after.map_or(0, |cursor| cursor.report_id);
        self.with_rows(election, |rows| {
            let page: Vec<(i64, &Row)> = rows.filter(|(id, _)| *id > after).take(limit).collect();
            let mut out = Vec::new();
            for (id, row) in &page {
                let payload_sha256 = Sha256::digest(row.report.payload().as_bytes()).to_vec();
                for (party, posted, difference) in party_votes(row) {
                    out.push(AuditRow {
                        report_id: *id,
                        ballot_box: row.report.ballot_box().clone(),
                        city: row.report.city().clone(),
                        revision: row.report.revision().get() as i32,
                        reason: row.report.reason().map(str::to_owned),
                        party: party.clone(),
                        votes: posted.unwrap_or(0) as i32,
                        omitted: posted.is_none(),
                        difference,
                        received_at: row.received_at,
                        counted: row.counted,
                        payload_sha256: payload_sha256.clone(),
                        payload_hash: row.report.payload_hash().0.to_vec(),
                    });
                }
            }
            // A short page is the last one.
            let next = if page.len() < limit {
                None
            } else {
                page.last().map(|(id, _)| AuditCursor { report_id: *id })
            };
            Ok(AuditPage { rows: out, next })
        })
    }

    fn known_elections(&self) -> Result<Vec<ElectionId>, StoreError> {
        let state = lock(&self.state);
        let known: BTreeSet<&ElectionId> =
            state.rows.iter().map(|row| row.report.election()).collect();
        Ok(known.into_iter().cloned().collect())
    }

    fn election_exists(&self, election: &ElectionId) -> Result<bool, StoreError> {
        Ok(self.with_rows(election, |rows| rows.next().is_some()))
    }

    fn elections_summary(&self) -> Result<Vec<ElectionSummary>, StoreError> {
        let state = lock(&self.state);
        let mut summaries: BTreeMap<&ElectionId, (BTreeSet<&BallotBoxId>, DateTime<Utc>)> =
            BTreeMap::new();
        for row in &state.rows {
            let entry = summaries
                .entry(row.report.election())
                .or_insert_with(|| (BTreeSet::new(), row.received_at));
            entry.0.insert(row.report.ballot_box());
            entry.1 = entry.1.max(row.received_at);
        }
        Ok(summaries
            .into_iter()
            .map(|(election, (boxes, last))| ElectionSummary {
                election: election.clone(),
                name: None,
                ballot_boxes_reported: boxes.len() as u64,
                last_report_at: Some(last),
            })
            .collect())
    }

    fn stood_at(&self, election: &ElectionId, at: DateTime<Utc>) -> Result<StoodAt, StoreError> {
        self.with_rows(election, |rows| {
            // Each box's latest revision received by `at`.
            let mut latest: HashMap<&BallotBoxId, &Row> = HashMap::new();
            for (_, row) in rows.filter(|(_, row)| row.received_at <= at) {
                let slot = latest.entry(row.report.ballot_box()).or_insert(row);
                if row.report.revision() > slot.report.revision() {
                    *slot = row;
                }
            }
            let mut stood = StoodAt::default();
            for row in latest.into_values() {
                let city = row.report.city();
                *stood.boxes.entry(city.clone()).or_insert(0) += 1;
                for (party, posted, _) in party_votes(row) {
                    *stood
                        .votes
                        .entry((city.clone(), party.clone()))
                        .or_insert(0) += i64::from(posted.unwrap_or(0));
                }
            }
            Ok(stood)
        })
    }

    fn flags(&self, election: &ElectionId, correction_share: f64) -> Result<Vec<Flag>, StoreError> {
        self.with_rows(election, |rows| {
            // Revisions of a box are recorded in revision order (an older
            // one arriving late is refused), so the previous revision of a
            // box is the last one seen.
            let mut previous: HashMap<&BallotBoxId, i64> = HashMap::new();
            let mut flags = Vec::new();
            for (id, row) in rows {
                let total = total(row);
                let before = previous.insert(row.report.ballot_box(), total);
                let large = before.is_some_and(|before| {
                    (total - before).abs() as f64 > correction_share * before.max(1) as f64
                });
                if large {
                    flags.push(Flag {
                        report_id: id,
                        ballot_box: row.report.ballot_box().clone(),
                        city: row.report.city().clone(),
                        revision: row.report.revision().get() as i32,
                        reason: FlagReason::LargeCorrection,
                        total_votes: total,
                        previous_total: before,
                        electorate: None,
                        received_at: row.received_at,
                    });
                }
            }
            Ok(flags)
        })
    }

    fn seal_heads(
        &self,
        _election: &ElectionId,
        _before: Option<i64>,
        _limit: u32,
    ) -> Result<SealHeads, StoreError> {
        Ok(SealHeads::default())
    }
}
