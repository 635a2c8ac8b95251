//! The HTTP conventions every service keeps, as one stack of layers around
//! its router, so a handler only answers its own question.
//!
//! What clients, browsers, CDNs and operators rely on, and where it comes
//! from: maintained `tower-http` layers for CORS and compression, and two
//! layers of our own, [`ConventionsLayer`] (request ids, the access log,
//! JSON errors) and [`PanicsLayer`], because tower-http's four layers for
//! those, each wrapping the future, took ~10,000 instructions per request
//! and one future of ours does what they did in ~3,700
//! (docs/benchmarks.md, "The conventions as one layer"):
//!
//! - **Request ids** ([`ConventionsLayer`]): an
//!   incoming `x-request-id` is kept when it looks like an id (1–128 visible
//!   characters of `A-Z a-z 0-9 - _ . : /`); otherwise, or when absent, a
//!   UUID is generated. The answer carries it back, and the access log and
//!   every log line written while serving the request name it, so a
//!   complaint quoting the id finds its log lines. An id that does not look
//!   like one is replaced rather than logged, so a client cannot write
//!   arbitrary text into the logs.
//! - **One access-log line per request** ([`ConventionsLayer`]): target `access`,
//!   with method, path (never the query string: it may carry secrets or
//!   personal data), status, duration to the response head (a stream's
//!   head is sent at once) and request id, named by what they belong to
//!   and with their unit (`http.method`, `http.path`, `http.status`,
//!   `duration_ms`, `request.id`). `RUST_LOG=info,access=off` silences it.
//! - **CORS** (`CorsLayer`): preflights are answered here, before routing;
//!   which origins may read is configuration ([`CorsOrigins`]); the headers
//!   a browser may send and read are the service's ([`Layers`]). Open to
//!   any origin, answers carry no `Vary: Origin` (they are the same for
//!   every origin, and a CDN would otherwise keep a copy per site); open to
//!   a list, `Vary: Origin`, since the answer names the origin. Closed
//!   ([`CorsOrigins::None`], ingest's default) is no layer at all: answers
//!   carry no CORS headers, so a browser on another origin reads none, and
//!   a preflight gets the route's own answer (405, or 404), which browsers
//!   take as a refusal.
//! - **Compression** (`CompressionLayer`): gzip or brotli when the client
//!   asks (`Accept-Encoding`), for answers of [`COMPRESS_FROM`] bytes or
//!   more, or of unknown length, except Server-Sent Events (a compressor
//!   buffers, which would hold events back) and images; `Vary:
//!   Accept-Encoding` is added. Level 4 of both: close to the best ratio for
//!   JSON and CSV at a fraction of the default brotli level's CPU. Why not
//!   from 32 bytes, tower-http's default: most HTTP clients ask for gzip
//!   unprompted (Python's `requests`, Go's `net/http`, every browser and
//!   CDN), and a compressor costs the same to start whatever it then
//!   compresses. A report's answer (~70 bytes) gzipped cost ingest 296–343
//!   µs of CPU instead of 67–72 and cut its rate to about a third, and
//!   `GET /totals` (427 bytes) cost the query 78–81 µs instead of 21–23
//!   (br: 57–73); docs/benchmarks.md, "Small answers uncompressed". A service may turn
//!   compression off ([`Layers::compress`]; then there is no such layer,
//!   as an idle one still costs ~2 µs a request): ingest does, because a bulk
//!   answer (~10 KB for 100 reports) gzipped cost it 3–6 µs more per
//!   report, a quarter of its CPU in bulk, and its clients sit on the
//!   counting network, where its CPU is scarcer than bytes.
//! - **JSON errors everywhere** ([`ConventionsLayer`]): an error answer without a
//!   body type — axum's 405 for a method a route does not serve (its
//!   `Allow` header kept), a fallback 404 — becomes the same
//!   `{"error", "message"}` body as every [`ApiError`].
//! - **Panics** ([`PanicsLayer`]): a handler that panics answers a JSON
//!   500 and logs an error line with the panic's message, instead of the
//!   connection being dropped without an answer.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::util::{Either, MapResponse};
use tower_http::CompressionLevel;
use tower_http::compression::predicate::{And, NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionBody, CompressionLayer};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer, Vary};

use crate::ApiError;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming request id kept.
const MAX_REQUEST_ID: usize = 128;

