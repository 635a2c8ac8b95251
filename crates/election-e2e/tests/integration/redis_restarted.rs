//! Redis killed and restarted empty under load: reports keep being answered
//! (202 while it is down, never an error), ingest counts again by itself once
//! it is back, and the running reprocessor notices what Redis lost and
//! restores it from PostgreSQL within 60 s, with no operator command
//! (I5): every counter exact, without `reconcile --repair`.

use std::time::{Duration, Instant};

use election_e2e::check::{heal_during, restores_logged, verify};
use election_e2e::load::{Load, LoadSpec};
use election_e2e::process::{Ingest, Reprocessor};
use election_e2e::world::World;
use election_e2e::{plan, sized};
use election_test_support::redis::RedisServer;

#[test]
fn redis_killed_and_restarted_empty_under_load_is_healed_exactly() {
    let mut redis = RedisServer::start();
    let world = World::on_shared_postgres("redis-restarted");
    let ingest = Ingest::start(world.database_url(), &redis.url());
    let reprocessor = Reprocessor::start(
        world.database_url(),
        &redis.url(),
        &["--heal-interval", "1s", "--pending-after", "1s"],
    );
    let plan = plan(sized(2_000, 40_000), 2);
    let load = Load::start(
        &plan,
        LoadSpec {
            targets: vec![ingest.base()],
            election: world.election.clone(),
            token: world.token.clone(),
            concurrency: 16,
            give_up_after: Duration::from_secs(sized(120, 900)),
            rate: None,
        },
    );
    let wait = Duration::from_secs(sized(60, 600));
    load.wait_answered(load.len() / 3, wait);
    redis.kill();
    let down = Instant::now();
    // A third of the night is posted while Redis is down.
    load.wait_answered(load.len() * 2 / 3, wait);
    let restores = restores_logged(&reprocessor);
    redis.restart();
    let up = Instant::now();
    // Counting what is pending is not enough: what Redis held before it
    // died is gone with it. The reprocessor's healing restores it, while
    // the rest of the night is posted.
    let ((result, posting), healed) = heal_during(
        &world,
        &redis.url(),
        (&reprocessor, restores),
        up,
        Duration::from_secs(60),
        || (load.finish(), up.elapsed()),
    );
    result.assert_answers_expected();

    assert!(
        result.count_between(Some(202), down, up) > 0,
        "202 while Redis was down: {}",
        result.describe()
    );
    assert_eq!(
        result.retried(),
        0,
        "ingest answered every post, none with an error: {}",
        result.describe()
    );
    assert!(
        result.count_between(Some(201), up, Instant::now()) > 0,
        "ingest counts again by itself once Redis is back: {}",
        result.describe()
    );
    assert!(ingest.is_running(), "{}", ingest.logs());

    let log = reprocessor.process().log_text();
    assert!(
        log.contains("Redis had lost counted revisions"),
        "the restart lost counted revisions and the reprocessor restored them: {log}"
    );
    println!(
        "redis restarted: healed after Redis came back, no repair run: {healed} \
         (posts went on for {:.1} s after it)",
        posting.as_secs_f64()
    );
    verify("redis restarted", &world, &redis.url(), &result, false);
}
