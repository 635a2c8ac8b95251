//! Hostile input over HTTP (issue #7): huge and negative numbers, too many
//! parties, invalid UTF-8, deep nesting, an endless chunked body. Each gets
//! its 4xx with a message that says what is wrong, nothing is recorded or
//! counted, and the service goes on accepting good reports.
//! (election-core's `hostile` tests throw arbitrary bytes at the parser;
//! these check what a client sees.)

use std::time::{Duration, Instant};

use std::io::Write;
use std::net::TcpStream;

use election_test_support::logs::check_error;

use crate::harness::{Ingest, RedisChoice, read, read_to_close};

fn report_with_votes(votes: &str) -> String {
    format!(r#"{{"ballot_box_id":"H1","city":"york","votes":{votes}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_a_clear_4xx_and_change_nothing() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let parties_101: Vec<String> = (0..101).map(|i| format!(r#""p{i}":1"#)).collect();
    let cases: Vec<(String, u16, &str, &str)> = vec![
        // Huge and negative numbers.
        (
            report_with_votes(r#"{"a":1e30}"#),
            400,
            "bad_request",
            "votes.a: invalid type: floating point",
        ),
        // Beyond u64, serde_json reads a number as a float: refused as
        // not an integer.
        (
            report_with_votes(r#"{"a":18446744073709551616}"#),
            400,
            "bad_request",
            "votes.a: invalid type: floating point `1.8446744073709552e+19`, expected an integer",
        ),
        (
            report_with_votes(&format!(r#"{{"a":1{}}}"#, "0".repeat(5_000))),
            400,
            "bad_request",
            "votes.a:",
        ),
        (
            report_with_votes(r#"{"a":-1}"#),
            422,
            "invalid_report",
            "votes.a: is -1",
        ),
        (
            r#"{"ballot_box_id":"H1","city":"york","votes":{"a":1},"revision":18446744073709551616,"reason":"x"}"#
                .to_owned(),
            400,
            "bad_request",
            "expected an integer at line 1 column 83",
        ),
        (
            r#"{"ballot_box_id":"H1","city":"york","votes":{"a":1},"revision":4294967296,"reason":"x"}"#
                .to_owned(),
            422,
            "invalid_report",
            "revision",
        ),
        // 100 parties + 1.
        (
            report_with_votes(&format!("{{{}}}", parties_101.join(","))),
            422,
            "invalid_report",
            "votes: has 101 parties",
        ),
        // Deep nesting (under 64 KiB): refused at the first wrong type,
        // without walking it.
        (
            format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)),
            400,
            "bad_request",
            "invalid type: sequence, expected a JSON object at line 1 column 0",
        ),
        (
            report_with_votes(&format!(
                r#"{{"a":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )),
            400,
            "bad_request",
            "votes.a:",
        ),
        (
            format!(
                r#"{{"ballot_box_id":"H1","city":"york","votes":{{"a":1}},"reason":{}{}}}"#,
                "{\"x\":".repeat(5_000),
                "1".to_owned() + &"}".repeat(5_000)
            ),
            400,
            "bad_request",
            "invalid type: map, expected a string at line 1 column 61",
        ),
    ];
    let mut wrong = Vec::new();
    for (body, status, code, fragment) in &cases {
        let answer = ingest.post(body).await;
        let message = answer.1["message"].as_str().unwrap_or_default();
        if answer.0 != *status || answer.1["error"] != *code || !message.contains(fragment) {
            wrong.push(format!(
                "body {:?}…: expected {status} {code} {fragment:?}, got {answer:?}",
                &body[..body.len().min(80)]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Invalid UTF-8, in a string and as a bare byte.
    for (bytes, fragment) in [
        (
            b"{\"ballot_box_id\":\"H\xff1\",\"city\":\"york\",\"votes\":{\"a\":1}}".to_vec(),
            "invalid unicode code point at line 1 column 20",
        ),
        (
            vec![b'{', 0xff, 0xfe, b'}'],
            "key must be a string at line 1 column 2",
        ),
    ] {
        let answer = read(
            ingest
                .client
                .post(ingest.reports_url())
                .bearer_auth(&ingest.token)
                .header("content-type", "application/json")
                .body(bytes)
                .send()
                .await
                .unwrap(),
        )
        .await;
        check_error(&answer, 400, "bad_request", fragment);
    }

    // Nothing recorded, nothing counted; a good report still goes through.
    assert_eq!(ingest.rows(), (0, 0));
    assert_eq!(ingest.national("a"), None);
    assert_eq!(ingest.national("p0"), None);
    let good = ingest.post(&report_with_votes(r#"{"a":5}"#)).await;
    assert_eq!(good.0, 201, "{good:?}");
    assert_eq!(ingest.rows(), (1, 1));
    assert_eq!(ingest.national("a"), Some(5));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chunked_body_gets_413_and_the_connection_is_closed() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let address = ingest.base.trim_start_matches("http://").to_owned();
    let mut writer = TcpStream::connect(&address).unwrap();
    let reader = writer.try_clone().unwrap();
    let head = format!(
        "POST /v1/elections/{}/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        ingest.election, ingest.token
    );
    let started = Instant::now();
    // The writer never ends the body: it sends 4 KiB chunks until the server
    // stops taking them (or 60 s, which fails the test below).
    writer
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let sending = tokio::task::spawn_blocking(move || {
        writer.write_all(head.as_bytes())?;
        let chunk = format!("1000\r\n{}\r\n", "x".repeat(4096));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0usize;
        while Instant::now() < deadline {
            writer.write_all(chunk.as_bytes())?;
            sent += 4096;
        }
        Ok::<usize, std::io::Error>(sent)
    });
    let (received, closed) = read_to_close(reader, Duration::from_secs(20)).await;
    assert!(closed, "the server kept the connection open");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large"),
        "answer: {text:?}"
    );
    assert!(text.contains(r#""error":"payload_too_large""#), "{text}");
    assert!(text.contains("larger than 65536 bytes"), "{text}");
    // The server stopped reading: the endless writer fails, soon.
    let sent = tokio::time::timeout(Duration::from_secs(20), sending)
        .await
        .expect("the writer was still sending after 20 s")
        .unwrap();
    assert!(sent.is_err(), "the server read an endless body to its end");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    assert_eq!(ingest.rows(), (0, 0));
    let good = ingest.post(&report_with_votes(r#"{"a":5}"#)).await;
    assert_eq!(good.0, 201, "{good:?}");
    ingest.stop().await;
}
