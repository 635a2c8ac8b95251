//! `run --once`: reports recorded while Redis was down, two reprocessors
//! racing, and one killed in the middle of a batch.

use election_core::contract::unique_election;
use election_core::{Engine, ReportLog};

use election_test_support::redis::RedisServer;

use crate::harness::{
    Db, Ingest, assert_exact, both, counted_in, record, reports, reprocessor, spawn, submit, tally,
    text, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_recorded_while_redis_was_down_are_counted_once_it_is_back() {
    let mut redis = RedisServer::start();
    let db = Db::new();
    let e = unique_election("down");
    let ingest = Ingest::start(&db, &redis.url(), &e).await;
    redis.kill();
    let batch = reports(&e, 0, 5);
    for report in &batch {
        assert_eq!(
            ingest.post(report).await,
            202,
            "recorded, counting deferred"
        );
    }
    ingest.stop().await;
    assert_eq!(db.log.pending_count(&e).unwrap(), 5);

    // While Redis is still down, --once exits 3 ("reports left pending",
    // not 1, a failure to run) and says so.
    let url = redis.url();
    let args = [
        "run",
        "--once",
        "--pending-after",
        "0s",
        "--redis-timeout-ms",
        "300",
    ];
    let down = reprocessor(&db, &url, &args);
    assert_eq!(down.status.code(), Some(3), "{}", both(&down));
    let summary = text(&down.stdout);
    assert!(
        summary.starts_with("election-reprocessor: counted 0 reports in 1 round; 5 reports still pending; stopped: redis is unavailable"),
        "{}",
        both(&down)
    );
    assert_eq!(db.log.pending_count(&e).unwrap(), 5);

    redis.restart();
    let output = reprocessor(&db, &url, &args);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(
        text(&output.stdout),
        "election-reprocessor: counted 5 reports in 2 rounds; nothing left pending\n"
    );
    let totals = assert_exact(&db, &url, &e);
    assert_eq!(totals.get(&crate::harness::national("c")), 15);
    // Counted: no batch is left pending.
    assert_eq!(db.number("SELECT count(*) AS n FROM pending_batches"), 0);
}

#[test]
fn two_reprocessors_racing_count_each_report_exactly_once() {
    let db = Db::new();
    let e = unique_election("race");
    let redis_url = election_test_support::redis::redis_url();
    record(&*db.log, &reports(&e, 0, 1000));
    let args = [
        "run",
        "--once",
        "--pending-after",
        "0s",
        "--batch-size",
        "25",
    ];
    let first = spawn(&db, &redis_url, &args);
    let second = spawn(&db, &redis_url, &args);
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", both(&first));
    assert_eq!(second.status.code(), Some(0), "{}", both(&second));
    let (a, b) = (counted_in(&first), counted_in(&second));
    eprintln!("the two reprocessors counted {a} and {b} reports");
    assert_eq!(a + b, 1000, "every report counted by exactly one of them");
    // Every report counted, none left pending.
    assert_eq!(db.number("SELECT count(*) AS n FROM pending_batches"), 0);
    assert_exact(&db, &redis_url, &e);
}

#[test]
fn a_reprocessor_killed_mid_batch_loses_its_lease_and_another_finishes() {
    let db = Db::new();
    let e = unique_election("killed");
    let redis = RedisServer::start();
    let url = redis.url();
    // Some reports counted normally first (this also loads the script, so a
    // batch written before the kill may partly run once Redis resumes).
    let engine = Engine::new(db.log.clone(), tally(&url));
    submit(&engine, &reports(&e, 0, 50));
    record(&*db.log, &reports(&e, 50, 2000));

    // Redis stalls: the first reprocessor claims its batch, writes it, and
    // waits for replies that do not come.
    let pid = redis.pause();
    let mut stalled = spawn(
        &db,
        &url,
        &[
            "run",
            "--once",
            "--pending-after",
            "0s",
            "--batch-size",
            "2000",
            "--lease",
            "3s",
            "--redis-timeout-ms",
            "120000",
        ],
    );
    wait_until("the first reprocessor has claimed the whole batch", || {
        db.number(
            "SELECT count(*) AS n FROM pending_reports WHERE attempts = 1 AND leased_until IS NOT NULL",
        ) == 2000
    });
    stalled.kill().unwrap(); // SIGKILL, in the middle of applying
    let killed = stalled.wait_with_output().unwrap();
    assert_eq!(
        killed.status.code(),
        None,
        "killed by a signal: {}",
        both(&killed)
    );
    redis.resume(pid);

    // The second one finds the reports leased, waits for the lease to run
    // out, then counts them all.
    let output = reprocessor(
        &db,
        &url,
        &[
            "run",
            "--once",
            "--pending-after",
            "0s",
            "--lease",
            "3s",
            "--interval",
            "200ms",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(counted_in(&output), 2000, "{}", both(&output));
    assert_eq!(db.number("SELECT count(*) AS n FROM pending_batches"), 0);
    // Nothing doubled, whatever part of the killed batch reached Redis.
    assert_exact(&db, &url, &e);
}
