//! The HTTP conventions every service keeps, as one stack of layers around
//! its router, so a handler only answers its own question.
//!
//! What clients, browsers, CDNs and operators rely on, and where it comes
//! from (maintained `tower-http` layers wherever one exists):
//!
//! - **Request ids** (`SetRequestIdLayer`, `PropagateRequestIdLayer`): an
//!   incoming `x-request-id` is kept when it looks like an id (1–128 visible
//!   characters of `A-Z a-z 0-9 - _ . : /`); otherwise, or when absent, a
//!   UUID is generated. The answer carries it back, and the access log and
//!   every log line written while serving the request name it, so a
//!   complaint quoting the id finds its log lines. An id that does not look
//!   like one is replaced rather than logged, so a client cannot write
//!   arbitrary text into the logs.
//! - **One access-log line per request** (`TraceLayer`): target `access`,
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
//! - **JSON errors everywhere** ([`JsonErrorsLayer`]): an error answer without a
//!   body type — axum's 405 for a method a route does not serve (its
//!   `Allow` header kept), a fallback 404 — becomes the same
//!   `{"error", "message"}` body as every [`ApiError`].
//! - **Panics** (`CatchPanicLayer`): a handler that panics answers a JSON
//!   500 and logs an error line with the panic's message, instead of the
//!   connection being dropped without an answer.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::CompressionLevel;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::cors::{AllowOrigin, CorsLayer, Vary};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

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
    /// request id, access log, request id on the answer, CORS, compression,
    /// JSON errors, panics.
    pub fn apply(&self, router: Router) -> Router {
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
        let trace = TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "request",
                    http.method = %request.method(),
                    http.path = %request.uri().path(),
                    request.id = %id,
                )
            })
            .on_request(())
            .on_response(
                |response: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                    let status = response.status().as_u16();
                    let duration_ms = latency.as_secs_f64() * 1000.0;
                    tracing::info!(target: "access", duration_ms, http.status = status, "answered");
                },
            )
            // Every answer is logged once, by `on_response`, 5xx included.
            .on_failure(());
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
                .map_response(|response: axum::http::Response<_>| response.map(Body::new))
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
        let stack = ServiceBuilder::new()
            .map_request(drop_odd_request_id)
            .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
            .layer(trace)
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .option_layer(cors)
            .option_layer(compression)
            .layer(JsonErrorsLayer)
            .layer(CatchPanicLayer::custom(panicked))
            .service(router);
        Router::new().fallback_service(stack)
    }
}

/// A new request id: a version 4 UUID, as `tower-http`'s `MakeRequestUuid`
/// makes, but drawn from `uuid`'s thread-local generator (`fast-rng`, seeded
/// and reseeded by the operating system) instead of one `getrandom` system
/// call for every request the services answer (docs/benchmarks.md,
/// "Request ids without a system call"). Ids need to be unique, not secret.
#[derive(Clone, Copy, Debug)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// Removes an incoming `x-request-id` that does not look like an id, so one
/// is generated instead.
fn drop_odd_request_id(mut request: Request) -> Request {
    let odd = request.headers().get(&REQUEST_ID).is_some_and(|value| {
        let bytes = value.as_bytes();
        bytes.is_empty()
            || bytes.len() > MAX_REQUEST_ID
            || !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b))
    });
    if odd {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
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

/// Gives every error answer that has no body type the JSON error body:
/// axum's 405 (keeping its `Allow` header) and any other bodiless 4xx/5xx.
///
/// A `tower` layer of its own rather than `axum::middleware::from_fn`: per
/// request, `from_fn` clones and boxes the service inside it and boxes the
/// future, which measured ~3 µs of CPU per request at ingest's rate, for a
/// check that is a status and a header lookup on every answer that is not
/// an error (docs/benchmarks.md, "What ingest's layers cost"). Here the
/// future is the inner one's, with the request's method beside it.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonErrorsLayer;

impl<S> tower::Layer<S> for JsonErrorsLayer {
    type Service = JsonErrors<S>;

    fn layer(&self, inner: S) -> JsonErrors<S> {
        JsonErrors { inner }
    }
}

/// The service of [`JsonErrorsLayer`].
#[derive(Clone, Debug)]
pub struct JsonErrors<S> {
    inner: S,
}

impl<S, B> tower::Service<Request> for JsonErrors<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>>,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = JsonErrorsFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        JsonErrorsFuture {
            method: request.method().clone(),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`JsonErrors`]: the inner answer, made JSON if it is
    /// a bodiless error.
    pub struct JsonErrorsFuture<F> {
        #[pin]
        inner: F,
        method: Method,
    }
}

impl<F, B, E> Future for JsonErrorsFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?.map(Body::new);
        std::task::Poll::Ready(Ok(json_error(this.method, response)))
    }
}

/// `response` itself, or, if it is an error without a body type, the same
/// status as a JSON error body (see [`JsonErrorsLayer`]).
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
        let request = Request::new(());
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| {
                let id = NewRequestId.make_request_id(&request).unwrap();
                let text = id.header_value().to_str().unwrap().to_owned();
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
