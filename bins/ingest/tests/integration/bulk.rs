//! Bulk reporting (`POST /v1/elections/{e}/report-batches`): each item means
//! what it would alone, one bad item never fails the others, items of one
//! box are taken in array order, whole-request problems are answered alone,
//! and the same batch posted twice at once counts once.

use std::io::Write as _;
use std::time::Duration;

use election_core::Definition;
use serde_json::{Value, json};

use crate::harness::{Ingest, RedisChoice, issue_token, read, read_to_close};

fn batch_url(ingest: &Ingest, election: &str) -> String {
    format!("{}/v1/elections/{election}/report-batches", ingest.base)
}

async fn post_batch_with(
    ingest: &Ingest,
    election: &str,
    token: &str,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    read(
        ingest
            .client
            .post(batch_url(ingest, election))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn post_batch(ingest: &Ingest, body: String) -> (u16, Value) {
    let election = ingest.election.to_string();
    post_batch_with(ingest, &election, &ingest.token, "application/json", body).await
}

/// `(status, state or error code)` of every item, in order.
fn items(answer: &(u16, Value)) -> Vec<(u64, String)> {
    assert_eq!(answer.0, 200, "{answer:?}");
    answer.1["results"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i, "{item}");
            let code = item["state"]
                .as_str()
                .or(item["error"].as_str())
                .unwrap()
                .to_owned();
            (item["status"].as_u64().unwrap(), code)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_is_answered_as_it_would_be_alone() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let first = ingest
        .post(r#"{"ballot_box_id":"OLD","city":"york","votes":{"a":5}}"#)
        .await;
    assert_eq!(first.0, 201, "{first:?}");

    let body = json!({"reports": [
        {"ballot_box_id": "B1", "city": "york", "votes": {"a": 10, "b": 3}},
        {"ballot_box_id": "OLD", "city": "york", "votes": {"a": 5}},
        {"ballot_box_id": "OLD", "city": "york", "votes": {"a": 6}},
        {"ballot_box_id": "B 2", "city": "york", "votes": {"a": 1}},
        {"ballot_box_id": "B3", "city": "york", "votes": {"a": 1}, "colour": "red"},
        "not a report",
        {"ballot_box_id": "B4", "city": "leeds", "votes": {"a": 4}},
        {"ballot_box_id": "B4", "city": "leeds", "votes": {"a": 7}, "revision": 2, "reason": "recount"},
        {"ballot_box_id": "OLD", "city": "leeds", "votes": {"a": 5}, "revision": 2, "reason": "moved"}
    ]});
    let answer = post_batch(&ingest, body.to_string()).await;
    assert_eq!(
        items(&answer),
        [
            (201, "counted".to_owned()),
            (200, "counted".to_owned()),
            (409, "conflict".to_owned()),
            (422, "invalid_report".to_owned()),
            (400, "bad_request".to_owned()),
            (400, "bad_request".to_owned()),
            (201, "counted".to_owned()),
            (201, "counted".to_owned()),
            (409, "conflict".to_owned()),
        ]
    );
    assert_eq!(
        [
            &answer.1["counted"],
            &answer.1["pending"],
            &answer.1["replayed"],
            &answer.1["refused"]
        ],
        [3, 0, 1, 5]
    );
    let results = answer.1["results"].as_array().unwrap();
    assert_eq!(results[0]["ballot_box_id"], "B1");
    assert_eq!(results[1]["report_id"], first.1["report_id"], "a replay");
    assert!(
        results[3]["message"]
            .as_str()
            .unwrap()
            .contains("ballot_box_id")
    );
    assert_eq!(results[7]["revision"], 2);
    // Revision 1 then 2 of B4 in one request: 7 for a, not 11.
    assert_eq!(ingest.national("a"), Some(5 + 10 + 7));
    assert_eq!(ingest.city("leeds", "a"), Some(7));
    assert_eq!(ingest.national("b"), Some(3));
    // The audit payload of an item is the item as posted.
    let mut conn = ingest.pool.get().unwrap();
    #[derive(diesel::QueryableByName)]
    struct Payload {
        #[diesel(sql_type = diesel::sql_types::Text)]
        payload: String,
    }
    let payload: Payload = diesel::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT payload::text AS payload FROM reports \
             WHERE election_id = $1 AND ballot_box_id = 'B1'",
        )
        .bind::<diesel::sql_types::Text, _>(ingest.election.as_str()),
        &mut conn,
    )
    .unwrap();
    let stored: Value = serde_json::from_str(&payload.payload).unwrap();
    assert_eq!(stored, body["reports"][0]);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_and_box_tokens_refuse_single_items() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let definition = Definition::from_toml(&format!(
        "id = \"{}\"\nname = \"Bulk\"\n[[parties]]\nid = \"a\"\nname = \"A\"\ncolour = \"#000000\"\n[[cities]]\nid = \"york\"\nname = \"York\"\nexpected_ballot_boxes = 3\n",
        ingest.election
    ))
    .unwrap();
    store_pg::definitions::load(&ingest.pool, &definition).unwrap();
    let (_, box_token) = issue_token(&ingest.pool, ingest.election.as_str(), Some("BB1"));
    let body = json!({"reports": [
        {"ballot_box_id": "BB1", "city": "york", "votes": {"a": 2}},
        {"ballot_box_id": "BB1", "city": "york", "votes": {"z": 2}, "revision": 2, "reason": "r"},
        {"ballot_box_id": "BB2", "city": "york", "votes": {"a": 2}}
    ]})
    .to_string();
    let election = ingest.election.to_string();
    let answer = post_batch_with(&ingest, &election, &box_token, "application/json", body).await;
    assert_eq!(
        items(&answer),
        [
            (201, "counted".to_owned()),
            (422, "invalid_report".to_owned()),
            (403, "forbidden".to_owned()),
        ]
    );
    assert_eq!(ingest.national("a"), Some(2));
    assert_eq!(ingest.national("z"), None);
    assert_eq!(ingest.rows().0, 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_problems_are_answered_alone_and_record_nothing() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let election = ingest.election.to_string();
    let one = r#"{"ballot_box_id":"B1","city":"york","votes":{"a":1}}"#;
    let good = format!(r#"{{"reports":[{one}]}}"#);
    for (body, fragment) in [
        ("[]".to_owned(), "expected {\"reports\""),
        (r#"{"reports": {}}"#.to_owned(), "expected {\"reports\""),
        (r#"{"reports": [], "x": 1}"#.to_owned(), "unknown field"),
        (r#"{"reports": []}"#.to_owned(), "`reports` is empty"),
        ("{\"reports\": [".to_owned(), "expected {\"reports\""),
    ] {
        let answer = post_batch(&ingest, body.clone()).await;
        assert_eq!(answer.0, 400, "{body}: {answer:?}");
        assert_eq!(answer.1["error"], "bad_request");
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{body}: {message}");
    }
    let many = format!(r#"{{"reports":[{}]}}"#, vec![one; 1001].join(","));
    let answer = post_batch(&ingest, many).await;
    assert_eq!(answer.0, 413, "{answer:?}");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("at most 1000")
    );
    // A body over 4 MiB is refused on its declared length, before it is
    // read. Sent by hand: headers and a first slice of the body, then the
    // answer read (a client writing all 4 MiB may meet the connection
    // closed after the 413 and see a broken pipe instead of the answer).
    let huge_length = 4 * 1024 * 1024 + 100;
    let mut socket =
        std::net::TcpStream::connect(ingest.base.trim_start_matches("http://")).unwrap();
    write!(
        socket,
        "POST /v1/elections/{election}/report-batches HTTP/1.1\r\nHost: ingest\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {huge_length}\r\n\r\n{{\"reports\":[",
        ingest.token
    )
    .unwrap();
    let (received, _) = read_to_close(socket, Duration::from_secs(10)).await;
    let received = String::from_utf8_lossy(&received);
    assert!(
        received.starts_with("HTTP/1.1 413"),
        "a body of {huge_length} bytes: {received}"
    );
    assert!(received.contains("payload_too_large"), "{received}");
    assert_eq!(
        post_batch_with(
            &ingest,
            &election,
            &ingest.token,
            "text/plain",
            good.clone()
        )
        .await
        .0,
        415
    );
    assert_eq!(
        post_batch_with(&ingest, &election, "nope", "application/json", good.clone())
            .await
            .0,
        401
    );
    let other = format!("{election}-other");
    assert_eq!(
        post_batch_with(&ingest, &other, &ingest.token, "application/json", good)
            .await
            .0,
        403
    );
    assert_eq!(ingest.rows(), (0, 0));
    assert_eq!(ingest.national("a"), None);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_posted_twice_at_once_counts_once() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let reports: Vec<Value> = (0..200)
        .map(|i| json!({"ballot_box_id": format!("B{i}"), "city": format!("c{}", i % 7), "votes": {"a": 1, "b": 2}}))
        .collect();
    let body = json!({ "reports": reports }).to_string();
    let (one, two) = tokio::join!(post_batch(&ingest, body.clone()), post_batch(&ingest, body));
    let mut statuses: Vec<u64> = items(&one).into_iter().map(|(s, _)| s).collect();
    statuses.extend(items(&two).into_iter().map(|(s, _)| s));
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 200);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 200);
    assert_eq!(ingest.national("a"), Some(200));
    assert_eq!(ingest.national("b"), Some(400));
    assert_eq!(ingest.rows().0, 200);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgresql_fails_the_whole_request_with_503() {
    let ingest = Ingest::with_dead_postgres("bulkdown").await;
    let answer = post_batch(
        &ingest,
        r#"{"reports":[{"ballot_box_id":"B1","city":"york","votes":{"a":1}},{"ballot_box_id":"B2","city":"york","votes":{"a":1}}]}"#.to_owned(),
    )
    .await;
    assert_eq!(answer.0, 503, "{answer:?}");
    assert_eq!(answer.1["error"], "unavailable");
    assert_eq!(ingest.national("a"), None);
    ingest.stop().await;
}

/// `election-loadgen --batch 25` against ingest: a night with re-posts and
/// corrections, sent 25 reports a request; every new revision counted and
/// the live totals exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loadgen_posts_a_night_in_batches_and_the_totals_match() {
    use election_loadgen::{Load, Plan, Progress, night, run};
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let plan = Plan {
        boxes: 300,
        cities: 7,
        parties: 3,
        duplicates: 0.1,
        revisions: 0.1,
        seed: 7,
    };
    let posts = std::sync::Arc::new(night(&plan));
    let load = Load {
        ingest_url: ingest.base.clone(),
        election: ingest.election.to_string(),
        token: ingest.token.clone(),
        concurrency: 4,
        rate: None,
        duration: None,
        spread: None,
        batch: 25,
    };
    let outcome = run(
        &load,
        posts.clone(),
        std::sync::Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(outcome.sent, posts.len());
    assert_eq!(outcome.transport_errors, 0);
    // Every box counted at least once; re-posts are replays, or conflicts
    // when one lands after its box's correction (an older revision: four
    // requests are in flight at once, so a correction may overtake).
    assert!(
        outcome.statuses.get(&201).copied().unwrap_or(0) >= plan.boxes,
        "{:?}",
        outcome.statuses
    );
    assert!(
        outcome.statuses.keys().all(|s| [200, 201, 409].contains(s)),
        "{:?}",
        outcome.statuses
    );
    assert!(
        outcome.statuses.get(&200).copied().unwrap_or(0) > 0,
        "re-posts are replays"
    );
    for (party, expected) in outcome.expected_national() {
        assert_eq!(ingest.national(&party), Some(expected), "{party}");
    }
    ingest.stop().await;
}

/// A batch takes one report of the token's allowance per item: with a burst
/// of 2, two one-item batches pass and the third is 429 (a one-item batch
/// costs what a single post does, not two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_costs_one_report_of_the_allowance_per_item() {
    let mut settings = crate::harness::settings();
    settings.rate_limit = Some(election_ingest::limit::RateLimit {
        per_second: 0.01,
        burst: 2,
    });
    let ingest = Ingest::start_with(RedisChoice::Standalone, settings).await;
    let one = |b: &str| {
        format!(r#"{{"reports":[{{"ballot_box_id":"{b}","city":"york","votes":{{"a":1}}}}]}}"#)
    };
    assert_eq!(post_batch(&ingest, one("B1")).await.0, 200);
    assert_eq!(post_batch(&ingest, one("B2")).await.0, 200);
    let limited = post_batch(&ingest, one("B3")).await;
    assert_eq!(limited.0, 429, "{limited:?}");
    assert_eq!(limited.1["error"], "rate_limited");
    assert_eq!(ingest.national("a"), Some(2));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_never_compressed_even_when_the_client_asks() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let reports: Vec<Value> = (0..30)
        .map(|n| json!({"ballot_box_id": format!("GZ-{n}"), "city": "york", "votes": {"a": n}}))
        .collect();
    // What Python's `requests` sends unasked: ingest's CPU is worth more
    // than the bytes (election_http::layers, "Compression").
    let response = ingest
        .client
        .post(batch_url(&ingest, ingest.election.as_str()))
        .bearer_auth(&ingest.token)
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .body(json!({ "reports": reports }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    let body = response.bytes().await.unwrap();
    assert!(
        body.len() >= usize::from(election_http::layers::COMPRESS_FROM),
        "{} bytes: too small to tell",
        body.len()
    );
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let states: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 30);
    assert!(states.iter().all(|s| *s == "counted"), "{answer}");
}
