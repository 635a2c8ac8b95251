//! The healing loop (I5): every `--heal-interval`, sweep every election's
//! counted revisions for missing markers and apply the lost ones again
//! (`election_core::heal`), beside the counting loop and without an
//! operator.
//!
//! Between sweeps it asks the tally every [`WATCH_EVERY`] who its servers
//! are (`Tally::incarnation`: every Redis master's run id and witness key)
//! and where each election's change journal stands (`Tally::moved_since`),
//! and sweeps at once when the servers changed or lost their data since the
//! last sweep began, or a journal went back (it was emptied: a flush, or a
//! restart): a Redis restarted empty, a replica promoted in a master's
//! place, a flushed Redis or a flushed Cluster master is healed within a
//! second or so plus one sweep, not up to a whole interval later. The
//! interval's sweeps stay for what neither shows (a deleted key, a journal
//! begun and lost between two looks). The journals watched are those of the
//! elections listed for the last sweep: an election first recorded since is
//! watched from the next sweep on. When the servers refuse to say who they
//! are (an ACL without `INFO`, say: `StoreError::Failed`, not an outage),
//! the loop warns once and again when they answer (`Refusals`): until
//! then only the journals and the interval notice a loss.
//!
//! A sweep of an election runs only under that election's repair lock, the
//! one `reconcile --repair` takes: the repair's guarded rewrites assume that
//! nothing else re-applies lost revisions meanwhile (see
//! `election_core::reconcile`). When a repair holds the lock the election is
//! skipped this time; the repair restores lost revisions itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use election_core::heal::{self, Sweep};
use election_core::{
    ElectionId, Incarnation, JournalCursor, ReportId, ReportLog, StoreError, Tally,
};
use election_http::metrics::Registry;
use tokio::sync::watch;

/// How the healing loop runs.
#[derive(Clone, Copy, Debug)]
pub struct HealSettings {
    /// Pause between the end of one sweep of every election and the next.
    pub interval: Duration,
    /// Counted revisions read and checked per page.
    pub page_size: usize,
}

/// How often the loop asks, between sweeps, whether the tally's servers
/// changed (one `INFO server` per Redis master).
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Excludes `reconcile --repair` of the same election while a sweep runs.
pub trait RepairLocks: Send + Sync {
    /// The lock of `election`, held until the returned value is dropped;
    /// `Ok(None)` when someone else holds it.
    fn try_lock(&self, election: &ElectionId) -> Result<Option<Box<dyn Send>>, String>;
}

const SWEEPS: &str = "reprocessor_heal_sweeps_total";
const SWEEPS_HELP: &str = "Sweeps of an election's markers, by outcome (intact, restored, skipped: a repair held the lock, failed).";
const HEALED: &str = "reprocessor_healed_revisions_total";
const HEALED_HELP: &str =
    "Counted revisions Redis had lost (markers missing) that were applied again from PostgreSQL.";
const CHECKED: &str = "reprocessor_heal_checked_revisions";
const CHECKED_HELP: &str = "Counted revisions whose markers the last complete sweep checked.";
const SWEEP_SECONDS: &str = "reprocessor_heal_sweep_seconds";
const SWEEP_SECONDS_HELP: &str = "How long the last complete sweep of every election took.";

/// Sweeps until `stopping` turns true.
pub async fn run(
    log: Arc<dyn ReportLog>,
    tally: Arc<dyn Tally>,
    locks: Arc<dyn RepairLocks>,
    settings: HealSettings,
    metrics: Arc<Registry>,
    mut stopping: watch::Receiver<bool>,
) {
    tracing::info!(
        heal.interval_ms = settings.interval.as_millis() as u64,
        "checking that Redis keeps every counted revision"
    );
    let mut refusals = Refusals::default();
    loop {
        // Read before the sweep: a change after this look is one the sweep
        // may have missed.
        let elections = elections(&log).await;
        let seen = look(&tally, elections.clone().unwrap_or_default()).await;
        refusals.observe(&seen);
        let started = Instant::now();
        if let Some(elections) = elections {
            let checked = sweep_all(elections, &log, &tally, &locks, settings, &metrics).await;
            metrics.set(CHECKED, CHECKED_HELP, &[], checked as f64);
            metrics.set(
                SWEEP_SECONDS,
                SWEEP_SECONDS_HELP,
                &[],
                started.elapsed().as_secs_f64(),
            );
        }
        if wait(
            &tally,
            seen,
            settings.interval,
            &mut refusals,
            &mut stopping,
        )
        .await
        {
            break;
        }
    }
}

