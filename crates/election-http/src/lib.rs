//! Plumbing shared by `election-ingest`, `election-reprocessor` and
//! `election-query`, so each binary is only its own routes and wiring.
//!
//! - [`error::ApiError`]: the single error type handlers return; renders
//!   `{"error": code, "message": text}` and logs 5xx once, at the boundary.
//! - [`metrics::Registry`]: counters and histograms rendered as Prometheus
//!   text for `GET /metrics`.
//! - [`health`]: `GET /healthz` and `GET /readyz`.
//! - [`telemetry::init`]: `tracing` output, human or JSON.
//! - [`shutdown::signal`]: resolves on SIGTERM or SIGINT.
//! - [`blocking`]: runs blocking store calls off the async workers, keeping
//!   the caller's tracing span.

pub mod error;
pub mod health;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

pub use error::ApiError;

/// Runs a blocking closure (diesel, the synchronous Redis client) on tokio's
/// blocking pool, inside the caller's tracing span.
pub async fn blocking<F, T>(work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| ApiError::internal(format!("blocking task failed: {e}")))
}