/// Which origins browsers may read a service's answers from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any origin (`Access-Control-Allow-Origin: *`): the public read API.
    Any,
    /// Exactly these origins (`https://news.example`, no path).
    List(Vec<HeaderValue>),
    /// None: browsers on other origins cannot read answers.
    None,
}

impl CorsOrigins {
    /// Parses the configuration: `*` (any), an empty string or `none`
    /// (none), or a comma-separated list of origins such as
    /// `https://news.example,https://tv.example`.
    ///
    /// # Errors
    /// An origin that is not `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<CorsOrigins, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(CorsOrigins::Any);
        }
        if text.is_empty() || text.eq_ignore_ascii_case("none") {
            return Ok(CorsOrigins::None);
        }
        let mut origins = Vec::new();
        for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains(['/', '?', '#', ' '])
            });
            if !valid {
                return Err(format!(
                    "{origin:?} is not an origin: write scheme://host[:port], e.g. https://news.example, \
                     or * for any origin"
                ));
            }
            origins.push(
                HeaderValue::from_str(origin)
                    .map_err(|error| format!("{origin:?} is not an origin: {error}"))?,
            );
        }
        Ok(CorsOrigins::List(origins))
    }
}

/// What a service's layers need to know about it.
#[derive(Clone, Debug)]
pub struct Layers {
    /// Origins browsers may read from.
    pub cors_origins: CorsOrigins,
    /// Methods a cross-origin request may use (besides preflight's OPTIONS).
    pub cors_methods: Vec<Method>,
    /// Request headers a cross-origin request may send.
    pub cors_request_headers: Vec<HeaderName>,
    /// Answer headers a cross-origin script may read (besides the simple
    /// ones: `Cache-Control`, `Content-Type`, `Last-Modified`...).
    pub cors_exposed_headers: Vec<HeaderName>,
    /// Whether answers may be compressed at all (see the module docs): the
    /// query's readers, browsers and CDNs, gain from it; ingest's clients
    /// sit on the counting network, where its CPU is scarcer than bytes.
    pub compress: bool,
}

/// The level of both encodings (gzip and brotli): close to the best ratio for
/// JSON and CSV at a fraction of the default brotli level's CPU.
pub const COMPRESSION_LEVEL: u32 = 4;

/// The smallest answer that is compressed, in bytes (see the module docs):
/// below it the compressor's start costs far more than the bytes it saves.
pub const COMPRESS_FROM: u16 = 1024;

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

impl Layers {
    /// Wraps `router` in every layer of the module docs, outermost first:
    /// request id, access log and JSON errors ([`ConventionsLayer`]),
    /// CORS, compression, panics ([`PanicsLayer`]).
    pub fn apply(&self, router: Router) -> App {
        let compress = self.compress;
        // Closed CORS is no layer at all: a browser reads nothing without an
        // `Access-Control-Allow-Origin`, and the layer would still add its
        // `Vary` and exposed headers to every answer (ingest's default).
        //
        // `Vary` names what an answer depends on, and a shared cache keeps
        // one copy per value of it. Allowed to any origin, an answer is the
        // same whatever the `Origin` (and the preflight's allowed methods and
        // headers are fixed lists): no `Vary`, or a CDN would keep and fetch
        // one copy per site whose pages read the API. Allowed to a list, the
        // answer names the request's origin: `Vary: Origin`.
        let cors = match &self.cors_origins {
            CorsOrigins::Any => Some((AllowOrigin::any(), Vary::list([]))),
            CorsOrigins::List(origins) => Some((
                AllowOrigin::list(origins.iter().cloned()),
                Vary::list([header::ORIGIN]),
            )),
            CorsOrigins::None => None,
        }
        .map(|(origins, vary)| {
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(self.cors_methods.clone())
                .allow_headers(self.cors_request_headers.clone())
                .expose_headers(self.cors_exposed_headers.clone())
                .max_age(PREFLIGHT_MAX_AGE)
                .vary(vary)
        });
        // Around the router, not inside it: `Router::layer` wraps every
        // route, and axum clones a route's whole service for each request
        // it serves, so each request cloned and boxed this stack about three
        // times (~65 allocations, DHAT on ingest; docs/benchmarks.md, "The
        // layers cloned per request"). Outside, one clone of the stack per
        // request remains (hyper's), and the router inside is an `Arc`.
        // Compression off (ingest) is no layer either: an idle
        // `CompressionLayer` still inspects every request and wraps every
        // answer's body, ~2 µs of CPU per request at ingest's rate
        // (docs/benchmarks.md, "What ingest's layers cost"). On, its body
        // is boxed back into axum's, so both stacks answer the same type.
        let compression = compress.then(|| {
            ServiceBuilder::new()
                .map_response(compressed_body as CompressedBody)
                .layer(
                    CompressionLayer::new()
                        .quality(CompressionLevel::Precise(COMPRESSION_LEVEL as i32))
                        .compress_when(
                            SizeAbove::new(COMPRESS_FROM)
                                .and(NotForContentType::GRPC)
                                .and(NotForContentType::IMAGES)
                                .and(NotForContentType::SSE),
                        ),
                )
        });
        ServiceBuilder::new()
            .layer(ConventionsLayer)
            .option_layer(cors)
            .option_layer(compression)
            .layer(PanicsLayer)
            .service(router)
    }
}

