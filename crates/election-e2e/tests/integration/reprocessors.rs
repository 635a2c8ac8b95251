//! The reprocessor killed with SIGKILL in the middle of a batch (revisions
//! claimed, maybe applied to Redis, not marked counted), then two ingest
//! instances and two reprocessors at once on the same database and Redis,
//! under load: every counter exact with no repair at all — so nothing the
//! killed reprocessor had applied counted twice when the others re-claimed
//! it after its lease.

use std::time::Duration;

use election_e2e::check::{count, verify};
use election_e2e::load::{Load, LoadSpec};
use election_e2e::process::{Ingest, Reprocessor};
use election_e2e::world::World;
use election_e2e::{plan, sized, wait_until};
use election_test_support::redis::RedisServer;

const PENDING: &str = "SELECT count(*) AS n FROM pending_reports WHERE election_id = $1";
/// Claimed by a reprocessor (leased) and not marked counted.
const CLAIMED: &str = "SELECT count(*) AS n FROM pending_reports WHERE election_id = $1 \
     AND leased_until > now()";

#[test]
fn a_reprocessor_killed_mid_batch_then_two_of_each_at_once_count_exactly() {
    let mut redis = RedisServer::start();
    let world = World::on_shared_postgres("reprocessors");
    // Redis is down while the first third of the night is posted: a backlog
    // of recorded, uncounted revisions for the reprocessors.
    redis.kill();
    let ingest_a = Ingest::start(world.database_url(), &redis.url());
    let ingest_b = Ingest::start(world.database_url(), &redis.url());
    let plan = plan(sized(3_000, 40_000), 3);
    let load = Load::start(
        &plan,
        LoadSpec {
            targets: vec![ingest_a.base(), ingest_b.base()],
            election: world.election.clone(),
            token: world.token.clone(),
            concurrency: 16,
            give_up_after: Duration::from_secs(sized(120, 900)),
            rate: None,
        },
    );
    let wait = Duration::from_secs(sized(60, 600));
    load.wait_answered(load.len() / 3, wait);
    redis.restart();
    let backlog = count(&world, PENDING);
    assert!(backlog > 0, "a backlog of pending revisions");

    // Small batches and a short lease: many batches to land in, and the
    // killed one's claims expire soon.
    let args = [
        "--pending-after",
        "0s",
        "--batch-size",
        "20",
        "--lease",
        "2s",
        "--interval",
        "100ms",
    ];
    // The kill is aimed at a batch the reprocessor holds: it is stopped at
    // random points of its work until, stopped, it holds a claim, and
    // killed there. (Polling a running one missed: a batch of 20 is marked
    // within milliseconds, and under the whole suite the backlog was
    // counted before a poll landed inside a batch.) A claim read while it
    // was stopped can still be marked by a statement it sent just before,
    // so the claim is read again after the kill; that miss starts another.
    let mut killed_mid_batch = false;
    for _ in 0..5 {
        let doomed = Reprocessor::start(world.database_url(), &redis.url(), &args);
        let caught = doomed
            .process()
            .stop_when(wait, || count(&world, CLAIMED) > 0);
        doomed
            .process()
            .signal_and_wait("KILL", Duration::from_secs(10));
        let claimed = count(&world, CLAIMED);
        println!(
            "reprocessors: killed a reprocessor with {claimed} revisions claimed and not marked counted"
        );
        assert!(
            caught || claimed > 0,
            "the reprocessor was never caught holding a batch ({} revisions pending); its log:\n{}",
            count(&world, PENDING),
            doomed.process().log_text()
        );
        if claimed > 0 {
            killed_mid_batch = true;
            break;
        }
    }
    assert!(
        killed_mid_batch,
        "no kill landed in the middle of a batch in 5 tries"
    );

    let first = Reprocessor::start(world.database_url(), &redis.url(), &args);
    let second = Reprocessor::start(world.database_url(), &redis.url(), &args);
    let result = load.finish();
    result.assert_answers_expected();
    assert!(result.outcome.statuses.get(&202).is_some_and(|n| *n > 0));
    wait_until("the reprocessors count everything", wait, || {
        count(&world, PENDING) == 0
    });
    for reprocessor in [&first, &second] {
        assert!(
            reprocessor.process().is_running(),
            "{}",
            reprocessor.process().log_text()
        );
        reprocessor
            .process()
            .signal_and_wait("TERM", Duration::from_secs(30));
    }
    assert!(ingest_a.is_running() && ingest_b.is_running());
    println!("reprocessors: a backlog of {backlog} pending revisions when Redis came back");
    // No repair: exact by counting alone.
    verify("reprocessors", &world, &redis.url(), &result, false);
}
