//! Slow clients, on a real socket: a client that sends half a header line
//! and stalls is disconnected after the header timeout while others are
//! served; a client that sends its headers and part of its body, then
//! stalls, gets `408 request_timeout` and nothing is recorded; the bodies
//! such clients hold are bounded over every connection (`503 overloaded`
//! beyond).

use std::time::{Duration, Instant};

use std::io::Write;
use std::net::TcpStream;

use crate::harness::{Ingest, RedisChoice, read_to_close, settings};

const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
const BODY_TIMEOUT: Duration = Duration::from_millis(600);

async fn start() -> Ingest {
    let mut settings = settings();
    settings.serve.header_read_timeout = HEADER_TIMEOUT;
    settings.body_timeout = BODY_TIMEOUT;
    Ingest::start_with(RedisChoice::Standalone, settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_line_is_cut_off_while_others_are_served() {
    let ingest = start().await;
    let address = ingest.base.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).unwrap();
    let connected = Instant::now();
    slow.write_all(
        format!(
            "POST /v1/elections/{}/reports HTTP/1.1\r\nHost: x\r\nAuthoriz",
            ingest.election
        )
        .as_bytes(),
    )
    .unwrap();

    // Meanwhile, another client is served normally.
    let served = ingest
        .post(r#"{"ballot_box_id":"B1","city":"york","votes":{"a":3}}"#)
        .await;
    assert_eq!(served.0, 201, "{served:?}");

    let (received, closed) = read_to_close(slow, Duration::from_secs(10)).await;
    let waited = connected.elapsed();
    assert!(closed, "the stalled connection was still open after 10 s");
    assert!(
        received.is_empty(),
        "no answer is owed to half a request: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_millis(50) && waited < Duration::from_secs(3),
        "disconnected after {waited:?}, timeout {HEADER_TIMEOUT:?}"
    );
    // The service is still up, and only the real report was recorded.
    assert_eq!(
        ingest
            .post(r#"{"ballot_box_id":"B2","city":"york","votes":{"a":4}}"#)
            .await
            .0,
        201
    );
    assert_eq!(ingest.rows(), (2, 2));
    assert_eq!(ingest.national("a"), Some(7));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let ingest = start().await;
    let address = ingest.base.trim_start_matches("http://").to_owned();
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answered = Instant::now();
    let (received, closed) = read_to_close(idle, Duration::from_secs(10)).await;
    assert!(closed, "the idle connection was still open after 10 s");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    assert!(
        answered.elapsed() >= HEADER_TIMEOUT - Duration::from_millis(50),
        "closed after {:?}",
        answered.elapsed()
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_and_records_nothing() {
    let ingest = start().await;
    let address = ingest.base.trim_start_matches("http://").to_owned();
    let body = r#"{"ballot_box_id":"B9","city":"york","votes":{"a":1000}}"#;
    let half = &body[..body.len() / 2];
    for framing in ["content-length", "chunked"] {
        let mut slow = TcpStream::connect(&address).unwrap();
        let head = format!(
            "POST /v1/elections/{}/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
            ingest.election, ingest.token
        );
        let request = if framing == "chunked" {
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{half}\r\n",
                half.len()
            )
        } else {
            format!("{head}Content-Length: {}\r\n\r\n{half}", body.len())
        };
        let sent = Instant::now();
        slow.write_all(request.as_bytes()).unwrap();
        let (received, closed) = read_to_close(slow, Duration::from_secs(10)).await;
        let waited = sent.elapsed();
        assert!(closed, "{framing}: the connection stayed open");
        let text = String::from_utf8_lossy(&received);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout"),
            "{framing}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["error"], "request_timeout", "{json}");
        assert!(
            json["message"].as_str().unwrap().contains(&format!(
                "did not arrive within {} ms",
                BODY_TIMEOUT.as_millis()
            )),
            "{json}"
        );
        assert!(
            waited >= BODY_TIMEOUT - Duration::from_millis(50) && waited < Duration::from_secs(3),
            "{framing}: answered after {waited:?}"
        );
    }
    // Nothing recorded or counted; the 408s are counted in the metrics.
    assert_eq!(ingest.rows(), (0, 0));
    assert_eq!(ingest.national("a"), None);
    assert_eq!(ingest.city("york", "a"), None);
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(r#"ingest_responses_total{status="408",code="request_timeout"} 2"#),
        "{metrics}"
    );
    // The same report, sent whole, is accepted.
    assert_eq!(ingest.post(body).await.0, 201);
    assert_eq!(ingest.national("a"), Some(1000));
    ingest.stop().await;
}

/// Ingest's `ingest_body_bytes_held` gauge.
async fn bytes_held(ingest: &Ingest) -> f64 {
    let metrics = ingest.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("ingest_body_bytes_held "))
        .unwrap_or_else(|| panic!("no ingest_body_bytes_held in {metrics}"))
        .parse()
        .unwrap()
}

/// The request bodies ingest holds at once are bounded over every
/// connection. A client holds a reservation of 60,000 bytes open (headers
/// and the start of a body that size, then a stall) under a budget of
/// 100,000: a small report still fits; a body of 50,000 bytes does not, nor
/// a small one sent chunked (no length: it counts as the largest single
/// body, 64 KiB), and both are answered `503 overloaded` with `Retry-After`,
/// recording nothing. Once the stalled request is answered (408) its bytes
/// are returned, and the refused body is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bodies_held_at_once_are_bounded_over_every_connection() {
    let mut settings = settings();
    settings.body_timeout = Duration::from_millis(1500);
    settings.bodies_in_flight = 100_000;
    let ingest = Ingest::start_with(RedisChoice::Standalone, settings).await;
    let address = ingest.base.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /v1/elections/{}/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
        ingest.election, ingest.token
    );
    // A report of 5 votes for "a", padded with spaces to `size` bytes.
    let padded = |ballot_box: &str, size: usize| {
        let report =
            format!(r#"{{"ballot_box_id":"{ballot_box}","city":"york","votes":{{"a":5}}}}"#);
        format!("{report}{}", " ".repeat(size - report.len()))
    };

    let held = padded("B1", 60_000);
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(
        format!(
            "{head}Content-Length: {}\r\n\r\n{}",
            held.len(),
            &held[..100]
        )
        .as_bytes(),
    )
    .unwrap();
    let waiting = Instant::now();
    while bytes_held(&ingest).await < 60_000.0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "the stalled body reserved nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let small = padded("B2", 100);
    assert_eq!(ingest.post(&small).await.0, 201, "a small report fits");

    let large = padded("B3", 50_000);
    let refused = ingest
        .client
        .post(ingest.reports_url())
        .bearer_auth(&ingest.token)
        .header("content-type", "application/json")
        .body(large.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let json: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(json["error"], "overloaded", "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains("INGEST_BODIES_IN_FLIGHT_MIB") && message.contains("needs 50000 more"),
        "{json}"
    );

    let mut chunked = TcpStream::connect(&address).unwrap();
    let small = padded("B4", 100);
    chunked
        .write_all(
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
                small.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let (received, _) = read_to_close(chunked, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable"),
        "{text}"
    );
    assert!(text.contains("without Content-Length"), "{text}");

    // The stalled request is answered 408, and gives its bytes back.
    let (received, closed) = read_to_close(slow, Duration::from_secs(10)).await;
    assert!(closed);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout"), "{text}");
    assert_eq!(bytes_held(&ingest).await, 0.0);
    assert_eq!(
        ingest.post(&large).await.0,
        201,
        "the refused body, sent again"
    );

    // Only B2 and B3 were recorded and counted.
    assert_eq!(ingest.rows(), (2, 2));
    assert_eq!(ingest.national("a"), Some(10));
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(r#"ingest_responses_total{status="503",code="overloaded"} 2"#),
        "{metrics}"
    );
    ingest.stop().await;
}
