//! HTTP as CDNs, browsers and newsrooms expect it (issue #15), on the real
//! query service: elections that do not exist are 404 and take no live
//! capacity, `GET /v1/elections`, validators and 304, `Cache-Control`,
//! compression, CORS, JSON 404/405, request ids, and the CSV export's
//! neutralised formulas and `?after=`.

use std::io::Read as _;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Stack, query_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_elections_are_404_and_take_no_capacity_from_real_ones() {
    let mut settings = query_settings();
    settings.max_elections = 2;
    let stack = Stack::start_with(settings).await;
    stack.post_seed().await;
    // Many made-up ids, on every kind of endpoint: 404, never 503.
    for index in 0..40 {
        let path = ["totals", "cities", "stream", "timeline"][index % 4];
        let url = format!("{}/v1/elections/made-up-{index}/{path}", stack.query.base);
        let (status, body) = crate::harness::get(&stack.client, &url).await;
        assert_eq!(status, 404, "{url}: {body}");
        assert_eq!(body["error"], "unknown_election", "{url}: {body}");
    }
    // The real election is served, and is the only one watched.
    let totals = stack.wait_for_total(840, Duration::from_secs(10)).await;
    assert_eq!(totals["ballot_boxes_reported"], 3);
    let (_, metrics) =
        crate::harness::get(&stack.client, &format!("{}/metrics", stack.query.base)).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("\nquery_live_elections 1\n"),
        "made-up ids started feeds: {metrics}"
    );

    // The list: the election, its boxes and last report; no made-up id.
    let (status, list) =
        crate::harness::get(&stack.client, &format!("{}/v1/elections", stack.query.base)).await;
    assert_eq!(status, 200, "{list}");
    let elections = list["elections"].as_array().unwrap();
    let ours = elections
        .iter()
        .find(|e| e["election"] == stack.election.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(ours["defined"], false);
    assert_eq!(ours["name"], Value::Null);
    assert_eq!(ours["ballot_boxes_reported"], 3);
    chrono::DateTime::parse_from_rfc3339(ours["last_report_at"].as_str().unwrap()).unwrap();
    assert!(
        elections
            .iter()
            .all(|e| !e["election"].as_str().unwrap().starts_with("made-up")),
        "{list}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_revalidate_with_their_etag_until_a_number_changes() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let first = stack.client.get(stack.url("/totals")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let headers = first.headers().clone();
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
    assert_eq!(headers["cache-control"], "public, max-age=1");
    let last_modified = headers["last-modified"].to_str().unwrap();
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");

    // Refreshes move `as_of` but not the version: still 304, empty.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = stack
        .client
        .get(stack.url("/totals"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(again.headers()["cache-control"], "public, max-age=1");
    assert!(again.text().await.unwrap().is_empty());

    // A new report: a new version, so the old tag gets the new body.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-YORK-1", "city": "york", "votes": {"labour": 10}}"#)
        .await;
    assert_eq!(status, 201);
    stack.wait_for_total(850, Duration::from_secs(10)).await;
    let changed = stack
        .client
        .get(stack.url("/totals"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["total_votes"], 850);

    // History answers: the longer max-age, no validators.
    for path in ["/timeline", "/analytics/cities", "/reports.csv"] {
        let response = stack.client.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=10",
            "{path}"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_csv_and_the_stream_are_compressed_on_request() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let asking = |path: &str, encoding: &str| {
        stack
            .client
            .get(stack.url(path))
            .header("accept-encoding", encoding)
            .send()
    };
    for path in ["/cities", "/reports.csv"] {
        let plain = stack.client.get(stack.url(path)).send().await.unwrap();
        assert!(plain.headers().get("content-encoding").is_none(), "{path}");
        let plain = plain.bytes().await.unwrap();
        for encoding in ["gzip", "br"] {
            let response = asking(path, encoding).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(response.headers()["content-encoding"], encoding, "{path}");
            assert!(
                response.headers()["vary"]
                    .to_str()
                    .unwrap()
                    .to_ascii_lowercase()
                    .contains("accept-encoding"),
                "{path}"
            );
            let length = response.headers().get("content-length").cloned();
            let body = response.bytes().await.unwrap();
            assert_ne!(body, plain, "{path} {encoding}: not compressed");
            if encoding == "gzip" {
                assert_eq!(&body[..2], &[0x1f, 0x8b], "{path}: not gzip");
            }
            if path == "/cities" {
                // The version's copy, compressed once, not by the layer
                // (which streams, without a length): it decodes to the list,
                // and the next answer of the version is the same bytes.
                assert_eq!(
                    length.map(|v| v.to_str().unwrap().to_owned()),
                    Some(body.len().to_string()),
                    "{encoding}"
                );
                let mut decoded = Vec::new();
                match encoding {
                    "gzip" => flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut decoded)
                        .unwrap(),
                    _ => brotli::Decompressor::new(&body[..], 4096)
                        .read_to_end(&mut decoded)
                        .unwrap(),
                };
                let decoded: Value = serde_json::from_slice(&decoded).unwrap();
                let listed: Value = serde_json::from_slice(&plain).unwrap();
                assert_eq!(decoded["cities"], listed["cities"], "{encoding}");
                let again = asking(path, encoding).await.unwrap().bytes().await.unwrap();
                assert_eq!(again, body, "{encoding}: compressed again");
            }
        }
    }
    // The national totals (~430 bytes) are below the threshold: a
    // compressor's start would cost more than the bytes it saves.
    let small = asking("/totals", "gzip, deflate, br").await.unwrap();
    assert_eq!(small.status(), 200);
    assert!(small.headers().get("content-encoding").is_none());
    let small = small.bytes().await.unwrap();
    assert!(
        small.len() < usize::from(election_http::layers::COMPRESS_FROM),
        "{} bytes",
        small.len()
    );
    serde_json::from_slice::<Value>(&small).unwrap();
    // The stream: plain unless gzip is acceptable (its one encoding).
    for refused in ["br", "gzip;q=0, br", "identity"] {
        let stream = asking("/stream", refused).await.unwrap();
        assert_eq!(stream.status(), 200, "{refused}");
        assert!(
            stream.headers().get("content-encoding").is_none(),
            "{refused}"
        );
        let mut events = crate::harness::Events::new(stream);
        let first = events.next_within(Duration::from_secs(10)).await;
        assert_eq!(first.event, "snapshot", "{refused}");
    }
    // Asked as browsers ask, gzip: every event whole as soon as it arrives,
    // and, when the service stops, a whole gzip member whose trailer checks.
    let stream = asking("/stream", "gzip, deflate, br, zstd").await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-encoding"], "gzip");
    assert!(
        stream.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("accept-encoding")
    );
    let mut events = crate::harness::Events::new(stream);
    let first = events.next_within(Duration::from_secs(10)).await;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.retry.as_deref(), Some("2000"));
    let snapshot: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snapshot["national"]["total_votes"], 840);
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LON-9", "city": "london", "votes": {"labour": 7, "green": 3}}"#)
        .await;
    assert_eq!(status, 201);
    let mut seen = vec![first];
    loop {
        let event = events.next_within(Duration::from_secs(10)).await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(event.event, "delta");
        let done = data["national"]["total_votes"] == 850;
        seen.push(event);
        if done {
            break;
        }
    }
    let raw_before_stop = events.raw().len();
    assert!(raw_before_stop > 10);
    stack.stop().await;
    assert!(events.next().await.is_none(), "an event after the stop");
    let raw = events.raw();
    assert!(raw.len() > raw_before_stop, "no trailer after the stop");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(raw)
        .read_to_string(&mut plain)
        .expect("a whole gzip member with a true CRC and length");
    let ids: Vec<&str> = plain
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .collect();
    let expected: Vec<&str> = seen.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids, expected);
    assert!(plain.starts_with("retry: 2000\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_errors_and_request_ids() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let client = &stack.client;

    // A preflight for a revalidating GET from a news site.
    let preflight = client
        .request(reqwest::Method::OPTIONS, stack.url("/totals"))
        .header("origin", "https://news.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "if-none-match")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("if-none-match"),
        "{headers:?}"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    // The real request: the ETag may be read by the page.
    let response = client
        .get(stack.url("/totals"))
        .header("origin", "https://news.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    // The same answer for every origin: nothing for a cache to vary on but
    // the encoding (the CDN test in proxy.rs shows what `Vary: Origin` cost).
    assert!(
        response.headers().get_all("vary").iter().all(|v| !v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")),
        "{:?}",
        response.headers()
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("etag")
    );

    // Unknown routes and methods: JSON, 405 with Allow.
    let (status, body) =
        crate::harness::get(client, &format!("{}/v2/nothing", stack.query.base)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let response = client.delete(stack.url("/totals")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("DELETE"),
        "{body}"
    );

    // Request ids: kept, generated, or replaced when they are not ids.
    let kept = client
        .get(stack.url("/totals"))
        .header("x-request-id", "cdn-1234:abc")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "cdn-1234:abc");
    for sent in [None, Some("not an id; {}"), Some(&*"x".repeat(200))] {
        let mut request = client.get(stack.url("/totals"));
        if let Some(sent) = sent {
            request = request.header("x-request-id", sent);
        }
        let response = request.send().await.unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "{sent:?} gave {id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
    }
    // Errors carry one too.
    let missing = client
        .get(format!("{}/nope", stack.query.base))
        .send()
        .await
        .unwrap();
    assert!(missing.headers().contains_key("x-request-id"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_neutralises_formulas_and_resumes_after_a_report_id() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    let formula = "=HYPERLINK(\"http://evil.example\",\"recount\")";
    let body = serde_json::json!({
        "ballot_box_id": "BB-LON-1", "city": "london", "revision": 2,
        "reason": formula,
        "votes": {"tories": 121, "labour": 200, "libdems": 45, "reform": 20}
    });
    let (status, answer) = stack.post(&body.to_string()).await;
    assert_eq!(status, 201, "{answer}");
    let correction = answer["report_id"].as_i64().unwrap();
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-MAN-1", "city": "manchester", "revision": 2, "reason": "-1 for a spoilt ballot", "votes": {"tories": 90, "labour": 149, "libdems": 30, "reform": 10}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    let last = answer["report_id"].as_i64().unwrap();

    let csv = |query: &str| {
        let url = stack.url(&format!("/reports.csv{query}"));
        let client = stack.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, all) = csv("").await;
    assert_eq!(status, 200);
    // Quoted (it holds a comma and quotes), with the leading quote inside.
    assert!(
        all.contains(",\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"recount\"\")\","),
        "{all}"
    );
    assert!(all.contains(",'-1 for a spoilt ballot,"), "{all}");
    assert!(!all.contains(",=HYPERLINK"), "{all}");
    // A negative difference stays a number.
    assert!(all.contains(",149,-1,"), "{all}");

    // Only what came after the correction: the Manchester revision.
    let (status, after) = csv(&format!("?after={correction}")).await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = after.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{after}");
    assert!(
        rows.iter().all(|row| row.starts_with(&format!("{last},"))),
        "{after}"
    );
    assert_eq!(after.lines().next(), all.lines().next());
    let (_, nothing) = csv(&format!("?after={last}")).await;
    assert_eq!(nothing, election_query::analytics::CSV_HEADER);
    for bad in ["?after=-1", "?after=x", "?after=1&after=2"] {
        let (status, body) = csv(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("invalid_parameter"), "{bad}: {body}");
    }
    stack.stop().await;
}

/// Every kind of error answer, on every route that can give one, says
/// `Cache-Control: no-store`: a CDN keeping errors the origin says nothing
/// about would otherwise serve a stale 404 or 400 (the proxy test shows one
/// served from nginx's cache before this was so).
#[tokio::test]
async fn error_answers_on_every_route_are_never_stored() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let base = &stack.query.base;
    let e = stack.election.as_str();
    let wrong = [
        format!("{base}/v1/nothing"),
        format!("{base}/v1/elections/Not%20an%20id/totals"),
        format!("{base}/v1/elections/never-{e}/totals"),
        format!("{base}/v1/elections/never-{e}/stream"),
        format!("{base}/v1/elections/{e}/cities/atlantis/totals"),
        format!("{base}/v1/elections/{e}/totals?as_of=yesterday"),
        format!("{base}/v1/elections/{e}/stream?scope=galaxy"),
        format!("{base}/v1/elections/{e}/analytics/cities?from=later"),
        format!("{base}/v1/elections/{e}/analytics/first-reports?limit=0"),
        format!("{base}/v1/elections/{e}/flags?as_of=soon"),
        format!("{base}/v1/elections/{e}/timeline?bucket=fortnight"),
        format!("{base}/v1/elections/{e}/reports.csv?after=first"),
        format!("{base}/v1/elections/{e}/audit?before=last"),
        format!("{base}/v1/elections/{e}/results.cdf.json?as_of=then"),
    ];
    for url in &wrong {
        let response = stack.client.get(url).send().await.unwrap();
        let status = response.status();
        assert!(status.is_client_error(), "{url}: {status}");
        assert_eq!(
            response
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{url}: {status}"
        );
    }
    let posted = stack
        .client
        .post(stack.url("/totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 405);
    assert_eq!(posted.headers()["cache-control"], "no-store");
    stack.stop().await;
}
