//! A dead or stalled Redis gives `Unavailable` quickly, never a hang, and the
//! tally recovers when Redis is back.

use std::time::{Duration, Instant};

use election_core::{Applied, StoreError, Tally};
use election_test_support::redis::RedisServer;
use store_redis::{RedisOptions, RedisTally, RedisTarget};

use crate::{counting, unique_election};

#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    within: Duration,
    started: Instant,
) {
    let elapsed = started.elapsed();
    match result {
        Err(error) => assert!(error.is_unavailable(), "{error:?}"),
        Ok(value) => panic!("expected Unavailable, got {value:?}"),
    }
    assert!(elapsed < within, "took {elapsed:?}, more than {within:?}");
}

#[test]
fn an_unreachable_redis_is_unavailable_at_once() {
    let e = unique_election("down");
    for target in [
        RedisTarget::Standalone("redis://127.0.0.1:1".into()),
        RedisTarget::Cluster(vec![
            "redis://127.0.0.1:1".into(),
            "redis://127.0.0.1:2".into(),
        ]),
    ] {
        // Connecting is lazy: a Redis down at startup is no error yet.
        let tally = RedisTally::connect(&target, &RedisOptions::DEFAULT).unwrap();
        let started = Instant::now();
        let answers = tally.apply(&[
            counting(&e, "B1", "york", 1, &[("a", 1)]),
            counting(&e, "B2", "york", 1, &[("a", 1)]),
        ]);
        assert_eq!(answers.len(), 2);
        for answer in answers {
            assert_unavailable(answer, Duration::from_secs(2), started);
        }
        let started = Instant::now();
        assert_unavailable(tally.snapshot(&e), Duration::from_secs(2), started);
        let started = Instant::now();
        assert_unavailable(tally.ping(), Duration::from_secs(2), started);
        // The error says what was being done and where.
        let error = tally
            .apply(&[counting(&e, "B1", "york", 1, &[("a", 1)])])
            .remove(0)
            .unwrap_err();
        let chain = error_chain(&error);
        assert!(
            chain.contains("redis is unavailable while applying revision 1 of ballot box B1"),
            "{chain}"
        );
        assert!(chain.contains("127.0.0.1:1"), "{chain}");
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

#[test]
fn a_stalled_redis_is_unavailable_within_the_timeouts() {
    let server = RedisServer::start();
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        pool_size: 2,
    };
    let tally = RedisTally::connect(&RedisTarget::Standalone(server.url()), &options).unwrap();
    let e = unique_election("stall");
    // Warm up: a pooled connection exists.
    assert_eq!(
        tally.apply(&[counting(&e, "B1", "york", 1, &[("a", 1)])])[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );

    let pid = server.pause();
    // On the pooled connection: the reply never comes.
    let started = Instant::now();
    assert_unavailable(
        tally
            .apply(&[counting(&e, "B2", "york", 1, &[("a", 1)])])
            .remove(0),
        Duration::from_millis(1500),
        started,
    );
    // On a new connection: TCP connects (the kernel accepts), the handshake
    // never completes.
    let started = Instant::now();
    assert_unavailable(tally.snapshot(&e), Duration::from_millis(1500), started);
    let started = Instant::now();
    assert_unavailable(tally.ping(), Duration::from_millis(1500), started);
    server.resume(pid);

    // Back: the broken connections were dropped, fresh ones work, and the
    // revision that timed out is applied once when re-applied (it may or may
    // not have run while paused; the marker decides).
    let again = tally.apply(&[counting(&e, "B2", "york", 1, &[("a", 1)])]);
    again[0].as_ref().unwrap();
    tally.ping().unwrap();
    assert_eq!(
        tally
            .snapshot(&e)
            .unwrap()
            .totals
            .national()
            .values()
            .sum::<i64>(),
        2
    );
}

#[test]
fn a_restarted_redis_is_used_again_without_errors() {
    // A pooled connection whose server went away and came back (here: the
    // server closed it) is replaced transparently.
    let server = RedisServer::start();
    let tally = RedisTally::connect(
        &RedisTarget::Standalone(server.url()),
        &RedisOptions::DEFAULT,
    )
    .unwrap();
    let e = unique_election("restart");
    tally.apply(&[counting(&e, "B1", "york", 1, &[("a", 1)])])[0]
        .as_ref()
        .unwrap();
    let mut redis = election_test_support::redis::connection(&server.url());
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .exec(&mut redis)
        .unwrap();
    assert_eq!(
        tally.apply(&[counting(&e, "B2", "york", 1, &[("a", 1)])])[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
}

#[test]
fn a_batch_costs_one_round_trip_on_standalone() {
    // A private server, so no other test flushes its scripts meanwhile.
    let server = RedisServer::start();
    let tally = RedisTally::connect(
        &RedisTarget::Standalone(server.url()),
        &RedisOptions::DEFAULT,
    )
    .unwrap();
    let e = unique_election("cost");
    // The first batch finds no script: NOSCRIPT, SCRIPT LOAD, and again.
    tally.apply(&[counting(&e, "B0", "york", 1, &[("a", 1)])])[0]
        .as_ref()
        .unwrap();
    assert_eq!(tally.round_trips(), 3);
    let batch: Vec<_> = (0..500)
        .map(|i| {
            counting(
                &e,
                &format!("B{}", i + 1),
                &format!("c{}", i % 20),
                1,
                &[("a", 1), ("b", 2), ("c", 3)],
            )
        })
        .collect();
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
    assert_eq!(tally.round_trips(), 4, "one pipeline for 500 revisions");
    tally.snapshot(&e).unwrap();
    assert_eq!(
        tally.round_trips(),
        6,
        "two pipelined rounds for a snapshot"
    );
}
