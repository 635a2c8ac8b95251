//! The HTTP surface of ingest: `POST /v1/elections/{election}/reports`, with
//! health and metrics.
//!
//! The handler checks, in this order, and answers the first problem found:
//! the token (401), the token's rate limit (429, with `Retry-After`; see
//! [`crate::limit`]), the election id (422), the token's election (403), the
//! content type (415), the body size (413) and the time the body takes to
//! arrive (408), the JSON shape (400), the domain rules (422), the
//! election's definition where it has one (422: unknown party, city or
//! ballot box, a box under another city), the token's ballot box (403).
//! Only then is the report queued for the [`Batcher`], whose answer becomes
//! 201, 202, 200, 409 or 503. Every refusal happens before anything is
//! written (I4).
//!
//! Around the routes, the shared layers (`election_http::layers`): request
//! ids and the access log, JSON 404 and 405 (with `Allow`), caught panics,
//! compression, and CORS closed unless origins are configured (ballot boxes
//! are programs; a browser page posting reports is the exception).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use election_core::{ElectionId, Outcome, Report, ReportError, ReportId};
use election_http::ApiError;
use election_http::health::{self, HealthDetails, ReadyCheck};
use election_http::layers::{self, CorsOrigins, Layers};
use election_http::metrics::{LATENCY_BUCKETS, Registry};
use futures_util::StreamExt;
use serde::Serialize;

use crate::auth::{self, TokenCache};
use crate::batcher::Batcher;
use crate::definitions::{Cached, DefinitionCache};
use crate::limit::RateLimiter;

/// Largest report body accepted (SPEC §5).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Where validated reports go.
    pub batcher: Batcher,
    /// Token checks.
    pub tokens: Arc<TokenCache>,
    /// Election definitions.
    pub definitions: Arc<DefinitionCache>,
    /// The service's metrics.
    pub metrics: Arc<Registry>,
    /// Longest time a body may take to arrive (408 past it).
    pub body_timeout: Duration,
    /// The per-token rate limit, if one is configured.
    pub limiter: Option<Arc<RateLimiter>>,
}

/// Every `(method, path)` [`router`] serves, in axum's path syntax. Keep it
/// in step with the router: election-query's integration test checks that each
/// is documented in `docs/openapi.yaml` and answers on a running service.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/elections/{election}/reports"),
    ("GET", "/openapi.yaml"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// The router of the ingest service; `health` adds lines to `/healthz`,
/// `cors_origins` may post from browsers.
pub fn router(
    state: AppState,
    ready: ReadyCheck,
    health: HealthDetails,
    cors_origins: CorsOrigins,
) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let router = Router::new()
        .route("/v1/elections/{election}/reports", post(post_report))
        .with_state(state)
        .route("/openapi.yaml", get(layers::openapi))
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .merge(health::routes_with_details(ready, health))
        .fallback(layers::not_found);
    Layers {
        cors_origins,
        cors_methods: vec![Method::POST],
        cors_request_headers: vec![
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            layers::REQUEST_ID,
        ],
        cors_exposed_headers: vec![header::RETRY_AFTER, layers::REQUEST_ID],
    }
    .apply(router)
}

/// The body of every 2xx answer.
#[derive(Serialize, Debug)]
pub struct Accepted {
    /// The log's id of the revision.
    pub report_id: ReportId,
    /// The ballot box.
    pub ballot_box_id: String,
    /// The revision.
    pub revision: u32,
    /// `counted` (in the live totals) or `pending` (recorded, counted later).
    pub status: &'static str,
}

