//! The healing loop (I5): every `--heal-interval`, sweep every election's
//! counted revisions for missing markers and apply the lost ones again
//! (`election_core::heal`), beside the counting loop and without an
//! operator.
//!
//! Between sweeps it asks the tally every [`WATCH_EVERY`] who its servers
//! are (`Tally::incarnation`: every Redis master's run id) and sweeps at
//! once when they changed since the last sweep began: a Redis restarted
//! empty or a replica promoted in a master's place is healed within a
//! second or so of answering plus one sweep, not up to a whole interval
//! later. A flush keeps the servers, so the interval's sweeps stay.
//!
//! A sweep of an election runs only under that election's repair lock, the
//! one `reconcile --repair` takes: the repair's guarded rewrites assume that
//! nothing else re-applies lost revisions meanwhile (see
//! `election_core::reconcile`). When a repair holds the lock the election is
//! skipped this time; the repair restores lost revisions itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use election_core::heal::{self, Sweep};
use election_core::{ElectionId, Incarnation, ReportLog, Tally};
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
    loop {
        // Read before the sweep: a change after this read is one the sweep
        // may have missed.
        let swept = incarnation(&tally).await;
        let started = Instant::now();
        let checked = sweep_all(&log, &tally, &locks, settings, &metrics).await;
        if let Some(checked) = checked {
            metrics.set(CHECKED, CHECKED_HELP, &[], checked as f64);
            metrics.set(
                SWEEP_SECONDS,
                SWEEP_SECONDS_HELP,
                &[],
                started.elapsed().as_secs_f64(),
            );
        }
        if wait(&tally, swept.as_ref(), settings.interval, &mut stopping).await {
            break;
        }
    }
}

/// Waits `interval`, or until the tally's servers answer as others than
/// `swept` (those of the last sweep; `None`: unknown then, so any answer
/// is news). True when the service is stopping.
async fn wait(
    tally: &Arc<dyn Tally>,
    swept: Option<&Incarnation>,
    interval: Duration,
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
        if let Some(now) = incarnation(tally).await
            && swept != Some(&now)
        {
            tracing::info!(
                redis.masters = ?now.0,
                "the Redis masters are not those of the last sweep (a restart or a failover); \
                 checking every counted revision now"
            );
            return false;
        }
    }
}

/// Who the tally's servers are now; `None` when it cannot tell or cannot
/// be asked (an outage: the next answer decides).
async fn incarnation(tally: &Arc<dyn Tally>) -> Option<Incarnation> {
    let tally = Arc::clone(tally);
    match tokio::task::spawn_blocking(move || tally.incarnation()).await {
        Ok(Ok(incarnation)) => incarnation,
        Ok(Err(error)) => {
            tracing::debug!(%error, "could not ask who the Redis masters are");
            None
        }
        Err(_) => None,
    }
}

/// One sweep of every election; the number of revisions checked, `None`
/// when the elections could not be listed.
async fn sweep_all(
    log: &Arc<dyn ReportLog>,
    tally: &Arc<dyn Tally>,
    locks: &Arc<dyn RepairLocks>,
    settings: HealSettings,
    metrics: &Registry,
) -> Option<u64> {
    let elections = {
        let log = Arc::clone(log);
        match tokio::task::spawn_blocking(move || log.elections()).await {
            Ok(Ok(elections)) => elections,
            Ok(Err(error)) => {
                tracing::debug!(%error, "could not list the elections to heal");
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "the healing task failed");
                return None;
            }
        }
    };
    let mut checked = 0;
    for election in elections {
        let (log, tally, locks) = (Arc::clone(log), Arc::clone(tally), Arc::clone(locks));
        let target = election.clone();
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || {
            span.in_scope(|| sweep_one(&*log, &*tally, &*locks, &target, settings.page_size))
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
                    metrics.inc(HEALED, HEALED_HELP, &[], sweep.restored);
                    tracing::warn!(
                        election.id = %election,
                        heal.missing = sweep.missing,
                        heal.restored = sweep.restored,
                        heal.examples = ?sweep.examples.iter().map(|id| id.0).collect::<Vec<_>>(),
                        "Redis had lost counted revisions (a restart, a flush or a failover); \
                         applied them again from PostgreSQL"
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
    Some(checked)
}

/// Sweeps one election under its repair lock; `None` when a repair held it.
fn sweep_one(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    locks: &dyn RepairLocks,
    election: &ElectionId,
    page_size: usize,
) -> Result<Option<Sweep>, String> {
    let Some(_lock) = locks.try_lock(election)? else {
        return Ok(None);
    };
    heal::sweep(log, tally, election, page_size, true)
        .map(Some)
        .map_err(|error| election_core::engine::explain(&error))
}
