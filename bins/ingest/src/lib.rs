//! `election-ingest`: the reporting API. Records each ballot box report
//! durably in PostgreSQL, then counts it exactly once in Redis.
//!
//! The binary (`main.rs`) only parses the command line and calls in here;
//! [`run`] takes its listener and shutdown signal from the caller (one
//! `election_wiring::Serving`), so tests serve on port 0 and stop it at will.

pub mod auth;
pub mod batcher;
pub mod bulk;
pub mod cli;
pub mod commands;
pub mod definitions;
pub mod failed_auth;
pub mod limit;
pub mod redis_watch;
pub mod service;
#[cfg(feature = "test-support")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use election_core::{Engine, ReportLog, Tally};
use election_http::ServeConfig;
use election_http::client::TrustedProxies;
use election_http::health::ReadyCheck;
use election_http::layers::CorsOrigins;
use election_wiring::Serving;

use crate::auth::{TokenCache, TokenLookup};
use crate::batcher::{BatchConfig, Batcher};
use crate::definitions::DefinitionCache;
use crate::failed_auth::FailedAuth;
use crate::limit::{RateLimit, RateLimiter};
use crate::redis_watch::RedisWatch;
use crate::service::{AppState, Bodies, RequestMetrics, router};
use election_core::DefinitionLookup;

/// The stores the service runs on.
pub struct Services {
    /// The durable report log.
    pub log: Arc<dyn ReportLog>,
    /// The live counters.
    pub tally: Arc<dyn Tally>,
    /// Token lookups.
    pub tokens: Arc<dyn TokenLookup>,
    /// Election definitions (docs/contract.md §7).
    pub definitions: Arc<dyn DefinitionLookup>,
    /// What `/readyz` checks.
    pub ready: ReadyCheck,
    /// The Redis behind `tally`, when it is one: `/metrics` shows
    /// `redis_evicting_policy` from its last checks of the nodes'
    /// `maxmemory-policy`.
    pub redis: Option<Arc<store_redis::RedisTally>>,
}

/// Tunables of a running service.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Group commit.
    pub batch: BatchConfig,
    /// How long token answers are cached.
    pub token_cache_ttl: Duration,
    /// How long election definitions are cached.
    pub definition_cache_ttl: Duration,
    /// Connection handling: the header-read deadline (slowloris).
    pub serve: ServeConfig,
    /// Longest time a report's body may take to arrive once its headers
    /// have; past it the answer is 408 and nothing is recorded.
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once over every connection; a
    /// request beyond them is answered `503 overloaded` (see
    /// `service::Bodies`).
    pub bodies_in_flight: usize,
    /// The per-token rate limit (`None`: no limit).
    pub rate_limit: Option<RateLimit>,
    /// Origins whose browser pages may post (none by default).
    pub cors_origins: CorsOrigins,
    /// Failed authentications allowed per client address (`None`: no
    /// limit).
    pub auth_failures: Option<RateLimit>,
    /// The proxies whose `X-Forwarded-For` names the client address (none:
    /// the TCP peer is the client).
    pub trusted_proxies: TrustedProxies,
}

/// Serves the reporting API on `serving`'s listener until its shutdown
/// resolves, then stops accepting, answers every request already accepted
/// (their batches are recorded and counted), and returns.
pub async fn run(serving: Serving, services: Services, settings: Settings) -> anyhow::Result<()> {
    let metrics = election_wiring::registry(services.redis.as_ref());
    let (stop_watch, watch_stopping) = tokio::sync::watch::channel(false);
    let redis_watch = RedisWatch::new();
    if let Some(redis) = services.redis {
        let watched = Arc::clone(&redis_watch);
        metrics.gauge_fn(
            redis_watch::UP_GAUGE,
            redis_watch::UP_GAUGE_HELP,
            move || watched.gauge(),
        );
        tokio::spawn(Arc::clone(&redis_watch).run(redis, watch_stopping));
    }
    let bodies = Bodies::new(settings.bodies_in_flight);
    {
        let bodies = bodies.clone();
        metrics.gauge_fn(
            "ingest_body_bytes_held",
            "Bytes of request bodies reserved by the requests in flight (limit: INGEST_BODIES_IN_FLIGHT_MIB)",
            move || bodies.held() as f64,
        );
    }
    let engine = Engine::new(services.log, services.tally);
    let (batcher, task) = Batcher::start(engine, settings.batch, Arc::clone(&metrics));
    let state = AppState {
        batcher,
        tokens: Arc::new(TokenCache::new(services.tokens, settings.token_cache_ttl)),
        definitions: Arc::new(DefinitionCache::new(
            services.definitions,
            settings.definition_cache_ttl,
        )),
        requests: Arc::new(RequestMetrics::new(&metrics)),
        metrics,
        body_timeout: settings.body_timeout,
        bodies,
        limiter: settings
            .rate_limit
            .map(|limit| Arc::new(RateLimiter::new(limit))),
        failed_auth: settings
            .auth_failures
            .map(|limit| Arc::new(FailedAuth::new(limit))),
        trusted_proxies: settings.trusted_proxies,
    };
    let app = router(
        state,
        services.ready,
        redis_watch.details(),
        settings.cors_origins,
    );
    election_http::serve(serving.listener, app, settings.serve, serving.shutdown).await?;
    stop_watch.send_replace(true);
    // The router (and with it every handle on the batcher) is gone: wait for
    // the batches still being recorded.
    task.finish().await;
    Ok(())
}
