//! The HTTP surface of election-query: the route table, the live endpoints
//! (totals, cities, one city, the stream), the dashboard, and the request
//! metrics.
//!
//! Every route is declared once, in `table`, which both builds the router
//! and lists the routes ([`routes`]) for the test that keeps
//! `docs/openapi.yaml` true.
//!
//! Every endpoint naming an election first asks [`crate::elections`]
//! whether it exists (404 `unknown_election` otherwise), so made-up ids cost
//! no live feed. Live JSON answers carry a weak `ETag` from the snapshot's
//! version, `Last-Modified` and `Cache-Control: public, max-age=<live>`, and
//! answer 304 to a client that has the version
//! (`election_http::conditional`); history answers carry the longer
//! `max-age=<history>`. The shared layers (`election_http::layers`) add
//! CORS (any origin by default), compression, request ids, the access log,
//! JSON 404/405 and caught panics.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use election_core::{CityId, ElectionId};
use election_http::ApiError;
use election_http::conditional::Validators;
use election_http::health::{self, ReadyCheck};
use election_http::layers::{self, COMPRESS_FROM, CorsOrigins, Layers};
use election_http::metrics::{
    self, Counter, EncodeLabelSet, Family, HistogramFamily, LATENCY_BUCKETS, Registry,
};
use tokio::sync::watch;

use crate::AppState;
use crate::analytics;
use crate::answer::{self, bytes_response, parse_election};
use crate::asof;
use crate::gzip_stream::{self, Member};
use crate::live::Current;
use crate::precompressed::{self, Copies};
use crate::render::Rendered;
use crate::stream::{self, Event, Variant};

/// The dashboard page, compiled into the binary: no file to deploy, no
/// network at run time.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Routes served by the shared health plumbing (`election_http::health`).
const HEALTH_ROUTES: [(&str, &str); 2] = [("GET", "/healthz"), ("GET", "/readyz")];

/// What a cross-origin reader may send: revalidation and stream resumption.
const CORS_REQUEST_HEADERS: [HeaderName; 3] = [
    header::IF_NONE_MATCH,
    HeaderName::from_static("last-event-id"),
    layers::REQUEST_ID,
];

/// What a cross-origin reader may read besides the simple headers.
const CORS_EXPOSED_HEADERS: [HeaderName; 4] = [
    header::ETAG,
    header::CONTENT_DISPOSITION,
    header::RETRY_AFTER,
    layers::REQUEST_ID,
];