/// What [`Layers::apply`] makes of a router: the service each connection
/// serves (`serve`). A type that names every layer, rather than the router
/// again around them (`Router::fallback_service`): that router cloned the
/// whole stack into a box and boxed its future for every request, ~2,100
/// instructions per request (docs/benchmarks.md, "The conventions as one
/// layer").
pub type App = Conventions<Either<Cors<Inner>, Inner>>;

/// The layers below CORS: compression or none, then panics.
type Inner =
    Either<MapResponse<Compression<Panics<Router>, CompressWhen>, CompressedBody>, Panics<Router>>;

/// Which answers are compressed (see the module docs).
type CompressWhen =
    And<And<And<SizeAbove, NotForContentType>, NotForContentType>, NotForContentType>;

/// The compressor's answers, boxed back into axum's body.
type CompressedBody = fn(axum::http::Response<CompressionBody<Body>>) -> Response;

/// Boxes a compressed answer's body into axum's, so that the service
/// answers one type with compression on or off.
fn compressed_body(response: axum::http::Response<CompressionBody<Body>>) -> Response {
    response.map(Body::new)
}

/// The request id, the access log and the JSON errors, as one layer: the
/// outermost of every service (see [`Layers::apply`]).
///
/// One hand-written layer rather than tower-http's `SetRequestIdLayer`,
/// `TraceLayer` and `PropagateRequestIdLayer` and a layer of JSON errors:
/// each of those wraps the future, and `TraceLayer` the answer's body as
/// well, and together with `CatchPanicLayer` (boxing every answer's body)
/// and the router around them they took ~10,000 instructions per request,
/// this and [`PanicsLayer`] ~3,700 (callgrind; ~1.3 µs less CPU per request
/// at ingest's rate; docs/benchmarks.md, "The conventions as one layer").
/// What the four did is done here in one future, in the same
/// order: an incoming id that does not look like one (see the module docs)
/// is replaced by a new UUID; the `request` span, with
/// the method, path and id, is entered while the service below runs, so
/// every line it logs names the request; the answer becomes a JSON error
/// if it is a bodiless one ([`json_error`]), carries the id back, and is
/// logged once (target `access`) with its status and the time to its head.
/// Nothing is timed unless the access line is on.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConventionsLayer;

impl<S> tower::Layer<S> for ConventionsLayer {
    type Service = Conventions<S>;

    fn layer(&self, inner: S) -> Conventions<S> {
        Conventions { inner }
    }
}

