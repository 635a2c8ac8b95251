//! Reports for a defined election (SPEC §7): unknown parties, cities and
//! ballot boxes, and a box under another city, are refused with 422 naming
//! them, and leave no row and no counter change (I4). Undefined elections
//! accept any valid slug.

use election_core::Definition;

use crate::harness::{Ingest, RedisChoice};

fn define(ingest: &Ingest, registry: bool) {
    let mut text = format!(
        "id = \"{}\"\nname = \"Defined\"\n\n[[parties]]\nid = \"labour\"\nname = \"Labour\"\ncolour = \"#e4003b\"\n\n[[parties]]\nid = \"tories\"\nname = \"Conservatives\"\ncolour = \"#0087dc\"\n\n[[cities]]\nid = \"london\"\nname = \"London\"\nexpected_ballot_boxes = 3\n\n[[cities]]\nid = \"leeds\"\nname = \"Leeds\"\nexpected_ballot_boxes = 2\n",
        ingest.election
    );
    if registry {
        text.push_str("\n[ballot_boxes]\nlondon = [\"BB1\", \"BB2\"]\nleeds = [\"BB3\"]\n");
    }
    let definition = Definition::from_toml(&text).unwrap();
    store_pg::definitions::load(&ingest.pool, &definition).unwrap();
}

#[track_caller]
fn check_422(answer: &(u16, serde_json::Value), fragment: &str) {
    assert_eq!(answer.0, 422, "{answer:?}");
    assert_eq!(answer.1["error"], "invalid_report", "{answer:?}");
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defined_election_refuses_what_it_does_not_define() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    define(&ingest, true);
    let e = ingest.election.to_string();

    let ok = ingest
        .post(r#"{"ballot_box_id": "BB1", "city": "london", "votes": {"labour": 10, "tories": 5}}"#)
        .await;
    assert_eq!(ok.0, 201, "{ok:?}");
    let rows = ingest.rows();
    let total = ingest.snapshot_total();

    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "BB2", "city": "london", "votes": {"labour": 1, "greens": 2}}"#)
            .await,
        &format!("votes.greens: \"greens\" is not a party of election {e}"),
    );
    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "BB3", "city": "york", "votes": {"labour": 1}}"#)
            .await,
        &format!("city: \"york\" is not a city of election {e}"),
    );
    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "BB9", "city": "london", "votes": {"labour": 1}}"#)
            .await,
        &format!("ballot_box_id: \"BB9\" is not a registered ballot box of election {e}"),
    );
    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "BB3", "city": "london", "votes": {"labour": 1}}"#)
            .await,
        "city: ballot box \"BB3\" is registered in city \"leeds\", not \"london\"",
    );
    // Several problems at once are all named.
    let answer = ingest
        .post(r#"{"ballot_box_id": "BB9", "city": "york", "votes": {"greens": 1}}"#)
        .await;
    check_422(&answer, "\"york\" is not a city");
    check_422(&answer, "\"greens\" is not a party");
    check_422(&answer, "\"BB9\" is not a registered ballot box");

    // I4: none of them wrote a row or moved a counter.
    assert_eq!(ingest.rows(), rows);
    assert_eq!(ingest.snapshot_total(), total);
    assert_eq!(ingest.national("greens"), None);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registry_any_box_of_a_defined_city_is_accepted() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    define(&ingest, false);
    let ok = ingest
        .post(r#"{"ballot_box_id": "ANY-1", "city": "leeds", "votes": {"tories": 3}}"#)
        .await;
    assert_eq!(ok.0, 201, "{ok:?}");
    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "ANY-2", "city": "hull", "votes": {"tories": 3}}"#)
            .await,
        "\"hull\" is not a city",
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_elections_accept_any_valid_slug() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    // Another election is defined; this one is not.
    let other = Definition::from_toml(
        "id = \"someone-else\"\nname = \"x\"\n[[parties]]\nid = \"a\"\nname = \"A\"\ncolour = \"#000000\"\n[[cities]]\nid = \"c\"\nname = \"C\"\nexpected_ballot_boxes = 1\n",
    )
    .unwrap();
    store_pg::definitions::load(&ingest.pool, &other).unwrap();
    let ok = ingest
        .post(r#"{"ballot_box_id": "ZZ1", "city": "anywhere", "votes": {"anyone": 3}}"#)
        .await;
    assert_eq!(ok.0, 201, "{ok:?}");
    ingest.stop().await;
}
