//! The sealing loop: every `--seal-interval`, seal what was recorded since
//! the last round into each election's hash chain (store-pg `seal`,
//! docs/audit.md), beside counting and healing.
//!
//! It runs here rather than in ingest because a chain is a sequence: sealed
//! in the recording transaction, every batch of an election would wait for
//! the previous one. Here it reads committed rows, takes no lock ingest
//! waits on, and a report is sealed within about two intervals (the
//! sealer proves a horizon at one round and seals up to it at the next).
//! Any number of reprocessors may seal at once: each election is sealed by
//! one of them at a time, under its own advisory lock.

use std::sync::Arc;
use std::time::Duration;

use election_http::metrics::Registry;
use store_pg::seal::Sealer;
use tokio::sync::watch;

/// How the sealing loop runs.
#[derive(Clone, Copy, Debug)]
pub struct SealSettings {
    /// Pause between two rounds.
    pub interval: Duration,
}

const SEALED: &str = "reprocessor_sealed_reports_total";
const SEALED_HELP: &str = "Reports this reprocessor sealed into their election's hash chain.";
const ROUNDS: &str = "reprocessor_seal_rounds_total";
const ROUNDS_HELP: &str =
    "Sealing rounds, by outcome (sealed: a chain grew, idle: nothing new, failed).";

/// Seals until `stopping` turns true.
pub async fn run(
    sealer: Sealer,
    settings: SealSettings,
    metrics: Arc<Registry>,
    mut stopping: watch::Receiver<bool>,
) {
    tracing::info!(
        seal.interval_ms = settings.interval.as_millis() as u64,
        "sealing every recorded report into its election's hash chain"
    );
    let mut sealer = Some(sealer);
    loop {
        let Some(mut current) = sealer.take() else {
            return;
        };
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            let result = span.in_scope(|| current.round());
            (current, result)
        })
        .await;
        let (current, result) = match joined {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "the sealing task failed; sealing stops");
                return;
            }
        };
        sealer = Some(current);
        let outcome = match result {
            Ok(round) if round.sealed.is_empty() => "idle",
            Ok(round) => {
                for sealed in &round.sealed {
                    metrics.inc(SEALED, SEALED_HELP, &[], sealed.reports as u64);
                    tracing::debug!(
                        election.id = %sealed.election,
                        seal.reports = sealed.reports,
                        seal.count = sealed.checkpoint.sealed_count,
                        seal.through = sealed.checkpoint.sealed_through_report_id,
                        seal.head = %sealed.checkpoint.head,
                        "sealed reports"
                    );
                }
                "sealed"
            }
            Err(error) => {
                // Counting reports outages; anything else (a row that
                // cannot be sealed) needs a person. Retried every interval.
                if error.is_unavailable() {
                    tracing::debug!(error = %anyhow::Error::new(error), "a sealing round failed");
                } else {
                    tracing::warn!(error = %format!("{:#}", anyhow::Error::new(error)), "a sealing round failed");
                }
                "failed"
            }
        };
        metrics.inc(ROUNDS, ROUNDS_HELP, &[("outcome", outcome)], 1);
        if crate::worker::pause(settings.interval, &mut stopping).await {
            break;
        }
    }
}