/// What the watch sees of the tally: who its servers are (`None`: it cannot
/// tell, or cannot be asked now) and where each election's change journal
/// stands (`None`: no journal, or no answer).
struct Look {
    servers: Option<Incarnation>,
    /// Why the servers could not be asked, when retrying will not fix it by
    /// itself (`StoreError::Failed`: an ACL that refuses `INFO` or the
    /// witness key, say). An outage is not one: counting reports it.
    refused: Option<String>,
    journals: Vec<(ElectionId, Option<JournalCursor>)>,
}

/// Whether the operator has been told that the watch cannot see who the
/// servers are. Without that, a restart, a failover or a flush of a master
/// that holds no journal is healed by the next interval's sweep, not within
/// a second: worth a warning once, not one a second, and a word when it
/// works again.
#[derive(Debug, Default)]
struct Refusals {
    warned: bool,
}

/// What [`Refusals::observe`] told the operator.
#[derive(Debug, PartialEq, Eq)]
enum Told {
    Nothing,
    Warned,
    Recovered,
}

impl Refusals {
    fn observe(&mut self, look: &Look) -> Told {
        match (&look.refused, self.warned) {
            (Some(error), false) => {
                self.warned = true;
                tracing::warn!(
                    %error,
                    "cannot ask who the Redis masters are, so a restart, a failover or a \
                     flush is healed by the next interval's sweep rather than at once; \
                     the reprocessor's Redis user needs INFO, and SET and GET on the \
                     election::witness:* keys (README, \"Healing, with no operator\")"
                );
                Told::Warned
            }
            (None, true) if look.servers.is_some() => {
                self.warned = false;
                tracing::info!("the Redis masters can be asked who they are again");
                Told::Recovered
            }
            _ => Told::Nothing,
        }
    }
}

/// Looks at the tally's servers and at the journals of `elections`, in one
/// blocking task.
async fn look(tally: &Arc<dyn Tally>, elections: Vec<ElectionId>) -> Look {
    let tally = Arc::clone(tally);
    let looked = tokio::task::spawn_blocking(move || {
        let (servers, refused) = match tally.incarnation() {
            Ok(servers) => (servers, None),
            Err(error) => {
                tracing::debug!(%error, "could not ask who the Redis masters are");
                let refused = matches!(error, StoreError::Failed { .. })
                    .then(|| election_core::engine::explain(&error));
                (None, refused)
            }
        };
        let journals = elections
            .into_iter()
            .map(|election| {
                let cursor = match tally.moved_since(&election, None) {
                    Ok(moved) => moved.map(|moved| moved.cursor),
                    Err(error) => {
                        tracing::debug!(%error, "could not read a change journal");
                        None
                    }
                };
                (election, cursor)
            })
            .collect();
        Look {
            servers,
            refused,
            journals,
        }
    })
    .await;
    looked.unwrap_or_else(|_| Look {
        servers: None,
        refused: None,
        journals: Vec::new(),
    })
}

/// Waits `interval`, or until a look at the tally shows servers other than
/// those `seen` before the last sweep (unknown then: any answer is news), or
/// a journal below where it stood (kept up to date as they advance). True
/// when the service is stopping.
async fn wait(
    tally: &Arc<dyn Tally>,
    mut seen: Look,
    interval: Duration,
    refusals: &mut Refusals,
    stopping: &mut watch::Receiver<bool>,
) -> bool {
    let until = Instant::now() + interval;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if crate::worker::pause(left.min(WATCH_EVERY), stopping).await {
            return true;
        }
        let elections = seen.journals.iter().map(|(e, _)| e.clone()).collect();
        let now = look(tally, elections).await;
        refusals.observe(&now);
        if let Some(servers) = &now.servers
            && seen.servers.as_ref() != Some(servers)
        {
            tracing::info!(
                redis.masters = ?servers.0,
                "the Redis masters are not those of the last sweep, or one lost its data \
                 (a restart, a failover or a flush); checking every counted revision now"
            );
            return false;
        }
        for ((election, before), (_, after)) in seen.journals.iter_mut().zip(now.journals) {
            let Some(after) = after else { continue };
            if before.is_some_and(|before| after < before) {
                tracing::info!(
                    election.id = %election,
                    "the change journal went back (Redis was emptied: a flush or a restart); \
                     checking every counted revision now"
                );
                return false;
            }
            *before = Some(after);
        }
    }
}

