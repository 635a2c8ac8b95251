//! `election-query`: the read side of the election counting system. Live
//! totals from Redis (JSON and a Server-Sent Events stream), history and the
//! audit export from PostgreSQL, and the live dashboard page.
//!
//! The binary (`main.rs`) only parses the command line and calls in here;
//! [`run`] takes its listener and shutdown signal from the caller (one
//! `election_wiring::Serving`), so tests serve on port 0 and stop it at will.
//!
//! - [`elections`]: which elections exist (404 for the others, before any
//!   live feed is started);
//! - [`live`]: one refreshed snapshot per watched election, shared by every
//!   reader and stream;
//! - [`render`]: the live bodies, rendered once per snapshot;
//! - [`precompressed`]: their large bodies compressed once per version and
//!   encoding;
//! - [`stream`]: the stream's snapshot and delta events, rendered once and
//!   shared by every subscriber;
//! - [`asof`]: the totals as they stood at an instant, from the log;
//! - [`cdf`]: the NIST SP 1500-100 export of the live totals;
//! - [`api`]: the routes, the live handlers and the stream;
//! - [`answer`]: what every handler shares (parameters, JSON answers, store
//!   errors as answers);
//! - [`analytics`] and [`timeline`]: the history endpoints;
//! - [`audit`]: the sealed log's published heads.

pub mod analytics;
pub mod answer;
pub mod api;
pub mod asof;
pub mod audit;
pub mod cdf;
pub mod cli;
pub mod commands;
pub mod elections;
pub mod gzip_stream;
pub mod live;
pub mod precompressed;
pub mod render;
pub mod stream;
pub mod timeline;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use axum::http::HeaderValue;
use election_core::{History, Tally};
use election_http::conditional::public_max_age;
use election_http::health::ReadyCheck;
use election_http::layers::CorsOrigins;
use election_http::metrics::Registry;
use election_wiring::Serving;
use store_pg::PgPool;
use tokio::sync::watch;

use crate::elections::Elections;
use crate::live::{Live, LiveConfig};
use crate::timeline::Timelines;

/// The stores the service reads.
pub struct Services {
    /// The live counters.
    pub tally: Arc<dyn Tally>,
    /// PostgreSQL: the elections' definitions.
    pub pg: PgPool,
    /// Which elections exist, and their list (`GET /v1/elections`): the
    /// primary's history (`store_pg::PgHistory` on `DATABASE_URL`), so an
    /// election is known as soon as it is defined or reported to.
    pub catalog: Arc<dyn History>,
    /// Where history (analytics, the timeline, the CSV export, `as_of`
    /// totals, the seals of `GET /audit`) is read from: in the service,
    /// `store_pg::PgHistory` on a streaming replica when one is configured
    /// (it takes those scans off the primary that ingest writes to), else
    /// the same as `catalog`. A replica's lag shows as history a little
    /// behind the live totals, which history answers already are (they are
    /// cached for seconds). Tests may pass the in-memory log.
    pub history: Arc<dyn History>,
    /// What `/readyz` checks.
    pub ready: ReadyCheck,
    /// The Redis behind `tally`, when it is one: `/metrics` shows
    /// `redis_evicting_policy` from its last checks of the nodes'
    /// `maxmemory-policy`.
    pub redis: Option<Arc<store_redis::RedisTally>>,
}

