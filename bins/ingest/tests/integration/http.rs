//! Ingest as load balancers, browsers and operators expect it (issue #15),
//! on the running service: ready while only Redis is down (with Redis's
//! state on `/healthz` and in `ingest_redis_up`), JSON 404 and 405 with
//! `Allow`, CORS closed by default, request ids, and `/openapi.yaml`.

use std::time::Duration;

use crate::harness::{Ingest, RedisChoice};

async fn text(ingest: &Ingest, path: &str) -> (u16, String) {
    let response = ingest
        .client
        .get(format!("{}{path}", ingest.base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Polls `path` until its body contains `fragment` (the Redis watch pings
/// at start, then every 2 s).
async fn wait_for_text(ingest: &Ingest, path: &str, fragment: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = text(ingest, path).await;
        if answer.1.contains(fragment) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never said {fragment:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_redis_which_healthz_and_metrics_name() {
    let ingest = Ingest::start(RedisChoice::Url("redis://127.0.0.1:1".to_owned())).await;
    let (status, ready) = text(&ingest, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.starts_with("ready\nnote: redis: "), "{ready}");
    let (status, health) = wait_for_text(&ingest, "/healthz", "redis: unavailable").await;
    assert_eq!(status, 200);
    assert!(health.starts_with("ok\nredis: unavailable ("), "{health}");
    let (_, metrics) = text(&ingest, "/metrics").await;
    assert!(metrics.contains("\ningest_redis_up 0\n"), "{metrics}");
    // And it does record: 202, counted later.
    let (status, answer) = ingest
        .post(r#"{"ballot_box_id": "BB1", "city": "york", "votes": {"a": 1}}"#)
        .await;
    assert_eq!(status, 202, "{answer}");
    ingest.stop().await;

    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let (status, health) = wait_for_text(&ingest, "/healthz", "redis: ok").await;
    assert_eq!((status, health.as_str()), (200, "ok\nredis: ok\n"));
    let (_, metrics) = text(&ingest, "/metrics").await;
    assert!(metrics.contains("\ningest_redis_up 1\n"), "{metrics}");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_cors_is_closed_and_requests_have_ids() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let client = &ingest.client;

    let missing = client
        .get(format!("{}/v1/nothing", ingest.base))
        .header("x-request-id", "gw-7")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-request-id"], "gw-7");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");

    let wrong = client.get(ingest.reports_url()).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "POST");
    assert_eq!(wrong.headers()["content-type"], "application/json");
    assert_eq!(wrong.headers()["x-request-id"].len(), 36);
    let wrong_headers = wrong.headers().clone();
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");

    // A browser page on another origin may not post (closed by default).
    let preflight = client
        .request(reqwest::Method::OPTIONS, ingest.reports_url())
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        preflight.headers()
    );
    // Closed is no CORS layer at all: the preflight gets the route's own
    // refusal, and no answer carries CORS headers.
    assert_eq!(preflight.status(), 405);
    for headers in [preflight.headers(), &wrong_headers] {
        for name in ["vary", "access-control-expose-headers"] {
            assert!(headers.get(name).is_none(), "{name}: {headers:?}");
        }
    }

    let (status, document) = text(&ingest, "/openapi.yaml").await;
    assert_eq!(status, 200);
    assert_eq!(document, election_http::layers::OPENAPI_YAML);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_origins_may_post_from_a_browser() {
    let mut settings = crate::harness::settings();
    settings.cors_origins =
        election_http::layers::CorsOrigins::parse("https://results.example").unwrap();
    let ingest = Ingest::start_with(RedisChoice::Standalone, settings).await;
    let preflight = |origin: &'static str| {
        ingest
            .client
            .request(reqwest::Method::OPTIONS, ingest.reports_url())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://results.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://results.example"
    );
    // The answer names the origin, so caches must keep it per origin.
    assert_eq!(allowed.headers()["vary"], "origin");
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    ingest.stop().await;
}
