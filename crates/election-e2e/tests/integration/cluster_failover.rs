//! A Redis Cluster (3 masters + 3 replicas, of this test's own) losing two
//! masters under load:
//!
//! 1. a master killed: its replica is promoted automatically;
//! 2. a master that took writes its replica never saw: the replica is
//!    stopped (SIGSTOP) and its link cut (`CLIENT KILL TYPE replica` on the
//!    master), the master keeps acknowledging writes (its replication offset
//!    moves on), then it is killed (SIGKILL), the replica resumes and takes
//!    over (`CLUSTER FAILOVER TAKEOVER`) without them.
//!
//! Ingest keeps answering throughout (202 during a failover, never an error)
//! and finds the promoted replicas by itself (201 again afterwards). The
//! reprocessor, running throughout with its healing loop, notices that the
//! stale replica lacks counted revisions (their markers are gone with the
//! dead master's unreplicated writes), says so in its log, and applies them
//! again from PostgreSQL: every counter is exact within 60 s of the takeover
//! with no `reconcile --repair` (I5).

use std::time::{Duration, Instant};

use election_e2e::check::{heal_during, restores_logged, verify};
use election_e2e::load::{Load, LoadSpec};
use election_e2e::process::{Ingest, Reprocessor};
use election_e2e::world::World;
use election_e2e::{plan, sized, wait_until};
use election_test_support::redis::{RedisCluster, connection};

/// `master_repl_offset` of the node on `port`: how far its replication
/// stream has gone.
fn replication_offset(port: u16) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut connection(&format!("redis://127.0.0.1:{port}")))
        .expect("INFO replication");
    info.lines()
        .find_map(|line| line.strip_prefix("master_repl_offset:"))
        .and_then(|offset| offset.trim().parse().ok())
        .unwrap_or_else(|| panic!("no master_repl_offset in {info}"))
}

#[test]
fn a_master_killed_and_unreplicated_writes_lost_are_healed_exactly() {
    let mut cluster = RedisCluster::start_private(1000);
    let world = World::on_shared_postgres("cluster-failover");
    let ingest = Ingest::start(world.database_url(), &cluster.target_url());
    let reprocessor = Reprocessor::start(
        world.database_url(),
        &cluster.target_url(),
        &["--heal-interval", "1s", "--pending-after", "1s"],
    );
    let plan = plan(sized(3_000, 40_000), 5);
    let load = Load::start(
        &plan,
        LoadSpec {
            targets: vec![ingest.base()],
            election: world.election.clone(),
            token: world.token.clone(),
            concurrency: 16,
            give_up_after: Duration::from_secs(sized(120, 900)),
            rate: Some(sized(400.0, 2_000.0)),
        },
    );
    let wait = Duration::from_secs(sized(60, 600));
    let masters = cluster.current_masters();
    assert_eq!(masters.len(), 3);

    // 1. A master dies; its replica takes over by itself.
    load.wait_answered(load.len() / 4, wait);
    let replica = cluster.replica_of(masters[0]);
    cluster.kill_node(masters[0]);
    cluster.wait_promoted(replica, Duration::from_secs(30));
    println!(
        "cluster failover: master {} killed, replica {replica} promoted",
        masters[0]
    );

    // 2. A master takes writes its replica never sees, then dies.
    load.wait_answered(load.len() / 2, wait);
    let doomed = masters[1];
    let replica = cluster.replica_of(doomed);
    let paused = cluster.node(replica).pause();
    // What the master already sent may sit in the paused replica's socket
    // buffer and still reach it when it resumes; cutting the link makes
    // every later write the master acknowledges unreplicated for sure.
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .exec(&mut connection(&format!("redis://127.0.0.1:{doomed}")))
        .expect("CLIENT KILL TYPE replica");
    let cut = Instant::now();
    let offset = replication_offset(doomed);
    // Counted (201) reports touch every master: with 16 posts in flight at
    // most, 50 answered after the cut were applied after it.
    wait_until("the master takes writes its replica misses", wait, || {
        replication_offset(doomed) > offset && load.statuses_since(cut, Some(201)) >= 50
    });
    let unreplicated = replication_offset(doomed) - offset;
    cluster.kill_node(doomed);
    let restores = restores_logged(&reprocessor);
    cluster.node(replica).resume(paused);
    cluster.takeover(replica);
    cluster.wait_promoted(replica, Duration::from_secs(30));
    let promoted = Instant::now();
    println!(
        "cluster failover: master {doomed} killed {unreplicated} bytes of replication stream \
         ahead of its replica {replica}, which took over"
    );

    // The survivors, as one URL for the reprocessor and the check.
    let survivors: Vec<String> = cluster
        .current_masters()
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let url = format!("redis+cluster://{}", survivors.join(","));
    // Nobody runs a repair: the reprocessor notices the lost revisions by
    // their markers and applies them again from PostgreSQL, while the rest
    // of the night is posted.
    let ((result, posting), healed) = heal_during(
        &world,
        &url,
        (&reprocessor, restores),
        promoted,
        Duration::from_secs(60),
        || (load.finish(), promoted.elapsed()),
    );
    result.assert_answers_expected();
    assert_eq!(
        result.retried(),
        0,
        "ingest answered every post, none with an error: {}",
        result.describe()
    );
    assert!(
        result.count_between(Some(201), promoted, Instant::now()) > 0,
        "ingest counts on the promoted replica by itself: {}",
        result.describe()
    );
    assert!(ingest.is_running(), "{}", ingest.logs());
    let log = reprocessor.process().log_text();
    assert!(
        log.contains("Redis had lost counted revisions"),
        "the dead master's unreplicated writes were lost and restored: {}\n{log}",
        result.describe()
    );
    println!(
        "cluster failover: healed after the stale replica took over, no repair run: {healed} \
         (posts went on for {:.1} s after it)",
        posting.as_secs_f64()
    );
    verify("cluster failover", &world, &url, &result, false);
}
