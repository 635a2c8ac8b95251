//! One shared, periodically refreshed snapshot per election being watched.
//!
//! The first request for an election starts a refresh task for it. Every
//! interval the task reads the election's counters from Redis on the
//! blocking pool, renders them ([`Renderer`]: only the cities whose counters
//! moved), and publishes the version on a `tokio::sync::watch` channel.
//! Every reader and every stream subscriber of that election borrows the
//! newest value of the same channel, so 10,000 readers cost Redis exactly
//! what one does, and a slow stream subscriber never queues anything: it
//! simply sees the newest value when it is ready.
//!
//! A refresh costs what changed rather than what the election holds (at
//! 10,000 cities × 20 parties, reading into maps and re-rendering everything
//! took ~430 ms of CPU per refresh): it reads a `Grid` (`Tally::grid`). With
//! a change journal (`Tally::moved_since`, kept by Redis) it first asks which
//! cities moved since the last read and reads only their rows
//! (`Tally::grid_moved`); without one, a `Fingerprint` (`Tally::fingerprint`,
//! one small pipeline) that, when it did not move, lets it read nothing
//! else. Both miss a few changes (see `read_if_moved`), so a full read,
//! listing parties and cities afresh, is made at least every
//! [`LiveConfig::full_read_with_journal`] or [`LiveConfig::full_read_every`].
//!
//! Subscribers are woken only when the totals change; a read that finds the
//! same counters still publishes the bodies with a new `as_of` without
//! waking anyone. A refresh that read nothing (no city named, an unchanged
//! fingerprint) publishes nothing: `as_of` is the time of the last read of
//! counters. A change
//! also computes the stream's delta from the previous version, once, and
//! keeps the last `stream_history` of them with every published snapshot, so
//! a stream subscriber that is behind (reconnected, or slow) catches up from
//! them without anything being kept per subscriber (see [`crate::stream`]).
//!
//! When Redis cannot be read, the last good snapshot keeps being served (its
//! `as_of` says how old it is); before the first good one, readers get 503.
//! A counter key holding something that is not an integer does not fail the
//! snapshot: the other counters are served, the bodies name the key
//! (`unreadable_counters`), and a warning is logged when the set of such keys
//! changes (so at most once per refresh, and once for a key that stays bad).
//! A task stops once nobody has read its election for `idle_after` and no
//! stream is open on it, and every task stops at shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use election_core::{CityId, Definition, ElectionId, Fingerprint, Grid, JournalCursor, Tally};
use election_core::{DefinitionVersion as Version, Lookup};
use election_http::ApiError;
use election_http::metrics::{LATENCY_BUCKETS, Registry};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::render::{Rendered, Renderer};
use crate::stream::Delta;

/// What an election's channel holds.
#[derive(Clone, Debug)]
pub enum Current {
    /// The first snapshot is being read.
    Starting,
    /// No snapshot could be read yet; why.
    Unavailable(Arc<str>),
    /// The newest snapshot.
    Ready(Arc<Rendered>),
}

/// Reads an election's definition unless its stored version is still the
/// one given (`store_pg::definitions::find_if_changed`); blocking.
pub type DefinitionSource =
    Arc<dyn Fn(&ElectionId, Option<Version>) -> Result<Lookup, String> + Send + Sync>;

/// How often a feed reads its election's definition again: a definition
/// loaded while the service runs shows within this time.
pub const DEFINITION_REFRESH: Duration = Duration::from_secs(5);

/// Buckets of `query_stream_delta_bytes`: from a city's change to most of a
/// 10,000-city election.
const DELTA_BUCKETS: &[f64] = &[1e2, 1e3, 1e4, 1e5, 1e6, 1e7];

/// How the live feeds run.
#[derive(Clone, Copy, Debug)]
pub struct LiveConfig {
    /// Time between two snapshots of an election.
    pub interval: Duration,
    /// A feed without readers or subscribers for this long stops.
    pub idle_after: Duration,
    /// Most feeds at once; more elections are refused with 503, so requests
    /// for made-up election ids cannot make the service poll Redis without
    /// bound.
    pub max_elections: usize,
    /// Longest wait of a first request for the first snapshot.
    pub first_snapshot_timeout: Duration,
    /// Stream deltas kept per election: a subscriber further behind than
    /// this many versions gets a snapshot. 0 keeps none.
    pub stream_history: usize,
    /// Longest time between two full reads of an election's counters: a
    /// refresh whose fingerprint did not move reads nothing else, and a
    /// change the fingerprint misses shows within this time (see
    /// `read_if_moved`).
    pub full_read_every: Duration,
    /// The same where the tally keeps a change journal: refreshes then read
    /// the cities it names, and a full read only catches what the journal
    /// misses (a counter set by hand, a journal write that failed).
    pub full_read_with_journal: Duration,
}

