//! Every row of the docs/contract.md §5 status table, through HTTP, with its error code and
//! message; and I4: no refused request leaves a row or moves a counter.

use election_test_support::logs::check_error;

use crate::harness::{Ingest, RedisChoice, issue_token, read};

const SEED_LONDON: &str = r#"{"ballot_box_id": "BB123", "city": "london",
 "votes": {"tories": 120, "labour": 200, "libdems": 45, "reform": 20}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_answers_201_then_200_for_an_identical_replay() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let first = ingest.post(SEED_LONDON).await;
    assert_eq!(first.0, 201, "{first:?}");
    assert_eq!(first.1["ballot_box_id"], "BB123");
    assert_eq!(first.1["revision"], 1);
    assert_eq!(first.1["status"], "counted");
    assert!(first.1["report_id"].as_i64().unwrap() > 0);
    // Same content, other formatting and key order: the same report.
    let replay = ingest
        .post(r#"{"votes":{"reform":20,"libdems":45,"labour":200,"tories":120},"city":"london","ballot_box_id":"BB123","revision":1}"#)
        .await;
    assert_eq!(replay, (200, first.1.clone()));
    assert_eq!(ingest.national("labour"), Some(200));
    assert_eq!(ingest.rows(), (1, 4));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_code_and_message_and_changes_nothing() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    assert_eq!(ingest.post(SEED_LONDON).await.0, 201);
    let rows_before = ingest.rows();
    let total_before = ingest.snapshot_total();
    let url = ingest.reports_url();
    let client = &ingest.client;
    let token = ingest.token.clone();

    // 401: no token, a malformed header, an unknown token, a revoked token.
    let answer = read(
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(SEED_LONDON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_error(&answer, 401, "unauthorized", "missing bearer token");
    let answer = read(
        client
            .post(&url)
            .header("authorization", format!("Basic {token}"))
            .header("content-type", "application/json")
            .body(SEED_LONDON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_error(&answer, 401, "unauthorized", "missing bearer token");
    check_error(
        &ingest.post_with("et_0000", SEED_LONDON).await,
        401,
        "unauthorized",
        "unknown or revoked token",
    );
    let (revoked_id, revoked) = issue_token(&ingest.pool, ingest.election.as_str(), None);
    assert!(store_pg::tokens::revoke(&ingest.pool, revoked_id).unwrap());
    check_error(
        &ingest.post_with(&revoked, SEED_LONDON).await,
        401,
        "unauthorized",
        "unknown or revoked token",
    );

    // 403: a token of another election; a token bound to another box.
    let (_, other_election) = issue_token(&ingest.pool, "another-election", None);
    check_error(
        &ingest.post_with(&other_election, SEED_LONDON).await,
        403,
        "forbidden",
        &format!("not valid for election \"{}\"", ingest.election),
    );
    let (_, bound) = issue_token(&ingest.pool, ingest.election.as_str(), Some("BB999"));
    check_error(
        &ingest.post_with(&bound, SEED_LONDON).await,
        403,
        "forbidden",
        "may only report for ballot box \"BB999\", not \"BB123\"",
    );

    // 415: not JSON.
    let answer = read(
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(SEED_LONDON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_error(
        &answer,
        415,
        "unsupported_media_type",
        "\"text/plain\" is not supported",
    );
    let answer = read(
        client
            .post(&url)
            .bearer_auth(&token)
            .body(SEED_LONDON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_error(&answer, 415, "unsupported_media_type", "(none)");

    // 413: over 64 KiB, declared or streamed without a length.
    let huge = format!(
        r#"{{"ballot_box_id":"BB1","city":"x","votes":{{"a":1}},"reason":"{}"}}"#,
        "x".repeat(70_000)
    );
    check_error(
        &ingest.post(&huge).await,
        413,
        "payload_too_large",
        "larger than 65536 bytes",
    );
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..20).map(|_| Ok("x".repeat(5000))).collect();
    let answer = read(
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_error(&answer, 413, "payload_too_large", "larger than 65536 bytes");

    // 400: not JSON, wrong types, unknown fields, duplicate keys.
    for (body, fragment) in [
        ("{", "EOF while parsing"),
        ("[]", "expected a JSON object"),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":"1"}}"#,
            "votes.a: invalid type: string",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":1},"colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":1,"a":2}}"#,
            "party \"a\" appears twice",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","city":"y","votes":{"a":1}}"#,
            "duplicate field `city`",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":1.5}}"#,
            "expected an integer",
        ),
    ] {
        check_error(&ingest.post(body).await, 400, "bad_request", fragment);
    }
    let answer = read(
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(vec![b'{', 0xff, 0xfe, b'}'])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.0, 400, "invalid UTF-8: {answer:?}");

    // 422: well-formed but invalid.
    for (body, fragment) in [
        (
            r#"{"ballot_box_id":"B1","city":"Lon:don","votes":{"a":1}}"#,
            "city: \"Lon:don\" must be",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":10000001}}"#,
            "votes.a: is 10000001",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":-1}}"#,
            "votes.a: is -1",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{}}"#,
            "votes: has 0 parties",
        ),
        (
            r#"{"ballot_box_id":"B1","city":"x","votes":{"a":1},"revision":2}"#,
            "reason: is missing",
        ),
        (
            r#"{"ballot_box_id":"B 1","city":"x","votes":{"a":1},"revision":0}"#,
            "ballot_box_id: \"B 1\" must be",
        ),
    ] {
        check_error(&ingest.post(body).await, 422, "invalid_report", fragment);
    }
    let bad_election = format!("{}/v1/elections/UPPER/reports", ingest.base);
    let answer = read(
        client
            .post(&bad_election)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(SEED_LONDON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_error(
        &answer,
        422,
        "invalid_report",
        "election: \"UPPER\" must be",
    );

    // 409: same revision with other content; an older revision; another city.
    check_error(
        &ingest
            .post(r#"{"ballot_box_id":"BB123","city":"london","votes":{"tories":121,"labour":200,"libdems":45,"reform":20}}"#)
            .await,
        409,
        "conflict",
        "revision 1 of this ballot box was already recorded with different content",
    );
    assert_eq!(
        ingest
            .post(r#"{"ballot_box_id":"BB123","city":"london","revision":3,"reason":"recount","votes":{"tories":120,"labour":200,"libdems":45,"reform":20}}"#)
            .await
            .0,
        201
    );
    let rows_before = (rows_before.0 + 1, rows_before.1 + 4);
    check_error(
        &ingest
            .post(r#"{"ballot_box_id":"BB123","city":"london","revision":2,"reason":"late","votes":{"tories":1}}"#)
            .await,
        409,
        "conflict",
        "revision 2 is older than the recorded revision 3",
    );
    check_error(
        &ingest
            .post(r#"{"ballot_box_id":"BB123","city":"paris","revision":4,"reason":"moved","votes":{"tories":1}}"#)
            .await,
        409,
        "conflict",
        "belongs to city \"london\", not \"paris\"",
    );

    // I4: none of the refusals left a row or moved a counter.
    assert_eq!(ingest.rows(), rows_before);
    assert_eq!(ingest.snapshot_total(), total_before);
    assert_eq!(ingest.national("tories"), Some(120));
    assert_eq!(
        ingest.get(&format!("election:{}:party:a", ingest.election)),
        None
    );

    // Metrics count answers by status and code.
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(r#"ingest_responses_total{status="409",code="conflict"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ingest_responses_total{status="201",code="counted"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("ingest_batch_size_bucket"), "{metrics}");
    // Every batch's steps are timed: recording once per batch, applying and
    // marking for the batches that had fresh reports (two were counted).
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let batches = value("ingest_batch_size_count");
    let phase = |phase: &str| {
        value(&format!(
            r#"ingest_batch_phase_duration_seconds_count{{phase="{phase}"}}"#
        ))
    };
    assert_eq!(phase("record"), batches, "{metrics}");
    for step in ["apply", "mark"] {
        assert!((1.0..=batches).contains(&phase(step)), "{step}: {metrics}");
    }
    assert!(!metrics.contains(&token), "metrics must not leak tokens");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let health = ingest
        .client
        .get(format!("{}/healthz", ingest.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    ingest.stop().await;
}
