//! `run` as a service: backoff while Redis is down and resuming by itself,
//! health and metrics, stuck reports, SIGTERM, and refusing an unmigrated
//! database.

use std::time::{Duration, Instant};

use election_core::contract::unique_election;
use election_core::{Claim, ElectionId};
use election_reprocessor::healer::WATCH_EVERY;
use election_reprocessor::{Services, Settings};
use election_test_support::pg::PgSchema;
use election_test_support::process::free_port;
use election_test_support::redis::{RedisCluster, RedisServer};
use election_wiring::Serving;
use tokio::sync::oneshot;

use crate::harness::{
    Db, assert_exact, both, is_exact, record, reports, send_signal, spawn, tally, text, wait_until,
};

/// Reads `/metrics` until `wanted` holds (a guard against hanging: a minute).
async fn wait_for_metrics(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if wanted(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled or labelled series in Prometheus text.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_backs_off_while_redis_is_down_then_resumes_by_itself() {
    let db = Db::new();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let e = unique_election("service");
    record(&*db.log, &reports(&e, 0, 4));
    redis.kill();

    let tally = tally(&url);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let services = Services {
        log: db.log.clone(),
        tally: tally.clone(),
        redis: Some(tally.clone()),
        ready: election_reprocessor::commands::ready_check(db.pool.clone(), tally),
        locks: election_reprocessor::commands::repair_locks(db.pool.clone()),
        sealer: None,
    };
    let settings = Settings {
        claim: Claim {
            limit: 100,
            pending_for: Duration::ZERO,
            lease: Duration::from_secs(60),
        },
        interval: Duration::from_millis(50),
        stuck_attempts: 3,
        heal: None,
        seal: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(election_reprocessor::run(
        Serving::new(listener, async {
            let _ = stopped.await;
        }),
        services,
        settings,
    ));
    let client = reqwest::Client::new();

    // Redis is down: every round fails, the reports stay pending, and after
    // three claims they are reported stuck (never dropped).
    let metrics = wait_for_metrics(&client, &base, "the reports are stuck", |m| {
        value(m, "reprocessor_stuck_reports") == Some(4.0)
    })
    .await;
    assert_eq!(value(&metrics, "reprocessor_pending_reports"), Some(4.0));
    assert!(value(&metrics, "reprocessor_oldest_pending_age_seconds").unwrap() >= 0.0);
    assert!(
        value(&metrics, "reprocessor_failures_total{stage=\"count\"}").unwrap() >= 12.0,
        "{metrics}"
    );
    assert_eq!(value(&metrics, "reprocessor_counted_total"), Some(0.0));
    assert!(
        !metrics.contains(&url) && !metrics.contains(db.url()),
        "no URLs in metrics"
    );
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("redis"));

    // Redis comes back: the loop notices by itself and counts everything.
    redis.restart();
    let metrics = wait_for_metrics(&client, &base, "everything is counted", |m| {
        value(m, "reprocessor_counted_total") == Some(4.0)
            && value(m, "reprocessor_pending_reports") == Some(0.0)
    })
    .await;
    assert_eq!(value(&metrics, "reprocessor_stuck_reports"), Some(0.0));
    assert_eq!(
        value(&metrics, "reprocessor_oldest_pending_age_seconds"),
        Some(0.0)
    );
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_exact(&db, &url, &e);
}

#[test]
fn sigterm_stops_run_gracefully_and_an_outage_is_logged_once() {
    let db = Db::new();
    let e = unique_election("sigterm");
    record(&*db.log, &reports(&e, 0, 3));
    // Nothing listens on this port: Redis is down for the whole run. (Its
    // password must never reach the logs.)
    let dead_redis = format!("redis://:s3cret@127.0.0.1:{}", free_port());
    let port = free_port();
    let child = spawn(
        &db,
        &dead_redis,
        &[
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pending-after",
            "0s",
            "--redis-timeout-ms",
            "200",
        ],
    );
    wait_until("several rounds have failed", || {
        db.number("SELECT min(attempts)::bigint AS n FROM pending_reports") >= 4
    });
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "serving health and metrics"
    );
    send_signal(child.id(), "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert_eq!(
        stderr
            .matches("counting failed; retrying with backoff")
            .count(),
        1,
        "one warning per outage, not one per round:\n{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(stderr.contains("redis://:***@127.0.0.1:"), "{stderr}");
    // Released, not lost: still pending, unleased, with the reason kept.
    assert_eq!(
        db.number(
            "SELECT count(*) AS n FROM pending_reports WHERE leased_until IS NULL \
             AND last_error LIKE 'redis is unavailable%'"
        ),
        3
    );
}

#[test]
fn an_unmigrated_database_is_refused_with_what_to_run() {
    let schema = PgSchema::new();
    let redis_url = election_test_support::redis::redis_url();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::harness::BIN)
            .args(args)
            .env("DATABASE_URL", schema.url())
            .env("REDIS_URL", &redis_url)
            .output()
            .unwrap()
    };
    for (args, status) in [
        (&["run", "--once"][..], 1),
        (&["run", "--listen", "127.0.0.1:0"][..], 1),
        (&["reconcile", "--election", "2025"][..], 2),
    ] {
        let output = run(args);
        assert_eq!(
            output.status.code(),
            Some(status),
            "{args:?}: {}",
            both(&output)
        );
        assert!(
            text(&output.stderr)
                .contains("the database is not migrated; run `election-ingest migrate` first"),
            "{args:?}: {}",
            both(&output)
        );
    }
}