/// [`LiveConfig::full_read_every`] of the service.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(2);

/// One election's feed, as the registry keeps it.
struct Feed {
    /// A receiver kept so new readers can clone it. It counts as one of the
    /// channel's receivers: a feed with exactly one has no stream open.
    current: watch::Receiver<Current>,
    /// Milliseconds since [`Live::epoch`] of the last read.
    last_read_ms: Arc<AtomicU64>,
}

/// Every election being watched.
pub struct Live {
    tally: Arc<dyn Tally>,
    definitions: DefinitionSource,
    config: LiveConfig,
    feeds: RwLock<HashMap<ElectionId, Feed>>,
    metrics: Arc<Registry>,
    /// Becomes `true` at shutdown: refresh tasks and streams end.
    stop: watch::Receiver<bool>,
    epoch: Instant,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::unavailable("unavailable", message)
}

impl Live {
    /// A registry with no feed yet.
    pub fn new(
        tally: Arc<dyn Tally>,
        definitions: DefinitionSource,
        config: LiveConfig,
        metrics: Arc<Registry>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Live> {
        Arc::new(Live {
            tally,
            definitions,
            config,
            feeds: RwLock::new(HashMap::new()),
            metrics,
            stop,
            epoch: Instant::now(),
        })
    }

    /// The shutdown signal, for streams.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The newest snapshot of `election`, starting its feed and waiting for
    /// the first snapshot if needed.
    pub async fn current(
        self: &Arc<Self>,
        election: &ElectionId,
    ) -> Result<Arc<Rendered>, ApiError> {
        // The hot path: a shared lock, an atomic store and a pointer copy.
        {
            let feeds = self.feeds.read().unwrap_or_else(|p| p.into_inner());
            if let Some(feed) = feeds.get(election) {
                feed.last_read_ms.store(self.now_ms(), Ordering::Relaxed);
                if let Current::Ready(rendered) = &*feed.current.borrow() {
                    return Ok(Arc::clone(rendered));
                }
            }
        }
        let mut receiver = self.subscribe(election)?;
        self.wait_ready(&mut receiver).await
    }

    /// A receiver of `election`'s feed whose first value is ready, for a
    /// stream. Holding it keeps the feed running.
    pub async fn subscribe_ready(
        self: &Arc<Self>,
        election: &ElectionId,
    ) -> Result<watch::Receiver<Current>, ApiError> {
        let mut receiver = self.subscribe(election)?;
        self.wait_ready(&mut receiver).await?;
        Ok(receiver)
    }

    /// A receiver of `election`'s feed, starting the feed if needed.
    fn subscribe(
        self: &Arc<Self>,
        election: &ElectionId,
    ) -> Result<watch::Receiver<Current>, ApiError> {
        {
            let feeds = self.feeds.read().unwrap_or_else(|p| p.into_inner());
            if let Some(feed) = feeds.get(election) {
                feed.last_read_ms.store(self.now_ms(), Ordering::Relaxed);
                return Ok(feed.current.clone());
            }
        }
        let mut feeds = self.feeds.write().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(election) {
            feed.last_read_ms.store(self.now_ms(), Ordering::Relaxed);
            return Ok(feed.current.clone());
        }
        if *self.stop.borrow() {
            return Err(unavailable("the service is shutting down; retry"));
        }
        if feeds.len() >= self.config.max_elections {
            return Err(unavailable(format!(
                "{} elections are being watched already, the most this service follows at once; retry later",
                feeds.len()
            )));
        }
        let (sender, receiver) = watch::channel(Current::Starting);
        let last_read_ms = Arc::new(AtomicU64::new(self.now_ms()));
        feeds.insert(
            election.clone(),
            Feed {
                current: receiver.clone(),
                last_read_ms: Arc::clone(&last_read_ms),
            },
        );
        self.set_feed_gauge(feeds.len());
        tracing::info!(election.id = %election, "watching an election");
        tokio::spawn(Arc::clone(self).refresh(election.clone(), sender, last_read_ms));
        Ok(receiver)
    }

    async fn wait_ready(
        &self,
        receiver: &mut watch::Receiver<Current>,
    ) -> Result<Arc<Rendered>, ApiError> {
        let waited = tokio::time::timeout(
            self.config.first_snapshot_timeout,
            receiver.wait_for(|current| !matches!(current, Current::Starting)),
        )
        .await;
        match waited {
            Err(_) => Err(unavailable(
                "the live totals store (Redis) did not answer in time; retry",
            )),
            Ok(Err(_)) => Err(unavailable("the service is shutting down; retry")),
            Ok(Ok(current)) => match &*current {
                Current::Ready(rendered) => Ok(Arc::clone(rendered)),
                Current::Unavailable(why) => Err(unavailable(format!(
                    "the live totals store (Redis) is unavailable ({why}); retry later"
                ))),
                Current::Starting => Err(ApiError::internal("feed still starting after waiting")),
            },
        }
    }

    fn set_feed_gauge(&self, feeds: usize) {
        self.metrics.set(
            "query_live_elections",
            "Elections whose live totals are being refreshed.",
            &[],
            feeds as f64,
        );
    }

    /// Removes the feed if it is idle: nobody read it for `idle_after` and
    /// no stream holds a receiver. Checked again under the write lock, which
    /// readers take in shared mode to touch `last_read_ms`, so a reader
    /// cannot slip in between the check and the removal.
    fn retire_if_idle(
        &self,
        election: &ElectionId,
        sender: &watch::Sender<Current>,
        last_read_ms: &AtomicU64,
    ) -> bool {
        let idle_ms = u64::try_from(self.config.idle_after.as_millis()).unwrap_or(u64::MAX);
        let idle = || {
            self.now_ms()
                .saturating_sub(last_read_ms.load(Ordering::Relaxed))
                >= idle_ms
                && sender.receiver_count() <= 1
        };
        if !idle() {
            return false;
        }
        let mut feeds = self.feeds.write().unwrap_or_else(|p| p.into_inner());
        if !idle() {
            return false;
        }
        feeds.remove(election);
        self.set_feed_gauge(feeds.len());
        tracing::info!(election.id = %election, "no readers left; stopped watching the election");
        true
    }

    /// The refresh task of one election: on every tick, the definition when
    /// it is due ([`Refresh::reread_definition`]), then the counters if they
    /// moved ([`read_if_moved`]), published ([`Refresh::publish`]) or their
    /// failure noted ([`Refresh::failed`]).
    async fn refresh(
        self: Arc<Self>,
        election: ElectionId,
        sender: watch::Sender<Current>,
        last_read_ms: Arc<AtomicU64>,
    ) {
        let mut stop = self.stop.clone();
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut state = Refresh::new(election.clone());
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
            if self.retire_if_idle(&election, &sender, &last_read_ms) {
                return;
            }
            let definition_changed = state.reread_definition(&self).await;
            let started = Instant::now();
            let tally = Arc::clone(&self.tally);
            let target = election.clone();
            let known = state.previous.as_ref().map(|(grid, _)| Arc::clone(grid));
            let full_read_every = if state.cursor.is_some() {
                self.config.full_read_with_journal
            } else {
                self.config.full_read_every
            };
            let full_read_due = definition_changed
                || state
                    .full_read_at
                    .is_none_or(|at| at.elapsed() >= full_read_every);
            let seen = Seen {
                fingerprint: state.fingerprint.clone(),
                cursor: state.cursor,
                again: state.again.clone(),
            };
            let read = tokio::task::spawn_blocking(move || {
                read_if_moved(&*tally, &target, known.as_deref(), seen, full_read_due)
            })
            .await;
            match read {
                Ok(Ok(Read::Unmoved(cursor))) => {
                    state.cursor = cursor;
                    state.again.clear();
                    self.metrics.inc(
                        "query_refresh_skipped_total",
                        "Refreshes that read only the change journal or the fingerprint of an election (nothing moved), not its counters.",
                        &[],
                        1,
                    )
                }
                Ok(Ok(Read::Moved(grid, cursor, named))) => {
                    self.metrics.observe(
                        "query_partial_refresh_seconds",
                        "Time to read the counters of the cities the change journal named, and only those.",
                        LATENCY_BUCKETS,
                        &[],
                        started.elapsed().as_secs_f64(),
                    );
                    state.cursor = cursor;
                    state.again = named;
                    state.publish(&self, grid, definition_changed, &sender);
                }
                Ok(Ok(Read::Full(grid, read_fingerprint, cursor))) => {
                    self.metrics.observe(
                        "query_snapshot_refresh_seconds",
                        "Time to read one election's counters from Redis (full reads only).",
                        LATENCY_BUCKETS,
                        &[],
                        started.elapsed().as_secs_f64(),
                    );
                    state.fingerprint = read_fingerprint;
                    state.cursor = cursor;
                    state.again.clear();
                    state.full_read_at = Some(started);
                    state.publish(&self, grid, definition_changed, &sender);
                }
                Ok(Err(error)) => state.failed(&self, &error.to_string(), &sender),
                Err(error) => state.failed(
                    &self,
                    &format!("the snapshot task failed: {error}"),
                    &sender,
                ),
            }
        }
        // Shutdown: dropping the sender ends every stream of the election.
        let mut feeds = self.feeds.write().unwrap_or_else(|p| p.into_inner());
        feeds.remove(&election);
        self.set_feed_gauge(feeds.len());
    }
}

