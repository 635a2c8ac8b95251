//! Stores that fail: Redis stopped (202, the report is durable, and counted
//! once Redis is back), PostgreSQL unreachable (503, nothing recorded or
//! counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use election_core::{Claim, Engine, Tally};
use election_test_support::redis::RedisServer;
use store_pg::PgLog;
use store_redis::RedisTally;

use crate::harness::{Ingest, RedisChoice, redis_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_answers_202_and_the_report_is_counted_later() {
    let mut server = RedisServer::start();
    let ingest = Ingest::start(RedisChoice::Url(server.url())).await;
    let first = ingest
        .post(r#"{"ballot_box_id":"B1","city":"york","votes":{"a":10,"b":5}}"#)
        .await;
    assert_eq!(first.0, 201, "{first:?}");

    server.kill();
    let started = Instant::now();
    let (status, answer) = ingest
        .post(r#"{"ballot_box_id":"B2","city":"york","votes":{"a":1,"b":2}}"#)
        .await;
    let waited = started.elapsed();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "pending");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    // Durable: the report and its log rows are in PostgreSQL, pending.
    assert_eq!(ingest.rows(), (2, 4));
    let log = PgLog::new(ingest.pool.clone());
    use election_core::ReportLog;
    assert_eq!(log.pending_count(&ingest.election).unwrap(), 1);
    // A replay while Redis is down answers 200 with the same pending body.
    let replay = ingest
        .post(r#"{"ballot_box_id":"B2","city":"york","votes":{"a":1,"b":2}}"#)
        .await;
    assert_eq!(replay, (200, answer.clone()));
    // Still ready (it records and answers 202), with a note naming Redis.
    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("note: redis"));

    // Redis comes back, empty; draining the log counts what is pending. (The
    // first report's counters were lost with Redis: rebuilding those is
    // `reconcile --repair`'s job, tested with the reprocessor.)
    server.restart();
    let tally: Arc<dyn Tally> = Arc::new(
        RedisTally::connect(
            &store_redis::parse_target(&server.url()).unwrap(),
            &redis_options(),
        )
        .unwrap(),
    );
    let engine = Engine::new(Arc::new(log), Arc::clone(&tally));
    let drained = tokio::task::spawn_blocking(move || {
        engine.count_pending(&Claim {
            limit: 100,
            pending_for: Duration::ZERO,
            lease: Duration::from_secs(30),
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(drained.counted, 1);
    assert_eq!(ingest.national("a"), Some(1));
    assert_eq!(ingest.national("b"), Some(2));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_answers_503_and_counts_nothing() {
    let ingest = Ingest::with_dead_postgres("pgdown").await;
    let started = Instant::now();
    let (status, answer) = ingest
        .post(r#"{"ballot_box_id":"B1","city":"york","votes":{"a":10}}"#)
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("nothing was recorded, retry later")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ingest.snapshot_total(), 0);
    assert_eq!(ingest.national("a"), None);
    ingest.stop().await;
}
