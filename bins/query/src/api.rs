//! The HTTP surface of election-query: the route table, the live endpoints
//! (totals, cities, one city, the stream), the dashboard, and the request
//! metrics.
//!
//! Every route is declared once, in `table`, which both builds the router
//! and lists the routes ([`routes`]) for the test that keeps
//! `docs/openapi.yaml` true.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use election_core::{CityId, ElectionId};
use election_http::ApiError;
use election_http::health::{self, ReadyCheck};
use election_http::metrics::{LATENCY_BUCKETS, Registry};
use serde::Serialize;
use tokio::sync::watch;

use crate::AppState;
use crate::analytics;
use crate::live::Current;
use crate::stream::{self, Variant};

/// The dashboard page, compiled into the binary: no file to deploy, no
/// network at run time.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Routes served by the shared health plumbing (`election_http::health`).
const HEALTH_ROUTES: [(&str, &str); 2] = [("GET", "/healthz"), ("GET", "/readyz")];

/// One route: method, path, handler.
struct Route {
    method: &'static str,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

fn get_route<H, T>(path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        method: "GET",
        path,
        handler: get(handler),
    }
}

/// Every route of the service but the health routes.
fn table() -> Vec<Route> {
    vec![
        get_route("/", dashboard),
        get_route("/v1/elections/{election}", definition),
        get_route("/v1/elections/{election}/totals", totals),
        get_route("/v1/elections/{election}/cities", cities),
        get_route("/v1/elections/{election}/cities/{city}/totals", city_totals),
        get_route("/v1/elections/{election}/stream", stream),
        get_route(
            "/v1/elections/{election}/analytics/cities",
            analytics::cities,
        ),
        get_route(
            "/v1/elections/{election}/analytics/first-reports",
            analytics::first_reports,
        ),
        get_route("/v1/elections/{election}/timeline", analytics::timeline),
        get_route(
            "/v1/elections/{election}/reports.csv",
            analytics::reports_csv,
        ),
        get_route("/metrics", metrics),
    ]
}

/// Every `(method, path)` the router serves, in axum's path syntax.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table()
        .iter()
        .map(|route| (route.method, route.path))
        .chain(HEALTH_ROUTES)
        .collect()
}

/// The router of the query service.
pub fn router(state: AppState, ready: ReadyCheck) -> Router {
    let mut router = Router::new();
    for route in table() {
        router = router.route(route.path, route.handler);
    }
    let metrics = Arc::clone(&state.metrics);
    router
        .fallback(not_found)
        .with_state(state)
        .merge(health::routes(ready))
        .layer(middleware::from_fn_with_state(metrics, track))
}

