//! The history endpoints on a prepared history with known answers: revisions
//! recorded through `PgLog`, then moved to chosen times in SQL.

use election_core::{
    BallotBoxId, CityId, ElectionId, History, PartyId, Recorded, Report, ReportLog, Revision, Votes,
};
use std::time::Duration;

use serde_json::{Value, json};
use store_pg::PgLog;

use crate::harness::Stack;

/// A reason with a comma, quotes and a line break: CSV must quote it.
const AWKWARD_REASON: &str = "recount, ward 3\n\"late\" box";

fn report(
    election: &ElectionId,
    ballot_box: &str,
    city: &str,
    revision: u32,
    reason: Option<&str>,
    votes: &[(&str, u32)],
) -> Report {
    let votes = votes
        .iter()
        .map(|(party, n)| (PartyId::parse(party).unwrap(), *n))
        .collect();
    Report::new(
        election.clone(),
        BallotBoxId::parse(ballot_box).unwrap(),
        CityId::parse(city).unwrap(),
        Votes::new(votes).unwrap(),
        Revision::new(i64::from(revision)).unwrap(),
        reason.map(str::to_owned),
    )
    .unwrap()
}

/// Records `report` and moves it (its log rows, and its box's first report
/// for a revision 1) to `at`.
fn record_at(stack: &Stack, report: Report, at: &str) -> i64 {
    let log = PgLog::new(stack.pool.clone());
    let answer = log.record(std::slice::from_ref(&report)).unwrap();
    let Recorded::Fresh(counting) = &answer[0] else {
        panic!("not fresh: {answer:?}")
    };
    let id = counting.report_id.0;
    // A box's first report's time is when it first reported.
    stack.execute(&format!(
        "UPDATE reports SET received_at = '{at}' WHERE id = {id}"
    ));
    id
}

/// The prepared evening (UTC):
///
/// | id | box | city | rev | votes | at |
/// | -- | --- | ---- | --- | ----- | -- |
/// | 1 | A1 | london | 1 | labour 100, tories 50 | 18:05 |
/// | 2 | B1 | manchester | 1 | labour 80, tories 70 | 18:20 |
/// | 3 | C1 | leeds | 1 | labour 30, tories 20 | 18:40 |
/// | 4 | A1 | london | 2 | labour 90, tories 50 (−10) | 19:10 |
/// | 5 | D1 | york | 1 | labour 60, green 40 | 19:30 |
/// | 6 | E1 | bath | 1 | labour 25, tories 25 | 18:40 |
fn prepare(stack: &Stack) -> Vec<i64> {
    let e = &stack.election;
    vec![
        record_at(
            stack,
            report(
                e,
                "A1",
                "london",
                1,
                None,
                &[("labour", 100), ("tories", 50)],
            ),
            "2025-09-15T18:05:00Z",
        ),
        record_at(
            stack,
            report(
                e,
                "B1",
                "manchester",
                1,
                None,
                &[("labour", 80), ("tories", 70)],
            ),
            "2025-09-15T18:20:00Z",
        ),
        record_at(
            stack,
            report(e, "C1", "leeds", 1, None, &[("labour", 30), ("tories", 20)]),
            "2025-09-15T18:40:00Z",
        ),
        record_at(
            stack,
            report(
                e,
                "A1",
                "london",
                2,
                Some(AWKWARD_REASON),
                &[("labour", 90), ("tories", 50)],
            ),
            "2025-09-15T19:10:00Z",
        ),
        record_at(
            stack,
            report(e, "D1", "york", 1, None, &[("labour", 60), ("green", 40)]),
            "2025-09-15T19:30:00Z",
        ),
        record_at(
            stack,
            report(e, "E1", "bath", 1, None, &[("labour", 25), ("tories", 25)]),
            "2025-09-15T18:40:00Z",
        ),
    ]
}