/// What one election's refresh task keeps between ticks.
struct Refresh {
    election: ElectionId,
    /// The last grid read, with its version.
    previous: Option<(Arc<Grid>, u64)>,
    renderer: Renderer,
    /// The fingerprint read just before the last full read, and when that
    /// full read was: see [`read_if_moved`].
    fingerprint: Option<Fingerprint>,
    full_read_at: Option<Instant>,
    /// Where the tally's change journal stood before the last read (`None`
    /// without a journal), and the cities it named then.
    cursor: Option<JournalCursor>,
    again: Vec<CityId>,
    /// The last published snapshot, and the deltas that led to it (at most
    /// `stream_history`, oldest first; `recent` is the same, shared with
    /// each snapshot).
    last: Option<Arc<Rendered>>,
    ring: VecDeque<Arc<Delta>>,
    recent: Arc<[Arc<Delta>]>,
    /// Whether the last read failed (its failure is logged once).
    failing: bool,
    /// The definition read last, its version, and when it was read.
    definition: Option<Arc<Definition>>,
    version: Option<Version>,
    definition_read: Option<Instant>,
}

impl Refresh {
    fn new(election: ElectionId) -> Refresh {
        Refresh {
            renderer: Renderer::new(election.clone()),
            election,
            previous: None,
            fingerprint: None,
            full_read_at: None,
            cursor: None,
            again: Vec::new(),
            last: None,
            ring: VecDeque::new(),
            recent: Arc::from(Vec::new()),
            failing: false,
            definition: None,
            version: None,
            definition_read: None,
        }
    }

