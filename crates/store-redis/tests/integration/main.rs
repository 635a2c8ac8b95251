//! store-redis against real servers: the standalone Redis on `REDIS_URL`, a
//! real Redis Cluster started for this test process, and private servers that
//! tests stop or stall.
//!
//! Tests that change the Cluster's layout (moving a slot) take
//! [`CLUSTER_LAYOUT`] for writing; every other Cluster test holds it for
//! reading, so no check sees a slot half migrated by another test.

mod batches;
mod cluster;
mod failures;
mod journal;
mod safety;
mod standalone;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use election_core::contract;
use election_core::memory::MemoryLog;
use election_core::{
    BallotBoxId, CityId, Counting, Difference, ElectionId, PartyId, ReportId, ReportLog, Revision,
    Tally,
};
use store_redis::{RedisOptions, RedisTally, RedisTarget, parse_target};

/// Held for reading by Cluster tests, for writing by tests that move slots.
static CLUSTER_LAYOUT: RwLock<()> = RwLock::new(());

fn cluster_shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER_LAYOUT.read().unwrap_or_else(|e| e.into_inner())
}

fn cluster_exclusive() -> RwLockWriteGuard<'static, ()> {
    CLUSTER_LAYOUT.write().unwrap_or_else(|e| e.into_inner())
}

/// A tally on the standalone Redis of `REDIS_URL`.
fn standalone_tally() -> Arc<RedisTally> {
    let target = RedisTarget::Standalone(election_test_support::redis::redis_url());
    Arc::new(RedisTally::connect(&target, &RedisOptions::DEFAULT).unwrap())
}

/// A tally on this process's Redis Cluster, reached through `redis+cluster://`.
fn cluster_tally() -> Arc<RedisTally> {
    let target = parse_target(&election_test_support::redis::cluster().target_url()).unwrap();
    assert!(matches!(target, RedisTarget::Cluster(_)), "{target:?}");
    Arc::new(RedisTally::connect(&target, &RedisOptions::DEFAULT).unwrap())
}

/// A tally on a private server of one test.
fn private_tally(server: &election_test_support::redis::RedisServer) -> RedisTally {
    RedisTally::connect(
        &RedisTarget::Standalone(server.url()),
        &RedisOptions::DEFAULT,
    )
    .unwrap()
}

fn memory_log() -> Arc<dyn ReportLog> {
    Arc::new(MemoryLog::new())
}

/// One revision's counting, from literals.
fn counting(
    election: &ElectionId,
    ballot_box: &str,
    city: &str,
    revision: u32,
    difference: &[(&str, i64)],
) -> Counting {
    Counting {
        report_id: ReportId(1),
        election: election.clone(),
        ballot_box: BallotBoxId::parse(ballot_box).unwrap(),
        city: CityId::parse(city).unwrap(),
        revision: Revision::new(i64::from(revision)).unwrap(),
        difference: Difference::from_parts(
            difference
                .iter()
                .map(|(party, n)| (PartyId::parse(party).unwrap(), *n))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// The counter keys a revision moves, with amounts, as the adapter names
/// them.
fn counter_keys(counting: &Counting) -> Vec<(String, i64)> {
    counting
        .difference
        .iter()
        .flat_map(|(party, n)| {
            [
                (store_redis::keys::national(&counting.election, party), n),
                (
                    store_redis::keys::city(&counting.election, &counting.city, party),
                    n,
                ),
            ]
        })
        .collect()
}

fn tally_dyn(tally: Arc<RedisTally>) -> Arc<dyn Tally> {
    tally
}

fn unique_election(prefix: &str) -> ElectionId {
    contract::unique_election(prefix)
}

/// The markers of election `e` on the servers at `urls`, as
/// `<bucket key> <field>`: every field of every marker bucket
/// (`{election:<e>:...}:applied:<n>`), and every per-key marker of the
/// layout before buckets as its key alone. Layout flags are left out.
fn markers_on(urls: &[String], e: &ElectionId) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for url in urls {
        let mut redis = election_test_support::redis::connection(url);
        let names: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{election:{e}:*}}:applied:*"))
            .query(&mut redis)
            .unwrap();
        for name in names {
            let kind: String = redis::cmd("TYPE").arg(&name).query(&mut redis).unwrap();
            match kind.as_str() {
                "hash" => {
                    let fields: Vec<String> =
                        redis::cmd("HKEYS").arg(&name).query(&mut redis).unwrap();
                    found.extend(fields.into_iter().map(|field| format!("{name} {field}")));
                }
                _ if name.ends_with(":applied:layout") => {}
                _ => {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// The marker of `counting`'s group anchored on `anchor`, as
/// [`markers_on`] lists it.
fn marker_of(anchor: &str, counting: &Counting) -> String {
    format!(
        "{} {}",
        store_redis::keys::marker_bucket(anchor, &counting.ballot_box),
        store_redis::keys::marker_field(&counting.ballot_box, counting.revision)
    )
}
