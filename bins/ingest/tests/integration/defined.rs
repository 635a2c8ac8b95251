//! Reports for a defined election (docs/contract.md §7): unknown parties, cities and
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

/// Ingest keeping its copy of definitions for an hour, so only the log's
/// check can make a new definition apply at once.
async fn start_with_a_long_cache() -> Ingest {
    let mut settings = crate::harness::settings();
    settings.definition_cache_ttl = std::time::Duration::from_secs(3600);
    Ingest::start_with(RedisChoice::Standalone, settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_loaded_while_ingest_runs_applies_to_the_next_report() {
    let ingest = start_with_a_long_cache().await;
    // Not defined yet: anything valid is counted, and ingest caches that.
    let early = ingest
        .post(r#"{"ballot_box_id": "BB1", "city": "london", "votes": {"greens": 4}}"#)
        .await;
    assert_eq!(early.0, 201, "{early:?}");

    define(&ingest, false);
    let rows = ingest.rows();
    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "BB2", "city": "london", "votes": {"greens": 2}}"#)
            .await,
        "\"greens\" is not a party",
    );
    assert_eq!(
        ingest.rows(),
        rows,
        "nothing recorded for the refused report"
    );
    assert_eq!(ingest.national("greens"), Some(4), "only the early report");
    let ok = ingest
        .post(r#"{"ballot_box_id": "ANY-1", "city": "leeds", "votes": {"tories": 3}}"#)
        .await;
    assert_eq!(ok.0, 201, "{ok:?}");

    // Now cached with no registry; a registry loaded later applies at once.
    define(&ingest, true);
    check_422(
        &ingest
            .post(r#"{"ballot_box_id": "ANY-2", "city": "leeds", "votes": {"tories": 3}}"#)
            .await,
        "\"ANY-2\" is not a registered ballot box",
    );
    let ok = ingest
        .post(r#"{"ballot_box_id": "BB3", "city": "leeds", "votes": {"tories": 1}}"#)
        .await;
    assert_eq!(ok.0, 201, "{ok:?}");
    assert_eq!(ingest.national("tories"), Some(4));
    ingest.stop().await;
}

/// Posts race a load: every post sent after the load returned is refused,
/// whatever batch it shares, and every refused post left nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_report_sent_after_a_load_gets_past_it() {
    let ingest = std::sync::Arc::new(start_with_a_long_cache().await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut posters = Vec::new();
    for task in 0..8 {
        let (ingest, stop) = (ingest.clone(), stop.clone());
        posters.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let sent = std::time::Instant::now();
                let body = format!(
                    r#"{{"ballot_box_id": "T{task}-{n}", "city": "london", "votes": {{"greens": 1}}}}"#
                );
                answers.push((sent, ingest.post(&body).await.0));
            }
            answers
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let loader = ingest.clone();
    tokio::task::spawn_blocking(move || define(&loader, false))
        .await
        .unwrap();
    let loaded = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut accepted = 0;
    let mut refused = 0;
    for poster in posters {
        for (sent, status) in poster.await.unwrap() {
            match status {
                201 | 202 => {
                    assert!(sent < loaded, "a report sent after the load was accepted");
                    accepted += 1;
                }
                422 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    // Exactly the accepted ones are recorded and counted.
    assert_eq!(ingest.rows().0, accepted);
    assert_eq!(ingest.national("greens"), Some(accepted));
    let ingest = std::sync::Arc::try_unwrap(ingest).unwrap_or_else(|_| panic!("still shared"));
    ingest.stop().await;
}