    /// Reads the definition again when [`DEFINITION_REFRESH`] has passed
    /// (only its version, unless it moved); whether it changed. A failed
    /// read keeps the definition read last and is tried again next tick.
    async fn reread_definition(&mut self, live: &Live) -> bool {
        if self
            .definition_read
            .is_some_and(|at| at.elapsed() < DEFINITION_REFRESH)
        {
            return false;
        }
        let election = &self.election;
        let source = Arc::clone(&live.definitions);
        let target = election.clone();
        let known = self.version;
        match tokio::task::spawn_blocking(move || source(&target, known)).await {
            Ok(Ok(Lookup::Unchanged)) => self.definition_read = Some(Instant::now()),
            Ok(Ok(Lookup::Current(found))) => {
                self.definition_read = Some(Instant::now());
                let (found, found_version) = match found {
                    Some((found, found_version)) => (Some(found), Some(found_version)),
                    None => (None, None),
                };
                self.version = found_version;
                if found.as_deref() != self.definition.as_deref() {
                    self.definition = found.map(Arc::from);
                    self.renderer.set_definition(self.definition.clone());
                    return true;
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(election.id = %election, %error, "cannot read the election definition");
            }
            Err(error) => {
                tracing::warn!(election.id = %election, %error, "the definition task failed");
            }
        }
        false
    }

    /// Publishes what a full read found: a new snapshot (its version moved
    /// only when the grid or the definition did), the delta from the last
    /// one into the stream's ring, and the unreadable counters logged when
    /// they change.
    fn publish(
        &mut self,
        live: &Live,
        grid: Grid,
        definition_changed: bool,
        sender: &watch::Sender<Current>,
    ) {
        let election = &self.election;
        let before = self
            .previous
            .as_ref()
            .map_or(&[][..], |(seen, _)| &seen.unreadable[..]);
        if grid.unreadable[..] != *before {
            if grid.unreadable.is_empty() {
                tracing::info!(election.id = %election, "every counter can be read again");
            } else {
                tracing::warn!(
                    election.id = %election,
                    counters = ?grid.unreadable,
                    "counter keys hold something that is not an integer: the totals leave them out and name them (unreadable_counters); fix or delete them, then run `election-reprocessor reconcile --repair`"
                );
            }
        }
        let as_of = Utc::now();
        let changed = definition_changed
            || self
                .previous
                .as_ref()
                .is_none_or(|(seen, _)| **seen != grid);
        let version = match &self.previous {
            Some((_, version)) if !changed => *version,
            Some((_, version)) => next_version(*version, as_of.timestamp_millis()),
            None => next_version(0, as_of.timestamp_millis()),
        };
        let grid = Arc::new(grid);
        let mut rendered = self.renderer.render(Arc::clone(&grid), version, as_of);
        live.metrics.inc(
            "query_rendered_cities_total",
            "City entries serialised by refreshes (only those whose counters moved).",
            &[],
            self.renderer.last_rendered() as u64,
        );
        if changed
            && let Some(before) = &self.last
            && live.config.stream_history > 0
        {
            let delta = Delta::between(before, &rendered);
            live.metrics.observe(
                "query_stream_delta_bytes",
                "Size of each stream delta (the unscoped event), in bytes.",
                DELTA_BUCKETS,
                &[],
                delta.len() as f64,
            );
            self.ring.push_back(Arc::new(delta));
            while self.ring.len() > live.config.stream_history {
                self.ring.pop_front();
            }
            self.recent = self.ring.iter().cloned().collect::<Vec<_>>().into();
        }
        rendered.recent = Arc::clone(&self.recent);
        let rendered = Arc::new(rendered);
        self.last = Some(Arc::clone(&rendered));
        sender.send_if_modified(|current| {
            let wake = changed || !matches!(current, Current::Ready(_));
            *current = Current::Ready(rendered);
            wake
        });
        if self.failing {
            tracing::info!(election.id = %election, "reading the live totals works again");
            self.failing = false;
        }
        self.previous = Some((grid, version));
    }

    /// Notes a failed read: counted, logged once until a read works again;
    /// readers keep the last snapshot, or get the error before the first.
    fn failed(&mut self, live: &Live, error: &str, sender: &watch::Sender<Current>) {
        live.metrics.inc(
            "query_snapshot_failures_total",
            "Snapshots of the live totals that could not be read.",
            &[],
            1,
        );
        if !self.failing {
            tracing::warn!(election.id = %self.election, error = %error, "cannot read the live totals; serving the last snapshot read");
            self.failing = true;
        }
        sender.send_if_modified(|current| match current {
            Current::Starting => {
                *current = Current::Unavailable(Arc::from(error));
                true
            }
            Current::Unavailable(_) | Current::Ready(_) => false,
        });
    }
}

/// What the refreshes before this one saw.
struct Seen {
    /// The fingerprint read just before the last full read.
    fingerprint: Option<Fingerprint>,
    /// Where the change journal stood before the last read.
    cursor: Option<JournalCursor>,
    /// The cities the journal named last time, read again once: a journal
    /// entry may land just before its counters (see store-redis `journal`).
    again: Vec<CityId>,
}

/// What one refresh read, with where the change journal stood before it
/// (`None` without a journal).
#[derive(Debug)]
enum Read {
    /// Nothing moved (the journal named no city, or without a journal the
    /// fingerprint is the one read before the last full read): nothing was
    /// read again.
    Unmoved(Option<JournalCursor>),
    /// The cities the journal named (the last of the tuple), and those it
    /// named last time, read over the grid read before.
    Moved(Grid, Option<JournalCursor>, Vec<CityId>),
    /// Every counter, with the fingerprint read just before them (if the
    /// tally has one and no journal).
    Full(Grid, Option<Fingerprint>, Option<JournalCursor>),
}

/// One refresh's read, on the blocking pool.
///
/// With a change journal (`Tally::moved_since`), unless a full read is
/// `due`: the journal since the cursor seen, then only the cities it names
/// and those it named last time (`Tally::grid_moved`), or nothing when
/// there are none. The journal is read
/// *before* the counters, so a move it names later is read by the next
/// refresh; it is written after the counters, so a city it names has moved.
/// When it cannot bridge from the cursor (a Redis that restarted empty),
/// everything is read.
///
/// Without one, the fingerprint is read first and, when it is still the one
/// `seen`, nothing else: an election nobody reports to costs one small
/// pipeline per refresh. Otherwise every counter is read. The fingerprint is
/// read *before* the counters, so a change landing between the two moves the
/// next fingerprint and is read by the next refresh.
///
/// Both miss some changes: the journal a counter rewritten without a report
/// or a journal write that failed, the fingerprint a change that leaves it
/// as it was (revisions cancelling out nationally within one interval, a city
/// counter restored by healing without a report). So the feed makes a full
/// read `due` at least every [`LiveConfig::full_read_with_journal`] or
/// [`LiveConfig::full_read_every`]: such a change shows within that time. A
/// due read also lists the parties and cities afresh (`known` is not
/// passed), which catches sets that lost as many members as they gained.
fn read_if_moved(
    tally: &dyn Tally,
    election: &ElectionId,
    known: Option<&Grid>,
    seen: Seen,
    due: bool,
) -> Result<Read, election_core::StoreError> {
    let journal = tally.moved_since(election, seen.cursor)?;
    let cursor = journal.as_ref().map(|moved| moved.cursor);
    match (journal, known) {
        (Some(moved), Some(known)) if !due => {
            if let Some(cities) = moved.cities {
                let mut read: Vec<CityId> = cities.iter().chain(&seen.again).cloned().collect();
                read.sort();
                read.dedup();
                // No city, and the position did not move: nothing to read.
                // (It moves without a city when a national counter was
                // repaired: the national counters are read with any rows.)
                if read.is_empty() && cursor == seen.cursor {
                    return Ok(Read::Unmoved(cursor));
                }
                let grid = tally.grid_moved(election, known, &read)?;
                return Ok(Read::Moved(grid, cursor, cities));
            }
        }
        (Some(_), _) => {}
        (None, _) => {
            let fingerprint = match known {
                Some(known) => tally.fingerprint(election, known)?,
                None => None,
            };
            if !due && fingerprint.is_some() && fingerprint == seen.fingerprint {
                return Ok(Read::Unmoved(None));
            }
            let grid = tally.grid(election, if due { None } else { known })?;
            return Ok(Read::Full(grid, fingerprint, None));
        }
    }
    let grid = tally.grid(election, if due { None } else { known })?;
    Ok(Read::Full(grid, None, cursor))
}

/// The version after `previous` for a change seen at `now_ms`: the time in
/// milliseconds, so versions keep increasing across restarts of a feed and of
/// the service, but always at least one more than the previous one.
fn next_version(previous: u64, now_ms: i64) -> u64 {
    u64::try_from(now_ms).unwrap_or(0).max(previous + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream;
    use axum::http::StatusCode;
    use election_core::memory::MemoryTally;
    use election_core::{Counter, contract};

    fn config() -> LiveConfig {
        LiveConfig {
            interval: Duration::from_millis(20),
            idle_after: Duration::from_millis(200),
            max_elections: 2,
            first_snapshot_timeout: Duration::from_secs(5),
            stream_history: 4,
            full_read_every: Duration::from_millis(200),
            full_read_with_journal: Duration::from_millis(400),
        }
    }

    #[test]
    fn versions_follow_the_clock_and_always_increase() {
        assert_eq!(next_version(0, 1_000), 1_000);
        assert_eq!(next_version(1_000, 1_000), 1_001);
        assert_eq!(next_version(5_000, 1_000), 5_001);
        assert_eq!(next_version(0, -5), 1);
    }

    #[tokio::test]
    async fn readers_share_one_feed_that_stops_when_idle() {
        let tally = Arc::new(MemoryTally::new());
        let (_stop_tx, stop) = watch::channel(false);
        let live = Live::new(
            tally.clone(),
            Arc::new(|_, _| Ok(Lookup::Current(None))),
            config(),
            Arc::new(Registry::new()),
            stop,
        );
        let election = contract::unique_election("live");
        let first = live.current(&election).await.unwrap();
        let second = live.current(&election).await.unwrap();
        assert_eq!(first.version, second.version);
        assert_eq!(live.feeds.read().unwrap().len(), 1);

        // A change shows up within a few intervals, with a higher version.
        let engine = election_core::Engine::new(
            Arc::new(election_core::memory::MemoryLog::new()),
            tally.clone() as Arc<dyn Tally>,
        );
        engine.submit(&contract::seed_reports(&election)).unwrap();
        let mut receiver = live.subscribe_ready(&election).await.unwrap();
        let changed = receiver
            .wait_for(|c| matches!(c, Current::Ready(r) if r.version > first.version))
            .await
            .unwrap()
            .clone();
        let Current::Ready(changed) = changed else {
            unreachable!()
        };
        assert!(
            std::str::from_utf8(&changed.national)
                .unwrap()
                .contains("\"total_votes\":840")
        );
        assert_eq!(tally.snapshot(&election).unwrap().ballot_boxes_reported, 3);

        // A subscriber keeps the feed alive; without it, the feed stops.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(live.feeds.read().unwrap().len(), 1);
        drop(receiver);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !live.feeds.read().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the idle feed did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn too_many_elections_are_refused() {
        let (_stop_tx, stop) = watch::channel(false);
        let live = Live::new(
            Arc::new(MemoryTally::new()),
            Arc::new(|_, _| Ok(Lookup::Current(None))),
            config(),
            Arc::new(Registry::new()),
            stop,
        );
        for _ in 0..2 {
            live.current(&contract::unique_election("cap"))
                .await
                .unwrap();
        }
        let error = live
            .current(&contract::unique_election("cap"))
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(error.message().contains("elections are being watched"));
    }

    /// A memory tally with a fingerprint (the sizes and the national
    /// counters, like Redis's), counting its full reads.
    struct Fingerprinted {
        inner: MemoryTally,
        grids: AtomicU64,
    }

    impl Tally for Fingerprinted {
        fn apply(
            &self,
            batch: &[election_core::Counting],
        ) -> Vec<Result<election_core::Applied, election_core::StoreError>> {
            self.inner.apply(batch)
        }
        fn unapplied(
            &self,
            batch: &[election_core::Counting],
        ) -> Result<Vec<election_core::ReportId>, election_core::StoreError> {
            self.inner.unapplied(batch)
        }
        fn snapshot(
            &self,
            election: &ElectionId,
        ) -> Result<election_core::Snapshot, election_core::StoreError> {
            self.inner.snapshot(election)
        }
        fn guarded_add(
            &self,
            election: &ElectionId,
            counter: &Counter,
            observed: i64,
            delta: i64,
        ) -> Result<bool, election_core::StoreError> {
            self.inner.guarded_add(election, counter, observed, delta)
        }
        fn grid(
            &self,
            election: &ElectionId,
            known: Option<&Grid>,
        ) -> Result<Grid, election_core::StoreError> {
            self.grids.fetch_add(1, Ordering::Relaxed);
            self.inner.grid(election, known)
        }
        fn fingerprint(
            &self,
            election: &ElectionId,
            known: &Grid,
        ) -> Result<Option<Fingerprint>, election_core::StoreError> {
            let snapshot = self.inner.snapshot(election)?;
            let mut numbers = vec![
                Some(snapshot.parties.len() as i64),
                Some(snapshot.cities.len() as i64),
                Some(snapshot.ballot_boxes_reported as i64),
            ];
            numbers.extend(
                known
                    .parties
                    .iter()
                    .map(|party| Some(snapshot.totals.get(&Counter::National(party.clone())))),
            );
            Ok(Some(Fingerprint::new(numbers)))
        }
    }

    fn london_labour() -> Counter {
        Counter::City(
            CityId::parse("london").unwrap(),
            election_core::PartyId::parse("labour").unwrap(),
        )
    }

    #[test]
    fn with_a_journal_a_refresh_reads_the_cities_it_names_and_those_of_last_time() {
        let tally = MemoryTally::new();
        let election = contract::unique_election("journal");
        let apply = |id: i64, ballot_box: &str, city: &str, labour: u32| {
            let votes = election_core::Votes::new(
                [(election_core::PartyId::parse("labour").unwrap(), labour)].into(),
            )
            .unwrap();
            let counting = election_core::Counting {
                report_id: election_core::ReportId(id),
                election: election.clone(),
                ballot_box: election_core::BallotBoxId::parse(ballot_box).unwrap(),
                city: CityId::parse(city).unwrap(),
                revision: election_core::Revision::FIRST,
                difference: election_core::Difference::between(None, &votes),
            };
            assert!(tally.apply(&[counting])[0].is_ok());
        };
        apply(1, "B1", "london", 200);
        apply(2, "B2", "leeds", 10);
        let first = |cursor| Seen {
            fingerprint: None,
            cursor,
            again: Vec::new(),
        };
        let Read::Full(grid, None, Some(cursor)) =
            read_if_moved(&tally, &election, None, first(None), true).unwrap()
        else {
            panic!("a first read is a full one, with the journal's position")
        };
        assert!(matches!(
            read_if_moved(&tally, &election, Some(&grid), first(Some(cursor)), false).unwrap(),
            Read::Unmoved(Some(same)) if same == cursor
        ));

        // A new box in a known city: that city is read, over the grid.
        apply(3, "B3", "leeds", 5);
        let Read::Moved(moved, Some(next), named) =
            read_if_moved(&tally, &election, Some(&grid), first(Some(cursor)), false).unwrap()
        else {
            panic!("the journal names a city")
        };
        assert!(next > cursor);
        assert_eq!(named, [CityId::parse("leeds").unwrap()]);
        assert_eq!(moved, tally.grid(&election, None).unwrap());

        // Nothing new, but last time's cities are read once more.
        let again = Seen {
            fingerprint: None,
            cursor: Some(next),
            again: named,
        };
        let Read::Moved(_, Some(same), named) =
            read_if_moved(&tally, &election, Some(&moved), again, false).unwrap()
        else {
            panic!("last time's cities are read again")
        };
        assert_eq!((same, named.len()), (next, 0));

        // A repair (`guarded_add`) is journalled: its city is read.
        assert!(
            tally
                .guarded_add(&election, &london_labour(), 200, 7)
                .unwrap()
        );
        let Read::Moved(moved, Some(next), named) =
            read_if_moved(&tally, &election, Some(&moved), first(Some(next)), false).unwrap()
        else {
            panic!("the journal names the repaired city")
        };
        assert_eq!(named, [CityId::parse("london").unwrap()]);
        assert_eq!(moved, tally.grid(&election, None).unwrap());

        // A counter changed by hand is not journalled: a due full read sees
        // it.
        tally.tamper(&election, &london_labour(), 3);
        assert!(matches!(
            read_if_moved(&tally, &election, Some(&moved), first(Some(next)), false).unwrap(),
            Read::Unmoved(_)
        ));
        let Read::Full(healed, None, Some(_)) =
            read_if_moved(&tally, &election, Some(&moved), first(Some(next)), true).unwrap()
        else {
            panic!("a due read is a full one")
        };
        assert_eq!(healed, tally.grid(&election, None).unwrap());
        assert_ne!(healed, moved);

        // The journal lost (a Redis restarted empty): everything is read.
        tally.flush();
        assert!(matches!(
            read_if_moved(&tally, &election, Some(&healed), first(Some(next)), false).unwrap(),
            Read::Full(_, None, Some(JournalCursor(0)))
        ));
    }

    #[test]
    fn an_unmoved_fingerprint_skips_the_read_until_one_is_due() {
        let tally = Fingerprinted {
            inner: MemoryTally::new(),
            grids: AtomicU64::new(0),
        };
        let election = contract::unique_election("fingerprint");
        let labour = Counter::National(election_core::PartyId::parse("labour").unwrap());
        assert!(tally.guarded_add(&election, &labour, 0, 200).unwrap());
        assert!(
            tally
                .guarded_add(&election, &london_labour(), 0, 200)
                .unwrap()
        );
        let unseen = || Seen {
            fingerprint: None,
            cursor: None,
            again: Vec::new(),
        };
        let seeing = |fingerprint: &Option<Fingerprint>| Seen {
            fingerprint: fingerprint.clone(),
            cursor: None,
            again: Vec::new(),
        };
        let Read::Full(grid, seen, None) =
            read_if_moved(&tally, &election, None, unseen(), true).unwrap()
        else {
            panic!("a first read is a full one")
        };
        assert!(
            seen.is_none(),
            "no fingerprint without a grid to take it from"
        );
        let Read::Full(grid, seen, None) =
            read_if_moved(&tally, &election, Some(&grid), unseen(), false).unwrap()
        else {
            panic!("no fingerprint seen yet: a full read")
        };
        assert!(seen.is_some());
        assert!(matches!(
            read_if_moved(&tally, &election, Some(&grid), seeing(&seen), false).unwrap(),
            Read::Unmoved(None)
        ));
        // Healing rewrites a city counter without a report: the fingerprint
        // cannot see it, the due full read does.
        assert!(
            tally
                .inner
                .guarded_add(&election, &london_labour(), 200, 5)
                .unwrap()
        );
        assert!(matches!(
            read_if_moved(&tally, &election, Some(&grid), seeing(&seen), false).unwrap(),
            Read::Unmoved(None)
        ));
        let Read::Full(healed, _, None) =
            read_if_moved(&tally, &election, Some(&grid), seeing(&seen), true).unwrap()
        else {
            panic!("a due read is a full one")
        };
        assert_eq!(healed.row(0), [Some(205)]);
    }

    #[tokio::test]
    async fn a_change_without_a_report_shows_by_the_next_full_read() {
        let tally = Arc::new(Fingerprinted {
            inner: MemoryTally::new(),
            grids: AtomicU64::new(0),
        });
        let (_stop_tx, stop) = watch::channel(false);
        let metrics = Arc::new(Registry::new());
        let live = Live::new(
            tally.clone(),
            Arc::new(|_, _| Ok(Lookup::Current(None))),
            LiveConfig {
                full_read_every: Duration::from_millis(400),
                ..config()
            },
            Arc::clone(&metrics),
            stop,
        );
        let election = contract::unique_election("backstop");
        let engine = election_core::Engine::new(
            Arc::new(election_core::memory::MemoryLog::new()),
            tally.clone() as Arc<dyn Tally>,
        );
        engine.submit(&contract::seed_reports(&election)).unwrap();
        let mut receiver = live.subscribe_ready(&election).await.unwrap();
        let counted = |c: &Current| {
            matches!(c, Current::Ready(r) if r.city("london").is_some_and(|b| {
                std::str::from_utf8(&b).unwrap().contains("\"labour\":200")
            }))
        };
        receiver.wait_for(counted).await.unwrap();
        let version = match &*receiver.borrow() {
            Current::Ready(rendered) => rendered.version,
            _ => unreachable!(),
        };

        // Nothing moves for a while: refreshes read only the fingerprint.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reads = tally.grids.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let skipped = metrics.value("query_refresh_skipped_total", &[]);
        assert!(skipped >= 5.0, "{skipped} refreshes skipped");
        assert!(
            tally.grids.load(Ordering::Relaxed) - reads <= 2,
            "an idle election is read in full only when a full read is due"
        );

        // Healing moves London's counter, not the national one.
        assert!(
            tally
                .guarded_add(&election, &london_labour(), 200, 5)
                .unwrap()
        );
        let healed = tokio::time::timeout(
            Duration::from_secs(5),
            receiver.wait_for(|c| {
                matches!(c, Current::Ready(r) if r.city("london").is_some_and(|b| {
                    std::str::from_utf8(&b).unwrap().contains("\"labour\":205")
                }))
            }),
        )
        .await
        .expect("the full read due picks up the healed counter")
        .unwrap()
        .clone();
        let Current::Ready(healed) = healed else {
            unreachable!()
        };
        assert!(healed.version > version);
        let delta = healed.recent.last().expect("a delta leads to it");
        let event = stream::tests::data(&delta.event(&stream::Variant::All).unwrap());
        assert_eq!(event["cities"][0]["city"], "london");
        assert!(event.get("national").is_none());
    }
}
