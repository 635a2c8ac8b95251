//! Which elections exist, decided before anything is spent on a request.
//!
//! An election exists when it is defined (`election_definitions`) or has
//! been reported to (a row in `reports`). Every endpoint naming an election
//! answers 404 `unknown_election` for any other id, *before* the live feeds
//! ([`crate::live`]) are asked: a made-up id therefore never takes one of
//! their `max_elections` slots, never polls Redis, and a flood of made-up ids
//! cannot lock the real elections out.
//!
//! How it is decided cheaply, and why junk cannot evict real entries:
//!
//! - **Known elections**: the whole list, read from PostgreSQL at start and
//!   then every `refresh` by a background task (`known_elections`: an index
//!   skip scan, one probe per election). A lookup is a shared lock and a hash
//!   probe. Only PostgreSQL's answers enter it, so a client cannot add to it,
//!   and it is replaced whole, never evicted entry by entry.
//! - **A miss** (an election created since the last refresh, or junk) asks
//!   PostgreSQL directly (two primary-key probes), at most
//!   [`MISS_LOOKUPS`] at a time: a flood of junk ids queues on those permits
//!   and waits at most [`MISS_WAIT`] (then 503), so it cannot take the
//!   connection pool from history queries. A yes joins the known elections.
//! - **Negative answers** are remembered for [`NEGATIVE_TTL`] in a separate,
//!   bounded map ([`MAX_NEGATIVE`] entries, emptied when full). Junk fills
//!   only that map; at worst it costs one lookup per id per second. A new
//!   election is therefore visible within `NEGATIVE_TTL` of its first report
//!   or definition, even to clients that asked just before.
//!
//! PostgreSQL unavailable: known elections keep being served from the list
//! last read; a miss answers 503 (it cannot be decided).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use election_core::ElectionId;
use election_core::History;
use election_http::ApiError;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::answer::store_error;

/// Lookups of elections missing from the known list, at once.
pub const MISS_LOOKUPS: usize = 2;
/// Longest wait for a lookup permit before answering 503.
pub const MISS_WAIT: Duration = Duration::from_secs(1);
/// How long "no such election" is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Most negative answers remembered.
pub const MAX_NEGATIVE: usize = 10_000;

/// The elections that exist, and the cached `GET /v1/elections` answer.
pub struct Elections {
    /// The primary's history (PostgreSQL in the service): a replica's lag
    /// would answer 404 for an election that was just defined.
    catalog: Arc<dyn History>,
    known: RwLock<HashSet<ElectionId>>,
    absent: Mutex<HashMap<ElectionId, Instant>>,
    lookups: Semaphore,
    /// How often the known list is read again; also how long the
    /// `GET /v1/elections` answer is reused.
    refresh: Duration,
    list: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

impl std::fmt::Debug for Elections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elections")
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

fn unknown(election: &ElectionId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_election",
        format!(
            "election {:?} is neither defined nor reported to; GET /v1/elections lists the elections",
            election.as_str()
        ),
    )
}

impl Elections {
    /// An empty registry; [`Elections::keep_fresh`] fills it.
    pub fn new(catalog: Arc<dyn History>, refresh: Duration) -> Arc<Elections> {
        Arc::new(Elections {
            catalog,
            known: RwLock::new(HashSet::new()),
            absent: Mutex::new(HashMap::new()),
            lookups: Semaphore::new(MISS_LOOKUPS),
            refresh,
            list: tokio::sync::Mutex::new(None),
        })
    }

    /// Reads the known list now and every `refresh` until `stop` is true.
    pub async fn keep_fresh(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            let catalog = Arc::clone(&self.catalog);
            match election_http::blocking(move || catalog.known_elections()).await {
                Ok(Ok(list)) => {
                    *self.known.write().unwrap_or_else(|p| p.into_inner()) =
                        list.into_iter().collect();
                    if failing {
                        tracing::info!("reading the known elections works again");
                        failing = false;
                    }
                }
                Ok(Err(error)) => {
                    if !failing {
                        tracing::warn!(%error, "cannot read the known elections; keeping the last list");
                        failing = true;
                    }
                }
                Err(error) => tracing::warn!(%error, "the known-elections task failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.refresh) => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
        }
    }

    /// `Ok` when `election` exists; 404 `unknown_election` when it does
    /// not; 503 when that cannot be decided now.
    pub async fn check(&self, election: &ElectionId) -> Result<(), ApiError> {
        if self.is_known(election) {
            return Ok(());
        }
        if self.recently_absent(election) {
            return Err(unknown(election));
        }
        let _permit = tokio::time::timeout(MISS_WAIT, self.lookups.acquire())
            .await
            .map_err(|_| {
                ApiError::unavailable(
                    "busy",
                    "too many lookups of unknown elections at once; retry",
                )
            })?
            .map_err(|_| ApiError::unavailable("unavailable", "the service is shutting down"))?;
        // Another request may have answered it while this one waited.
        if self.is_known(election) {
            return Ok(());
        }
        if self.recently_absent(election) {
            return Err(unknown(election));
        }
        let catalog = Arc::clone(&self.catalog);
        let target = election.clone();
        let exists = election_http::blocking(move || catalog.election_exists(&target))
            .await?
            .map_err(store_error)?;
        if exists {
            self.known
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(election.clone());
            Ok(())
        } else {
            let mut absent = self.absent.lock().unwrap_or_else(|p| p.into_inner());
            if absent.len() >= MAX_NEGATIVE {
                absent.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                if absent.len() >= MAX_NEGATIVE {
                    absent.clear();
                }
            }
            absent.insert(election.clone(), Instant::now());
            Err(unknown(election))
        }
    }

    fn is_known(&self, election: &ElectionId) -> bool {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(election)
    }

    fn recently_absent(&self, election: &ElectionId) -> bool {
        self.absent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(election)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    /// The body of `GET /v1/elections`, read at most once per `refresh`.
    pub async fn list_body(&self) -> Result<Bytes, ApiError> {
        let mut cached = self.list.lock().await;
        if let Some((at, body)) = &*cached
            && at.elapsed() < self.refresh
        {
            return Ok(body.clone());
        }
        let catalog = Arc::clone(&self.catalog);
        let rows = election_http::blocking(move || catalog.elections_summary())
            .await?
            .map_err(store_error)?;
        let body = Bytes::from(
            serde_json::to_vec(&ListBody {
                elections: rows
                    .iter()
                    .map(|row| ListItem {
                        election: &row.election,
                        name: row.name.as_deref(),
                        defined: row.name.is_some(),
                        ballot_boxes_reported: row.ballot_boxes_reported,
                        last_report_at: row
                            .last_report_at
                            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    })
                    .collect(),
            })
            .map_err(|error| ApiError::internal(format!("rendering the elections: {error}")))?,
        );
        *cached = Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

#[derive(Serialize)]
struct ListBody<'a> {
    elections: Vec<ListItem<'a>>,
}

#[derive(Serialize)]
struct ListItem<'a> {
    election: &'a ElectionId,
    defined: bool,
    name: Option<&'a str>,
    ballot_boxes_reported: u64,
    last_report_at: Option<String>,
}
