//! `GET /v1/elections/{e}/timeline?bucket=`: cumulative totals per party
//! over time, kept up to date incrementally.
//!
//! Summing an election's whole `vote_log` takes seconds on millions of rows,
//! and every open dashboard asks for the timeline every few seconds. So the
//! service keeps, per election, the net votes per party per **minute**, and
//! asks PostgreSQL again only for the minutes since a little before its last
//! read (the `(election_id, reported_at)` index makes that read proportional
//! to the rows of those minutes, not to the election). Every bucket size
//! offered divides a day and is aligned on the same origin, so each is made
//! of whole minutes and is summed from them here.
//!
//! Log rows carry the start time of the transaction that wrote them, and a
//! transaction may commit a little after a later one started. Minutes newer
//! than [`SETTLE`] before the database's clock are therefore read again every
//! time, and the whole history is re-read every `full_refresh`
//! (`TIMELINE_FULL_REFRESH`, 5 minutes by default), so a row committed
//! unusually late is still counted within that time.
//!
//! Answers are reused for `ttl` (`TIMELINE_CACHE_TTL`); concurrent requests for
//! one election wait for one read instead of each sending their own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use election_core::history::{self, History, TimelinePoint};
use election_core::{ElectionId, PartyId};
use election_http::ApiError;
use serde::Serialize;

use crate::answer::store_error;

/// Minutes this close to the database's clock are read again each time.
pub const SETTLE: chrono::Duration = chrono::Duration::minutes(2);

/// The resolution kept: one minute.
const MINUTE_SECONDS: u32 = 60;

/// Most elections whose timelines are kept; past it, those not being read
/// are dropped.
const MAX_KEPT: usize = 256;

/// A bucket size of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// 1 minute.
    M1,
    /// 5 minutes (the default).
    M5,
    /// 15 minutes.
    M15,
    /// 1 hour.
    H1,
    /// 1 day (UTC days).
    D1,
}

impl Bucket {
    /// Every size, as written in the query string.
    pub const ALL: [(&'static str, Bucket); 5] = [
        ("1m", Bucket::M1),
        ("5m", Bucket::M5),
        ("15m", Bucket::M15),
        ("1h", Bucket::H1),
        ("1d", Bucket::D1),
    ];

    /// Reads `1m`, `5m`, `15m`, `1h` or `1d`.
    pub fn parse(text: &str) -> Option<Bucket> {
        Bucket::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, bucket)| *bucket)
    }

    /// As written in the query string.
    pub fn name(self) -> &'static str {
        Bucket::ALL
            .iter()
            .find(|(_, bucket)| *bucket == self)
            .map_or("5m", |(name, _)| *name)
    }

    /// Its length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::M1 => 60,
            Bucket::M5 => 300,
            Bucket::M15 => 900,
            Bucket::H1 => 3600,
            Bucket::D1 => 86_400,
        }
    }

    /// The end of the bucket holding `instant`. Buckets are aligned on the
    /// Unix epoch (as on 2000-01-01T00:00:00Z, a midnight: every size
    /// divides a day).
    pub fn end_of(self, instant: DateTime<Utc>) -> DateTime<Utc> {
        let seconds = self.seconds();
        let end = (instant.timestamp().div_euclid(seconds) + 1) * seconds;
        DateTime::from_timestamp(end, 0).unwrap_or(instant)
    }
}

/// What is kept of one election.
#[derive(Default)]
struct Kept {
    /// Net votes per party, by minute start.
    minutes: BTreeMap<DateTime<Utc>, BTreeMap<PartyId, i64>>,
    /// The first minute to read again next time.
    next_since: Option<DateTime<Utc>>,
    /// When PostgreSQL was last read.
    read_at: Option<Instant>,
    /// When the whole history was last read.
    full_read_at: Option<Instant>,
    /// Bodies rendered since the last read, by bucket.
    rendered: HashMap<Bucket, Bytes>,
}

/// The timelines of every election asked for.
pub struct Timelines {
    ttl: Duration,
    full_refresh: Duration,
    kept: Mutex<HashMap<ElectionId, Arc<tokio::sync::Mutex<Kept>>>>,
}

impl std::fmt::Debug for Timelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timelines")
            .field("ttl", &self.ttl)
            .field("full_refresh", &self.full_refresh)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    election: &'a ElectionId,
    bucket: &'static str,
    parties: Vec<&'a PartyId>,
    points: Vec<PointBody<'a>>,
}

