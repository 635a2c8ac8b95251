//! Live totals through HTTP: the seed's numbers on every live endpoint, the
//! stream, and the error answers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Stack, open_stream};

#[track_caller]
fn check_error(answer: &(u16, Value), status: u16, code: &str, fragment: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["error"], code, "{answer:?}");
    let message = answer.1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "message {message:?} should contain {fragment:?}"
    );
}

fn seed_national() -> Value {
    json!({"tories": 260, "labour": 430, "libdems": 115, "reform": 35})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_gives_the_seed_numbers_on_every_live_endpoint() {
    let stack = Stack::start().await;
    // Before anything is reported (and undefined): no such election.
    let (status, unknown) = stack.get("/totals").await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["error"], "unknown_election", "{unknown}");

    stack.post_seed().await;
    let national = stack.wait_for_total(840, Duration::from_secs(10)).await;
    assert_eq!(national["election"], stack.election.as_str());
    assert_eq!(national["scope"], "national");
    assert_eq!(national["parties"], seed_national());
    assert_eq!(
        national["leader"],
        json!({"party": "labour", "votes": 430, "margin": 170})
    );
    assert_eq!(national["tied"], json!([]));
    assert_eq!(national["ballot_boxes_reported"], 3);
    let as_of = national["as_of"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(as_of).unwrap();

    let (status, london) = stack.get("/cities/london/totals").await;
    assert_eq!(status, 200, "{london}");
    assert_eq!(london["scope"], "city");
    assert_eq!(london["city"], "london");
    assert_eq!(
        london["parties"],
        json!({"tories": 120, "labour": 200, "libdems": 45, "reform": 20})
    );
    assert_eq!(london["total_votes"], 385);
    assert_eq!(
        london["leader"],
        json!({"party": "labour", "votes": 200, "margin": 80})
    );
    assert_eq!(london["ballot_boxes_reported"], 1);

    let (status, cities) = stack.get("/cities").await;
    assert_eq!(status, 200, "{cities}");
    let names: Vec<&str> = cities["cities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["city"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["edinburgh", "london", "manchester"]);
    let manchester = &cities["cities"][2];
    assert_eq!(manchester["total_votes"], 280);
    assert_eq!(manchester["parties"]["labour"], 150);
    assert_eq!(manchester["leader"]["margin"], 60);
    assert_eq!(manchester["ballot_boxes_reported"], 1);
    assert_eq!(cities["cities"][0]["parties"]["reform"], 5);

    // The stream's first event carries the same state.
    let mut events = open_stream(&stack, None).await;
    let event = events.next_within(Duration::from_secs(5)).await;
    assert_eq!(event.event, "totals");
    assert_eq!(event.retry.as_deref(), Some("2000"));
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["national"]["parties"], seed_national());
    assert_eq!(data["national"]["leader"]["margin"], 170);
    assert_eq!(data["national"]["ballot_boxes_reported"], 3);
    assert_eq!(data["cities"][1]["city"], "london");
    assert_eq!(data["cities"][1]["parties"]["labour"], 200);
    assert_eq!(data["version"].to_string(), event.id);

    // A correction moves every scope by its difference.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LON-1", "city": "london", "revision": 2, "reason": "recount", "votes": {"tories": 125, "labour": 200, "libdems": 45}}"#)
        .await;
    assert_eq!(status, 201);
    let national = stack
        .wait_for_total(840 + 5 - 20, Duration::from_secs(10))
        .await;
    assert_eq!(national["parties"]["reform"], 15);
    assert_eq!(national["parties"]["tories"], 265);
    assert_eq!(national["ballot_boxes_reported"], 3);
    let (_, london) = stack.get("/cities/london/totals").await;
    assert_eq!(london["parties"]["reform"], 0);
    assert_eq!(london["total_votes"], 370);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_have_no_leader_and_list_the_tied_parties() {
    let stack = Stack::start().await;
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "T1", "city": "york", "votes": {"tories": 50, "labour": 50, "green": 10}}"#)
        .await;
    assert_eq!(status, 201);
    let national = stack.wait_for_total(110, Duration::from_secs(10)).await;
    assert_eq!(national["leader"], Value::Null);
    assert_eq!(national["tied"], json!(["labour", "tories"]));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cities_are_404_and_invalid_ids_422() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    check_error(
        &stack.get("/cities/paris/totals").await,
        404,
        "not_found",
        "no ballot box of city \"paris\"",
    );
    check_error(
        &stack.get("/cities/Paris/totals").await,
        422,
        "invalid_id",
        "city: \"Paris\" must be 1 to 64 characters",
    );
    let base = &stack.query.base;
    for path in [
        "/v1/elections/UK_2025/totals",
        "/v1/elections/UK_2025/cities",
        "/v1/elections/UK_2025/stream",
        "/v1/elections/UK_2025/cities/london/totals",
        "/v1/elections/UK_2025/analytics/cities",
        "/v1/elections/UK_2025/analytics/first-reports",
        "/v1/elections/UK_2025/timeline",
        "/v1/elections/UK_2025/reports.csv",
    ] {
        check_error(
            &crate::harness::get(&stack.client, &format!("{base}{path}")).await,
            422,
            "invalid_id",
            "election: \"UK_2025\" must be",
        );
    }
    check_error(
        &crate::harness::get(&stack.client, &format!("{base}/v2/nothing")).await,
        404,
        "not_found",
        "no such endpoint",
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_carries_a_new_report_within_a_second_and_honours_last_event_id() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;

    let mut events = open_stream(&stack, None).await;
    let first = events.next_within(Duration::from_secs(5)).await;
    let first_data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(first_data["national"]["total_votes"], 840);

    // A new report reaches the open stream within one second of its 201.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 7, "green": 3}}"#)
        .await;
    assert_eq!(status, 201);
    let posted = Instant::now();
    let deadline = posted + Duration::from_secs(1);
    let update = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events.next_within(left).await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        if data["national"]["total_votes"] == 850 {
            break (event, data);
        }
    };
    assert!(posted.elapsed() < Duration::from_secs(1));
    let (event, data) = update;
    assert!(
        event.id.parse::<u64>().unwrap() > first.id.parse::<u64>().unwrap(),
        "ids increase: {} then {}",
        first.id,
        event.id
    );
    assert_eq!(data["national"]["parties"]["green"], 3);
    assert_eq!(data["national"]["ballot_boxes_reported"], 4);
    let london = data["cities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["city"] == "london")
        .unwrap();
    assert_eq!(london["ballot_boxes_reported"], 2);
    drop(events);

    // Reconnecting with an old Last-Event-ID: the newest state at once.
    let mut events = open_stream(&stack, Some(&first.id)).await;
    let again = events.next_within(Duration::from_secs(2)).await;
    assert_eq!(again.id, event.id);
    let data: Value = serde_json::from_str(&again.data).unwrap();
    assert_eq!(data["national"]["total_votes"], 850);
    drop(events);

    // Reconnecting with the newest id: nothing is re-sent; the next change is.
    let mut events = open_stream(&stack, Some(&event.id)).await;
    let nothing = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(
        nothing.is_err(),
        "re-sent a state the client has: {nothing:?}"
    );
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-MAN-2", "city": "manchester", "votes": {"labour": 10}}"#)
        .await;
    assert_eq!(status, 201);
    let next = events.next_within(Duration::from_secs(2)).await;
    let data: Value = serde_json::from_str(&next.data).unwrap();
    assert_eq!(data["national"]["total_votes"], 860);
    assert!(next.id.parse::<u64>().unwrap() > event.id.parse::<u64>().unwrap());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_share_one_snapshot() {
    // One snapshot an hour: whatever the readers do, Redis is read once.
    let settings = election_query::Settings {
        snapshot_interval: Duration::from_secs(3600),
        ..crate::harness::query_settings()
    };
    let stack = Stack::start_with(settings).await;
    stack.post_seed().await;
    let before = stack.query_tally.round_trips();
    let mut readers = Vec::new();
    for index in 0..200 {
        let client = stack.client.clone();
        let url = stack.url(if index % 2 == 0 { "/totals" } else { "/cities" });
        readers.push(tokio::spawn(async move {
            crate::harness::get(&client, &url).await
        }));
    }
    let mut versions = std::collections::BTreeSet::new();
    for reader in readers {
        let (status, body) = reader.await.unwrap();
        assert_eq!(status, 200, "{body}");
        versions.insert(body["as_of"].as_str().unwrap().to_owned());
    }
    // 200 first-time readers waited for, and got, the same single snapshot:
    // two round trips to Redis (the index sets, then the counters).
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(stack.query_tally.round_trips() - before, 2);
    let (_, national) = stack.get("/totals").await;
    assert_eq!(national["total_votes"], 840);
    assert_eq!(stack.query_tally.round_trips() - before, 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_streams() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let mut events = open_stream(&stack, None).await;
    events.next_within(Duration::from_secs(5)).await;
    let text = stack
        .client
        .get(format!("{}/metrics", stack.query.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "query_requests_total{route=\"/v1/elections/{election}/totals\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("query_stream_subscribers 1"), "{text}");
    assert!(text.contains("query_live_elections 1"), "{text}");
    assert!(
        text.contains("query_snapshot_refresh_seconds_count"),
        "{text}"
    );
    drop(events);
    let (status, _) =
        crate::harness::get(&stack.client, &format!("{}/readyz", stack.query.base)).await;
    assert_eq!(status, 200);
    stack.stop().await;
}
