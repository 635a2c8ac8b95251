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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use election_core::{
    BallotBoxId, ElectionId, Outcome, Problem, Report, ReportError, ReportId, StoreError,
};
use election_http::ApiError;
use election_http::client::TrustedProxies;
use election_http::health::{self, HealthDetails, ReadyCheck};
use election_http::layers::{self, CorsOrigins, Layers};
use election_http::metrics::{
    self, Counter, EncodeLabelSet, Family, Histogram, LATENCY_BUCKETS, Registry,
};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{self, Scope, TokenCache};
use crate::batcher::{Batcher, NotRecorded};
use crate::definitions::{Cached, Current, DefinitionCache};
use crate::failed_auth::FailedAuth;
use crate::limit::RateLimiter;

/// Largest report body accepted (docs/contract.md §5).
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
    /// The handles counted on every request.
    pub requests: Arc<RequestMetrics>,
    /// Longest time a body may take to arrive (408 past it).
    pub body_timeout: Duration,
    /// The request bodies held at once, in bytes (see [`Bodies`]).
    pub bodies: Bodies,
    /// The per-token rate limit, if one is configured.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The limit on failed authentications per client address, if any.
    pub failed_auth: Option<Arc<FailedAuth>>,
    /// The proxies whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: TrustedProxies,
}

/// An answer's labels: its HTTP status and outcome or error code.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `counted`, `pending`, or the error code.
    pub code: &'static str,
}

/// The metrics counted on every request, as handles made once (no lock, no
/// allocation per increment; see `election_http::metrics`).
#[derive(Debug)]
pub struct RequestMetrics {
    responses: Family<Answer, Counter>,
    duration: Histogram,
    deferred: Counter,
    batch_items: Family<Answer, Counter>,
}

impl RequestMetrics {
    /// Registers them in `registry`.
    pub fn new(registry: &Registry) -> RequestMetrics {
        RequestMetrics {
            responses: registry.counter_family(
                "ingest_responses_total",
                "Report requests answered, by HTTP status and outcome or error code.",
            ),
            duration: registry.histogram(
                "ingest_request_duration_seconds",
                "Time from request to answer for report posts.",
                LATENCY_BUCKETS,
            ),
            deferred: registry.counter(
                "ingest_redis_deferred_total",
                "Reports recorded but not counted at once (Redis unavailable); the reprocessor counts them.",
            ),
            batch_items: registry.counter_family(
                "ingest_batch_items_total",
                "Items of bulk requests answered, by the status and outcome or error code each would have had alone.",
            ),
        }
    }

    /// Counts one bulk item's answer.
    pub fn batch_item(&self, status: u16, code: &'static str) {
        self.batch_items
            .get_or_create(&Answer { status, code })
            .inc();
    }
}

/// Every `(method, path)` [`router`] serves, in axum's path syntax. Keep it
/// in step with the router: election-query's integration test checks that each
/// is documented in `docs/openapi.yaml` and answers on a running service.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/elections/{election}/reports"),
    ("POST", "/v1/elections/{election}/report-batches"),
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
) -> layers::App {
    let metrics = Arc::clone(&state.metrics);
    let router = Router::new()
        .route("/v1/elections/{election}/reports", post(post_report))
        .route(
            "/v1/elections/{election}/report-batches",
            post(crate::bulk::post_batch),
        )
        // One `Arc` clone per request rather than one per field of the
        // state: each clone and drop is an atomic on a line both cores share.
        .with_state(Arc::new(state))
        .route("/openapi.yaml", get(layers::openapi))
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
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
        // Never compressed: the write path's CPU is worth more than the
        // bytes (election_http::layers, "Compression").
        compress: false,
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
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let client = client(&state, &parts);
    match handle(&state, &election, client, &parts.headers, body).await {
        Ok((status, accepted)) => {
            count_request(&state, status, accepted.status, started);
            (status, Json(accepted)).into_response()
        }
        Err(error) => refuse(&state, error, started),
    }
}

