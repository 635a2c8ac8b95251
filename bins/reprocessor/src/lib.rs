//! `election-reprocessor`: counts every report that was recorded in
//! PostgreSQL but not counted in Redis (Redis was down, a process crashed
//! between the two), and makes Redis exact again from PostgreSQL.
//!
//! The binary (`main.rs`) only parses the command line and calls in here:
//! - [`run`] counts forever, serving `/healthz`, `/readyz` and `/metrics` on
//!   the listener it is given, until the shutdown future resolves;
//! - [`drain`] (`run --once`) counts until nothing is left pending, and says
//!   so;
//! - [`commands::reconcile`] compares and repairs (the logic is
//!   `election_core::reconcile`);
//! - [`commands::verify`] recomputes an election's sealed log and names the
//!   first report changed since it was sealed ([`sealer`] seals, in `run`).
//!
//! Counting goes through `Engine::count_pending`, the same exactly-once path
//! as ingest: claims are `FOR UPDATE SKIP LOCKED` with a lease, so any number
//! of reprocessors may run at once, and a revision claimed twice (a lease ran
//! out) is still counted once, by the markers.

pub mod cli;
pub mod commands;
pub mod healer;
pub mod sealer;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use election_core::{ReportLog, Tally};
use election_http::health::{self, ReadyCheck};
use election_http::metrics::Registry;
use election_wiring::Serving;

pub use worker::{DrainSummary, Settings, drain};

/// The stores the reprocessor runs on.
pub struct Services {
    /// The durable report log.
    pub log: Arc<dyn ReportLog>,
    /// The live counters.
    pub tally: Arc<dyn Tally>,
    /// What `/readyz` checks.
    pub ready: ReadyCheck,
    /// The repair locks the healing loop takes (see [`healer`]).
    pub locks: Arc<dyn healer::RepairLocks>,
    /// The Redis behind `tally`, when it is one: `/metrics` shows
    /// `redis_evicting_policy` from its last checks of the nodes'
    /// `maxmemory-policy`.
    pub redis: Option<Arc<store_redis::RedisTally>>,
    /// Seals the log into each election's hash chain (see [`sealer`]), with
    /// `Settings::seal`.
    pub sealer: Option<store_pg::seal::Sealer>,
}

/// Counts pending reports until `serving`'s shutdown resolves, serving
/// health and metrics on its listener; then finishes the round in progress
/// (its batch is counted, or released if it failed) and returns.
pub async fn run(serving: Serving, services: Services, settings: Settings) -> anyhow::Result<()> {
    let metrics = election_wiring::registry(services.redis.as_ref());
    let Serving { listener, shutdown } = serving;
    let stopping = election_wiring::stop_flag(shutdown);
    let app = router(Arc::clone(&metrics), services.ready.clone());
    let mut server_stopping = stopping.clone();
    let server = tokio::spawn(async move {
        // The same server as ingest and query: a client that stalls in its
        // headers is cut off after the default header timeout.
        let config = election_http::serve::ServeConfig {
            header_read_timeout: election_http::serve::DEFAULT_HEADER_TIMEOUT,
        };
        election_http::serve::serve(listener, app, config, async move {
            let _ = server_stopping.wait_for(|stop| *stop).await;
        })
        .await
    });
    let healing = settings.heal.map(|heal| {
        tokio::spawn(healer::run(
            Arc::clone(&services.log),
            Arc::clone(&services.tally),
            services.locks,
            heal,
            Arc::clone(&metrics),
            stopping.clone(),
        ))
    });
    let sealing = match (services.sealer, settings.seal) {
        (Some(sealer), Some(seal)) => Some(tokio::spawn(sealer::run(
            sealer,
            seal,
            Arc::clone(&metrics),
            stopping.clone(),
        ))),
        _ => None,
    };
    let worker = worker::Worker::new(services.log, services.tally, settings, metrics);
    worker.run(stopping).await;
    if let Some(healing) = healing {
        healing.await?;
    }
    if let Some(sealing) = sealing {
        sealing.await?;
    }
    server.await??;
    Ok(())
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(metrics: Arc<Registry>, ready: ReadyCheck) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(header::CONTENT_TYPE, election_http::metrics::CONTENT_TYPE)],
                        metrics.render(),
                    )
                }
            }),
        )
        .merge(health::routes(ready))
}