/// Tunables of a running service. No `Default`: the binary builds it from
/// its configuration (see [`cli`]), tests spell theirs out.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time between two snapshots of a watched election.
    pub snapshot_interval: Duration,
    /// Longest time between two full reads of a watched election whose
    /// tally keeps a change journal (`live::LiveConfig::full_read_with_journal`).
    pub full_read_interval: Duration,
    /// An election nobody reads or streams for this long stops being
    /// refreshed.
    pub idle_after: Duration,
    /// Most elections refreshed at once.
    pub max_elections: usize,
    /// Longest wait of a first request for an election's first snapshot.
    pub first_snapshot_timeout: Duration,
    /// Interval of keep-alive comments on streams.
    pub keep_alive: Duration,
    /// Stream deltas kept per election, for subscribers that reconnect or
    /// fall behind (further behind, they get a snapshot).
    pub stream_history: usize,
    /// How long a timeline answer is reused.
    pub timeline_cache: Duration,
    /// How often a timeline is read whole rather than from its last minutes.
    pub timeline_full_refresh: Duration,
    /// A correction moving its box's total by more than this share of the
    /// previous total is flagged.
    pub flag_correction_share: f64,
    /// Connection handling: the header-read deadline (slowloris). Streams
    /// are responses being written, which it never cuts.
    pub serve: election_http::ServeConfig,
    /// `Cache-Control: public, max-age=<seconds>` of live answers.
    pub live_max_age_secs: u64,
    /// `Cache-Control: public, max-age=<seconds>` of history answers.
    pub history_max_age_secs: u64,
    /// How often the list of known elections is read again.
    pub elections_refresh: Duration,
    /// Origins browsers may read the API from.
    pub cors_origins: CorsOrigins,
}

/// The `Cache-Control` values of the answers.
#[derive(Clone, Debug)]
pub struct CachePolicy {
    /// Live answers (totals, cities, the definition, the election list).
    pub live: HeaderValue,
    /// History answers (analytics, the timeline, the CSV export).
    pub history: HeaderValue,
}

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The live feeds.
    pub live: Arc<Live>,
    /// History reads (see [`Services::history`]).
    pub history: Arc<dyn History>,
    /// PostgreSQL for definitions (`as_of` answers of an election without a
    /// live feed).
    pub pg: PgPool,
    /// Cached timelines.
    pub timelines: Arc<Timelines>,
    /// The service's metrics.
    pub metrics: Arc<Registry>,
    /// Open streams (for the gauge).
    pub subscribers: Arc<AtomicI64>,
    /// Interval of stream keep-alives.
    pub keep_alive: Duration,
    /// Which elections exist.
    pub elections: Arc<Elections>,
    /// `Cache-Control` of answers.
    pub cache: CachePolicy,
    /// See [`Settings::flag_correction_share`].
    pub flag_correction_share: f64,
}

/// Serves the read API on `serving`'s listener until its shutdown resolves,
/// then stops accepting, ends every stream and refresh task, lets requests
/// in flight finish, and returns.
pub async fn run(serving: Serving, services: Services, settings: Settings) -> anyhow::Result<()> {
    let metrics = election_wiring::registry(services.redis.as_ref());
    let (stop, stopping) = watch::channel(false);
    let pg = services.pg.clone();
    let live = Live::new(
        services.tally,
        Arc::new(move |election, known| {
            store_pg::definitions::find_if_changed(&pg, election, known)
                .map_err(|error| format!("{error:#}"))
        }),
        LiveConfig {
            interval: settings.snapshot_interval,
            idle_after: settings.idle_after,
            max_elections: settings.max_elections,
            first_snapshot_timeout: settings.first_snapshot_timeout,
            stream_history: settings.stream_history,
            full_read_every: live::FULL_READ_EVERY,
            full_read_with_journal: settings.full_read_interval,
        },
        Arc::clone(&metrics),
        stopping,
    );
    let elections = Elections::new(services.catalog, settings.elections_refresh);
    tokio::spawn(Arc::clone(&elections).keep_fresh(stop.subscribe()));
    let state = AppState {
        elections,
        cache: CachePolicy {
            live: public_max_age(settings.live_max_age_secs),
            history: public_max_age(settings.history_max_age_secs),
        },
        live,
        history: services.history,
        pg: services.pg,
        timelines: Arc::new(Timelines::new(
            settings.timeline_cache,
            settings.timeline_full_refresh,
        )),
        metrics,
        subscribers: Arc::new(AtomicI64::new(0)),
        keep_alive: settings.keep_alive,
        flag_correction_share: settings.flag_correction_share,
    };
    let app = api::router(state, services.ready, settings.cors_origins);
    // Streams never end by themselves: the server's graceful shutdown would wait
    // for them forever. The signal first tells every stream and refresh task
    // to stop, then lets the server drain what is left.
    let Serving { listener, shutdown } = serving;
    let signal = async move {
        shutdown.await;
        stop.send_replace(true);
    };
    election_http::serve(listener, app, settings.serve, signal).await?;
    Ok(())
}
