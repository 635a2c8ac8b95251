//! Keys the tally must not trust or lose: a counter holding something that
//! is not an integer (the apply script moves nothing of its group, reads skip
//! and name it), and a Redis whose `maxmemory-policy` may evict keys (nothing
//! is written at all).

use std::time::Duration;

use election_core::{Applied, CityId, Counter, ElectionId, PartyId, StoreError, Tally};
use election_test_support::redis::{RedisServer, cluster, connection, redis_url};
use store_redis::keys;

use crate::{
    cluster_exclusive, cluster_shared, cluster_tally, counting, private_tally, standalone_tally,
};

/// A city counter's key, from literals.
pub(crate) fn city_key(e: &ElectionId, city: &str, party: &str) -> String {
    keys::city(
        e,
        &CityId::parse(city).unwrap(),
        &PartyId::parse(party).unwrap(),
    )
}

fn national_key(e: &ElectionId, party: &str) -> String {
    keys::national(e, &PartyId::parse(party).unwrap())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// A `Failed` (not `Unavailable`) error whose chain contains every one of
/// `needles`; returns the chain.
#[track_caller]
pub(crate) fn assert_failed_naming(
    result: &Result<Applied, StoreError>,
    needles: &[&str],
) -> String {
    let error = match result {
        Err(error) => error,
        Ok(applied) => panic!("expected an error, got {applied:?}"),
    };
    assert!(
        matches!(error, StoreError::Failed { store: "redis", .. }),
        "a bad key fails its revision, it is no outage: {error:?}"
    );
    let chain = error_chain(error);
    for needle in needles {
        assert!(chain.contains(needle), "{needle:?} not in {chain:?}");
    }
    chain
}

fn raw_get(redis: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(redis).unwrap()
}

pub(crate) fn exists(redis: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(redis).unwrap()
}

/// The markers of `e` on the standalone server (the connection only says
/// which test reads them).
fn markers(_redis: &mut redis::Connection, e: &ElectionId) -> Vec<String> {
    crate::markers_on(&[redis_url()], e).into_iter().collect()
}

#[test]
fn a_counter_holding_oops_stops_its_revision_before_anything_moves() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = crate::unique_election("oops");
    let bad = city_key(&e, "c", "a");
    redis::cmd("SET")
        .arg(&bad)
        .arg("oops")
        .exec(&mut redis)
        .unwrap();

    // The revision touching the bad key and a batch-mate in another city,
    // in one pipeline.
    let revision = counting(&e, "B1", "c", 1, &[("a", 5), ("b", 7)]);
    let mate = counting(&e, "B2", "d", 1, &[("x", 3)]);
    let answers = tally.apply(&[revision.clone(), mate.clone()]);
    let chain = assert_failed_naming(
        &answers[0],
        &[
            &format!("counter {bad} holds \"oops\", not an integer"),
            "applying revision 1 of ballot box B1",
        ],
    );
    eprintln!("the error: {chain}");
    assert_eq!(answers[1].as_ref().unwrap(), &Applied::Now, "batch-mate");

    // Nothing of the revision moved: no marker, no counter; the bad key as
    // it was.
    assert_eq!(raw_get(&mut redis, &bad).as_deref(), Some("oops"));
    for key in [
        national_key(&e, "a"),
        national_key(&e, "b"),
        city_key(&e, "c", "b"),
    ] {
        assert!(!exists(&mut redis, &key), "{key} was moved");
    }
    assert_eq!(
        markers(&mut redis, &e),
        [crate::marker_of(&city_key(&e, "d", "x"), &mate)]
    );
    // Applying again is refused again, and still moves nothing.
    assert_failed_naming(&tally.apply(std::slice::from_ref(&revision))[0], &[&bad]);
    assert!(!exists(&mut redis, &national_key(&e, "a")));

    // Totals keep serving every other counter, and name the bad key.
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(snapshot.unreadable, std::slice::from_ref(&bad));
    // The live feeds' grid names it too, and reads every other counter.
    let grid = tally.grid(&e, None).unwrap();
    assert_eq!(grid, election_core::Grid::from_snapshot(&snapshot));
    assert_eq!(grid.unreadable, std::slice::from_ref(&bad));
    assert_eq!(tally.grid(&e, Some(&grid)).unwrap(), grid);
    assert_eq!(
        snapshot
            .totals
            .get(&Counter::National(PartyId::parse("x").unwrap())),
        3
    );
    assert!(!snapshot.totals.contains(&Counter::City(
        CityId::parse("c").unwrap(),
        PartyId::parse("a").unwrap()
    )));
    // Read by name, it is left out too; `unreadable_counters` says what it holds.
    let by_name = tally
        .counters(
            &e,
            &[Counter::City(
                CityId::parse("c").unwrap(),
                PartyId::parse("a").unwrap(),
            )],
        )
        .unwrap();
    assert!(by_name.is_empty(), "{by_name:?}");
    let unreadable = tally.unreadable_counters(&e, &[]).unwrap();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert_eq!(unreadable[0].key, bad);
    assert_eq!(
        unreadable[0].to_string(),
        format!("{bad} holds \"oops\", not an integer")
    );

    // Once the key is deleted, the next apply counts the revision, once.
    redis::cmd("DEL").arg(&bad).exec(&mut redis).unwrap();
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    let snapshot = tally.snapshot(&e).unwrap();
    assert!(snapshot.unreadable.is_empty());
    let mut expected = election_core::Totals::new();
    expected.add_difference(&CityId::parse("c").unwrap(), &revision.difference);
    expected.add(Counter::National(PartyId::parse("x").unwrap()), 3);
    expected.add(
        Counter::City(CityId::parse("d").unwrap(), PartyId::parse("x").unwrap()),
        3,
    );
    assert_eq!(snapshot.totals, expected);
    assert!(tally.unreadable_counters(&e, &[]).unwrap().is_empty());
}