fn ranking(answer: &Value) -> Vec<(String, i64, i64)> {
    answer["cities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["city"].as_str().unwrap().to_owned(),
                c["votes"].as_i64().unwrap(),
                c["reports"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[track_caller]
fn check_ranking(answer: &(u16, Value), expected: &[(&str, i64, i64)]) {
    assert_eq!(answer.0, 200, "{answer:?}");
    let expected: Vec<(String, i64, i64)> = expected
        .iter()
        .map(|(c, v, r)| ((*c).to_owned(), *v, *r))
        .collect();
    assert_eq!(ranking(&answer.1), expected, "{}", answer.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cities_are_ranked_by_net_votes_in_the_window() {
    let stack = Stack::start().await;
    prepare(&stack);

    // 6 PM to 7 PM: ties by name (london = manchester, bath = leeds).
    let answer = stack
        .get("/analytics/cities?from=2025-09-15T18:00:00Z&to=2025-09-15T19:00:00Z")
        .await;
    check_ranking(
        &answer,
        &[
            ("london", 150, 1),
            ("manchester", 150, 1),
            ("bath", 50, 1),
            ("leeds", 50, 1),
        ],
    );
    assert_eq!(answer.1["election"], stack.election.as_str());
    assert_eq!(answer.1["from"], "2025-09-15T18:00:00Z");
    assert_eq!(answer.1["to"], "2025-09-15T19:00:00Z");

    // 7 PM to 8 PM: the correction counts as its difference.
    check_ranking(
        &stack
            .get("/analytics/cities?from=2025-09-15T19:00:00Z&to=2025-09-15T20:00:00Z")
            .await,
        &[("york", 100, 1), ("london", -10, 1)],
    );

    // An empty window.
    let empty = stack
        .get("/analytics/cities?from=2025-09-15T20:00:00Z&to=2025-09-15T21:00:00Z")
        .await;
    check_ranking(&empty, &[]);

    // `from` inclusive, `to` exclusive; an offset is read as such (19:20+01:00
    // is 18:20Z), written encoded or not.
    check_ranking(
        &stack
            .get("/analytics/cities?from=2025-09-15T19:20:00%2B01:00&to=2025-09-15T18:40:00Z")
            .await,
        &[("manchester", 150, 1)],
    );
    check_ranking(
        &stack
            .get("/analytics/cities?from=2025-09-15T19:20:00+01:00&to=2025-09-15T18:40:00Z")
            .await,
        &[("manchester", 150, 1)],
    );

    // Open bounds: the whole night, london's two revisions netted.
    let all = stack.get("/analytics/cities").await;
    check_ranking(
        &all,
        &[
            ("manchester", 150, 1),
            ("london", 140, 2),
            ("york", 100, 1),
            ("bath", 50, 1),
            ("leeds", 50, 1),
        ],
    );
    assert_eq!(all.1["from"], Value::Null);
    assert_eq!(all.1["to"], Value::Null);
    check_ranking(
        &stack
            .get("/analytics/cities?from=2025-09-15T19:00:00Z")
            .await,
        &[("york", 100, 1), ("london", -10, 1)],
    );
    check_ranking(
        &stack.get("/analytics/cities?to=2025-09-15T18:20:00Z").await,
        &[("london", 150, 1)],
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballot_boxes_come_in_the_order_they_first_reported() {
    let stack = Stack::start().await;
    prepare(&stack);
    let (status, answer) = stack.get("/analytics/first-reports").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["limit"], 100);
    let order: Vec<(i64, &str, &str, &str)> = answer["ballot_boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["rank"].as_i64().unwrap(),
                b["ballot_box_id"].as_str().unwrap(),
                b["city"].as_str().unwrap(),
                b["first_reported_at"].as_str().unwrap(),
            )
        })
        .collect();
    // A1's revision 2 does not move its first report; C1 and E1 share an
    // instant and go by id.
    assert_eq!(
        order,
        [
            (1, "A1", "london", "2025-09-15T18:05:00Z"),
            (2, "B1", "manchester", "2025-09-15T18:20:00Z"),
            (3, "C1", "leeds", "2025-09-15T18:40:00Z"),
            (4, "E1", "bath", "2025-09-15T18:40:00Z"),
            (5, "D1", "york", "2025-09-15T19:30:00Z"),
        ]
    );
    let (_, two) = stack.get("/analytics/first-reports?limit=2").await;
    assert_eq!(two["limit"], 2);
    let ids: Vec<&str> = two["ballot_boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ballot_box_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["A1", "B1"]);
    let (_, max) = stack.get("/analytics/first-reports?limit=10000").await;
    assert_eq!(max["ballot_boxes"].as_array().unwrap().len(), 5);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_is_cumulative_with_revisions() {
    let stack = Stack::start().await;
    prepare(&stack);
    let (status, hourly) = stack.get("/timeline?bucket=1h").await;
    assert_eq!(status, 200, "{hourly}");
    assert_eq!(hourly["bucket"], "1h");
    assert_eq!(hourly["parties"], json!(["green", "labour", "tories"]));
    assert_eq!(
        hourly["points"],
        json!([
            {"at": "2025-09-15T19:00:00Z", "parties": {"labour": 235, "tories": 165}, "total_votes": 400},
            {"at": "2025-09-15T20:00:00Z", "parties": {"green": 40, "labour": 285, "tories": 165}, "total_votes": 490},
        ])
    );

    // Every 15 minutes (the default bucket is 5 minutes).
    let (_, quarterly) = stack.get("/timeline?bucket=15m").await;
    let points: Vec<(&str, i64, i64)> = quarterly["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["at"].as_str().unwrap(),
                p["parties"]["labour"].as_i64().unwrap(),
                p["parties"]["tories"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        points,
        [
            ("2025-09-15T18:15:00Z", 100, 50),
            ("2025-09-15T18:30:00Z", 180, 120),
            ("2025-09-15T18:45:00Z", 235, 165),
            ("2025-09-15T19:15:00Z", 225, 165),
            ("2025-09-15T19:45:00Z", 285, 165),
        ]
    );
    let (_, default) = stack.get("/timeline").await;
    assert_eq!(default["bucket"], "5m");
    assert_eq!(default["points"].as_array().unwrap().len(), 5);
    let (_, daily) = stack.get("/timeline?bucket=1d").await;
    assert_eq!(
        daily["points"],
        json!([{"at": "2025-09-16T00:00:00Z", "parties": {"green": 40, "labour": 285, "tories": 165}, "total_votes": 490}])
    );

    // The service's incremental minutes agree with a full read.
    let full = store_pg::PgHistory::new(stack.pool.clone())
        .timeline(&stack.election, 3600)
        .unwrap();
    let rendered: Value = serde_json::from_str(&election_query::timeline::render(
        &stack.election,
        election_query::timeline::Bucket::H1,
        &full,
    ))
    .unwrap();
    assert_eq!(rendered, hourly);

    // A report recorded now lands in the current bucket at once (no cache in
    // tests), on top of the earlier ones.
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "F1", "city": "york", "votes": {"labour": 5}}"#)
        .await;
    assert_eq!(status, 201);
    let (_, later) = stack.get("/timeline?bucket=1m").await;
    let last = later["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["parties"]["labour"], 290);
    assert_eq!(last["total_votes"], 495);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_election_has_empty_history() {
    let stack = Stack::start().await;
    // Neither defined nor reported to: it does not exist.
    for path in [
        "/analytics/cities",
        "/analytics/first-reports",
        "/timeline",
        "/reports.csv",
    ] {
        let (status, body) = stack.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "unknown_election", "{path}: {body}");
    }
    // Defined, nothing reported yet: it exists, with an empty history (seen
    // once the "no such election" just answered has expired).
    crate::harness::define_election(&stack.pool, stack.election.as_str());
    tokio::time::sleep(election_query::elections::NEGATIVE_TTL + Duration::from_millis(100)).await;
    let (_, cities) = stack.get("/analytics/cities").await;
    assert_eq!(cities["cities"], json!([]));
    let (_, first) = stack.get("/analytics/first-reports").await;
    assert_eq!(first["ballot_boxes"], json!([]));
    let (_, timeline) = stack.get("/timeline").await;
    assert_eq!(timeline["points"], json!([]));
    assert_eq!(timeline["parties"], json!([]));
    let response = stack
        .client
        .get(stack.url("/reports.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        election_query::analytics::CSV_HEADER
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_the_parameter() {
    let stack = Stack::start().await;
    for (path, fragment) in [
        (
            "/analytics/cities?from=yesterday",
            "from: \"yesterday\" is not an RFC 3339 date",
        ),
        (
            "/analytics/cities?to=2025-13-01T00:00:00Z",
            "to: \"2025-13-01T00:00:00Z\"",
        ),
        (
            "/analytics/cities?from=2025-09-15T19:00:00Z&to=2025-09-15T18:00:00Z",
            "from (2025-09-15T19:00:00Z) is later than to (2025-09-15T18:00:00Z)",
        ),
        (
            "/analytics/cities?form=2025-09-15T19:00:00Z",
            "unknown query parameter \"form\"; expected one of: from, to",
        ),
        (
            "/analytics/cities?from=2025-09-15T19:00:00Z&from=2025-09-15T20:00:00Z",
            "query parameter \"from\" is given more than once",
        ),
        (
            "/analytics/first-reports?limit=0",
            "limit: \"0\" must be a whole number from 1 to 10000",
        ),
        ("/analytics/first-reports?limit=10001", "limit: \"10001\""),
        ("/analytics/first-reports?limit=ten", "limit: \"ten\""),
        (
            "/timeline?bucket=2m",
            "bucket: \"2m\" must be one of 1m, 5m, 15m, 1h, 1d",
        ),
        ("/timeline?bucket=", "bucket: \"\""),
        (
            "/reports.csv?party=labour",
            "unknown query parameter \"party\"; expected one of: after",
        ),
    ] {
        let (status, body) = stack.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(fragment),
            "{path}: {message:?} lacks {fragment:?}"
        );
    }
    stack.stop().await;
}

/// Splits CSV text into records of fields (RFC 4180, for checking).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_has_every_revision_and_quotes_what_it_must() {
    let stack = Stack::start().await;
    let ids = prepare(&stack);
    let response = stack
        .client
        .get(stack.url("/reports.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("election-{}-reports.csv", stack.election))
    );
    // Streamed: no length known up front.
    assert!(response.headers().get("content-length").is_none());
    let text = response.text().await.unwrap();
    assert!(text.starts_with(election_query::analytics::CSV_HEADER));
    assert!(
        text.contains("\"recount, ward 3\n\"\"late\"\" box\""),
        "the reason is quoted and its quotes doubled:\n{text}"
    );
    let records = parse_csv(&text);
    assert_eq!(
        records[0],
        [
            "report_id",
            "ballot_box_id",
            "city",
            "revision",
            "reason",
            "party",
            "votes",
            "difference",
            "received_at",
            "status",
            "omitted",
            "payload_sha256",
            "payload_hash"
        ]
    );
    // Every party here was posted (none omitted); the digests are SHA-256
    // in hex, for the sealed log's verifier (docs/audit.md).
    for r in &records[1..] {
        assert_eq!(r[10], "false", "{r:?}");
        for digest in &r[11..13] {
            assert!(
                digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                "{r:?}"
            );
        }
    }
    // Every column but the city and the counting time.
    let rows: Vec<Vec<String>> = records[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 13, "{r:?}");
            [0, 1, 3, 4, 5, 6, 7, 8]
                .iter()
                .map(|&i| r[i].clone())
                .collect()
        })
        .collect();
    let row = |n: usize, fields: [&str; 7]| -> Vec<String> {
        std::iter::once(ids[n].to_string())
            .chain(fields.iter().map(|f| (*f).to_owned()))
            .collect()
    };
    // In the order recorded (by report id), then by party.
    assert_eq!(
        rows,
        [
            row(
                0,
                [
                    "A1",
                    "1",
                    "",
                    "labour",
                    "100",
                    "100",
                    "2025-09-15T18:05:00.000000Z"
                ]
            ),
            row(
                0,
                [
                    "A1",
                    "1",
                    "",
                    "tories",
                    "50",
                    "50",
                    "2025-09-15T18:05:00.000000Z"
                ]
            ),
            row(
                1,
                [
                    "B1",
                    "1",
                    "",
                    "labour",
                    "80",
                    "80",
                    "2025-09-15T18:20:00.000000Z"
                ]
            ),
            row(
                1,
                [
                    "B1",
                    "1",
                    "",
                    "tories",
                    "70",
                    "70",
                    "2025-09-15T18:20:00.000000Z"
                ]
            ),
            row(
                2,
                [
                    "C1",
                    "1",
                    "",
                    "labour",
                    "30",
                    "30",
                    "2025-09-15T18:40:00.000000Z"
                ]
            ),
            row(
                2,
                [
                    "C1",
                    "1",
                    "",
                    "tories",
                    "20",
                    "20",
                    "2025-09-15T18:40:00.000000Z"
                ]
            ),
            row(
                3,
                [
                    "A1",
                    "2",
                    AWKWARD_REASON,
                    "labour",
                    "90",
                    "-10",
                    "2025-09-15T19:10:00.000000Z"
                ]
            ),
            row(
                3,
                [
                    "A1",
                    "2",
                    AWKWARD_REASON,
                    "tories",
                    "50",
                    "0",
                    "2025-09-15T19:10:00.000000Z"
                ]
            ),
            row(
                4,
                [
                    "D1",
                    "1",
                    "",
                    "green",
                    "40",
                    "40",
                    "2025-09-15T19:30:00.000000Z"
                ]
            ),
            row(
                4,
                [
                    "D1",
                    "1",
                    "",
                    "labour",
                    "60",
                    "60",
                    "2025-09-15T19:30:00.000000Z"
                ]
            ),
            row(
                5,
                [
                    "E1",
                    "1",
                    "",
                    "labour",
                    "25",
                    "25",
                    "2025-09-15T18:40:00.000000Z"
                ]
            ),
            row(
                5,
                [
                    "E1",
                    "1",
                    "",
                    "tories",
                    "25",
                    "25",
                    "2025-09-15T18:40:00.000000Z"
                ]
            ),
        ]
    );
    // Recorded through PgLog, never counted: pending. A report through
    // ingest is counted.
    assert!(records[1..].iter().all(|r| r[9] == "pending"));
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "G1", "city": "york", "votes": {"labour": 1}}"#)
        .await;
    assert_eq!(status, 201);
    let text = stack
        .client
        .get(stack.url("/reports.csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let records = parse_csv(&text);
    let last = records.last().unwrap();
    assert_eq!(last[1], "G1");
    assert_eq!(last[9], "counted");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_pages_through_thousands_of_revisions() {
    let stack = Stack::start().await;
    // 2,500 revisions (three pages of 1,000), recorded in batches.
    let log = PgLog::new(stack.pool.clone());
    let e = &stack.election;
    for batch in 0..5 {
        let reports: Vec<Report> = (0..500)
            .map(|n| {
                report(
                    e,
                    &format!("X{batch}-{n}"),
                    "bigcity",
                    1,
                    None,
                    &[("labour", 1), ("tories", 2)],
                )
            })
            .collect();
        log.record(&reports).unwrap();
    }
    let text = stack
        .client
        .get(stack.url("/reports.csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let records = parse_csv(&text);
    assert_eq!(records.len(), 1 + 2 * 2500);
    let mut ids: Vec<i64> = records[1..].iter().map(|r| r[0].parse().unwrap()).collect();
    let in_order = ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, in_order, "rows come in id order within equal times");
    ids.dedup();
    assert_eq!(ids.len(), 2500, "every revision exactly once");
    stack.stop().await;
}
