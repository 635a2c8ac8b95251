//! Ingest killed with SIGKILL again and again under concurrent load, while
//! clients retry whatever was not answered: nothing acknowledged is missing,
//! nothing counts twice — with no repair, only the reprocessor counting what
//! a killed process recorded but had not counted.

use std::time::Duration;

use election_e2e::check::verify;
use election_e2e::load::{Load, LoadSpec};
use election_e2e::process::Ingest;
use election_e2e::world::World;
use election_e2e::{plan, sized};
use election_test_support::redis::RedisServer;

#[test]
fn ingest_killed_repeatedly_under_load_loses_and_doubles_nothing() {
    let redis = RedisServer::start();
    let world = World::on_shared_postgres("ingest-killed");
    let mut ingest = Ingest::start(world.database_url(), &redis.url());
    let plan = plan(sized(2_000, 40_000), 1);
    let cycles = sized(3, 10);
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
    for cycle in 1..=cycles {
        // Spread the kills over the night.
        load.wait_answered(
            load.len() * cycle / (cycles + 1),
            Duration::from_secs(sized(60, 600)),
        );
        ingest.kill();
        std::thread::sleep(Duration::from_millis(100));
        ingest.restart();
    }
    let result = load.finish();
    result.assert_answers_expected();
    assert!(
        result.outcome.transport_errors > 0,
        "the kills cut some requests off: {}",
        result.describe()
    );
    assert!(ingest.is_running(), "{}", ingest.logs());
    let summary = verify("ingest killed", &world, &redis.url(), &result, false);
    assert!(summary.counters_checked > 0);
}
