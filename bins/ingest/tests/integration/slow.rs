//! Slow clients, on a real socket: a client that sends half a header line
//! and stalls is disconnected after the header timeout while others are
//! served; a client that sends its headers and part of its body, then
//! stalls, gets `408 request_timeout` and nothing is recorded.

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
    let metrics = ingest
        .client
        .get(format!("{}/metrics", ingest.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ingest_responses_total{status="408",code="request_timeout"} 2"#),
        "{metrics}"
    );
    // The same report, sent whole, is accepted.
    assert_eq!(ingest.post(body).await.0, 201);
    assert_eq!(ingest.national("a"), Some(1000));
    ingest.stop().await;
}