/// The elections of the log; `None` when they cannot be listed.
async fn elections(log: &Arc<dyn ReportLog>) -> Option<Vec<ElectionId>> {
    let log = Arc::clone(log);
    match tokio::task::spawn_blocking(move || log.elections()).await {
        Ok(Ok(elections)) => Some(elections),
        Ok(Err(error)) => {
            tracing::debug!(%error, "could not list the elections to heal");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "the healing task failed");
            None
        }
    }
}

/// One sweep of `elections`; the number of revisions checked.
async fn sweep_all(
    elections: Vec<ElectionId>,
    log: &Arc<dyn ReportLog>,
    tally: &Arc<dyn Tally>,
    locks: &Arc<dyn RepairLocks>,
    settings: HealSettings,
    metrics: &Arc<Registry>,
) -> u64 {
    let mut checked = 0;
    for election in elections {
        let (log, tally, locks) = (Arc::clone(log), Arc::clone(tally), Arc::clone(locks));
        let target = election.clone();
        let span = tracing::Span::current();
        let registry = Arc::clone(metrics);
        let result = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                sweep_one(
                    &*log,
                    &*tally,
                    &*locks,
                    &target,
                    settings.page_size,
                    &registry,
                )
            })
        })
        .await
        .unwrap_or_else(|error| Err(format!("the healing task failed: {error}")));
        let outcome = match result {
            Ok(None) => "skipped",
            Ok(Some(sweep)) => {
                checked += sweep.checked;
                if sweep.missing == 0 {
                    "intact"
                } else {
                    tracing::warn!(
                        election.id = %election,
                        heal.missing = sweep.missing,
                        heal.restored = sweep.restored,
                        heal.examples = ?sweep.examples.iter().map(|id| id.0).collect::<Vec<_>>(),
                        "Redis had lost counted revisions (a restart, a flush or a failover); \
                         the sweep applied them again from PostgreSQL"
                    );
                    "restored"
                }
            }
            Err(error) => {
                // Counting reports outages; this is logged at debug level so
                // an outage is not logged twice per interval.
                tracing::debug!(election.id = %election, %error, "could not sweep an election");
                "failed"
            }
        };
        metrics.inc(SWEEPS, SWEEPS_HELP, &[("outcome", outcome)], 1);
    }
    checked
}

/// Sweeps one election under its repair lock; `None` when a repair held it.
/// Restored revisions are counted in the metrics page by page, and the first
/// page that restored any is logged at once: the totals are right from then
/// on, while the rest of the sweep may take seconds more.
fn sweep_one(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    locks: &dyn RepairLocks,
    election: &ElectionId,
    page_size: usize,
    metrics: &Registry,
) -> Result<Option<Sweep>, String> {
    let Some(_lock) = locks.try_lock(election)? else {
        return Ok(None);
    };
    let mut told = false;
    let mut restored = |ids: &[ReportId]| {
        metrics.inc(HEALED, HEALED_HELP, &[], ids.len() as u64);
        if !std::mem::replace(&mut told, true) {
            tracing::warn!(
                election.id = %election,
                heal.restored = ids.len(),
                heal.examples = ?ids.iter().take(heal::EXAMPLES).map(|id| id.0).collect::<Vec<_>>(),
                "Redis had lost counted revisions (a restart, a flush or a failover); \
                 applying them again from PostgreSQL, newest first"
            );
        }
    };
    heal::sweep_telling(log, tally, election, page_size, true, &mut restored)
        .map(Some)
        .map_err(|error| election_core::engine::explain(&error))
}

#[cfg(test)]
mod tests {
    use election_core::memory::MemoryTally;

    use super::*;