#[derive(Serialize)]
struct PointBody<'a> {
    at: String,
    parties: BTreeMap<&'a PartyId, i64>,
    total_votes: i64,
}

impl Timelines {
    /// Answers are reused for `ttl`; the whole history is read again every
    /// `full_refresh`.
    pub fn new(ttl: Duration, full_refresh: Duration) -> Timelines {
        Timelines {
            ttl,
            full_refresh,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// The timeline body of `election` in `bucket`s.
    pub async fn body(
        &self,
        source: &Arc<dyn History>,
        election: &ElectionId,
        bucket: Bucket,
    ) -> Result<Bytes, ApiError> {
        let slot = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() >= MAX_KEPT && !kept.contains_key(election) {
                // Drop every timeline nobody is reading right now.
                kept.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            Arc::clone(kept.entry(election.clone()).or_default())
        };
        let mut kept = slot.lock().await;
        let fresh = kept.read_at.is_some_and(|at| at.elapsed() < self.ttl);
        if !fresh {
            let full = kept
                .full_read_at
                .is_none_or(|at| at.elapsed() >= self.full_refresh);
            let since = if full { None } else { kept.next_since };
            let read = {
                let source = Arc::clone(source);
                let election = election.clone();
                election_http::blocking(move || {
                    source.votes_per_bucket(&election, MINUTE_SECONDS, since)
                })
                .await?
                .map_err(store_error)?
            };
            match since {
                None => kept.minutes.clear(),
                Some(since) => {
                    let _ = kept.minutes.split_off(&since);
                }
            }
            for row in read.rows {
                *kept
                    .minutes
                    .entry(row.start)
                    .or_default()
                    .entry(row.party)
                    .or_insert(0) += row.votes;
            }
            let settled = read.read_at - SETTLE;
            kept.next_since = Some(Bucket::M1.end_of(settled) - chrono::Duration::minutes(1));
            kept.read_at = Some(Instant::now());
            if full {
                kept.full_read_at = kept.read_at;
            }
            kept.rendered.clear();
        }
        if let Some(body) = kept.rendered.get(&bucket) {
            return Ok(body.clone());
        }
        let points = history::cumulate(kept.minutes.iter().flat_map(|(minute, parties)| {
            let end = bucket.end_of(*minute);
            parties
                .iter()
                .map(move |(party, votes)| (end, party.clone(), *votes))
        }));
        let body = Bytes::from(render(election, bucket, &points));
        kept.rendered.insert(bucket, body.clone());
        Ok(body)
    }
}

/// The JSON body of a timeline.
pub fn render(election: &ElectionId, bucket: Bucket, points: &[TimelinePoint]) -> String {
    let parties: Vec<&PartyId> = points
        .last()
        .map(|point| point.parties.iter().map(|(p, _)| p).collect())
        .unwrap_or_default();
    let body = Body {
        election,
        bucket: bucket.name(),
        parties,
        points: points
            .iter()
            .map(|point| PointBody {
                at: point.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                parties: point.parties.iter().map(|(p, n)| (p, *n)).collect(),
                total_votes: point.parties.iter().map(|(_, n)| n).sum(),
            })
            .collect(),
    };
    serde_json::to_string(&body).expect("serialising plain data cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn buckets_end_on_their_boundaries() {
        let instant = at("2025-09-15T18:07:30Z");
        assert_eq!(Bucket::M1.end_of(instant), at("2025-09-15T18:08:00Z"));
        assert_eq!(Bucket::M5.end_of(instant), at("2025-09-15T18:10:00Z"));
        assert_eq!(Bucket::M15.end_of(instant), at("2025-09-15T18:15:00Z"));
        assert_eq!(Bucket::H1.end_of(instant), at("2025-09-15T19:00:00Z"));
        assert_eq!(Bucket::D1.end_of(instant), at("2025-09-16T00:00:00Z"));
        // An instant on a boundary belongs to the bucket it starts.
        assert_eq!(
            Bucket::M5.end_of(at("2025-09-15T18:10:00Z")),
            at("2025-09-15T18:15:00Z")
        );
    }

    #[test]
    fn bucket_names_round_trip() {
        for (name, bucket) in Bucket::ALL {
            assert_eq!(Bucket::parse(name), Some(bucket));
            assert_eq!(bucket.name(), name);
        }
        assert_eq!(Bucket::parse("2m"), None);
    }
}
