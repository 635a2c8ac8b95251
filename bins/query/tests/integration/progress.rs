//! Reporting progress of a defined election (docs/contract.md §7) through a simulated
//! night: ballot boxes expected and percent reporting, nationally and per
//! city, with replays and corrections never counting a box twice.

use std::time::Duration;

use election_core::Definition;
use serde_json::{Value, json};

use crate::harness::Stack;

fn define(stack: &Stack) {
    let text = format!(
        r##"id = "{}"
name = "Progress night"

[[parties]]
id = "labour"
name = "Labour"
colour = "#E4003B"

[[parties]]
id = "tories"
name = "Conservatives"
colour = "#0087dc"

[[cities]]
id = "london"
name = "London"
expected_ballot_boxes = 3

[[cities]]
id = "leeds"
name = "Leeds"
expected_ballot_boxes = 1
"##,
        stack.election
    );
    let definition = Definition::from_toml(&text).unwrap();
    store_pg::definitions::load(&stack.pool, &definition).unwrap();
}

fn report(ballot_box: &str, city: &str, labour: u32, revision: u32) -> String {
    let reason = if revision > 1 {
        r#", "reason": "recount""#
    } else {
        ""
    };
    format!(
        r#"{{"ballot_box_id": "{ballot_box}", "city": "{city}", "votes": {{"labour": {labour}, "tories": 1}}, "revision": {revision}{reason}}}"#
    )
}

/// Waits until the national totals show `total` votes, then returns them
/// with the cities.
async fn settled(stack: &Stack, total: i64) -> (Value, Value) {
    let national = stack.wait_for_total(total, Duration::from_secs(10)).await;
    let (status, cities) = stack.get("/cities").await;
    assert_eq!(status, 200, "{cities}");
    (national, cities)
}

#[track_caller]
fn check_progress(
    national: &Value,
    cities: &Value,
    expected: (u64, f64),
    per_city: &[(&str, u64, f64)],
) {
    assert_eq!(national["ballot_boxes_reported"], expected.0, "{national}");
    assert_eq!(national["ballot_boxes_expected"], 4, "{national}");
    assert_eq!(national["percent_reporting"], expected.1, "{national}");
    let list = cities["cities"].as_array().unwrap();
    for &(city, reported, percent) in per_city {
        let item = list
            .iter()
            .find(|c| c["city"] == city)
            .unwrap_or_else(|| panic!("{city} missing from {cities}"));
        assert_eq!(item["ballot_boxes_reported"], reported, "{item}");
        assert_eq!(item["percent_reporting"], percent, "{item}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_reporting_climbs_to_100_and_never_counts_a_box_twice() {
    let stack = Stack::start().await;
    define(&stack);

    // The definition, with names and colours.
    let (status, definition) = stack.get("").await;
    assert_eq!(status, 200, "{definition}");
    assert_eq!(definition["defined"], true);
    assert_eq!(definition["name"], "Progress night");
    assert_eq!(
        definition["parties"],
        json!([
            {"party": "labour", "name": "Labour", "colour": "#e4003b"},
            {"party": "tories", "name": "Conservatives", "colour": "#0087dc"}
        ])
    );
    assert_eq!(definition["ballot_boxes_expected"], 4);

    // Before any report: 0 of 4, every defined city listed with its name.
    let (national, cities) = settled(&stack, 0).await;
    check_progress(
        &national,
        &cities,
        (0, 0.0),
        &[("london", 0, 0.0), ("leeds", 0, 0.0)],
    );
    let london = &cities["cities"].as_array().unwrap()[1];
    assert_eq!(london["name"], "London", "{cities}");
    let (status, leeds) = stack.get("/cities/leeds/totals").await;
    assert_eq!(status, 200, "{leeds}");
    assert_eq!(
        (
            leeds["name"].clone(),
            leeds["ballot_boxes_expected"].clone()
        ),
        (json!("Leeds"), json!(1))
    );

    // One box in London: 1 of 4.
    assert_eq!(stack.post(&report("B1", "london", 10, 1)).await.0, 201);
    let (national, cities) = settled(&stack, 11).await;
    check_progress(
        &national,
        &cities,
        (1, 25.0),
        &[("london", 1, 33.3), ("leeds", 0, 0.0)],
    );

    // Its replay and its correction: still one box.
    assert_eq!(stack.post(&report("B1", "london", 10, 1)).await.0, 200);
    assert_eq!(stack.post(&report("B1", "london", 20, 2)).await.0, 201);
    assert_eq!(stack.post(&report("B1", "london", 20, 2)).await.0, 200);
    let (national, cities) = settled(&stack, 21).await;
    check_progress(&national, &cities, (1, 25.0), &[("london", 1, 33.3)]);

    // Leeds reports in full; then the rest of London, with a correction.
    assert_eq!(stack.post(&report("B4", "leeds", 5, 1)).await.0, 201);
    assert_eq!(stack.post(&report("B2", "london", 5, 1)).await.0, 201);
    let (national, cities) = settled(&stack, 33).await;
    check_progress(
        &national,
        &cities,
        (3, 75.0),
        &[("london", 2, 66.7), ("leeds", 1, 100.0)],
    );
    assert_eq!(stack.post(&report("B3", "london", 5, 1)).await.0, 201);
    assert_eq!(stack.post(&report("B3", "london", 7, 2)).await.0, 201);
    let (national, cities) = settled(&stack, 41).await;
    check_progress(
        &national,
        &cities,
        (4, 100.0),
        &[("london", 3, 100.0), ("leeds", 1, 100.0)],
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undefined_election_has_no_expected_boxes() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    let national = stack.wait_for_total(840, Duration::from_secs(10)).await;
    assert_eq!(national["ballot_boxes_expected"], Value::Null);
    assert_eq!(national["percent_reporting"], Value::Null);
    let (_, definition) = stack.get("").await;
    assert_eq!(definition["defined"], false);
    assert_eq!(definition["parties"], json!([]));
    stack.stop().await;
}
