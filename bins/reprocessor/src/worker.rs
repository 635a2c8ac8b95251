//! The counting loop: claim a batch, count it, repeat; sleep when there is
//! nothing to count; back off while a store is down.
//!
//! A round is one `Engine::count_pending` call on the blocking pool. Its
//! outcome decides what comes next:
//! - some revisions claimed, none failed: the next round starts at once;
//! - nothing claimed: sleep `interval`;
//! - a failure (PostgreSQL refused the claim, Redis did not apply, the mark
//!   failed): sleep, doubling from [`BACKOFF_START`] up to [`BACKOFF_MAX`],
//!   and try again; the failed revisions were released (or keep their lease)
//!   and stay pending. The first failure of a streak is logged as a warning,
//!   the others only at debug level, and the end of the streak once, so an
//!   outage of an hour is two log lines, not thousands.
//!
//! Every few seconds the loop also reads the pending revisions of every
//! election for the metrics, and warns once about each revision claimed
//! `stuck_attempts` times or more without being counted (it is never
//! dropped: it stays pending, and keeps being tried).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use election_core::{Claim, Drained, Engine, PendingStats, ReportId, ReportLog, Tally};
use election_http::metrics::{LATENCY_BUCKETS, Registry};
use tokio::sync::watch;

/// First pause after a failed round.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between failed rounds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the pending statistics are read for the metrics.
pub const STATS_EVERY: Duration = Duration::from_secs(2);

/// How the loop runs. No `Default`: the command line fills it in.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What each round claims (batch size, pending age, lease).
    pub claim: Claim,
    /// Pause after a round that found nothing to count.
    pub interval: Duration,
    /// Claims after which a revision still pending is reported stuck.
    pub stuck_attempts: u32,
    /// The healing loop (`None`: no healing, as with `run --once`).
    pub heal: Option<crate::healer::HealSettings>,
    /// The sealing loop (`None`: no sealing, as with `run --once`); it runs
    /// only when [`crate::Services::sealer`] is given too.
    pub seal: Option<crate::sealer::SealSettings>,
}

const PENDING: &str = "reprocessor_pending_reports";
const PENDING_HELP: &str = "Reports recorded but not yet counted, all elections.";
const OLDEST: &str = "reprocessor_oldest_pending_age_seconds";
const OLDEST_HELP: &str = "Age of the oldest report recorded but not yet counted (0 when none).";
const STUCK: &str = "reprocessor_stuck_reports";
const STUCK_HELP: &str =
    "Pending reports claimed at least STUCK_ATTEMPTS times without being counted.";
const QUARANTINED: &str = "reprocessor_quarantined_reports";
const QUARANTINED_HELP: &str = "Pending reports set aside because they could not be read back from PostgreSQL (see the log; released by an operator).";
const COUNTED: &str = "reprocessor_counted_total";
const COUNTED_HELP: &str = "Reports counted by this reprocessor.";
const CLAIMED: &str = "reprocessor_claimed_total";
const CLAIMED_HELP: &str = "Reports claimed by this reprocessor.";
const FAILURES: &str = "reprocessor_failures_total";
const FAILURES_HELP: &str =
    "Failures: rounds whose claim failed (stage=claim), claimed reports not counted (stage=count).";
const ROUNDS: &str = "reprocessor_rounds_total";
const ROUNDS_HELP: &str = "Rounds by outcome (worked, idle, failed).";
const ROUND_SECONDS: &str = "reprocessor_round_duration_seconds";
const ROUND_SECONDS_HELP: &str = "Duration of rounds that claimed something.";

/// The counting loop of one reprocessor.
pub struct Worker {
    engine: Engine,
    settings: Settings,
    metrics: Arc<Registry>,
}

/// A run of failed rounds.
struct Streak {
    since: Instant,
    rounds: u64,
}

/// Runs one round on the blocking pool.
async fn round(engine: &Engine, claim: &Claim) -> Result<Drained, String> {
    let engine = engine.clone();
    let claim = claim.clone();
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(|| engine.count_pending(&claim))).await
    {
        Ok(Ok(drained)) => Ok(drained),
        Ok(Err(error)) => Err(election_core::engine::explain(&error)),
        Err(error) => Err(format!("the counting task failed: {error}")),
    }
}

async fn pending_stats(
    log: &Arc<dyn ReportLog>,
    stuck_attempts: u32,
) -> Result<PendingStats, String> {
    let log = Arc::clone(log);
    match tokio::task::spawn_blocking(move || log.pending_stats(stuck_attempts)).await {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(error)) => Err(election_core::engine::explain(&error)),
        Err(error) => Err(format!("the statistics task failed: {error}")),
    }
}

