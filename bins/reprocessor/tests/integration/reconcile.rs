//! `reconcile [--repair]` through the real binary: Redis flushed after 500
//! counted reports (quiet, and while ingest keeps posting), counters edited
//! by hand, and the same repair on a Redis Cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use election_core::contract::unique_election;
use election_core::{ElectionId, Engine, ReportLog, Totals};
use election_test_support::redis::{RedisServer, connection};

use crate::harness::{
    Db, Ingest, assert_exact, both, corrections, has_row, national, reports, reprocessor, submit,
    tally, text,
};

/// 450 boxes and 50 corrections: 500 counted revisions.
fn night(db: &Db, redis_url: &str, election: &ElectionId) -> Totals {
    let engine = Engine::new(db.log.clone(), tally(redis_url));
    submit(&engine, &reports(election, 0, 450));
    submit(&engine, &corrections(election, 0, 50));
    assert_exact(db, redis_url, election)
}

fn flushall(redis_url: &str) {
    redis::cmd("FLUSHALL")
        .exec(&mut connection(redis_url))
        .unwrap();
}

/// What `reconcile` must say about a tally that lost everything, and that
/// `--repair` brings it back; then `reconcile` finds it exact.
fn lost_then_repaired(db: &Db, redis_url: &str, e: &ElectionId, expected: &Totals) {
    let output = reprocessor(db, redis_url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stdout = text(&output.stdout);
    let a = expected.get(&national("a"));
    assert!(
        has_row(&stdout, &["key", "redis", "expected", "difference"])
            && has_row(
                &stdout,
                &[
                    &format!("election:{e}:party:a"),
                    "0",
                    &a.to_string(),
                    &format!("-{a}")
                ]
            ),
        "{stdout}"
    );
    let lost = expected.iter().filter(|(_, n)| *n != 0).count();
    assert!(
        stdout.contains(&format!(
            "election {e}: drift: {lost} of {} counters differ from PostgreSQL",
            expected.len()
        )),
        "{stdout}"
    );
    // The markers say the same, whatever the counters show.
    assert!(
        stdout.contains("lost: 500 of 500 counted revisions have lost markers in Redis"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 of 500 counted revisions present in Redis"),
        "{stdout}"
    );

    let output = reprocessor(
        db,
        redis_url,
        &["reconcile", "--election", e.as_str(), "--repair"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "phase A: re-applied 500 counted revisions of election {e} in id order; \
             500 had lost counters with their markers and were restored"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("phase B: rewrote 0 counters"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "election {e}: exact: {} counters match PostgreSQL; 0 in flight; no revision pending; \
             500 of 500 counted revisions present in Redis",
            expected.len()
        )),
        "{stdout}"
    );

    let output = reprocessor(db, redis_url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(&assert_exact(db, redis_url, e), expected);
}

#[test]
fn flushall_after_500_counted_reports_is_found_and_repaired() {
    let db = Db::new();
    let redis = RedisServer::start();
    let url = redis.url();
    let e = unique_election("flush");
    let expected = night(&db, &url, &e);
    flushall(&url);
    lost_then_repaired(&db, &url, &e, &expected);
}

/// The Cluster is shared by every test of this process, so instead of
/// `FLUSHALL` on each master, this deletes exactly what the election has on
/// every master: counters and indexes (`election:<e>:*`) and markers
/// (`{election:<e>:...}:applied:...`), found with `SCAN`. For the election,
/// that is what a flush would do.
fn delete_election_keys(master_urls: &[String], election: &ElectionId) -> usize {
    let mut deleted = 0;
    for url in master_urls {
        let mut conn = connection(url);
        for pattern in [
            format!("election:{election}:*"),
            format!("{{election:{election}:*"),
        ] {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut conn)
                    .unwrap();
                for key in keys {
                    // One key per DEL: keys of one call must share a slot.
                    let n: usize = redis::cmd("DEL").arg(&key).query(&mut conn).unwrap();
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
    deleted
}

#[test]
fn the_same_repair_on_a_redis_cluster() {
    let cluster = election_test_support::redis::cluster();
    let url = cluster.target_url();
    let db = Db::new();
    let e = unique_election("cluster");
    let expected = night(&db, &url, &e);
    let deleted = delete_election_keys(&cluster.urls(), &e);
    // Markers (about one per counter a revision moves, on a Cluster),
    // counters and index sets.
    assert!(deleted > 1000, "deleted {deleted} keys");
    assert!(crate::harness::plain_get(&url, &format!("election:{e}:party:a")).is_none());
    lost_then_repaired(&db, &url, &e, &expected);
}

#[test]
fn counters_changed_by_hand_are_rewritten_by_phase_b() {
    let db = Db::new();
    let url = election_test_support::redis::redis_url();
    let e = unique_election("hand");
    let engine = Engine::new(db.log.clone(), tally(&url));
    submit(&engine, &reports(&e, 0, 100));
    let expected = db.log.counted_totals(&e).unwrap();
    let a = expected.get(&national("a"));
    let key_a = format!("election:{e}:party:a");
    let key_c2b = format!("election:{e}:city:c2:party:b");
    let c2b = crate::harness::plain_get(&url, &key_c2b).unwrap();
    let mut conn = connection(&url);
    redis::cmd("INCRBY")
        .arg(&key_a)
        .arg(7)
        .exec(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg(&key_c2b)
        .arg(5)
        .exec(&mut conn)
        .unwrap();

    let output = reprocessor(&db, &url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        has_row(
            &stdout,
            &[&key_a, &(a + 7).to_string(), &a.to_string(), "+7"]
        ),
        "{stdout}"
    );
    assert!(
        has_row(
            &stdout,
            &[&key_c2b, "5", &c2b.to_string(), &(5 - c2b).to_string()]
        ),
        "{stdout}"
    );
    assert!(stdout.contains("drift: 2 of "), "{stdout}");

    // One repair of an election at a time.
    let held = store_pg::try_lock_repair(&db.pool, &e).unwrap().unwrap();
    let output = reprocessor(
        &db,
        &url,
        &["reconcile", "--election", e.as_str(), "--repair"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("another `reconcile --repair` of election"),
        "{}",
        both(&output)
    );
    drop(held);

    let output = reprocessor(
        &db,
        &url,
        &["reconcile", "--election", e.as_str(), "--repair"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("0 had lost counters"), "{stdout}");
    assert!(
        stdout.contains("phase B: rewrote 2 counters that drifted otherwise (guarded)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {key_a}: {} -> {a}\n", a + 7)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {key_c2b}: 5 -> {c2b}\n")),
        "{stdout}"
    );
    let output = reprocessor(&db, &url, &["reconcile", "--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_exact(&db, &url, &e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushall_repaired_while_ingest_keeps_posting() {
    let db = Arc::new(Db::new());
    let redis = RedisServer::start();
    let url = redis.url();
    let e = unique_election("busy");
    let ingest = Arc::new(Ingest::start(&db, &url, &e).await);
    let night = [reports(&e, 0, 450), corrections(&e, 0, 50)];
    for batch in &night {
        for chunk in batch.chunks(50) {
            let posts: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|report| {
                    let ingest = Arc::clone(&ingest);
                    tokio::spawn(async move { ingest.post(&report).await })
                })
                .collect();
            for post in posts {
                assert_eq!(post.await.unwrap(), 201);
            }
        }
    }
    let expected = assert_exact(&db, &url, &e);
    flushall(&url);

    // Three ballot-box feeds keep posting new boxes and corrections until
    // the repair is over.
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let feeds: Vec<_> = (0..3u32)
        .map(|feed| {
            let (ingest, stop, posted, e) = (
                Arc::clone(&ingest),
                Arc::clone(&stop),
                Arc::clone(&posted),
                e.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let report = if feed == 0 && i < 350 {
                        corrections(&e, 100 + i, 1).remove(0)
                    } else {
                        reports(&e, 10_000 + feed * 100_000 + i, 1).remove(0)
                    };
                    assert_eq!(ingest.post(&report).await, 201);
                    posted.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    while posted.load(Ordering::SeqCst) < 30 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let before = posted.load(Ordering::SeqCst);
    let output = {
        let (db, url, e) = (Arc::clone(&db), url.clone(), e.clone());
        tokio::task::spawn_blocking(move || {
            reprocessor(
                &db,
                &url,
                &["reconcile", "--election", e.as_str(), "--repair"],
            )
        })
        .await
        .unwrap()
    };
    let during = posted.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    for feed in feeds {
        feed.await.unwrap();
    }
    eprintln!("{during} reports were posted and counted during the repair");
    assert!(during > 0, "ingest kept posting during the repair");
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("500 had lost counters with their markers and were restored"),
        "{stdout}"
    );
    assert!(stdout.contains("phase B: rewrote 0 counters"), "{stdout}");

    // Quiet again: exact, every counter equal to what the log adds up to.
    let output = {
        let (db, url, e) = (Arc::clone(&db), url.clone(), e.clone());
        tokio::task::spawn_blocking(move || {
            reprocessor(&db, &url, &["reconcile", "--election", e.as_str()])
        })
        .await
        .unwrap()
    };
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let after = assert_exact(&db, &url, &e);
    assert_ne!(after, expected, "the feeds moved the totals");
    Arc::try_unwrap(ingest).ok().unwrap().stop().await;
}

/// I5: `run` notices that Redis lost counted revisions and restores them
/// from PostgreSQL while ingest keeps posting, with no operator command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_heals_a_flush_by_itself_while_ingest_keeps_posting() {
    let db = Arc::new(Db::new());
    let redis = RedisServer::start();
    let url = redis.url();
    let e = unique_election("heal");
    let ingest = Arc::new(Ingest::start(&db, &url, &e).await);
    for chunk in reports(&e, 0, 300).chunks(50) {
        let posts: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|report| {
                let ingest = Arc::clone(&ingest);
                tokio::spawn(async move { ingest.post(&report).await })
            })
            .collect();
        for post in posts {
            assert_eq!(post.await.unwrap(), 201);
        }
    }
    let child = crate::harness::spawn(
        &db,
        &url,
        &["run", "--listen", "127.0.0.1:0", "--heal-interval", "500ms"],
    );
    flushall(&url);

    let stop = Arc::new(AtomicBool::new(false));
    let feed = {
        let (ingest, stop, e) = (Arc::clone(&ingest), Arc::clone(&stop), e.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let report = reports(&e, 10_000 + i, 1).remove(0);
                assert_eq!(ingest.post(&report).await, 201);
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            i
        })
    };
    // Healed within 60 s (here within a few heal intervals), no command run.
    let started = std::time::Instant::now();
    let healed = loop {
        let (db, url, e) = (Arc::clone(&db), url.clone(), e.clone());
        let output = tokio::task::spawn_blocking(move || {
            reprocessor(&db, &url, &["reconcile", "--election", e.as_str()])
        })
        .await
        .unwrap();
        if output.status.code() == Some(0) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "not healed within 60 s: {}",
            both(&output)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    stop.store(true, Ordering::SeqCst);
    let posted = feed.await.unwrap();
    eprintln!("healed in {healed:?} while {posted} reports were posted");
    assert!(posted > 0);
    crate::harness::send_signal(child.id(), "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    // Without the terminal colours the human log format adds.
    let stderr: String = text(&output.stderr)
        .split('\x1b')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or(part, |(_, rest)| rest)
            }
        })
        .collect();
    assert!(
        stderr.contains("Redis had lost counted revisions"),
        "{stderr}"
    );
    assert!(stderr.contains("heal.restored=300"), "{stderr}");
    assert_exact(&db, &url, &e);
    Arc::try_unwrap(ingest).ok().unwrap().stop().await;
}
