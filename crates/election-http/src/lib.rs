//! Plumbing shared by `election-ingest`, `election-reprocessor` and
//! `election-query`, so each binary is only its own routes and wiring. This
//! is the HTTP side and depends on no store: what the services share around
//! the stores (their settings, connecting, readiness, start-up) is
//! `election-wiring`'s, built on this crate.
//!
//! - [`error::ApiError`]: the single error type handlers return; renders
//!   `{"error": code, "message": text}` and logs 5xx once, at the boundary.
//! - [`metrics::Registry`]: counters and histograms rendered as Prometheus
//!   text for `GET /metrics`.
//! - [`health`]: `GET /healthz` and `GET /readyz`.
//! - [`layers::Layers`]: the layers around every router (request ids, the
//!   access log, CORS, compression, JSON errors, caught panics) and
//!   `GET /openapi.yaml`.
//! - [`conditional`]: `ETag`, `Last-Modified` and `304 Not Modified`.
//! - [`telemetry::init`]: `tracing` output, human or JSON, panics and
//!   start-up errors included.
//! - [`config`]: one duration format, and the old names of renamed
//!   settings still accepted.
//! - [`build`]: the version and git revision built (`--version`,
//!   `build_info`).
//! - [`client::TrustedProxies`]: which client sent a request when proxies
//!   stand in front (`X-Forwarded-For`, believed only from the proxies an
//!   operator names).
//! - [`serve::serve`]: the HTTP server, with a header-read deadline (no
//!   slowloris) and graceful shutdown.
//! - [`shutdown::signal`]: resolves on SIGTERM or SIGINT.
//! - [`blocking`]: runs blocking store calls off the async workers, keeping
//!   the caller's tracing span.
//! - [`redact`]: a URL fit for logs and metrics (passwords replaced).

pub mod build;
pub mod client;
pub mod conditional;
pub mod config;
pub mod error;
pub mod health;
pub mod layers;
pub mod metrics;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use error::ApiError;
pub use serve::{ServeConfig, serve};

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

/// A URL with its password replaced by `***`, for logs: database and Redis
/// URLs may hold credentials, which must never reach logs or metrics. Each
/// part of a comma-separated list (a Redis Cluster) is redacted.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|part| match part.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{}", redact_userinfo(rest)),
            None => redact_userinfo(part),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `user:password@host...` → `user:***@host...`; credentials end at the last
/// `@` (a password may itself hold `@`).
fn redact_userinfo(text: &str) -> String {
    match text.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{credentials}@{host}"),
        },
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("redis+cluster://:pw@h1:1,:pw@h2:2"),
            "redis+cluster://:***@h1:1,:***@h2:2"
        );
        assert_eq!(
            redact("redis://a:x@h1:1,redis://a:y@h2:2"),
            "redis://a:***@h1:1,redis://a:***@h2:2"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("redis+cluster://app:p@ss@h1:1,h2:2"),
            "redis+cluster://app:***@h1:1,h2:2"
        );
    }
}