#[test]
fn a_counter_of_another_type_stops_its_revision_too() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = crate::unique_election("wrongtype");
    let bad = national_key(&e, "b");
    redis::cmd("RPUSH")
        .arg(&bad)
        .arg("x")
        .exec(&mut redis)
        .unwrap();
    let revision = counting(&e, "B1", "c", 1, &[("a", 5), ("b", 7)]);
    assert_failed_naming(
        &tally.apply(std::slice::from_ref(&revision))[0],
        &[&format!("counter {bad} holds a list, not an integer")],
    );
    assert!(markers(&mut redis, &e).is_empty());
    for key in [
        national_key(&e, "a"),
        city_key(&e, "c", "a"),
        city_key(&e, "c", "b"),
    ] {
        assert!(!exists(&mut redis, &key), "{key} was moved");
    }
    // `MGET` reads a key of another type as absent: the snapshot does not
    // fail; `unreadable_counters` tells it apart.
    let snapshot = tally.snapshot(&e).unwrap();
    assert!(snapshot.totals.is_empty(), "{:?}", snapshot.totals);
    let unreadable = tally.unreadable_counters(&e, &[]).unwrap();
    assert_eq!(
        unreadable
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!("{bad} holds a list, not an integer")]
    );

    redis::cmd("DEL").arg(&bad).exec(&mut redis).unwrap();
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    let national = tally.snapshot(&e).unwrap().totals.national();
    assert_eq!(
        national.values().copied().collect::<Vec<_>>(),
        [5, 7],
        "{national:?}"
    );
}

#[test]
fn only_integers_incrby_accepts_are_counters() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = crate::unique_election("integers");
    let key = national_key(&e, "a");
    let mut box_number = 0;
    let mut apply = |value: &str, amount: i64| {
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .exec(&mut redis)
            .unwrap();
        box_number += 1;
        let answer = tally.apply(&[counting(
            &e,
            &format!("B{box_number}"),
            "c",
            1,
            &[("a", amount)],
        )]);
        let after: String = redis::cmd("GET").arg(&key).query(&mut redis).unwrap();
        (answer.into_iter().next().unwrap(), after)
    };
    for (value, amount, expected) in [
        ("0", 2, "2"),
        ("-5", 2, "-3"),
        ("41", 1, "42"),
        // 19 digits, and far enough from the 64-bit limits.
        ("9100000000000000000", 5, "9100000000000000005"),
        ("-9100000000000000000", -5, "-9100000000000000005"),
    ] {
        let (answer, after) = apply(value, amount);
        assert_eq!(answer.unwrap(), Applied::Now, "{value} + {amount}");
        assert_eq!(after, expected, "{value} + {amount}");
    }
    let long = "7".repeat(100);
    for (value, amount, shown) in [
        ("oops", 1, "holds \"oops\", not an integer"),
        ("", 1, "holds \"\", not an integer"),
        ("007", 1, "holds \"007\", not an integer"),
        ("-0", 1, "holds \"-0\", not an integer"),
        ("+1", 1, "holds \"+1\", not an integer"),
        (" 1", 1, "holds \" 1\", not an integer"),
        ("1.5", 1, "holds \"1.5\", not an integer"),
        ("line\nbreak", 1, "holds \"line?break\", not an integer"),
        (
            "9223372036854775808",
            1,
            "holds \"9223372036854775808\", not an integer",
        ),
        (
            long.as_str(),
            1,
            "holds \"7777777777777777777777777777777777777777...\", not an integer",
        ),
        (
            "9223372036854775000",
            1000,
            "holds 9223372036854775000: adding 1000 would overflow 64 bits",
        ),
    ] {
        let (answer, after) = apply(value, amount);
        assert_failed_naming(&answer, &[&format!("counter {key} {shown}")]);
        assert_eq!(after, value, "unchanged");
    }
    assert_eq!(markers(&mut redis, &e).len(), 5, "one per counted revision");
}

