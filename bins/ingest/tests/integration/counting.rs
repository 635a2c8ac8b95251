//! Counting through HTTP: the seed example read with plain GETs on the seed's
//! key names (standalone and Cluster), concurrent duplicate posts, and
//! revisions racing out of order.

use std::sync::Arc;

use election_core::contract::SEED_NATIONAL;

use crate::harness::{Ingest, RedisChoice};

const SEED: [&str; 3] = [
    r#"{"ballot_box_id": "BB-LON-1", "city": "london", "votes": {"tories": 120, "labour": 200, "libdems": 45, "reform": 20}}"#,
    r#"{"ballot_box_id": "BB-MAN-1", "city": "manchester", "votes": {"tories": 90, "labour": 150, "libdems": 30, "reform": 10}}"#,
    r#"{"ballot_box_id": "BB-EDI-1", "city": "edinburgh", "votes": {"tories": 50, "labour": 80, "libdems": 40, "reform": 5}}"#,
];

async fn seed_example_gives_the_seed_totals(redis: RedisChoice) {
    let ingest = Ingest::start(redis).await;
    for body in SEED {
        let (status, answer) = ingest.post(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    for (party, votes) in SEED_NATIONAL {
        assert_eq!(ingest.national(party), Some(votes), "{party}");
    }
    assert_eq!(ingest.city("london", "labour"), Some(200));
    assert_eq!(ingest.city("london", "tories"), Some(120));
    assert_eq!(ingest.city("manchester", "libdems"), Some(30));
    assert_eq!(ingest.city("edinburgh", "reform"), Some(5));
    assert_eq!(ingest.rows(), (3, 12));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_on_standalone_redis() {
    seed_example_gives_the_seed_totals(RedisChoice::Standalone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_on_redis_cluster() {
    seed_example_gives_the_seed_totals(RedisChoice::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_posts_count_once() {
    let ingest = Arc::new(Ingest::start(RedisChoice::Standalone).await);
    let mut posts = Vec::new();
    for _ in 0..50 {
        let ingest = Arc::clone(&ingest);
        posts.push(tokio::spawn(async move { ingest.post(SEED[0]).await }));
    }
    let mut statuses = Vec::new();
    let mut report_ids = Vec::new();
    for post in posts {
        let (status, answer) = post.await.unwrap();
        statuses.push(status);
        report_ids.push(answer["report_id"].as_i64().unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        49,
        "{statuses:?}"
    );
    report_ids.dedup();
    assert_eq!(report_ids.len(), 1, "every answer names the same report");
    assert_eq!(ingest.national("labour"), Some(200));
    assert_eq!(ingest.city("london", "tories"), Some(120));
    assert_eq!(ingest.rows(), (1, 4));
    Arc::into_inner(ingest).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_in_parallel_and_out_of_order_end_at_the_latest() {
    let ingest = Arc::new(Ingest::start(RedisChoice::Standalone).await);
    // Ten boxes, revisions 1..=5 each, all posted at once in reverse order.
    let mut posts = Vec::new();
    for revision in (1..=5u32).rev() {
        for b in 0..10 {
            let ingest = Arc::clone(&ingest);
            let body = serde_json::json!({
                "ballot_box_id": format!("BB{b}"),
                "city": if b % 2 == 0 { "york" } else { "leeds" },
                "revision": revision,
                "reason": "recount",
                "votes": {"a": revision * 100 + b, "b": 7, "c": if revision == 5 { 0 } else { 3 }},
            })
            .to_string();
            posts.push(tokio::spawn(async move { ingest.post(&body).await }));
        }
    }
    for post in posts {
        let (status, answer) = post.await.unwrap();
        // Each lands, or is refused as older than one that already landed.
        assert!(
            status == 201
                || (status == 409 && answer["message"].as_str().unwrap().contains("older")),
            "{status} {answer}"
        );
    }
    // Whichever order they landed in, revision 5 is the latest of every box,
    // and the counters hold exactly it.
    let expected_a: i64 = (0..10).map(|b| 500 + b).sum();
    assert_eq!(ingest.national("a"), Some(expected_a));
    assert_eq!(ingest.national("b"), Some(70));
    assert_eq!(ingest.national("c"), Some(0));
    assert_eq!(
        ingest.city("york", "a"),
        Some((0..10).step_by(2).map(|b| 500 + b).sum())
    );
    Arc::into_inner(ingest).unwrap().stop().await;
}