async fn post_report(
    State(state): State<AppState>,
    Path(election): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = handle(&state, &election, &headers, body).await;
    let (status, code) = match &answer {
        Ok((status, accepted)) => (*status, accepted.status),
        Err(error) => (error.status(), error.code()),
    };
    state.metrics.inc(
        "ingest_responses_total",
        "Report requests answered, by HTTP status and outcome or error code.",
        &[("status", status.as_str()), ("code", code)],
        1,
    );
    state.metrics.observe(
        "ingest_request_duration_seconds",
        "Time from request to answer for report posts.",
        LATENCY_BUCKETS,
        &[],
        started.elapsed().as_secs_f64(),
    );
    match answer {
        Ok((status, accepted)) => (status, Json(accepted)).into_response(),
        Err(error) => {
            let mut response = error.into_response();
            if status == StatusCode::REQUEST_TIMEOUT {
                // The rest of the body may still be on its way: this
                // connection cannot carry another request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

async fn handle(
    state: &AppState,
    election: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Accepted), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token: send `Authorization: Bearer <token>` with a token from `election-ingest token issue`",
            )
        })?;
    // Hashed once: the key of the token cache, the store and the rate limit.
    let token_hash = auth::hash(token);
    let scope = match state.tokens.cached(&token_hash) {
        Some(scope) => scope,
        None => {
            let tokens = Arc::clone(&state.tokens);
            election_http::blocking(move || tokens.scope(&token_hash))
                .await?
                .map_err(|error| {
                    tracing::warn!(%error, "token lookup failed");
                    ApiError::unavailable(
                        "unavailable",
                        "the report store is unavailable; nothing was recorded, retry later",
                    )
                })?
        }
    };
    let scope = scope.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or revoked token",
        )
    })?;
    if let Some(limiter) = &state.limiter {
        limiter.check(&token_hash).map_err(|limited| {
            let limit = limiter.limit();
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this token may post {} reports per second (bursts of {}); nothing was recorded, retry in {} s",
                    limit.per_second, limit.burst, limited.retry_after_secs
                ),
            )
            .with_retry_after(limited.retry_after_secs)
        })?;
    }
    let election = ElectionId::parse(election).map_err(|p| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_report",
            p.to_string(),
        )
    })?;
    if scope.election != election {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token is not valid for election {:?}",
                election.as_str()
            ),
        ));
    }
    check_content_type(headers)?;
    let body = read_body(headers, body, state.body_timeout).await?;
    let report = Report::from_json(&election, &body).map_err(|error| match error {
        ReportError::Malformed(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
        ReportError::Invalid(problems) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_report",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.to_string()),
    })?;
    let definition = match state.definitions.cached(&election) {
        Cached::Hit(definition) => definition,
        Cached::Miss => {
            let definitions = Arc::clone(&state.definitions);
            let election = election.clone();
            election_http::blocking(move || definitions.refresh(&election))
                .await?
                .map_err(|error| {
                    tracing::warn!(%error, "definition lookup failed");
                    ApiError::unavailable(
                        "unavailable",
                        "the report store is unavailable; nothing was recorded, retry later",
                    )
                })?
        }
    };
    if let Some(definition) = definition {
        definition.check_report(&report).map_err(|problems| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_report",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
    }
    if let Some(bound) = &scope.ballot_box
        && bound != report.ballot_box()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token may only report for ballot box {:?}, not {:?}",
                bound.as_str(),
                report.ballot_box().as_str()
            ),
        ));
    }
    let ballot_box_id = report.ballot_box().to_string();
    let revision = report.revision().get();
    let answer = state.batcher.submit(report).await.ok_or_else(|| {
        ApiError::unavailable("unavailable", "the service is shutting down; retry")
    })?;
    let accepted = |report_id, status| Accepted {
        report_id,
        ballot_box_id: ballot_box_id.clone(),
        revision,
        status,
    };
    match answer {
        Ok(Outcome::Counted(id)) => Ok((StatusCode::CREATED, accepted(id, "counted"))),
        Ok(Outcome::Pending(id)) => {
            state.metrics.inc(
                "ingest_redis_deferred_total",
                "Reports recorded but not counted at once (Redis unavailable); the reprocessor counts them.",
                &[],
                1,
            );
            Ok((StatusCode::ACCEPTED, accepted(id, "pending")))
        }
        Ok(Outcome::Replay { report_id, counted }) => Ok((
            StatusCode::OK,
            accepted(report_id, if counted { "counted" } else { "pending" }),
        )),
        Ok(Outcome::Conflict(conflict)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{} ({})", conflict, conflict.code()),
        )),
        Ok(Outcome::Failed { unavailable, error }) => {
            tracing::warn!(
                ballot_box.id = %ballot_box_id,
                report.revision = revision,
                %error,
                "report not recorded (its batch-mates were)"
            );
            Err(if unavailable {
                ApiError::unavailable(
                    "unavailable",
                    "the report store (PostgreSQL) is unavailable; nothing was recorded, retry later",
                )
            } else {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "this report could not be recorded; nothing was recorded for it",
                )
            })
        }
        Err(error) => {
            tracing::warn!(error = %error, "report not recorded");
            Err(ApiError::unavailable(
                "unavailable",
                "the report store (PostgreSQL) is unavailable; nothing was recorded, retry later",
            ))
        }
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {:?} is not supported; send `Content-Type: application/json`",
                if value.is_empty() { "(none)" } else { value }
            ),
        ))
    }
}

/// How much of an oversized body is read and thrown away before answering
/// 413. A server that answers and closes while the client is still sending
/// makes the client's kernel see a reset, and the client may never read the
/// answer; reading on (bounded in size and time) lets it finish sending and
/// read the 413. Beyond this, the connection is simply closed.
const DRAIN_BYTES: usize = 1024 * 1024;
/// How long draining may take.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads a whole body of at most [`MAX_BODY_BYTES`] that must arrive within
/// `timeout` (408 otherwise: a client that sends headers and then stalls or
/// trickles holds a connection and a task; `election_http::serve` bounds
/// only the headers).
async fn read_body(headers: &HeaderMap, body: Body, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        drain(&mut stream, 0).await;
        return Err(too_large());
    }
    let mut collected = Vec::with_capacity(declared.map_or(1024, |n| n as usize));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the body did not arrive within {} ms ({} bytes received); nothing was recorded, send it again",
                        timeout.as_millis(),
                        collected.len()
                    ),
                ));
            }
        };
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("could not read the body: {error}"),
            )
        })?;
        if collected.len() + chunk.len() > MAX_BODY_BYTES {
            drain(&mut stream, collected.len() + chunk.len()).await;
            return Err(too_large());
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

/// Reads and discards the rest of a body, up to [`DRAIN_BYTES`] in all and
/// for at most [`DRAIN_TIME`].
async fn drain(stream: &mut axum::body::BodyDataStream, already: usize) {
    let mut seen = already;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen <= DRAIN_BYTES {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}