#[test]
fn a_bad_counter_on_a_cluster_stops_its_slot_group_and_is_named_by_snapshots() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let e = crate::unique_election("oops");
    let bad = city_key(&e, "c", "a");
    let mut redis = redis::cluster::ClusterClient::new(cluster().urls())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("SET")
        .arg(&bad)
        .arg("oops")
        .exec(&mut redis)
        .unwrap();
    let revision = counting(&e, "B1", "c", 1, &[("a", 5), ("b", 7)]);
    let answers = tally.apply(std::slice::from_ref(&revision));
    assert_failed_naming(
        &answers[0],
        &[&format!("counter {bad} holds \"oops\", not an integer")],
    );
    // On a Cluster each slot group is all or nothing: the bad key's group
    // (here the key alone, unless another counter shares its slot) has no
    // marker and moved nothing; the other groups moved with their markers.
    let bad_slot = keys::slot(bad.as_bytes());
    let get = |redis: &mut redis::cluster::ClusterConnection, key: &str| -> Option<String> {
        redis::cmd("GET").arg(key).query(redis).unwrap()
    };
    for (key, n) in crate::counter_keys(&revision) {
        if key == bad {
            continue;
        }
        let held = get(&mut redis, &key);
        if keys::slot(key.as_bytes()) == bad_slot {
            assert_eq!(held, None, "{key} shares the bad key's group");
        } else {
            assert_eq!(held, Some(n.to_string()), "{key} is in another group");
        }
    }
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(snapshot.unreadable, std::slice::from_ref(&bad));
    assert_eq!(
        tally.unreadable_counters(&e, &[]).unwrap()[0].to_string(),
        format!("{bad} holds \"oops\", not an integer")
    );

    // Deleted: the re-apply moves exactly the group that had not moved.
    redis::cmd("DEL").arg(&bad).exec(&mut redis).unwrap();
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    for (key, n) in crate::counter_keys(&revision) {
        assert_eq!(get(&mut redis, &key), Some(n.to_string()), "{key}");
    }
    assert!(tally.snapshot(&e).unwrap().unreadable.is_empty());
}

fn dbsize(url: &str) -> i64 {
    redis::cmd("DBSIZE").query(&mut connection(url)).unwrap()
}

fn set_policy(url: &str, policy: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg(policy)
        .exec(&mut connection(url))
        .unwrap();
}