/// The service of [`ConventionsLayer`].
#[derive(Clone, Debug)]
pub struct Conventions<S> {
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Conventions<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ConventionsFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) if looks_like_an_id(id) => id.clone(),
            _ => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = tracing::info_span!(
            "request",
            http.method = %request.method(),
            http.path = %request.uri().path(),
            request.id = %id.to_str().unwrap_or(""),
        );
        let started = tracing::enabled!(target: "access", tracing::Level::INFO).then(Instant::now);
        let method = request.method().clone();
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ConventionsFuture {
            inner,
            span,
            method,
            id,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Conventions`]: the answer below it, made JSON if it
    /// is a bodiless error, with the request id, logged.
    pub struct ConventionsFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        method: Method,
        id: HeaderValue,
        started: Option<Instant>,
    }
}

impl<F, E> Future for ConventionsFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let mut response = json_error(this.method, response);
        if !response.headers().contains_key(&REQUEST_ID) {
            response.headers_mut().insert(REQUEST_ID, this.id.clone());
        }
        if let Some(started) = this.started {
            let status = response.status().as_u16();
            let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(target: "access", duration_ms, http.status = status, "answered");
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// Whether an incoming `x-request-id` may be kept: 1 to
/// [`MAX_REQUEST_ID`] characters of `A-Z a-z 0-9 - _ . : /`. Anything else
/// is replaced, so a client cannot write arbitrary text into the logs.
fn looks_like_an_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b))
}

/// A new request id: a version 4 UUID, lower-case and hyphenated, drawn
/// from `uuid`'s thread-local generator (`fast-rng`, seeded and reseeded by
/// the operating system) instead of one `getrandom` system call for every
/// request the services answer (docs/benchmarks.md, "Request ids without a
/// system call"). Ids need to be unique, not secret.
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).expect("a hyphenated UUID is a header value")
}

/// A handler that panics answers a JSON 500 and logs an error line with
/// the panic's message, instead of the connection being dropped without an
/// answer: the innermost layer of every service, so the answer passes
/// through the others (CORS headers, the request id, the access line) as
/// any other does.
///
/// Hand-written rather than tower-http's `CatchPanicLayer`, which boxes
/// every answer's body: the routers below answer axum's `Body` already
/// (see [`ConventionsLayer`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicsLayer;

impl<S> tower::Layer<S> for PanicsLayer {
    type Service = Panics<S>;

    fn layer(&self, inner: S) -> Panics<S> {
        Panics { inner }
    }
}

/// The service of [`PanicsLayer`].
#[derive(Clone, Debug)]
pub struct Panics<S> {
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Panics<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = PanicsFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
            Ok(future) => PanicsFuture::Running { future },
            Err(panic) => PanicsFuture::Panicked {
                answer: std::future::ready(panicked(panic)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Panics`]: the answer below it, or a JSON 500 if it
    /// panicked.
    #[project = PanicsProjection]
    pub enum PanicsFuture<F> {
        /// The service's own future, being polled.
        Running { #[pin] future: F },
        /// The service panicked when called: this answer.
        Panicked { answer: std::future::Ready<Response> },
    }
}

impl<F, E> Future for PanicsFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            PanicsProjection::Running { future } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => poll,
                    Err(panic) => std::task::Poll::Ready(Ok(panicked(panic))),
                }
            }
            PanicsProjection::Panicked { answer } => std::pin::Pin::new(answer).poll(cx).map(Ok),
        }
    }
}

/// The fallback of every router: a JSON 404.
pub async fn not_found() -> ApiError {
    not_found_error()
}

fn not_found_error() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API is described at /openapi.yaml",
    )
}

/// `response` itself, or, if it is an error without a body type, the same
/// status as a JSON error body (see [`ConventionsLayer`]).
pub fn json_error(method: &Method, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let error = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        ApiError::new(
            status,
            "method_not_allowed",
            format!("{method} is not allowed here; allowed: {allow}"),
        )
    } else if status == StatusCode::NOT_FOUND {
        return not_found_error().into_response();
    } else {
        ApiError::new(
            status,
            "error",
            status.canonical_reason().unwrap_or("error").to_owned(),
        )
    };
    let fresh = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (fresh_parts, body) = fresh.into_parts();
    for (name, value) in &fresh_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

/// A panic in a handler: logged with its message, answered as a JSON 500.
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic.message = %message, "a request handler panicked; answered 500");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; it has been logged",
    )
    .into_response()
}

/// `GET /openapi.yaml`: the API document both services serve, compiled in.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