/// The client's address, when the server recorded it: the TCP peer's, or
/// the one a trusted proxy says it forwarded for
/// ([`TrustedProxies::client`]). The handlers take the whole request rather
/// than axum's `HeaderMap` extractor, which clones every header of every
/// post.
pub(crate) fn client(state: &AppState, parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| state.trusted_proxies.client(peer.ip(), &parts.headers))
}

/// Counts a refused report request (single or bulk) and answers it.
pub(crate) fn refuse(state: &AppState, error: ApiError, started: Instant) -> Response {
    let (status, code) = (error.status(), error.code());
    count_request(state, status, code, started);
    let mut response = error.into_response();
    if status == StatusCode::REQUEST_TIMEOUT || code == OVERLOADED {
        // The rest of the body may still be on its way (unread past what
        // draining took): this connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Counts an answered report request (single or bulk) in the metrics.
pub(crate) fn count_request(
    state: &AppState,
    status: StatusCode,
    code: &'static str,
    started: Instant,
) {
    state
        .requests
        .responses
        .get_or_create(&Answer {
            status: status.as_u16(),
            code,
        })
        .inc();
    state
        .requests
        .duration
        .observe(started.elapsed().as_secs_f64());
}

async fn handle(
    state: &AppState,
    election: &str,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Accepted), ApiError> {
    let caller = admit(state, election, client, headers).await?;
    let body = read_body(state, headers, body, MAX_BODY_BYTES).await?;
    let report = parse_report(&caller.election, &body)?;
    let ballot_box_id = report.ballot_box().to_string();
    let revision = report.revision().get();
    let answer = check_and_submit(
        state,
        &caller.election,
        caller.scope.ballot_box.as_ref(),
        report,
    )
    .await?;
    answer_for(state, ballot_box_id, revision, answer)
}

/// The HTTP answer to one report the batcher answered (the single
/// endpoint's, and each bulk item's).
pub(crate) fn answer_for(
    state: &AppState,
    ballot_box_id: String,
    revision: u32,
    answer: Result<Outcome, Arc<StoreError>>,
) -> Result<(StatusCode, Accepted), ApiError> {
    let accepted = |report_id, status| Accepted {
        report_id,
        ballot_box_id: ballot_box_id.clone(),
        revision,
        status,
    };
    match answer {
        Ok(Outcome::Counted(id)) => Ok((StatusCode::CREATED, accepted(id, "counted"))),
        Ok(Outcome::Pending(id)) => {
            state.requests.deferred.inc();
            Ok((StatusCode::ACCEPTED, accepted(id, "pending")))
        }
        Ok(Outcome::Replay { report_id, counted }) => Ok((
            StatusCode::OK,
            accepted(report_id, if counted { "counted" } else { "pending" }),
        )),
        // A certified city has its own error code: clients must stop
        // retrying or correcting, not fix a revision number.
        Ok(Outcome::Conflict(conflict @ election_core::Conflict::Certified { .. })) => Err(
            ApiError::new(StatusCode::CONFLICT, "certified", conflict.to_string()),
        ),
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
                store_unavailable()
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
            Err(store_unavailable())
        }
    }
}

/// 503: PostgreSQL failed the report's batch.
pub(crate) fn store_unavailable() -> ApiError {
    ApiError::unavailable(
        "unavailable",
        "the report store (PostgreSQL) is unavailable; nothing was recorded, retry later",
    )
}

/// Who posts, for which election: what [`admit`] established.
pub(crate) struct Caller {
    /// The token's scope.
    pub scope: Scope,
    /// The election posted to (the token's).
    pub election: ElectionId,
    /// The token's hash (the rate limit's key).
    pub token_hash: [u8; 32],
}

/// The checks every post starts with, in this order: the token (401), its
/// rate limit for one report (429), the election id (422), the token's
/// election (403), the content type (415).
pub(crate) async fn admit(
    state: &AppState,
    election: &str,
    client: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
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
    let cached = state.tokens.cached(&token_hash);
    // A client with too many failures gets no lookup (not even of the
    // "unknown" cache): only a token cached as valid passes.
    let failures = match (&state.failed_auth, client) {
        (Some(limiter), Some(client)) => Some((limiter, client)),
        _ => None,
    };
    if !matches!(cached, Some(Some(_)))
        && let Some((limiter, client)) = failures
        && let Some(limited) = limiter.blocked(client)
    {
        let limit = limiter.limit();
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "auth_rate_limited",
            format!(
                "too many failed authentications from this address ({} per second, bursts of {}); retry in {} s",
                limit.per_second, limit.burst, limited.retry_after_secs
            ),
        )
        .with_retry_after(limited.retry_after_secs));
    }
    let scope = match cached {
        Some(scope) => scope,
        None => {
            let tokens = Arc::clone(&state.tokens);
            election_http::blocking(move || tokens.scope(&token_hash))
                .await?
                .map_err(lookup_failed("token"))?
        }
    };
    let scope = scope.ok_or_else(|| {
        if let Some((limiter, client)) = failures {
            limiter.failed(client);
        }
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or revoked token",
        )
    })?;
    rate_limit(state, &token_hash, 1)?;
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
    Ok(Caller {
        scope,
        election,
        token_hash,
    })
}

