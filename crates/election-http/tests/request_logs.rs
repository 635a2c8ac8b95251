//! Every line logged while a request is served names it, after an `.await`
//! as before, and one access line follows with its status. A test binary
//! of its own: it installs the global subscriber, and tracing decides once
//! per call site whether it is enabled, so a subscriber set for one test
//! among others running at once could miss lines they reached first.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use election_http::layers::{CorsOrigins, Layers};
use tower::ServiceExt as _;

mod support;
use support::Buffer;

#[tokio::test]
async fn lines_logged_while_serving_name_the_request_and_one_access_line_follows() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    // JSON lines as the services write them (`telemetry`), at info.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .json()
        .flatten_event(true)
        .with_span_list(false)
        .init();
    let router = Router::new().route(
        "/work",
        get(|| async {
            tracing::info!("before the await");
            tokio::task::yield_now().await;
            tracing::info!("after the await");
            "done"
        }),
    );
    let app = Layers {
        cors_origins: CorsOrigins::None,
        cors_methods: vec![Method::GET],
        cors_request_headers: Vec::new(),
        cors_exposed_headers: Vec::new(),
        compress: false,
    }
    .apply(router);
    let response = app
        .oneshot(
            Request::builder()
                .uri("/work?api_key=Secret42")
                .header("x-request-id", "trace-7")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let text = buffer.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, said) in lines.iter().zip(["before the await", "after the await"]) {
        assert_eq!(line["message"], said, "{text}");
        assert_eq!(line["span"]["name"], "request", "{text}");
        assert_eq!(line["span"]["request.id"], "trace-7", "{text}");
        assert_eq!(line["span"]["http.method"], "GET", "{text}");
        assert_eq!(line["span"]["http.path"], "/work", "{text}");
    }
    let access = &lines[2];
    assert_eq!(access["target"], "access", "{text}");
    assert_eq!(access["message"], "answered", "{text}");
    assert_eq!(access["http.status"], 200, "{text}");
    assert!(access["duration_ms"].as_f64().is_some(), "{text}");
    assert_eq!(access["span"]["request.id"], "trace-7", "{text}");
    assert!(
        !text.contains("Secret42"),
        "the query string was logged: {text}"
    );
}
