//! `GET /healthz` (the process is alive and serving) and `GET /readyz` (its
//! stores answer), shared by every service.
//!
//! `/healthz` never does I/O: it answers `ok`, followed by one `<name>:
//! <state>` line per detail the service reports from state it keeps (such as
//! ingest's last verdict on Redis, which does not make ingest unready: it
//! still records reports and answers 202).
//!
//! Readiness runs the service's own check on the blocking pool with a time
//! limit, so a hung store makes the answer 503 rather than a hung probe. A
//! check may pass with notes (a store that answers but is misconfigured,
//! such as a Redis whose `maxmemory-policy` may evict keys): the answer is
//! still 200, `ready` followed by one `note: ...` line each, so an operator
//! looking at readiness sees the reason without the service being taken out
//! of rotation.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

/// A readiness check: `Ok` when every store the service needs answers, with
/// notes for operators (usually none), otherwise which store does not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;

/// How long `/readyz` waits for the stores.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Lines for `/healthz` after `ok` (`redis: ok`); computed from state the
/// service keeps, no I/O.
pub type HealthDetails = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The two health routes.
pub fn routes<S: Clone + Send + Sync + 'static>(check: ReadyCheck) -> Router<S> {
    routes_with_details(check, Arc::new(Vec::new))
}

/// The two health routes, `/healthz` with `details`.
pub fn routes_with_details<S: Clone + Send + Sync + 'static>(
    check: ReadyCheck,
    details: HealthDetails,
) -> Router<S> {
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let details = Arc::clone(&details);
                async move {
                    let mut body = "ok\n".to_owned();
                    for line in details() {
                        body.push_str(&line);
                        body.push('\n');
                    }
                    body
                }
            }),
        )
        .route("/readyz", get(ready).with_state(check))
}

async fn ready(State(check): State<ReadyCheck>) -> impl IntoResponse {
    let run = tokio::task::spawn_blocking(move || check());
    match tokio::time::timeout(READY_TIMEOUT, run).await {
        Ok(Ok(Ok(notes))) => {
            let mut body = "ready\n".to_owned();
            for note in notes {
                body.push_str("note: ");
                body.push_str(&note);
                body.push('\n');
            }
            (StatusCode::OK, body)
        }
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
