//! Resharding under load: while ingest counts, the slots of every national
//! counter — the busiest slots, each holding the marker buckets of every
//! ballot box naming its party — move to another master key by key
//! (`SETSLOT IMPORTING/MIGRATING`, `MIGRATE` in chunks, `SETSLOT NODE`), as
//! `redis-cli --cluster reshard` does. Scripts that meet the move get `ASK`
//! (their keys left) or `TRYAGAIN` (the move split their keys, or they name
//! a marker bucket that does not exist yet) and are sent again within the
//! call; nothing is lost or doubled, and every counter is exact with no
//! repair. (How long such a move takes at a million boxes, and whether
//! counting waits meanwhile: `election-bench reshard`, docs/reliability.md.)

use std::time::{Duration, Instant};

use election_e2e::check::verify;
use election_e2e::load::{Load, LoadSpec};
use election_e2e::process::{Ingest, Reprocessor};
use election_e2e::world::World;
use election_e2e::{plan, sized};
use election_test_support::redis::RedisCluster;

#[test]
fn national_counter_slots_moved_under_load_count_exactly() {
    let cluster = RedisCluster::start_private(1000);
    let world = World::on_shared_postgres("cluster-resharding");
    let ingest = Ingest::start(world.database_url(), &cluster.target_url());
    let _reprocessor = Reprocessor::start(
        world.database_url(),
        &cluster.target_url(),
        &["--heal-interval", "1s", "--pending-after", "1s"],
    );
    let plan = plan(sized(3_000, 40_000), 11);
    let load = Load::start(
        &plan,
        LoadSpec {
            targets: vec![ingest.base()],
            election: world.election.clone(),
            token: world.token.clone(),
            concurrency: 16,
            give_up_after: Duration::from_secs(sized(120, 900)),
            rate: Some(sized(600.0, 2_000.0)),
        },
    );
    let wait = Duration::from_secs(sized(60, 600));
    load.wait_answered(load.len() / 3, wait);

    for index in 0..plan.parties {
        let key = format!(
            "election:{}:party:{}",
            world.election,
            election_loadgen::party_name(index)
        );
        let slot = store_redis::keys::slot(key.as_bytes());
        let started = Instant::now();
        let slot_move = cluster.begin_slot_move(slot);
        // Keys leave a hundred at a time while scripts keep arriving.
        slot_move.migrate_keys();
        let (from, to) = (slot_move.source_port(), slot_move.destination_port());
        slot_move.finish();
        println!(
            "cluster resharding: slot {slot} of {key} moved from {from} to {to} in {:?}",
            started.elapsed()
        );
    }

    let result = load.finish();
    result.assert_answers_expected();
    assert_eq!(
        result.retried(),
        0,
        "ingest answered every post, none with an error: {}",
        result.describe()
    );
    assert!(ingest.is_running(), "{}", ingest.logs());
    verify(
        "cluster resharding",
        &world,
        &cluster.target_url(),
        &result,
        false,
    );
}