/// I5 sooner than the interval: after a sweep found everything intact, a
/// Redis restarted empty is healed as soon as it answers again (the loop
/// sees a master with a new run id, or the election's journal gone back,
/// whichever it reads first), not at the next sweep, which here is ten
/// minutes away. (The run id alone: `healer`'s unit test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_healed_at_once_not_at_the_next_interval() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    heals_at_once(
        "heal-restart",
        &url,
        |_| {
            redis.kill();
            redis.restart();
        },
        "checking every counted revision now",
    )
    .await;
}

/// The same for a flush, which keeps the server and its run id: the
/// server's witness key is gone and the election's change journal went back
/// to nothing, whichever the loop reads first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_healed_at_once_not_at_the_next_interval() {
    let redis = RedisServer::start();
    let url = redis.url();
    heals_at_once(
        "heal-flush",
        &url,
        |_| {
            redis::cmd("FLUSHALL")
                .exec(&mut election_test_support::redis::connection(&url))
                .unwrap();
        },
        "checking every counted revision now",
    )
    .await;
}

/// The same for a flush of one Cluster master that does not hold the
/// election's change journal: no run id changed and no journal went back,
/// but the master's witness key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_cluster_master_is_healed_at_once_not_at_the_next_interval() {
    let cluster = RedisCluster::start_private(2000);
    let url = cluster.target_url();
    heals_at_once(
        "heal-master",
        &url,
        |e| {
            let journal = store_redis::keys::moved(e);
            let journal_master =
                cluster.master_of_slot(store_redis::keys::slot(journal.as_bytes()));
            // A master without the journal that holds counters of the
            // election (24 of them: 4 parties in 5 cities and nationally,
            // spread over the slots).
            let holds_counters = |url: &String| {
                let counters: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("election:{e}:*party:*"))
                    .query(&mut election_test_support::redis::connection(url))
                    .unwrap();
                !counters.is_empty()
            };
            let master = cluster
                .urls()
                .into_iter()
                .filter(|url| !url.ends_with(&format!(":{journal_master}")))
                .find(holds_counters)
                .expect("a master without the journal holds counters");
            redis::cmd("FLUSHALL")
                .exec(&mut election_test_support::redis::connection(&master))
                .unwrap();
        },
        "one lost its data",
    )
    .await;
}

/// Counts 50 reports with `run` and a 10-minute heal interval on the Redis
/// of `url`, waits for a sweep that finds them intact, makes Redis lose
/// them with `loss`, and checks they are back within 30 s, `run`'s log
/// saying `says`.
async fn heals_at_once(name: &str, url: &str, loss: impl FnOnce(&ElectionId), says: &str) {
    let db = Db::new();
    let e = unique_election(name);
    record(&*db.log, &reports(&e, 0, 50));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = spawn(
        &db,
        url,
        &[
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--heal-interval",
            "10m",
            "--pending-after",
            "0s",
        ],
    );
    let client = reqwest::Client::new();
    // Counted, and a sweep of every election found them intact.
    wait_until("the 50 reports are counted", || is_exact(&db, url, &e));
    wait_for_metrics(&client, &base, "a sweep found everything intact", |m| {
        value(m, "reprocessor_heal_sweeps_total{outcome=\"intact\"}").is_some_and(|n| n >= 1.0)
    })
    .await;

    // The watch reads the journals once a second: let it see this one
    // before it is lost (a journal begun and lost within one second is left
    // to the interval's sweep).
    tokio::time::sleep(3 * WATCH_EVERY).await;
    loss(&e);
    let lost = Instant::now();
    let deadline = Duration::from_secs(30);
    while !is_exact(&db, url, &e) {
        if lost.elapsed() >= deadline {
            send_signal(child.id(), "TERM");
            let output = child.wait_with_output().unwrap();
            panic!(
                "not healed within {deadline:?} of the loss (the interval is 10 min): {}",
                both(&output)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{name}: healed {:?} after the loss", lost.elapsed());
    send_signal(child.id(), "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(says),
        "the watch, not the interval, started the sweep: {stderr}"
    );
    assert_exact(&db, url, &e);
}