/// Sleeps `duration`, or less if `stopping` turns true; true when stopping.
pub(crate) async fn pause(duration: Duration, stopping: &mut watch::Receiver<bool>) -> bool {
    if *stopping.borrow() {
        return true;
    }
    let stop = async {
        if stopping.wait_for(|stop| *stop).await.is_err() {
            // Nobody can ask us to stop any more: sleep the whole pause.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = stop => true,
    }
}

impl Worker {
    /// A loop over the given stores.
    pub fn new(
        log: Arc<dyn ReportLog>,
        tally: Arc<dyn Tally>,
        settings: Settings,
        metrics: Arc<Registry>,
    ) -> Worker {
        Worker {
            engine: Engine::new(log, tally),
            settings,
            metrics,
        }
    }

    /// Counts until `stopping` turns true; the round in progress then
    /// finishes (its batch is counted, or released on failure).
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        tracing::info!(
            claim.batch_size = self.settings.claim.limit,
            claim.pending_after_ms = self.settings.claim.pending_for.as_millis() as u64,
            claim.lease_ms = self.settings.claim.lease.as_millis() as u64,
            "counting pending reports"
        );
        let mut backoff = BACKOFF_START;
        let mut streak: Option<Streak> = None;
        let mut warned: HashSet<ReportId> = HashSet::new();
        let mut stats_at: Option<Instant> = None;
        loop {
            if *stopping.borrow() {
                break;
            }
            if stats_at.is_none_or(|at| at.elapsed() >= STATS_EVERY) {
                self.refresh_stats(&mut warned).await;
                stats_at = Some(Instant::now());
            }
            let started = Instant::now();
            let outcome = round(&self.engine, &self.settings.claim).await;
            let pause_for = match outcome {
                Ok(drained) => {
                    self.record(&drained, started);
                    match drained.error {
                        None => {
                            if let Some(ended) = streak.take() {
                                tracing::info!(
                                    failures.rounds = ended.rounds,
                                    failures.duration_ms = ended.since.elapsed().as_millis() as u64,
                                    "counting works again"
                                );
                            }
                            backoff = BACKOFF_START;
                            if drained.claimed == 0 {
                                Some(self.settings.interval)
                            } else {
                                None
                            }
                        }
                        Some(error) => Some(failed(&mut streak, &mut backoff, &error)),
                    }
                }
                Err(error) => {
                    self.metrics
                        .inc(FAILURES, FAILURES_HELP, &[("stage", "claim")], 1);
                    self.metrics
                        .inc(ROUNDS, ROUNDS_HELP, &[("outcome", "failed")], 1);
                    Some(failed(&mut streak, &mut backoff, &error))
                }
            };
            if let Some(duration) = pause_for
                && pause(duration, &mut stopping).await
            {
                break;
            }
        }
        tracing::info!("stopped counting");
    }

    fn record(&self, drained: &Drained, started: Instant) {
        let metrics = &self.metrics;
        metrics.inc(CLAIMED, CLAIMED_HELP, &[], drained.claimed as u64);
        metrics.inc(COUNTED, COUNTED_HELP, &[], drained.counted as u64);
        if drained.failed > 0 {
            metrics.inc(
                FAILURES,
                FAILURES_HELP,
                &[("stage", "count")],
                drained.failed as u64,
            );
        }
        let outcome = if drained.error.is_some() {
            "failed"
        } else if drained.claimed == 0 {
            "idle"
        } else {
            "worked"
        };
        metrics.inc(ROUNDS, ROUNDS_HELP, &[("outcome", outcome)], 1);
        if drained.claimed > 0 {
            metrics.observe(
                ROUND_SECONDS,
                ROUND_SECONDS_HELP,
                LATENCY_BUCKETS,
                &[],
                started.elapsed().as_secs_f64(),
            );
            tracing::debug!(
                round.claimed = drained.claimed,
                round.counted = drained.counted,
                round.failed = drained.failed,
                duration_ms = started.elapsed().as_millis() as u64,
                "counted a batch of pending reports"
            );
        }
    }

    /// Reads the pending statistics into the metrics, and warns once about
    /// each newly stuck revision.
    async fn refresh_stats(&self, warned: &mut HashSet<ReportId>) {
        let stats = match pending_stats(self.engine.log(), self.settings.stuck_attempts).await {
            Ok(stats) => stats,
            Err(error) => {
                // The counting rounds report the outage; the gauges keep
                // their last values.
                tracing::debug!(%error, "could not read the pending statistics");
                return;
            }
        };
        let metrics = &self.metrics;
        metrics.set(PENDING, PENDING_HELP, &[], stats.pending as f64);
        metrics.set(
            OLDEST,
            OLDEST_HELP,
            &[],
            stats.oldest_age.map_or(0.0, |age| age.as_secs_f64()),
        );
        metrics.set(STUCK, STUCK_HELP, &[], stats.stuck as f64);
        metrics.set(QUARANTINED, QUARANTINED_HELP, &[], stats.quarantined as f64);
        for stuck in &stats.stuck_examples {
            if warned.insert(stuck.report_id) {
                tracing::warn!(
                    report.id = stuck.report_id.0,
                    election.id = %stuck.election,
                    ballot_box.id = %stuck.ballot_box,
                    report.revision = stuck.revision.get(),
                    report.attempts = stuck.attempts,
                    error = stuck.last_error.as_deref().unwrap_or(""),
                    "a report keeps failing to be counted; it stays pending and is tried again"
                );
            }
        }
        if stats.stuck > stats.stuck_examples.len() as u64 {
            tracing::debug!(stuck = stats.stuck, "more stuck reports than listed");
        }
        // Forget what is no longer stuck, so the set stays small.
        if warned.len() > 10 * PendingStats::STUCK_EXAMPLES {
            let listed: HashSet<ReportId> =
                stats.stuck_examples.iter().map(|s| s.report_id).collect();
            warned.retain(|id| listed.contains(id));
        }
    }
}