/// Takes `reports` reports from the token's allowance, if a rate limit is
/// configured (429 with `Retry-After` when it cannot).
pub(crate) fn rate_limit(
    state: &AppState,
    token_hash: &[u8; 32],
    reports: u32,
) -> Result<(), ApiError> {
    let Some(limiter) = &state.limiter else {
        return Ok(());
    };
    limiter.check_n(token_hash, reports).map_err(|limited| {
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
    })
}

/// Parses and validates one report's JSON: 400 for the wrong shape, 422 for
/// broken domain rules.
pub(crate) fn parse_report(election: &ElectionId, json: &[u8]) -> Result<Report, ApiError> {
    Report::from_json(election, json).map_err(report_refused)
}

/// The answer to a report that does not parse or validate. A function, not
/// `From<ReportError> for ApiError`: neither type is this crate's.
fn report_refused(error: ReportError) -> ApiError {
    match error {
        ReportError::Malformed(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
        ReportError::Invalid(problems) => invalid(&problems),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.to_string()),
    }
}

/// 503 for a token or definition lookup that PostgreSQL failed.
fn lookup_failed(what: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |error| {
        tracing::warn!(%error, "{what} lookup failed");
        ApiError::unavailable(
            "unavailable",
            "the report store is unavailable; nothing was recorded, retry later",
        )
    }
}

/// 422 naming every broken rule.
fn invalid(problems: &[Problem]) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_report",
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// How many times a report is checked and submitted when the log keeps
/// saying its election's definition changed since it was checked (each time
/// a load committed in between: more than a couple in a row is a storm of
/// loads, answered 503).
pub(crate) const DEFINITION_ATTEMPTS: usize = 3;

/// Checks `report` against its election's definition (422) and the token's
/// ballot box (403), then queues it; when the log answers that the
/// definition changed meanwhile, checks it again against the new one.
async fn check_and_submit(
    state: &AppState,
    election: &ElectionId,
    bound_box: Option<&BallotBoxId>,
    mut report: Report,
) -> Result<Result<Outcome, Arc<StoreError>>, ApiError> {
    for _ in 0..DEFINITION_ATTEMPTS {
        let current = current_definition(state, election).await?;
        check_item(&current, bound_box, &mut report)?;
        match state.batcher.submit(report).await {
            None => return Err(shutting_down()),
            Some(Err(NotRecorded::DefinitionChanged(back))) => {
                state.definitions.invalidate(election);
                report = *back;
            }
            Some(Err(NotRecorded::Store(error))) => return Ok(Err(error)),
            Some(Ok(outcome)) => return Ok(Ok(outcome)),
        }
    }
    Err(definition_storm())
}

/// 503: the batcher has stopped.
pub(crate) fn shutting_down() -> ApiError {
    ApiError::unavailable("unavailable", "the service is shutting down; retry")
}

/// 503: [`DEFINITION_ATTEMPTS`] loads in a row overtook the report.
pub(crate) fn definition_storm() -> ApiError {
    ApiError::unavailable(
        "unavailable",
        "the election's definition kept changing while this report was being recorded; nothing was recorded, retry",
    )
}