/// The handler of `GET /openapi.yaml`.
pub async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/yaml"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        OPENAPI_YAML,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    /// The layers with CORS closed to every origin.
    fn no_cors() -> Layers {
        Layers {
            cors_origins: CorsOrigins::None,
            cors_methods: vec![Method::GET],
            cors_request_headers: Vec::new(),
            cors_exposed_headers: Vec::new(),
            compress: true,
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500_with_its_request_id() {
        let router = Router::new().route(
            "/boom",
            get(|| async {
                if true {
                    panic!("the handler broke");
                }
                "never"
            }),
        );
        let app = no_cors().apply(router);
        let response = app
            .oneshot(
                Request::builder()
                    .uri("/boom")
                    .header("x-request-id", "r-1")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()["x-request-id"], "r-1");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(
            &body[..],
            br#"{"error":"internal","message":"internal error; it has been logged"}"#
        );
    }

    #[tokio::test]
    async fn a_service_that_panics_when_called_answers_a_json_500_with_an_id() {
        // The panic in `call` itself, before any future exists (the
        // handler above panics in its future).
        let broken = tower::service_fn(|_request: Request| {
            if true {
                panic!("called and broke");
            }
            std::future::ready(Ok::<Response, std::convert::Infallible>(
                StatusCode::OK.into_response(),
            ))
        });
        let app = ServiceBuilder::new()
            .layer(ConventionsLayer)
            .layer(PanicsLayer)
            .service(broken);
        let response = app
            .oneshot(Request::builder().uri("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        // No id was sent: a new one answers.
        assert_eq!(response.headers()["x-request-id"].len(), 36);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains(r#""error":"internal""#)
        );
    }

    #[tokio::test]
    async fn bodiless_errors_become_json_and_other_answers_pass_untouched() {
        for compress in [true, false] {
            let router = Router::new()
                .route("/thing", get(|| async { "a thing" }))
                .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }));
            let app = Layers {
                compress,
                ..no_cors()
            }
            .apply(router);
            let call = |method: Method, uri: &'static str| {
                let app = app.clone();
                async move {
                    let request = Request::builder()
                        .method(method)
                        .uri(uri)
                        .body(Body::empty())
                        .unwrap();
                    let response = app.oneshot(request).await.unwrap();
                    let (status, headers) = (response.status(), response.headers().clone());
                    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                        .await
                        .unwrap();
                    (status, headers, String::from_utf8(body.to_vec()).unwrap())
                }
            };

            let (status, headers, body) = call(Method::GET, "/thing").await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "a thing"));
            assert!(
                headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain")
            );

            let (status, headers, body) = call(Method::DELETE, "/thing").await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{compress}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert!(
                headers[header::ALLOW].to_str().unwrap().contains("GET"),
                "{headers:?}"
            );
            assert!(body.contains(r#""error":"method_not_allowed""#), "{body}");
            assert!(body.contains("DELETE is not allowed here"), "{body}");

            let (status, headers, body) = call(Method::GET, "/teapot").await;
            assert_eq!(status, StatusCode::IM_A_TEAPOT);
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            assert_eq!(body, r#"{"error":"error","message":"I'm a teapot"}"#);

            let (status, headers, body) = call(Method::GET, "/nowhere").await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert!(body.contains(r#""error":"not_found""#), "{body}");
        }
    }

    #[tokio::test]
    async fn small_answers_and_a_service_that_never_compresses_answer_plain() {
        for compress in [true, false] {
            let small = "x".repeat(usize::from(COMPRESS_FROM) - 1);
            let large = "x".repeat(usize::from(COMPRESS_FROM));
            let router = Router::new()
                .route("/small", get(move || async move { small }))
                .route("/large", get(move || async move { large }));
            let app = Layers {
                compress,
                ..no_cors()
            }
            .apply(router);
            for (path, length, compressed) in [
                ("/small", usize::from(COMPRESS_FROM) - 1, false),
                ("/large", usize::from(COMPRESS_FROM), compress),
            ] {
                // What Python's `requests` sends unasked.
                let response = app
                    .clone()
                    .oneshot(
                        Request::builder()
                            .uri(path)
                            .header(header::ACCEPT_ENCODING, "gzip, deflate")
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                let encoding = response.headers().get(header::CONTENT_ENCODING).cloned();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                if compressed {
                    assert_eq!(encoding.as_ref().map(|v| v.as_bytes()), Some(&b"gzip"[..]));
                    assert_eq!(&body[..2], &[0x1f, 0x8b], "{path}: not gzip");
                    assert!(body.len() < length, "{path}: {} bytes", body.len());
                } else {
                    assert_eq!(encoding, None, "{path} {compress}");
                    assert_eq!(body.len(), length, "{path} {compress}");
                }
            }
        }
    }

    #[test]
    fn generated_request_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| {
                let id = new_request_id();
                let text = id.to_str().unwrap().to_owned();
                let parsed = uuid::Uuid::parse_str(&text).unwrap();
                assert_eq!(parsed.get_version_num(), 4, "{text}");
                assert_eq!(
                    text,
                    parsed.hyphenated().to_string(),
                    "lower-case, hyphenated"
                );
                text
            })
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn origins_parse() {
        assert_eq!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::None));
        assert_eq!(CorsOrigins::parse(" none "), Ok(CorsOrigins::None));
        assert_eq!(
            CorsOrigins::parse("https://a.example, http://b.example:8080"),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("http://b.example:8080"),
            ]))
        );
        for bad in ["a.example", "https://a.example/path", "ftp://x", "https://"] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
