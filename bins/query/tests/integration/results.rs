//! Statuses, certification and the NIST SP 1500-100 export, through the real
//! ingest and query routers: every totals answer carries its status, a
//! certified city refuses new reports and revisions (single and bulk) with
//! 409 `certified` and changes nothing, and `results.cdf.json` validates
//! against NIST's own schema (kept in `tests/data/nist-cdf/`) with counts
//! equal to the live totals of the same version.

use std::time::Duration;

use election_core::{CityId, ElectionId};
use serde_json::Value;

use crate::harness::{SEED, Stack};

/// NIST's draft-04 schema of the Election Results Reporting CDF, v2.
fn nist_validator() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nist-cdf/NIST_V2_election_results_reporting.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    jsonschema::draft4::new(&schema).unwrap()
}

#[track_caller]
fn assert_valid(validator: &jsonschema::Validator, document: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the export breaks NIST's schema: {errors:#?}"
    );
}

/// GETs `rest` on the query service with its `ETag`.
async fn get_tagged(stack: &Stack, rest: &str) -> (String, Value) {
    let response = stack.client.get(stack.url(rest)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{rest}");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    (etag, response.json().await.unwrap())
}

/// The export, the national totals and the city list of one snapshot
/// version (retried until all three carry the same `ETag`).
async fn same_version(stack: &Stack) -> (Value, Value, Value) {
    for _ in 0..50 {
        let (a, cdf) = get_tagged(stack, "/results.cdf.json").await;
        let (b, totals) = get_tagged(stack, "/totals").await;
        let (c, cities) = get_tagged(stack, "/cities").await;
        if a == b && b == c {
            return (cdf, totals, cities);
        }
    }
    panic!("no three answers of one version in 50 tries");
}

/// The export's count for `party` in reporting unit `unit`.
fn cdf_count(cdf: &Value, party: &str, unit: &str) -> i64 {
    let contest = &cdf["Election"][0]["Contest"][0];
    let selection = contest["ContestSelection"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["PartyIds"][0] == format!("party-{party}"))
        .unwrap_or_else(|| panic!("no selection of {party}"));
    let counts: Vec<i64> = selection["VoteCounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["GpUnitId"] == unit)
        .map(|c| c["Count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts.len(), 1, "{party} in {unit}: {counts:?}");
    counts[0]
}

fn unit<'a>(cdf: &'a Value, id: &str) -> &'a Value {
    cdf["GpUnit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["@id"] == id)
        .unwrap_or_else(|| panic!("no unit {id}"))
}

/// Every count of the export equals the live totals of the same version,
/// for every party in the nation and in every city.
fn assert_counts_equal(cdf: &Value, totals: &Value, cities: &Value) {
    let parties = totals["parties"].as_object().unwrap();
    assert!(!parties.is_empty());
    for (party, votes) in parties {
        assert_eq!(
            cdf_count(cdf, party, "gpu-nation"),
            votes.as_i64().unwrap(),
            "{party} nationally"
        );
        for city in cities["cities"].as_array().unwrap() {
            let id = city["city"].as_str().unwrap();
            let live = city["parties"][party].as_i64().unwrap_or(0);
            assert_eq!(
                cdf_count(cdf, party, &format!("gpu-city-{id}")),
                live,
                "{party} in {id}"
            );
        }
    }
    // One unit per city plus the nation, each city's SubUnitsReported its
    // boxes reported.
    let listed = cities["cities"].as_array().unwrap();
    assert_eq!(cdf["GpUnit"].as_array().unwrap().len(), listed.len() + 1);
    for city in listed {
        let id = city["city"].as_str().unwrap();
        assert_eq!(
            unit(cdf, &format!("gpu-city-{id}"))["SubUnitsReported"],
            city["ballot_boxes_reported"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nist_export_validates_and_equals_the_live_totals() {
    let validator = nist_validator();
    let stack = Stack::start().await;
    stack.post_seed().await;
    // A correction, so the export follows revisions, not first reports.
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-LON-1", "city": "london", "revision": 2, "reason": "recount", "votes": {"tories": 121, "labour": 200, "libdems": 45, "reform": 20}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    stack.wait_for_total(841, Duration::from_secs(10)).await;

    let (cdf, totals, cities) = same_version(&stack).await;
    assert_valid(&validator, &cdf);
    assert_counts_equal(&cdf, &totals, &cities);
    // An undefined election: partial once anything reported, nothing
    // expected.
    assert_eq!(totals["status"], "partial");
    assert_eq!(cdf["Status"], "unofficial-partial");
    assert_eq!(cdf["Election"][0]["CountStatus"][0]["Status"], "in-process");
    assert!(unit(&cdf, "gpu-nation").get("TotalSubUnits").is_none());
    assert_eq!(cdf_count(&cdf, "tories", "gpu-nation"), 261);
    assert_eq!(cdf_count(&cdf, "tories", "gpu-city-london"), 121);
    let contest = &cdf["Election"][0]["Contest"][0];
    assert_eq!(contest["@type"], "ElectionResults.PartyContest");

    // A document that breaks the schema is caught (the check is real).
    let mut broken = cdf.clone();
    broken["Status"] = Value::from("final");
    assert!(validator.iter_errors(&broken).next().is_some());
    stack.stop().await;
}

/// A definition with London (1 box expected), Manchester (2) and Edinburgh
/// (1): the seed makes London and Edinburgh complete and Manchester partial.
fn define(stack: &Stack) {
    crate::harness::define_seed_election(
        &stack.pool,
        stack.election.as_str(),
        "Status election",
        &[("london", 1), ("manchester", 2), ("edinburgh", 1)],
    );
}

/// Waits until `/cities/{city}/totals` has `status`.
async fn wait_for_status(stack: &Stack, rest: &str, status: &str) -> Value {
    // Definitions (and so certifications) are read again every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = stack.get(rest).await;
        if code == 200 && body["status"] == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rest} never {status}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_batch(stack: &Stack, items: &[&str]) -> (u16, Value) {
    let response = stack
        .client
        .post(format!(
            "{}/v1/elections/{}/report-batches",
            stack.ingest.base, stack.election
        ))
        .bearer_auth(&stack.token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"reports": [{}]}}"#, items.join(",")))
        .send()
        .await
        .unwrap();
    crate::harness::read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_reports_and_a_certified_city_refuses_new_ones() {
    let validator = nist_validator();
    let stack = Stack::start().await;
    define(&stack);
    let (_, before) = stack.get("/totals").await;
    assert_eq!(before["status"], "not_reporting", "{before}");
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;

    let (_, totals) = stack.get("/totals").await;
    assert_eq!(totals["status"], "partial", "{totals}");
    let (_, cities) = stack.get("/cities").await;
    let status_of = |cities: &Value, city: &str| {
        cities["cities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["city"] == city)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of(&cities, "london"), "complete");
    assert_eq!(status_of(&cities, "manchester"), "partial");
    assert_eq!(status_of(&cities, "edinburgh"), "complete");
    let (_, london) = stack.get("/cities/london/totals").await;
    assert_eq!(london["status"], "complete");
    assert_eq!(london["certified"], Value::Null);

    // London is certified.
    let before_certification = instant(chrono::Utc::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let london_id = CityId::parse("london").unwrap();
    store_pg::definitions::certify(
        &stack.pool,
        &stack.election,
        Some(std::slice::from_ref(&london_id)),
        "Returning Officer",
    )
    .unwrap();
    let london = wait_for_status(&stack, "/cities/london/totals", "certified").await;
    assert_eq!(london["certified"]["by"], "Returning Officer");
    // As it stood before: complete, not certified.
    let (_, earlier) = crate::harness::get(
        &stack.client,
        &format!(
            "{}?as_of={before_certification}",
            stack.url("/cities/london/totals")
        ),
    )
    .await;
    assert_eq!(earlier["status"], "complete", "{earlier}");
    assert_eq!(earlier["certified"], Value::Null, "{earlier}");
    let reports_before = count_reports(&stack);

    // A correction and a new box of London: 409 `certified`, nothing
    // recorded; the identical replay is still a replay.
    for body in [
        r#"{"ballot_box_id": "BB-LON-1", "city": "london", "revision": 2, "reason": "recount", "votes": {"tories": 999, "labour": 200, "libdems": 45, "reform": 20}}"#,
        r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 5}}"#,
    ] {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 409, "{answer}");
        assert_eq!(answer["error"], "certified", "{answer}");
    }
    let (status, answer) = stack.post(SEED[0]).await;
    assert_eq!(status, 200, "{answer}");
    // In bulk: London's item refused, Manchester's recorded.
    let (status, answer) = post_batch(
        &stack,
        &[
            r#"{"ballot_box_id": "BB-LON-3", "city": "london", "votes": {"labour": 5}}"#,
            r#"{"ballot_box_id": "BB-MAN-2", "city": "manchester", "votes": {"labour": 5}}"#,
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], 409, "{answer}");
    assert_eq!(answer["results"][0]["error"], "certified", "{answer}");
    assert_eq!(answer["results"][1]["status"], 201, "{answer}");
    assert_eq!(count_reports(&stack), reports_before + 1);
    stack.wait_for_total(845, Duration::from_secs(10)).await;
    let (_, london) = stack.get("/cities/london/totals").await;
    assert_eq!(london["total_votes"], 385, "London unchanged: {london}");
    assert_eq!(london["ballot_boxes_reported"], 1);

    // Every city is complete now; then all are certified.
    let (_, totals) = stack.get("/totals").await;
    assert_eq!(totals["status"], "complete", "{totals}");
    let (cdf, _, _) = same_version(&stack).await;
    assert_eq!(cdf["Status"], "unofficial-complete");
    store_pg::definitions::certify(&stack.pool, &stack.election, None, "Returning Officer")
        .unwrap();
    wait_for_status(&stack, "/totals", "certified").await;
    let (cdf, totals, cities) = same_version(&stack).await;
    assert_valid(&validator, &cdf);
    assert_counts_equal(&cdf, &totals, &cities);
    assert_eq!(cdf["Status"], "certified");
    assert_eq!(unit(&cdf, "gpu-nation")["TotalSubUnits"], 4);
    assert_eq!(
        unit(&cdf, "gpu-city-manchester")["CountStatus"][0]["Status"],
        "completed"
    );
    // The definition names parties, with their colours.
    let labour = cdf["Party"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["@id"] == "party-labour")
        .unwrap();
    assert_eq!(labour["Color"], "e4003b");
    stack.stop().await;
}

fn count_reports(stack: &Stack) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    use diesel::RunQueryDsl;
    let mut conn = stack.pool.get().unwrap();
    let election: &ElectionId = &stack.election;
    diesel::sql_query("SELECT count(*) AS n FROM reports WHERE election_id = $1")
        .bind::<diesel::sql_types::Text, _>(election.as_str())
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n
}

fn instant(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_answers_what_stood_then_whatever_came_after() {
    let stack = Stack::start().await;
    let before_anything = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stack.post_seed().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let then = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // After the instant: a correction of London's box, and a new box.
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-LON-1", "city": "london", "revision": 2, "reason": "recount", "votes": {"tories": 120, "labour": 300, "libdems": 45, "reform": 20}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 7}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    stack.wait_for_total(947, Duration::from_secs(10)).await;

    let at = instant(then);
    let response = stack
        .client
        .get(stack.url("/totals"))
        .query(&[("as_of", at.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=10",
        "as-of answers are cached like history"
    );
    let totals: Value = response.json().await.unwrap();
    assert_eq!(totals["total_votes"], 840, "{totals}");
    assert_eq!(totals["parties"]["labour"], 430, "{totals}");
    assert_eq!(totals["ballot_boxes_reported"], 3, "{totals}");
    assert_eq!(totals["leader"]["party"], "labour");
    assert_eq!(totals["status"], "partial");
    assert_eq!(
        totals["as_of"],
        then.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    // What stood then does not change: the tag revalidates.
    let again = stack
        .client
        .get(stack.url("/totals"))
        .query(&[("as_of", at.as_str())])
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let (status, cities) = crate::harness::get(
        &stack.client,
        &format!("{}?as_of={}", stack.url("/cities"), at.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, 200, "{cities}");
    let london = cities["cities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["city"] == "london")
        .unwrap();
    assert_eq!(london["parties"]["labour"], 200, "{cities}");
    assert_eq!(london["ballot_boxes_reported"], 1, "{cities}");
    let (status, london) = crate::harness::get(
        &stack.client,
        &format!("{}?as_of={at}", stack.url("/cities/london/totals")),
    )
    .await;
    assert_eq!(status, 200, "{london}");
    assert_eq!(london["total_votes"], 385, "{london}");

    // Now: the correction and the new box; the live totals agree.
    let (_, now) = crate::harness::get(
        &stack.client,
        &format!(
            "{}?as_of={}",
            stack.url("/totals"),
            instant(chrono::Utc::now())
        ),
    )
    .await;
    let (_, live) = stack.get("/totals").await;
    assert_eq!(now["total_votes"], 947, "{now}");
    assert_eq!(now["parties"], live["parties"]);
    assert_eq!(now["ballot_boxes_reported"], 4);

    // Before the first report: nothing, not reporting.
    let (_, empty) = crate::harness::get(
        &stack.client,
        &format!(
            "{}?as_of={}",
            stack.url("/totals"),
            instant(before_anything)
        ),
    )
    .await;
    assert_eq!(empty["total_votes"], 0, "{empty}");
    assert_eq!(empty["ballot_boxes_reported"], 0, "{empty}");
    assert_eq!(empty["status"], "not_reporting", "{empty}");

    // The future is not known yet.
    let (status, refused) = crate::harness::get(
        &stack.client,
        &format!("{}?as_of=2999-01-01T00:00:00Z", stack.url("/totals")),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_parameter");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turnout_where_the_electorate_is_known_and_flags_with_their_reasons() {
    let stack = Stack::start().await;
    let e = stack.election.as_str();
    let mut toml = format!("id = \"{e}\"\nname = \"Flag election\"\n");
    for party in ["tories", "labour", "libdems", "reform"] {
        toml.push_str(&format!(
            "[[parties]]\nid = \"{party}\"\nname = \"{party}\"\ncolour = \"#123456\"\n"
        ));
    }
    for (city, electorate) in [
        ("london", "electorate = 1000\n"),
        ("manchester", "electorate = 500\n"),
        ("edinburgh", ""),
    ] {
        toml.push_str(&format!(
            "[[cities]]\nid = \"{city}\"\nname = \"{city}\"\nexpected_ballot_boxes = 2\n{electorate}"
        ));
    }
    // London's box reports 385 votes for 300 voters.
    toml.push_str("[electorate]\nBB-LON-1 = 300\nBB-MAN-1 = 1000\n");
    let definition = election_core::Definition::from_toml(&toml).unwrap();
    assert_eq!(definition.box_electorates().len(), 2);
    store_pg::definitions::load(&stack.pool, &definition).unwrap();
    assert_eq!(
        store_pg::definitions::find(&stack.pool, &stack.election).unwrap(),
        Some(definition),
        "electorates are stored and read back"
    );
    stack.post_seed().await;
    // Manchester: 280 -> 400, a 43% correction; Edinburgh: 175 -> 180, 3%.
    for body in [
        r#"{"ballot_box_id": "BB-MAN-1", "city": "manchester", "revision": 2, "reason": "recount", "votes": {"tories": 90, "labour": 270, "libdems": 30, "reform": 10}}"#,
        r#"{"ballot_box_id": "BB-EDI-1", "city": "edinburgh", "revision": 2, "reason": "recount", "votes": {"tories": 55, "labour": 80, "libdems": 40, "reform": 5}}"#,
    ] {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    stack.wait_for_total(965, Duration::from_secs(10)).await;

    // Turnout where the electorate is known; flagged reports are counted.
    let (_, london) = stack.get("/cities/london/totals").await;
    assert_eq!(london["electorate"], 1000, "{london}");
    assert_eq!(london["turnout"], 38.5, "{london}");
    assert_eq!(london["total_votes"], 385, "counted all the same");
    let (_, manchester) = stack.get("/cities/manchester/totals").await;
    assert_eq!(manchester["turnout"], 80.0, "{manchester}");
    let (_, edinburgh) = stack.get("/cities/edinburgh/totals").await;
    assert_eq!(edinburgh["electorate"], Value::Null);
    assert_eq!(edinburgh["turnout"], Value::Null);
    let (_, totals) = stack.get("/totals").await;
    assert_eq!(totals["electorate"], Value::Null, "Edinburgh's is unknown");

    let (status, flags) = stack.get("/flags").await;
    assert_eq!(status, 200, "{flags}");
    assert_eq!(flags["correction_share"], 0.2);
    let listed: Vec<(String, String, i64)> = flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["ballot_box_id"].as_str().unwrap().to_owned(),
                f["reason"].as_str().unwrap().to_owned(),
                f["total_votes"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("BB-LON-1".to_owned(), "over_electorate".to_owned(), 385),
            ("BB-MAN-1".to_owned(), "large_correction".to_owned(), 400),
        ],
        "{flags}"
    );
    assert_eq!(flags["flags"][0]["electorate"], 300);
    assert_eq!(flags["flags"][1]["previous_total"], 280);
    stack.stop().await;
}