/// The election's definition as the cache has it (a lookup when it has
/// none fresh; 503 when that fails).
pub(crate) async fn current_definition(
    state: &AppState,
    election: &ElectionId,
) -> Result<Current, ApiError> {
    match state.definitions.cached(election) {
        Cached::Hit(current) => Ok(current),
        Cached::Miss => {
            let definitions = Arc::clone(&state.definitions);
            let election = election.clone();
            election_http::blocking(move || definitions.refresh(&election))
                .await?
                .map_err(lookup_failed("definition"))
        }
    }
}

/// Checks `report` against `current` (422) and the token's ballot box
/// (403), and notes the definition version it passed.
pub(crate) fn check_item(
    current: &Current,
    bound_box: Option<&BallotBoxId>,
    report: &mut Report,
) -> Result<(), ApiError> {
    if let Some(definition) = &current.definition {
        definition
            .check_report(report)
            .map_err(|problems| invalid(&problems))?;
    }
    if let Some(bound) = bound_box
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
    report.set_checked_against(current.version);
    Ok(())
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

/// The bytes of request bodies ingest may hold at once, over every
/// connection: each request reserves its body's size before reading it and
/// keeps the reservation until it is answered (its parsed reports live as
/// long). Without it, a token holder opening many connections, each with a
/// bulk body of up to [`crate::bulk::MAX_BATCH_BYTES`], could grow ingest's
/// memory without bound; the per-request limits bound one request, and the
/// batcher's queue bounds jobs, not the bodies waiting to become jobs.
/// A request that finds the budget spent is answered `503 overloaded` with
/// `Retry-After` at once rather than queued: a queue of waiting requests
/// would be the unbounded thing again, in connections.
#[derive(Clone, Debug)]
pub struct Bodies {
    /// One permit per byte not reserved.
    free: Arc<Semaphore>,
    /// The budget, in bytes.
    capacity: usize,
}

impl Bodies {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Bodies {
        let capacity = limit.min(Semaphore::MAX_PERMITS);
        Bodies {
            free: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// The bytes reserved by requests now.
    pub fn held(&self) -> usize {
        self.capacity - self.free.available_permits()
    }

    /// Reserves `bytes`, or `None` when the budget has not that much left.
    fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes.max(1)).ok()?;
        Arc::clone(&self.free).try_acquire_many_owned(bytes).ok()
    }
}

/// The error code of a request refused by [`Bodies`].
const OVERLOADED: &str = "overloaded";

/// A request's body, read whole, with its share of [`Bodies`] held until
/// the value is dropped.
#[derive(Debug)]
pub(crate) struct HeldBody {
    bytes: Bytes,
    _reserved: OwnedSemaphorePermit,
}

impl std::ops::Deref for HeldBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a whole body of at most `max` bytes that must arrive within the
/// state's `body_timeout` (408 otherwise: a client that sends headers and
/// then stalls or trickles holds a connection and a task;
/// `election_http::serve` bounds only the headers), first reserving its
/// size in the state's [`Bodies`]: the declared `Content-Length`, or `max`
/// for a body sent without one (chunked), since its size is known only once
/// it has been read.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<HeldBody, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {max} bytes"),
        )
    };
    let timeout = state.body_timeout;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > max as u64) {
        drain(&mut stream, 0).await;
        return Err(too_large());
    }
    let size = declared.map_or(max, |n| n as usize);
    let Some(reserved) = state.bodies.reserve(size) else {
        // Read on so that the client reads the answer (see DRAIN_BYTES).
        drain(&mut stream, 0).await;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            OVERLOADED,
            format!(
                "ingest holds {} bytes of request bodies, its limit \
                 (INGEST_BODIES_IN_FLIGHT_MIB), and this one needs {size} more{}; \
                 nothing was recorded, send it again",
                state.bodies.held(),
                if declared.is_none() {
                    " (a body without Content-Length counts as the largest allowed)"
                } else {
                    ""
                }
            ),
        )
        .with_retry_after(1));
    };
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
        if collected.len() + chunk.len() > max {
            drain(&mut stream, collected.len() + chunk.len()).await;
            return Err(too_large());
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(HeldBody {
        bytes: Bytes::from(collected),
        _reserved: reserved,
    })
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