/// Counts every answer by route and status, and lets browsers on other
/// origins read them (everything here is public and read-only).
async fn track(State(metrics): State<Arc<Registry>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    metrics.inc(
        "query_requests_total",
        "Requests answered, by route and HTTP status.",
        &[("route", &route), ("status", response.status().as_str())],
        1,
    );
    metrics.observe(
        "query_request_duration_seconds",
        "Time to the response head (streams: to their first byte), by route.",
        LATENCY_BUCKETS,
        &[("route", &route)],
        started.elapsed().as_secs_f64(),
    );
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/openapi.yaml",
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /`: the dashboard. It picks its election from `?election=` itself.
async fn dashboard() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // The page loads nothing from anywhere: say so, so a browser
            // refuses if it ever tried.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'",
            ),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}

/// Reads an election id from the path: 422 naming the rule when invalid.
pub fn parse_election(text: &str) -> Result<ElectionId, ApiError> {
    ElectionId::parse(text).map_err(|problem| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            problem.to_string(),
        )
    })
}

fn parse_city(text: &str) -> Result<CityId, ApiError> {
    CityId::parse(text).map_err(|problem| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            problem.to_string(),
        )
    })
}

/// A JSON answer from pre-rendered bytes.
pub fn bytes_response(body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A JSON answer rendered now.
pub fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => bytes_response(Bytes::from(body)),
        Err(error) => ApiError::internal(format!("rendering an answer: {error}")).into_response(),
    }
}

/// `GET /v1/elections/{e}`: display names, colours and expected ballot boxes
/// of a defined election, or `"defined": false`.
async fn definition(
    State(state): State<AppState>,
    Path(election): Path<String>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let rendered = state.live.current(&election).await?;
    Ok(bytes_response(rendered.definition.clone()))
}

async fn totals(
    State(state): State<AppState>,
    Path(election): Path<String>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let rendered = state.live.current(&election).await?;
    Ok(bytes_response(rendered.national.clone()))
}

async fn cities(
    State(state): State<AppState>,
    Path(election): Path<String>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let rendered = state.live.current(&election).await?;
    Ok(bytes_response(rendered.cities.clone()))
}

async fn city_totals(
    State(state): State<AppState>,
    Path((election, city)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let city = parse_city(&city)?;
    let rendered = state.live.current(&election).await?;
    rendered
        .city(city.as_str())
        .map(bytes_response)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no ballot box of city {:?} has been counted in election {:?}",
                    city.as_str(),
                    election.as_str()
                ),
            )
        })
}

/// Sent before a stream's first event: how long a browser waits before
/// reconnecting a dropped stream (2 s).
const RETRY: &[u8] = b"retry: 2000\n";

/// The comment sent on a stream that had nothing to send for a while.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Keeps the subscriber gauge right: one per open stream.
struct Subscriber {
    metrics: Arc<Registry>,
    open: Arc<std::sync::atomic::AtomicI64>,
}

impl Subscriber {
    fn new(state: &AppState) -> Subscriber {
        let open = Arc::clone(&state.subscribers);
        let now = open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Subscriber::gauge(&state.metrics, now);
        Subscriber {
            metrics: Arc::clone(&state.metrics),
            open,
        }
    }

    fn gauge(metrics: &Registry, open: i64) {
        metrics.set(
            "query_stream_subscribers",
            "Open live streams.",
            &[],
            open as f64,
        );
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let now = self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) - 1;
        Subscriber::gauge(&self.metrics, now);
    }
}

/// What a stream carries between events.
struct Streaming {
    current: watch::Receiver<Current>,
    stop: watch::Receiver<bool>,
    variant: Variant,
    /// The version the client has: from `Last-Event-ID`, then the last one
    /// it was brought to (which, on a scoped stream, may be a version whose
    /// changes it was not sent: they did not touch its scope).
    client_has: Option<u64>,
    /// Events decided on and not yet handed to the connection.
    pending: VecDeque<Bytes>,
    first: bool,
    keep_alive: Duration,
    /// When something was last handed to the connection.
    last_sent: tokio::time::Instant,
    _subscriber: Subscriber,
}

/// The stream's parameters: `?scope=national` or `?city=C`, or neither.
fn variant(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Variant, ApiError> {
    let parameters = analytics::parameters(query, &["scope", "city"])?;
    let bad =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message);
    match (
        parameters.get("scope").map(String::as_str),
        parameters.get("city"),
    ) {
        (Some(_), Some(_)) => Err(bad(
            "scope and city cannot be given together: ?scope=national for the national totals, ?city=C for one city, neither for everything".to_owned(),
        )),
        (None | Some("all"), None) => Ok(Variant::All),
        (Some("national"), None) => Ok(Variant::National),
        (Some(other), None) => Err(bad(format!(
            "scope: {other:?} is not a scope; expected \"national\" or \"all\" (one city: ?city=C)"
        ))),
        (None, Some(city)) => CityId::parse(city)
            .map(Variant::City)
            .map_err(|problem| bad(problem.to_string())),
    }
}

/// `GET /v1/elections/{e}/stream`: Server-Sent Events.
///
/// On connect the client gets a `snapshot` of the newest version, unless
/// its `Last-Event-ID` names that version (it has it already) or a version
/// the kept deltas start from (it gets only the deltas after it); then one
/// `delta` per change touching what it asked for (`?scope=national`,
/// `?city=C`, or everything). Every event is rendered once and shared (see
/// [`crate::stream`]). Streams end when the service shuts down.
async fn stream(
    State(state): State<AppState>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let variant = variant(query)?;
    let current = state.live.subscribe_ready(&election).await?;
    let client_has = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let streaming = Streaming {
        current,
        stop: state.live.stop_signal(),
        variant,
        client_has,
        pending: VecDeque::new(),
        first: true,
        keep_alive: state.keep_alive,
        last_sent: tokio::time::Instant::now(),
        _subscriber: Subscriber::new(&state),
    };
    let chunks = futures_util::stream::unfold(streaming, next_chunk);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// The stream's next piece: an event decided on earlier, else what brings
/// the client to the newest version, else (after waiting for a change) the
/// same, or a keep-alive comment when nothing was sent for `keep_alive`.
async fn next_chunk(mut streaming: Streaming) -> Option<(Result<Bytes, Infallible>, Streaming)> {
    loop {
        if let Some(chunk) = streaming.pending.pop_front() {
            streaming.last_sent = tokio::time::Instant::now();
            return Some((Ok(chunk), streaming));
        }
        let newest = match &*streaming.current.borrow_and_update() {
            Current::Ready(rendered) if Some(rendered.version) != streaming.client_has => {
                Some(Arc::clone(rendered))
            }
            _ => None,
        };
        if let Some(rendered) = newest {
            let events = stream::catch_up(&rendered, streaming.client_has, &streaming.variant);
            streaming.client_has = Some(rendered.version);
            if !events.is_empty() {
                if streaming.first {
                    streaming.first = false;
                    streaming.pending.push_back(Bytes::from_static(RETRY));
                }
                streaming.pending.extend(events);
                continue;
            }
        }
        let quiet_until = streaming.last_sent + streaming.keep_alive;
        tokio::select! {
            changed = streaming.current.changed() => {
                if changed.is_err() {
                    // The feed stopped: the service is shutting down.
                    return None;
                }
            }
            _ = streaming.stop.wait_for(|stopping| *stopping) => return None,
            _ = tokio::time::sleep_until(quiet_until) => {
                streaming.pending.push_back(Bytes::from_static(KEEP_ALIVE));
            }
        }
    }
}