    #[tokio::test]
    async fn the_wait_ends_early_when_the_servers_change_and_only_then() {
        let memory = Arc::new(MemoryTally::new());
        let tally: Arc<dyn Tally> = Arc::clone(&memory) as Arc<dyn Tally>;
        let (_stop, mut stopping) = watch::channel(false);
        let interval = Duration::from_secs(600);

        // At most three watches of a wait that began with `seen`.
        let mut watched = async |seen: Look| {
            let mut refusals = Refusals::default();
            let waiting = wait(&tally, seen, interval, &mut refusals, &mut stopping);
            tokio::time::timeout(3 * WATCH_EVERY, waiting).await
        };

        // The same servers: still waiting after a few watches.
        let same = watched(look(&tally, Vec::new()).await).await;
        assert!(same.is_err(), "the wait ended with nothing changed");

        // A restart (the in-memory tally's flush): the wait ends at the
        // next watch.
        let seen = look(&tally, Vec::new()).await;
        memory.flush();
        let started = Instant::now();
        let stopped = watched(seen)
            .await
            .expect("the wait ends once the servers changed");
        assert!(!stopped, "ended to sweep, not to stop");
        assert!(
            started.elapsed() <= 2 * WATCH_EVERY,
            "{:?}",
            started.elapsed()
        );
    }

    fn looked(servers: Option<&str>, refused: Option<&str>) -> Look {
        Look {
            servers: servers.map(|s| Incarnation(vec![s.to_owned()])),
            refused: refused.map(str::to_owned),
            journals: Vec::new(),
        }
    }

    #[test]
    fn a_refused_look_is_told_once_and_its_end_once() {
        let mut refusals = Refusals::default();
        let refused = looked(None, Some("redis failed: NOPERM"));
        let outage = looked(None, None);
        let answered = looked(Some("a b c"), None);
        assert_eq!(refusals.observe(&answered), Told::Nothing);
        assert_eq!(refusals.observe(&refused), Told::Warned);
        assert_eq!(refusals.observe(&refused), Told::Nothing);
        // An outage in between neither repeats the warning nor ends it.
        assert_eq!(refusals.observe(&outage), Told::Nothing);
        assert_eq!(refusals.observe(&refused), Told::Nothing);
        assert_eq!(refusals.observe(&answered), Told::Recovered);
        assert_eq!(refusals.observe(&answered), Told::Nothing);
        assert_eq!(refusals.observe(&refused), Told::Warned);
    }

    /// A tally whose servers cannot be asked, failing with the error its
    /// function makes (an ACL refusing `INFO`, or an outage), and otherwise
    /// the in-memory one.
    struct Refusing(MemoryTally, fn() -> StoreError);

    fn noperm() -> StoreError {
        StoreError::Failed {
            store: "redis",
            doing: "reading the Redis masters' run ids and witnesses".to_owned(),
            source: "NOPERM this user has no permissions to run the 'info' command".into(),
        }
    }

    fn outage() -> StoreError {
        StoreError::Unavailable {
            store: "redis",
            doing: "reading the Redis masters' run ids and witnesses".to_owned(),
            source: "connection refused".into(),
        }
    }

    impl Tally for Refusing {
        fn incarnation(&self) -> Result<Option<Incarnation>, StoreError> {
            Err((self.1)())
        }
        fn apply(
            &self,
            batch: &[election_core::Counting],
        ) -> Vec<Result<election_core::Applied, StoreError>> {
            self.0.apply(batch)
        }
        fn unapplied(
            &self,
            batch: &[election_core::Counting],
        ) -> Result<Vec<ReportId>, StoreError> {
            self.0.unapplied(batch)
        }
        fn snapshot(&self, election: &ElectionId) -> Result<election_core::Snapshot, StoreError> {
            self.0.snapshot(election)
        }
        fn guarded_add(
            &self,
            election: &ElectionId,
            counter: &election_core::Counter,
            observed: i64,
            delta: i64,
        ) -> Result<bool, StoreError> {
            self.0.guarded_add(election, counter, observed, delta)
        }
    }

    #[tokio::test]
    async fn a_refused_incarnation_is_named_and_an_outage_is_not() {
        let tally: Arc<dyn Tally> = Arc::new(Refusing(MemoryTally::new(), noperm));
        let refused = look(&tally, Vec::new()).await;
        assert!(refused.servers.is_none());
        let why = refused.refused.expect("a refusal is named");
        assert!(why.contains("NOPERM"), "{why}");
        assert!(why.contains("run ids and witnesses"), "{why}");

        let tally: Arc<dyn Tally> = Arc::new(Refusing(MemoryTally::new(), outage));
        let down = look(&tally, Vec::new()).await;
        assert!(down.servers.is_none());
        assert_eq!(down.refused, None, "an outage is counting's to report");
    }
}
