//! Redis keys the counters cannot trust or keep, through the real binary: a
//! counter holding `oops` (its revision stays pending with an error naming
//! the key, `reconcile` exits 1 naming it, and once it is deleted everything
//! counts exactly once), and a Redis whose `maxmemory-policy` may evict keys
//! (nothing is written, `reconcile` refuses, and `run` counts everything once
//! the policy is fixed).

use std::process::Stdio;
use std::time::Duration;

use election_core::contract::{report, unique_election};
use election_core::{Engine, ReportLog};
use election_test_support::process::free_port;
use election_test_support::redis::{RedisServer, connection};

use crate::harness::{
    BIN, Db, Ingest, assert_exact, both, counted_in, national, plain_get, reports, reprocessor,
    send_signal, submit, tally, text, wait_until,
};

fn set(url: &str, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .exec(&mut connection(url))
        .unwrap();
}

fn del(url: &str, key: &str) {
    redis::cmd("DEL")
        .arg(key)
        .exec(&mut connection(url))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_holding_oops_keeps_its_revision_pending_and_fails_reconcile() {
    let db = Db::new();
    let url = election_test_support::redis::redis_url();
    let e = unique_election("oops");
    let engine = Engine::new(db.log.clone(), tally(&url));
    submit(&engine, &reports(&e, 0, 50));
    let counted_a = db.log.counted_totals(&e).unwrap().get(&national("a"));

    // Someone typed a city counter by hand; then a box of that city reports.
    let bad = format!("election:{e}:city:zz:party:a");
    set(&url, &bad, "oops");
    let ingest = Ingest::start(&db, &url, &e).await;
    let late = report(&e, "Z1", "zz", 1, &[("a", 5), ("b", 7)]);
    assert_eq!(ingest.post(&late).await, 202, "recorded, not counted");
    ingest.stop().await;
    assert_eq!(db.log.pending_count(&e).unwrap(), 1);
    // Nothing of it moved.
    assert_eq!(
        plain_get(&url, &format!("election:{e}:party:a")),
        Some(counted_a)
    );
    assert_eq!(
        plain_get(&url, &format!("election:{e}:city:zz:party:b")),
        None
    );

    // The reprocessor cannot count it either, and says why.
    let args = ["run", "--once", "--pending-after", "0s"];
    let output = reprocessor(&db, &url, &args);
    assert_eq!(output.status.code(), Some(3), "{}", both(&output));
    let why = format!("counter {bad} holds \"oops\", not an integer");
    assert!(text(&output.stdout).contains(&why), "{}", both(&output));
    let stats = db.log.pending_stats(1).unwrap();
    let last_error = stats
        .stuck_examples
        .iter()
        .find(|stuck| stuck.election == e)
        .and_then(|stuck| stuck.last_error.clone())
        .expect("the failed attempt is recorded");
    assert!(last_error.contains(&why), "{last_error}");

    // Reconcile names the key and exits 1.
    let output = reprocessor(&db, &url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("unreadable: 1 counter key holds something that is not an integer"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {bad} holds \"oops\", not an integer\n")),
        "{stdout}"
    );

    // Deleted: the next apply counts it, exactly once.
    del(&url, &bad);
    let output = reprocessor(&db, &url, &args);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(counted_in(&output), 1);
    let totals = assert_exact(&db, &url, &e);
    assert_eq!(totals.get(&national("a")), counted_a + 5);
    assert_eq!(plain_get(&url, &bad), Some(5));
    let output = reprocessor(&db, &url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));

    // A counted counter overwritten by hand: reconcile names it; the repair
    // cannot rewrite it (its guard refuses what is not a number) and still
    // exits 1; once it is deleted, the repair restores it.
    let key_b = format!("election:{e}:party:b");
    let b = totals.get(&national("b"));
    set(&url, &key_b, "oops");
    let repair = [
        "reconcile",
        "--election",
        e.as_str(),
        "--repair",
        "--rounds",
        "3",
    ];
    let output = reprocessor(&db, &url, &repair);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!("  {key_b} holds \"oops\", not an integer\n")),
        "{stdout}"
    );
    assert_eq!(
        redis::cmd("GET")
            .arg(&key_b)
            .query::<String>(&mut connection(&url))
            .unwrap(),
        "oops",
        "left for a person"
    );
    del(&url, &key_b);
    let output = reprocessor(&db, &url, &repair);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert!(
        text(&output.stdout).contains(&format!("  {key_b}: 0 -> {b}\n")),
        "{}",
        both(&output)
    );
    assert_exact(&db, &url, &e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_gets_nothing_until_its_policy_is_fixed() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let url = redis.url();
    let db = Db::new();
    let e = unique_election("evict");

    // Ingest records every report and answers 202; Redis gets nothing.
    let ingest = Ingest::start(&db, &url, &e).await;
    let night = reports(&e, 0, 20);
    for report in &night {
        assert_eq!(ingest.post(report).await, 202);
    }
    ingest.stop().await;
    assert_eq!(db.log.pending_count(&e).unwrap(), 20);
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut connection(&url)).unwrap();
    assert_eq!(dbsize, 0, "no counter, no marker, no index set");

    // Reconcile refuses, naming the policy.
    let output = reprocessor(&db, &url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(2), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("maxmemory-policy allkeys-lru") && stderr.contains("noeviction"),
        "{}",
        both(&output)
    );
    // `run --once` stops, naming it.
    let once = ["run", "--once", "--pending-after", "0s"];
    let output = reprocessor(&db, &url, &once);
    assert_eq!(output.status.code(), Some(3), "{}", both(&output));
    assert!(
        text(&output.stdout).contains("maxmemory-policy allkeys-lru"),
        "{}",
        both(&output)
    );

    // `run` keeps trying with backoff: it warns, its metric and readiness
    // say why; once the policy is fixed it counts everything, once.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = std::process::Command::new(BIN)
        .args([
            "run",
            "--pending-after",
            "0s",
            "--interval",
            "50ms",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", &url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            match client.get(url).send().await {
                Ok(response) => Some((response.status().as_u16(), response.text().await.unwrap())),
                Err(_) => None,
            }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, metrics)) = get("/metrics").await
            && metrics.contains("redis_evicting_policy 1\n")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metric never said 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.starts_with("ready\nnote: redis: redis node 127.0.0.1:")
            && ready.contains("maxmemory-policy allkeys-lru"),
        "{ready}"
    );
    assert_eq!(db.log.pending_count(&e).unwrap(), 20);

    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .exec(&mut connection(&url))
        .unwrap();
    wait_until("the reprocessor counted everything", || {
        db.log.pending_count(&e).unwrap() == 0
    });
    let (_, metrics) = get("/metrics").await.unwrap();
    assert!(metrics.contains("redis_evicting_policy 0\n"), "{metrics}");
    send_signal(child.id(), "TERM");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("counting failed; retrying with backoff")
            && stderr.contains("maxmemory-policy allkeys-lru"),
        "{stderr}"
    );
    assert!(stderr.contains("no longer evicts keys"), "{stderr}");
    assert_exact(&db, &url, &e);
    let output = reprocessor(&db, &url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
}