#[test]
fn an_evicting_redis_gets_no_counter_and_no_marker() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let tally = private_tally(&server);
    let e = crate::unique_election("evict");
    let batch = [
        counting(&e, "B1", "york", 1, &[("a", 5), ("b", 7)]),
        counting(&e, "B2", "leeds", 1, &[("a", 1)]),
    ];
    for answer in tally.apply(&batch) {
        let chain = assert_failed_naming(
            &answer,
            &[
                "maxmemory-policy allkeys-lru",
                "noeviction",
                "volatile-*",
                &format!("127.0.0.1:{}", server.port()),
            ],
        );
        assert!(
            chain.contains("applying revision 1 of ballot box"),
            "{chain}"
        );
    }
    assert_eq!(dbsize(&server.url()), 0, "no counter, marker or index set");
    // Repairs refuse to write too.
    let guarded = tally.guarded_add(&e, &Counter::National(PartyId::parse("a").unwrap()), 0, 5);
    assert!(
        matches!(&guarded, Err(StoreError::Failed { .. })),
        "{guarded:?}"
    );
    assert_eq!(dbsize(&server.url()), 0);
    // Nor healing's witness: the incarnation is read without writing.
    assert!(tally.incarnation().unwrap().is_some());
    assert_eq!(dbsize(&server.url()), 0, "no witness key");
    let why = tally.evicting_policy().expect("the verdict is kept");
    assert!(why.contains("maxmemory-policy allkeys-lru"), "{why}");
    let checked = tally.check_policy().unwrap_err();
    assert!(
        error_chain(&checked).contains("maxmemory-policy allkeys-lru"),
        "{checked}"
    );
    // Reads still work (query keeps serving what there is).
    assert_eq!(
        tally.snapshot(&e).unwrap(),
        election_core::Snapshot::default()
    );

    // Fixed at run time, without a reconnect: seen within about a second,
    // and the same revisions then count once.
    set_policy(&server.url(), "noeviction");
    std::thread::sleep(Duration::from_millis(1100));
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Already);
    }
    assert_eq!(tally.evicting_policy(), None);
    tally.check_policy().unwrap();
    let national = tally.snapshot(&e).unwrap().totals.national();
    assert_eq!(national.values().copied().collect::<Vec<_>>(), [6, 7]);
}

#[test]
fn every_allkeys_policy_is_refused_and_volatile_ones_are_accepted() {
    let server = RedisServer::start();
    let e = crate::unique_election("policies");
    for (i, policy) in [
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
        "noeviction",
    ]
    .into_iter()
    .enumerate()
    {
        set_policy(&server.url(), policy);
        // A new tally checks at its first use of the node.
        let tally = private_tally(&server);
        let answer = tally
            .apply(&[counting(&e, &format!("B{i}"), "york", 1, &[("a", 1)])])
            .remove(0);
        if policy.starts_with("allkeys-") {
            assert_failed_naming(&answer, &[&format!("maxmemory-policy {policy}")]);
        } else {
            assert_eq!(answer.unwrap(), Applied::Now, "{policy}");
        }
    }
}

#[test]
fn a_reconnect_reads_the_policy_again() {
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = crate::unique_election("reconnect");
    assert_eq!(
        tally.apply(&[counting(&e, "B1", "york", 1, &[("a", 1)])])[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    // The policy changes and the connections drop (as when a differently
    // configured server takes over the address): the next connection checks
    // before anything is written.
    set_policy(&server.url(), "allkeys-lru");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .exec(&mut connection(&server.url()))
        .unwrap();
    let before = dbsize(&server.url());
    let answer = tally
        .apply(&[counting(&e, "B2", "york", 1, &[("a", 1)])])
        .remove(0);
    assert_failed_naming(&answer, &["maxmemory-policy allkeys-lru"]);
    assert_eq!(dbsize(&server.url()), before, "nothing written");
}

/// Sets a master's policy back however the test ends.
struct RestorePolicy(String);

impl Drop for RestorePolicy {
    fn drop(&mut self) {
        set_policy(&self.0, "noeviction");
    }
}

#[test]
fn one_evicting_master_stops_every_write_to_the_cluster() {
    // Exclusive: no other test writes while a master refuses.
    let _layout = cluster_exclusive();
    let master = cluster().urls()[0].clone();
    let _restore = RestorePolicy(master.clone());
    set_policy(&master, "allkeys-lru");
    let tally = cluster_tally();
    let e = crate::unique_election("evict");
    // Enough revisions that their keys reach every master.
    let batch: Vec<_> = (0..30)
        .map(|i| counting(&e, &format!("B{i}"), &format!("c{i}"), 1, &[("a", 1)]))
        .collect();
    for answer in tally.apply(&batch) {
        assert_failed_naming(&answer, &["maxmemory-policy allkeys-lru"]);
    }
    for url in cluster().urls() {
        let mut redis = connection(&url);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*election:{e}:*"))
            .query(&mut redis)
            .unwrap();
        assert!(keys.is_empty(), "{url}: {keys:?}");
    }
    assert!(tally.evicting_policy().is_some());
    drop(_restore);
    // A new tally (a restarted service) finds every master safe.
    let tally = cluster_tally();
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
}
