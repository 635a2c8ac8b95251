//! `GET /healthz` (the process is alive and serving) and `GET /readyz` (its
//! stores answer), shared by every service.
//!
//! Readiness runs the service's own check on the blocking pool with a time
//! limit, so a hung store makes the answer 503 rather than a hung probe.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

/// A readiness check: `Ok` when every store the service needs answers,
/// otherwise which one does not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How long `/readyz` waits for the stores.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The two health routes.
pub fn routes<S: Clone + Send + Sync + 'static>(check: ReadyCheck) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready).with_state(check))
}

async fn ready(State(check): State<ReadyCheck>) -> impl IntoResponse {
    let run = tokio::task::spawn_blocking(move || check());
    match tokio::time::timeout(READY_TIMEOUT, run).await {
        Ok(Ok(Ok(()))) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Ok(Err(why))) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        Ok(Err(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: check failed\n".to_owned(),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: stores did not answer in time\n".to_owned(),
        ),
    }
}