/// One route: method, path, handler.
struct Route {
    method: &'static str,
    path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

fn get_route<H, T>(path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
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
        get_route("/openapi.yaml", layers::openapi),
        get_route("/v1/elections", elections),
        get_route("/v1/elections/{election}", definition),
        get_route("/v1/elections/{election}/totals", totals),
        get_route("/v1/elections/{election}/cities", cities),
        get_route("/v1/elections/{election}/cities/{city}/totals", city_totals),
        get_route("/v1/elections/{election}/stream", stream),
        get_route("/v1/elections/{election}/results.cdf.json", results_cdf),
        get_route(
            "/v1/elections/{election}/analytics/cities",
            analytics::cities,
        ),
        get_route(
            "/v1/elections/{election}/analytics/first-reports",
            analytics::first_reports,
        ),
        get_route("/v1/elections/{election}/timeline", analytics::timeline),
        get_route("/v1/elections/{election}/flags", analytics::flags),
        get_route(
            "/v1/elections/{election}/reports.csv",
            analytics::reports_csv,
        ),
        get_route("/v1/elections/{election}/audit", crate::audit::audit),
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

/// The router of the query service; `cors_origins` may read it from
/// browsers (everything here is public and read-only: any, by default).
pub fn router(state: AppState, ready: ReadyCheck, cors_origins: CorsOrigins) -> layers::App {
    let mut router = Router::new();
    for route in table() {
        router = router.route(route.path, route.handler);
    }
    let requests = Arc::new(RequestMetrics::new(&state.metrics));
    let router = router
        .fallback(layers::not_found)
        // One `Arc` clone per request rather than one per field of the
        // state: cloning and dropping them was a tenth of the service's CPU
        // under load (docs/benchmarks.md, "The allocator and the per-request
        // state").
        .with_state(Arc::new(state))
        .merge(health::routes(ready))
        .layer(middleware::from_fn_with_state(requests, track));
    Layers {
        cors_origins,
        cors_methods: vec![Method::GET, Method::HEAD],
        cors_request_headers: CORS_REQUEST_HEADERS.to_vec(),
        cors_exposed_headers: CORS_EXPOSED_HEADERS.to_vec(),
        compress: true,
    }
    .apply(router)
}

/// A request's labels: its route pattern and answer status.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

/// A request's route pattern, for the latency histogram.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// The metrics counted on every request, as handles made once: the route
/// label is one of the router's own `&'static str` patterns, so counting
/// allocates nothing and takes no lock (see `election_http::metrics`).
struct RequestMetrics {
    /// Every route pattern served (a matched path is one of them).
    routes: Vec<&'static str>,
    requests: Family<RouteStatus, Counter>,
    durations: HistogramFamily<RouteLabel>,
}

impl RequestMetrics {
    fn new(registry: &Registry) -> RequestMetrics {
        RequestMetrics {
            routes: routes().into_iter().map(|(_, path)| path).collect(),
            requests: registry.counter_family(
                "query_requests_total",
                "Requests answered, by route and HTTP status.",
            ),
            durations: registry.histogram_family(
                "query_request_duration_seconds",
                "Time to the response head (streams: to their first byte), by route.",
                LATENCY_BUCKETS,
            ),
        }
    }

    /// The route pattern `matched`, as the router's own static string.
    fn route(&self, matched: Option<&MatchedPath>) -> &'static str {
        matched
            .and_then(|path| {
                self.routes
                    .iter()
                    .find(|route| **route == path.as_str())
                    .copied()
            })
            .unwrap_or("unmatched")
    }
}

/// Counts every answer by route and status.
async fn track(
    State(metrics): State<Arc<RequestMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = metrics.route(request.extensions().get::<MatchedPath>());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .durations
        .get_or_create(&RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
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

fn parse_city(text: &str) -> Result<CityId, ApiError> {
    CityId::parse(text).map_err(|problem| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            problem.to_string(),
        )
    })
}

/// A live answer: `body` of the snapshot `rendered`, or a 304 when the
/// client has its version.
fn live_response(
    state: &AppState,
    headers: &HeaderMap,
    rendered: &Rendered,
    body: Bytes,
) -> Response {
    rendered
        .validators
        .answer(headers, state.cache.live.clone(), || {
            bytes_response(body, state.cache.live.clone())
        })
}

/// [`live_response`] for a large body of the version (the city list, the
/// definition, the NIST document): when the client accepts `br` or `gzip`,
/// the version's compressed copy ([`crate::precompressed`]), made once for
/// every reader.
async fn live_large_response(
    state: &AppState,
    headers: &HeaderMap,
    rendered: &Rendered,
    body: Bytes,
    copies: &Copies,
) -> Response {
    if body.len() >= usize::from(COMPRESS_FROM)
        && !rendered.validators.not_modified(headers)
        && let Some(coding) = precompressed::preferred(headers)
        && let Some(compressed) = copies.get(coding, &body).await
    {
        let mut response = bytes_response(compressed, state.cache.live.clone());
        precompressed::mark(response.headers_mut(), coding);
        return rendered
            .validators
            .stamp(response, state.cache.live.clone());
    }
    live_response(state, headers, rendered, body)
}

/// The election named by a path, once it is known to exist.
async fn existing(state: &AppState, text: &str) -> Result<ElectionId, ApiError> {
    let election = parse_election(text)?;
    state.elections.check(&election).await?;
    Ok(election)
}

/// `GET /v1/elections`: every election that is defined or reported to.
async fn elections(
    State(state): State<Arc<AppState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    answer::parameters(query, &[])?;
    let body = state.elections.list_body().await?;
    Ok(bytes_response(body, state.cache.live.clone()))
}

/// `GET /v1/elections/{e}`: display names, colours and expected ballot boxes
/// of a defined election, or `"defined": false`.
async fn definition(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer::parameters(query, &[])?;
    let election = existing(&state, &election).await?;
    let rendered = state.live.current(&election).await?;
    Ok(live_large_response(
        &state,
        &headers,
        &rendered,
        rendered.definition.clone(),
        &rendered.definition_copies,
    )
    .await)
}

/// An as-of answer: `body` of the totals as they stood at `at`, cached like
/// history (see [`crate::asof`]). What stood at a past instant does not
/// change, so its tag is a hash of the body, and `Last-Modified` the
/// instant.
fn as_of_response(
    state: &AppState,
    headers: &HeaderMap,
    at: chrono::DateTime<chrono::Utc>,
    body: Bytes,
) -> Response {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let validators = Validators::new(&format!("asof-{:016x}", hasher.finish()), at);
    validators.answer(headers, state.cache.history.clone(), || {
        bytes_response(body, state.cache.history.clone())
    })
}

async fn totals(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let as_of = asof::parameter(query)?;
    let election = existing(&state, &election).await?;
    if let Some(at) = as_of {
        let rendered = asof::rendered(&state, &election, at).await?;
        return Ok(as_of_response(
            &state,
            &headers,
            at,
            rendered.national.clone(),
        ));
    }
    let rendered = state.live.current(&election).await?;
    Ok(live_response(
        &state,
        &headers,
        &rendered,
        rendered.national.clone(),
    ))
}

/// `GET /v1/elections/{e}/results.cdf.json`: the live totals as a NIST
/// SP 1500-100 v2 document ([`crate::cdf`]), of the same snapshot version
/// as the other live answers (same `ETag`).
async fn results_cdf(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // No `as_of` here: refused by name rather than answered live.
    answer::parameters(query, &[])?;
    let election = existing(&state, &election).await?;
    let rendered = state.live.current(&election).await?;
    let body = rendered.cdf();
    Ok(live_large_response(&state, &headers, &rendered, body, &rendered.cdf_copies).await)
}

async fn cities(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let as_of = asof::parameter(query)?;
    let election = existing(&state, &election).await?;
    if let Some(at) = as_of {
        let rendered = asof::rendered(&state, &election, at).await?;
        return Ok(as_of_response(&state, &headers, at, rendered.cities()));
    }
    let rendered = state.live.current(&election).await?;
    Ok(live_large_response(
        &state,
        &headers,
        &rendered,
        rendered.cities(),
        &rendered.cities_copies,
    )
    .await)
}

async fn city_totals(
    State(state): State<Arc<AppState>>,
    Path((election, city)): Path<(String, String)>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let city = parse_city(&city)?;
    let as_of = asof::parameter(query)?;
    state.elections.check(&election).await?;
    let rendered = match as_of {
        Some(at) => Arc::new(asof::rendered(&state, &election, at).await?),
        None => state.live.current(&election).await?,
    };
    rendered
        .city(city.as_str())
        .map(|body| match as_of {
            Some(at) => as_of_response(&state, &headers, at, body),
            None => live_response(&state, &headers, &rendered, body),
        })
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
/// reconnecting a dropped stream (2 s). Static, so its gzip segment is made
/// once for the process.
static RETRY: LazyLock<Event> = LazyLock::new(|| Event::new(Bytes::from_static(b"retry: 2000\n")));

/// The comment sent on a stream that had nothing to send for a while.
static KEEP_ALIVE: LazyLock<Event> =
    LazyLock::new(|| Event::new(Bytes::from_static(b": keep-alive\n\n")));

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
    pending: VecDeque<Event>,
    first: bool,
    /// A gzip-encoded stream's member (`None`: plain); its header goes out
    /// before the first chunk (see [`stream`]).
    gzip: Option<Member>,
    /// Set once the stream has nothing more to send but a gzip trailer.
    ended: bool,
    keep_alive: Duration,
    /// When something was last handed to the connection.
    last_sent: tokio::time::Instant,
    _subscriber: Subscriber,
}

/// The stream's parameters: `?scope=national` or `?city=C`, or neither.
fn variant(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Variant, ApiError> {
    let parameters = answer::parameters(query, &["scope", "city"])?;
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
/// [`crate::stream`]); a client that accepts gzip gets a gzip stream whose
/// events are compressed once and shared too ([`crate::gzip_stream`]).
/// Streams end when the service shuts down (a gzip stream with its trailer).
async fn stream(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The parameters first: checking them costs no lookup.
    let variant = variant(query)?;
    let election = existing(&state, &election).await?;
    let current = state.live.subscribe_ready(&election).await?;
    let gzip = precompressed::accepts_gzip(&headers);
    state.metrics.inc(
        "query_streams_opened_total",
        "Live streams opened, by the encoding they are sent in.",
        &[("encoding", if gzip { "gzip" } else { "identity" })],
        1,
    );
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
        gzip: gzip.then(Member::default),
        ended: false,
        keep_alive: state.keep_alive,
        last_sent: tokio::time::Instant::now(),
        _subscriber: Subscriber::new(&state),
    };
    let chunks = futures_util::stream::unfold(streaming, next_chunk);
    // A gzip stream starts with the member's header, as a chunk of its own:
    // the first event's segment is shared and not copied to prepend it.
    let body = if gzip {
        let header: Result<Bytes, Infallible> = Ok(Bytes::from_static(&gzip_stream::HEADER));
        Body::from_stream(futures_util::StreamExt::chain(
            futures_util::stream::iter([header]),
            chunks,
        ))
    } else {
        Body::from_stream(chunks)
    };
    let mut response = (
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
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
        body,
    )
        .into_response();
    if gzip {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

/// What goes on the wire for `event`: its plain bytes, or, on a gzip
/// stream, its shared segment. `None` if compressing failed (logged): the
/// stream then ends, and the client reconnects as after any dropped stream.
async fn wire(streaming: &mut Streaming, event: &Event) -> Option<Bytes> {
    let Some(member) = &mut streaming.gzip else {
        return Some(event.plain().clone());
    };
    let segment = match event.segment().await {
        Ok(segment) => segment,
        Err(error) => {
            tracing::warn!(error = %error, "compressing a stream event");
            return None;
        }
    };
    member.add(&segment);
    Some(segment.deflate)
}

/// How a stream ends: nothing more on a plain stream; on a gzip stream the
/// member's trailer, so the client's decompressor sees a whole member.
fn ending(mut streaming: Streaming) -> Option<(Result<Bytes, Infallible>, Streaming)> {
    streaming.ended = true;
    let trailer = streaming.gzip.take()?.trailer();
    Some((Ok(trailer), streaming))
}

/// The stream's next piece: an event decided on earlier, else what brings
/// the client to the newest version, else (after waiting for a change) the
/// same, or a keep-alive comment when nothing was sent for `keep_alive`.
async fn next_chunk(mut streaming: Streaming) -> Option<(Result<Bytes, Infallible>, Streaming)> {
    if streaming.ended {
        return None;
    }
    loop {
        if let Some(event) = streaming.pending.pop_front() {
            let chunk = wire(&mut streaming, &event).await?;
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
                    streaming.pending.push_back(RETRY.clone());
                }
                streaming.pending.extend(events);
                continue;
            }
        }
        let quiet_until = streaming.last_sent + streaming.keep_alive;
        let stopped = tokio::select! {
            // An error: the feed stopped, the service is shutting down.
            changed = streaming.current.changed() => changed.is_err(),
            _ = streaming.stop.wait_for(|stopping| *stopping) => true,
            _ = tokio::time::sleep_until(quiet_until) => {
                streaming.pending.push_back(KEEP_ALIVE.clone());
                false
            }
        };
        if stopped {
            return ending(streaming);
        }
    }
}
