//! Live totals through HTTP: the seed's numbers on every live endpoint, the
//! stream (a snapshot, then deltas; `Last-Event-ID` bridged from the kept
//! deltas or answered with a snapshot; `?scope=national` and `?city=C`), and
//! the error answers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use election_test_support::logs::check_error;

use crate::harness::{Events, SseEvent, Stack, open_stream, open_stream_at};

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
    assert_eq!(event.event, "snapshot");
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

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|error| panic!("event data is not JSON ({error}): {event:?}"))
}

fn id(event: &SseEvent) -> u64 {
    event
        .id
        .parse()
        .unwrap_or_else(|error| panic!("event id is not a number ({error}): {event:?}"))
}

/// The city ids of a delta's `cities`.
fn cities_of(data: &Value) -> Vec<String> {
    data["cities"]
        .as_array()
        .unwrap_or_else(|| panic!("no cities in {data}"))
        .iter()
        .map(|c| c["city"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads deltas until `done` holds for one; every delta must follow the
/// previous event (`previous` is the id before it) and touch only `cities`.
/// Returns the deltas read.
async fn deltas_until(
    events: &mut Events,
    mut has: u64,
    cities: &[&str],
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<(SseEvent, Value)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events.next_within(left).await;
        assert_eq!(event.event, "delta", "{event:?}");
        let data = data(&event);
        assert_eq!(data["version"].to_string(), event.id);
        assert_eq!(data["previous"], has, "a delta out of step: {data}");
        assert!(id(&event) > has, "ids increase: {has} then {}", event.id);
        for city in cities_of(&data) {
            assert!(
                cities.contains(&city.as_str()),
                "a delta names {city}, which did not change: {data}"
            );
        }
        assert!(data.get("removed_cities").is_none(), "{data}");
        has = id(&event);
        let finished = done(&data);
        seen.push((event, data));
        if finished {
            return seen;
        }
    }
}

/// Reads deltas until `done` holds for one (each must be a delta), and
/// returns that one.
async fn delta_until(
    events: &mut Events,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (SseEvent, Value) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events.next_within(left).await;
        assert_eq!(event.event, "delta", "{event:?}");
        let data = data(&event);
        if done(&data) {
            return (event, data);
        }
    }
}

/// Nothing arrives within `within`.
async fn quiet(events: &mut Events, within: Duration) {
    let nothing = tokio::time::timeout(within, events.next()).await;
    assert!(nothing.is_err(), "sent something: {nothing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_a_snapshot_then_deltas_and_bridges_last_event_id() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;

    // On connect: the whole state, once.
    let mut events = open_stream(&stack, None).await;
    let first = events.next_within(Duration::from_secs(5)).await;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.retry.as_deref(), Some("2000"));
    let first_data = data(&first);
    assert_eq!(first_data["version"].to_string(), first.id);
    assert_eq!(first_data["national"]["total_votes"], 840);
    assert_eq!(
        cities_of(&first_data),
        ["edinburgh", "london", "manchester"]
    );

    // A new report in London reaches the open stream within one second of
    // its 201, as deltas naming London only. (The box's entry in the
    // reported set is another key than its counters: one refresh may see
    // the votes a tick before the box, hence possibly two deltas.)
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 7, "green": 3}}"#)
        .await;
    assert_eq!(status, 201);
    let posted = Instant::now();
    let deltas = deltas_until(
        &mut events,
        id(&first),
        &["london"],
        Duration::from_secs(1),
        |data| data["national"]["total_votes"] == 850,
    )
    .await;
    assert!(posted.elapsed() < Duration::from_secs(1));
    let (_, votes) = deltas.last().unwrap();
    assert_eq!(votes["national"]["parties"]["green"], 3);
    assert_eq!(votes["cities"][0]["parties"]["green"], 3);
    assert_eq!(votes["cities"][0]["total_votes"], 385 + 10);
    let mut latest = deltas.last().unwrap().0.clone();
    if votes["national"]["ballot_boxes_reported"] != 4 {
        let more = deltas_until(
            &mut events,
            id(&latest),
            &["london"],
            Duration::from_secs(2),
            |data| data["national"]["ballot_boxes_reported"] == 4,
        )
        .await;
        latest = more.last().unwrap().0.clone();
    }
    drop(events);

    // Reconnecting with the first id: only the deltas it missed, no
    // snapshot, ending at the newest version.
    let mut events = open_stream(&stack, Some(&first.id)).await;
    let missed = deltas_until(
        &mut events,
        id(&first),
        &["london"],
        Duration::from_secs(2),
        |data| data["version"] == id(&latest),
    )
    .await;
    assert_eq!(missed[0].0.retry.as_deref(), Some("2000"));
    quiet(&mut events, Duration::from_millis(500)).await;
    drop(events);

    // Reconnecting with the newest id: nothing is re-sent; the next change
    // is, as a delta naming Manchester only.
    let mut events = open_stream(&stack, Some(&latest.id)).await;
    quiet(&mut events, Duration::from_millis(500)).await;
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-MAN-2", "city": "manchester", "votes": {"labour": 10}}"#)
        .await;
    assert_eq!(status, 201);
    deltas_until(
        &mut events,
        id(&latest),
        &["manchester"],
        Duration::from_secs(2),
        |data| data["national"]["total_votes"] == 860,
    )
    .await;
    drop(events);

    // An id the service never gave (made up, or from another process) or
    // no number at all: a snapshot.
    for unknown in ["12345", "not-a-version", "99999999999999"] {
        let mut events = open_stream(&stack, Some(unknown)).await;
        let event = events.next_within(Duration::from_secs(2)).await;
        assert_eq!(event.event, "snapshot", "Last-Event-ID {unknown}");
        let snapshot = data(&event);
        assert_eq!(snapshot["national"]["total_votes"], 860);
        assert_eq!(cities_of(&snapshot).len(), 3);
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_older_than_the_kept_deltas_gets_a_snapshot() {
    let settings = election_query::Settings {
        stream_history: 2,
        ..crate::harness::query_settings()
    };
    let stack = Stack::start_with(settings).await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let mut events = open_stream(&stack, None).await;
    let first = events.next_within(Duration::from_secs(5)).await;
    assert_eq!(first.event, "snapshot");

    // Three changes, each seen before the next: at least three versions.
    let mut ids = vec![first.id.clone()];
    let mut total = 840;
    for (index, city) in ["york", "leeds", "bath"].iter().enumerate() {
        let (status, _) = stack
            .post(&format!(
                r#"{{"ballot_box_id": "BB-{index}", "city": "{city}", "votes": {{"labour": 1}}}}"#
            ))
            .await;
        assert_eq!(status, 201);
        total += 1;
        let seen = deltas_until(
            &mut events,
            ids.last().unwrap().parse().unwrap(),
            &[city],
            Duration::from_secs(5),
            |data| data["national"]["total_votes"] == total,
        )
        .await;
        ids.extend(seen.iter().map(|(event, _)| event.id.clone()));
    }
    drop(events);

    // The first id is more than two versions behind: a snapshot.
    let mut events = open_stream(&stack, Some(&first.id)).await;
    let event = events.next_within(Duration::from_secs(2)).await;
    assert_eq!(event.event, "snapshot");
    assert_eq!(data(&event)["national"]["total_votes"], total);
    drop(events);

    // The one before the newest is within them: one delta.
    let before_last = &ids[ids.len() - 2];
    let mut events = open_stream(&stack, Some(before_last)).await;
    let event = events.next_within(Duration::from_secs(2)).await;
    assert_eq!(event.event, "delta");
    assert_eq!(event.id, *ids.last().unwrap());
    assert_eq!(data(&event)["previous"].to_string(), *before_last);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_streams_carry_only_their_scope() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;

    let mut national = open_stream_at(&stack, "/stream?scope=national", None).await;
    let snapshot = national.next_within(Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    let body = data(&snapshot);
    assert_eq!(body["national"]["parties"], seed_national());
    assert!(body.get("cities").is_none(), "{body}");
    assert!(body.get("city").is_none(), "{body}");

    let mut london = open_stream_at(&stack, "/stream?city=london", None).await;
    let snapshot = london.next_within(Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    let body = data(&snapshot);
    assert_eq!(body["city"]["city"], "london");
    assert_eq!(body["city"]["total_votes"], 385);
    assert!(body.get("national").is_none(), "{body}");
    assert!(body.get("cities").is_none(), "{body}");
    let london_has = id(&snapshot);

    // A city with no report yet: `city` is null until it reports.
    let mut paris = open_stream_at(&stack, "/stream?city=paris", None).await;
    let snapshot = paris.next_within(Duration::from_secs(5)).await;
    assert_eq!(data(&snapshot)["city"], Value::Null);

    // Manchester reports: national subscribers get the new totals, London's
    // and Paris's nothing.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-MAN-2", "city": "manchester", "votes": {"labour": 10}}"#)
        .await;
    assert_eq!(status, 201);
    let (_, body) = delta_until(&mut national, Duration::from_secs(2), |data| {
        assert!(data.get("cities").is_none(), "{data}");
        data["national"]["total_votes"] == 850
    })
    .await;
    assert_eq!(body["national"]["parties"]["labour"], 440);
    quiet(&mut london, Duration::from_millis(600)).await;
    quiet(&mut paris, Duration::from_millis(100)).await;

    // Paris reports: its page gets its first totals, London's still nothing.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-PAR-1", "city": "paris", "votes": {"labour": 4}}"#)
        .await;
    assert_eq!(status, 201);
    let (_, body) = delta_until(&mut paris, Duration::from_secs(2), |data| {
        assert!(data.get("national").is_none(), "{data}");
        data["city"]["total_votes"] == 4
    })
    .await;
    assert_eq!(body["city"]["city"], "paris");
    quiet(&mut london, Duration::from_millis(300)).await;

    // London reports: its delta carries London alone.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 1}}"#)
        .await;
    assert_eq!(status, 201);
    let (delta, body) = delta_until(&mut london, Duration::from_secs(2), |data| {
        assert!(data.get("national").is_none(), "{data}");
        assert_eq!(data["city"]["city"], "london", "{data}");
        data["city"]["parties"]["labour"] == 201
    })
    .await;
    assert_eq!(body["city"]["total_votes"], 386);
    assert!(id(&delta) > london_has);
    stack.stop().await;
}

/// `?_=` (the cache-buster jQuery's `cache: false` appends) is ignored by
/// every endpoint; any other parameter an endpoint does not take is still
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_buster_is_ignored_and_only_it() {
    let stack = Stack::start().await;
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LON-1", "city": "london", "votes": {"labour": 4}}"#)
        .await;
    assert_eq!(status, 201);
    stack.wait_for_total(4, Duration::from_secs(5)).await;
    let totals = stack.get("/totals").await;
    let cities = stack.get("/cities").await;
    assert_eq!(totals.0, 200, "{totals:?}");
    assert_eq!(stack.get("/totals?_=1764680000000").await, totals);
    assert_eq!(stack.get("/cities?_=1&_=2").await, cities);
    assert_eq!(stack.get("/cities/london/totals?_=").await.0, 200);
    assert_eq!(stack.get("/timeline?_=1").await.0, 200);
    assert_eq!(stack.get("/results.cdf.json?_=1").await.0, 200);
    assert_eq!(stack.get("?_=1").await.0, 200);
    check_error(
        &stack.get("/totals?_=1&t=2").await,
        400,
        "invalid_parameter",
        "unknown query parameter \"t\"",
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_scope_or_city_is_a_400_naming_the_parameter() {
    let stack = Stack::start().await;
    for (query, fragment) in [
        ("?scope=cities", "scope: \"cities\" is not a scope"),
        ("?city=Paris", "city: \"Paris\" must be"),
        ("?city=", "city: is empty"),
        (
            "?scope=national&city=london",
            "scope and city cannot be given together",
        ),
        (
            "?scope=national&scope=all",
            "\"scope\" is given more than once",
        ),
        ("?cty=london", "unknown query parameter \"cty\""),
    ] {
        check_error(
            &stack.get(&format!("/stream{query}")).await,
            400,
            "invalid_parameter",
            fragment,
        );
    }
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
    // three round trips to Redis (the change journal's position, the index
    // sets, then the counters).
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(stack.query_tally.round_trips() - before, 3);
    let (_, national) = stack.get("/totals").await;
    assert_eq!(national["total_votes"], 840);
    assert_eq!(stack.query_tally.round_trips() - before, 3);
    stack.stop().await;
}

/// The query service's `/metrics` text.
async fn metrics_text(stack: &Stack) -> String {
    let (status, text) =
        crate::harness::get(&stack.client, &format!("{}/metrics", stack.query.base)).await;
    assert_eq!(status, 200, "{text}");
    text.as_str().expect("metrics are text").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_streams() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let mut events = open_stream(&stack, None).await;
    events.next_within(Duration::from_secs(5)).await;
    let text = metrics_text(&stack).await;
    assert!(
        text.contains(
            "query_requests_total{route=\"/v1/elections/{election}/totals\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("query_stream_subscribers 1"), "{text}");
    // The test's client asks for no encoding.
    assert!(
        text.contains("query_streams_opened_total{encoding=\"identity\"} 1"),
        "{text}"
    );
    assert!(text.contains("query_live_elections 1"), "{text}");
    assert!(
        text.contains("query_snapshot_refresh_seconds_count"),
        "{text}"
    );
    // A revision in a known city: the change journal names London, and a
    // refresh reads only its row (no full read is due for 500 ms).
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-LON-1", "city": "london", "revision": 2, "reason": "recount", "votes": {"tories": 120, "labour": 210, "libdems": 45, "reform": 20}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    stack.wait_for_total(850, Duration::from_secs(10)).await;
    let text = metrics_text(&stack).await;
    let partial: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("query_partial_refresh_seconds_count "))
        .unwrap_or_else(|| panic!("no partial refresh counted: {text}"))
        .parse()
        .unwrap();
    assert!(partial >= 1.0, "{text}");
    drop(events);
    let (status, _) =
        crate::harness::get(&stack.client, &format!("{}/readyz", stack.query.base)).await;
    assert_eq!(status, 200);
    stack.stop().await;
}
