//! A private PostgreSQL stopped at once (`pg_ctl stop -m immediate`, as in a
//! crash) and started again under load: ingest answers 503 while it is down
//! (clients retry), nothing is half-recorded, every acknowledged report is
//! there after the crash recovery, and the same ingest process resumes by
//! itself once PostgreSQL is back.

use std::time::{Duration, Instant};

use election_e2e::check::verify;
use election_e2e::load::{Load, LoadSpec};
use election_e2e::process::Ingest;
use election_e2e::world::World;
use election_e2e::{plan, sized};
use election_test_support::pg::PgServer;
use election_test_support::redis::RedisServer;

#[test]
fn postgres_stopped_under_load_answers_503_then_resumes_by_itself() {
    let postgres = PgServer::start();
    let redis = RedisServer::start();
    let world = World::on(&postgres.url(), "pg-restarted");
    let ingest = Ingest::start(world.database_url(), &redis.url());
    let plan = plan(sized(2_000, 40_000), 4);
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
    let cycles = sized(1, 3);
    let mut outages = Vec::new();
    for cycle in 1..=cycles {
        load.wait_answered(
            load.len() * cycle / (cycles + 1),
            Duration::from_secs(sized(60, 600)),
        );
        let stopping = Instant::now();
        postgres.stop();
        // Longer than ingest's 2 s wait for a connection: requests that
        // found no connection are answered 503 while it is still down.
        std::thread::sleep(Duration::from_millis(sized(2_500, 4_000)));
        postgres.restart();
        outages.push((stopping, Instant::now()));
    }
    let result = load.finish();
    result.assert_answers_expected();
    assert!(ingest.is_running(), "{}", ingest.logs());
    for (stopping, up) in outages {
        assert!(
            result.count_between(Some(503), stopping, up) > 0,
            "503 while PostgreSQL was down: {}",
            result.describe()
        );
        // The first acknowledgement after PostgreSQL is back, from the same
        // process: it reconnects by itself.
        let resumed = result
            .attempts
            .iter()
            .filter(|attempt| {
                attempt.at >= up && attempt.status.is_some_and(|s| (200..300).contains(&s))
            })
            .map(|attempt| attempt.at)
            .min()
            .unwrap_or_else(|| panic!("nothing acknowledged after PostgreSQL came back"));
        let after = resumed - up;
        println!("postgres restarted: first acknowledgement {after:?} after PostgreSQL was back");
        assert!(after < Duration::from_secs(10), "resumed after {after:?}");
    }
    verify("postgres restarted", &world, &redis.url(), &result, false);
}