/// Notes a failed round: logs it if it starts a streak, and returns the pause
/// before the next one (doubling the next).
fn failed(streak: &mut Option<Streak>, backoff: &mut Duration, error: &str) -> Duration {
    match streak {
        None => {
            tracing::warn!(
                %error,
                backoff_ms = backoff.as_millis() as u64,
                "counting failed; retrying with backoff until the stores answer (logged once per outage)"
            );
            *streak = Some(Streak {
                since: Instant::now(),
                rounds: 1,
            });
        }
        Some(streak) => {
            streak.rounds += 1;
            tracing::debug!(%error, failures.rounds = streak.rounds, "counting still fails");
        }
    }
    let pause = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    pause
}

/// What `run --once` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainSummary {
    /// Rounds made.
    pub rounds: u64,
    /// Reports counted.
    pub counted: u64,
    /// Why draining stopped early, if it did.
    pub error: Option<String>,
    /// Reports still pending in every election when it stopped (`None` when
    /// PostgreSQL could not say).
    pub still_pending: Option<u64>,
    /// Of those, whether any was older than `pending_after` (left pending).
    pub left_behind: bool,
    /// A shutdown signal stopped it.
    pub interrupted: bool,
}

impl DrainSummary {
    /// True when every report pending for longer than `pending_after` was
    /// counted.
    pub fn is_done(&self) -> bool {
        self.error.is_none() && !self.left_behind && !self.interrupted
    }

    /// One line for the operator.
    pub fn line(&self) -> String {
        let mut line = format!(
            "counted {} report{} in {} round{}",
            self.counted,
            plural(self.counted),
            self.rounds,
            plural(self.rounds)
        );
        match self.still_pending {
            Some(0) => line.push_str("; nothing left pending"),
            Some(n) if !self.left_behind => line.push_str(&format!(
                "; {n} younger report{} left to ingest (--pending-after)",
                plural(n)
            )),
            Some(n) => line.push_str(&format!("; {n} report{} still pending", plural(n))),
            None => line.push_str("; pending reports unknown"),
        }
        if self.interrupted {
            line.push_str("; interrupted");
        }
        if let Some(error) = &self.error {
            line.push_str(&format!("; stopped: {error}"));
        }
        line
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `run --once`: counts until no report pending for longer than
/// `pending_after` is left, then says what it did.
///
/// Reports leased by another reprocessor are waited for (it counts them, or
/// its lease runs out and this one does) for at most one lease and one
/// interval; a failed round ends the drain at once (Redis or PostgreSQL is
/// down: nothing would be gained by retrying here, `run` does that).
pub async fn drain(
    log: Arc<dyn ReportLog>,
    tally: Arc<dyn Tally>,
    settings: &Settings,
    mut stopping: watch::Receiver<bool>,
) -> DrainSummary {
    let engine = Engine::new(Arc::clone(&log), tally);
    let mut summary = DrainSummary::default();
    let mut waiting_since: Option<Instant> = None;
    let patience = settings.claim.lease + settings.interval;
    loop {
        if *stopping.borrow() {
            summary.interrupted = true;
            break;
        }
        let outcome = round(&engine, &settings.claim).await;
        summary.rounds += 1;
        let drained = match outcome {
            Ok(drained) => drained,
            Err(error) => {
                summary.error = Some(error);
                break;
            }
        };
        summary.counted += drained.counted as u64;
        if let Some(error) = drained.error {
            summary.error = Some(error);
            break;
        }
        if drained.claimed > 0 {
            waiting_since = None;
            continue;
        }
        // Nothing claimable: is anything old enough still pending, leased by
        // another reprocessor?
        let stats = match pending_stats(&log, u32::MAX).await {
            Ok(stats) => stats,
            Err(error) => {
                summary.error = Some(error);
                break;
            }
        };
        let leased_elsewhere = stats
            .oldest_age
            .is_some_and(|age| age >= settings.claim.pending_for);
        if !leased_elsewhere {
            // Done; what is still pending is younger than `pending_after`
            // (ingest is counting it).
            summary.still_pending = Some(stats.pending);
            return summary;
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() > patience {
            summary.error = Some(format!(
                "reports are still leased by another reprocessor after {} ms",
                patience.as_millis()
            ));
            break;
        }
        if pause(settings.interval, &mut stopping).await {
            summary.interrupted = true;
            break;
        }
    }
    match pending_stats(&log, u32::MAX).await {
        Ok(stats) => {
            summary.still_pending = Some(stats.pending);
            summary.left_behind = stats
                .oldest_age
                .is_some_and(|age| age >= settings.claim.pending_for);
        }
        Err(error) => {
            summary.left_behind = true;
            summary.error.get_or_insert(error);
        }
    }
    summary
}
