//! The tally on a real Redis Cluster (3 masters, 3 replicas) started for this
//! test process.

use std::collections::{BTreeMap, BTreeSet};

use election_core::contract::{self, SEED_NATIONAL, seed_reports};
use election_core::{Applied, BallotBoxId, Counting, ElectionId, Engine, Outcome, Tally};
use election_test_support::redis::{SlotMove, cluster, connection};
use redis::cluster::{ClusterClient, ClusterConnection};
use store_redis::{APPLY_SCRIPT, RedisTally, keys};

use crate::{
    cluster_exclusive, cluster_shared, cluster_tally, counter_keys, counting, marker_of,
    markers_on, memory_log, tally_dyn, unique_election,
};

/// A cluster-aware connection, as a user reading counters would have.
fn cluster_connection() -> ClusterConnection {
    ClusterClient::new(cluster().urls())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn get(redis: &mut ClusterConnection, key: &str) -> Option<i64> {
    redis::cmd("GET").arg(key).query(redis).unwrap()
}

/// A revision's counters grouped by slot, each group sorted: the adapter's
/// script calls.
fn groups(counting: &Counting) -> Vec<Vec<(String, i64)>> {
    let mut groups: BTreeMap<u16, Vec<(String, i64)>> = BTreeMap::new();
    for (key, n) in counter_keys(counting) {
        groups
            .entry(keys::slot(key.as_bytes()))
            .or_default()
            .push((key, n));
    }
    groups
        .into_values()
        .map(|mut group| {
            group.sort();
            group
        })
        .collect()
}

/// Runs the adapter's script for one group by hand, as the adapter would
/// have before crashing.
fn apply_group_by_hand(
    redis: &mut ClusterConnection,
    counting: &Counting,
    group: &[(String, i64)],
) -> i64 {
    let anchor = &group[0].0;
    let mut eval = redis::cmd("EVAL");
    eval.arg(APPLY_SCRIPT)
        .arg(group.len() + 2)
        .arg(keys::marker_bucket(anchor, &counting.ballot_box))
        .arg(keys::layout_flag(anchor));
    for (key, _) in group {
        eval.arg(key);
    }
    eval.arg(keys::marker_field(&counting.ballot_box, counting.revision))
        .arg(keys::legacy_marker(
            anchor,
            &counting.ballot_box,
            counting.revision,
        ));
    for (_, n) in group {
        eval.arg(*n);
    }
    eval.query(redis).unwrap()
}

#[test]
fn passes_the_tally_contract() {
    let _layout = cluster_shared();
    contract::tally(&|| tally_dyn(cluster_tally()));
}

#[test]
fn passes_the_engine_contract() {
    let _layout = cluster_shared();
    contract::engine(&|| (memory_log(), tally_dyn(cluster_tally())));
}

#[test]
fn users_read_the_seed_totals_with_plain_get() {
    let _layout = cluster_shared();
    let engine = Engine::new(memory_log(), cluster_tally());
    let e = unique_election("seed");
    let outcomes = engine.submit(&seed_reports(&e)).unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))),
        "{outcomes:?}"
    );
    let mut redis = cluster_connection();
    for (party, votes) in SEED_NATIONAL {
        assert_eq!(
            get(&mut redis, &format!("election:{e}:party:{party}")),
            Some(votes),
            "{party}"
        );
    }
    assert_eq!(
        get(
            &mut redis,
            &format!("election:{e}:city:london:party:labour")
        ),
        Some(200)
    );
}

#[test]
fn a_partially_applied_revision_is_completed_exactly() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let mut redis = cluster_connection();
    let e = unique_election("partial");
    let revision = counting(
        &e,
        "B1",
        "york",
        2,
        &[("a", 5), ("b", -2), ("c", 0), ("d", 9)],
    );
    let groups = groups(&revision);
    assert!(
        groups.len() >= 4,
        "8 counters spread over several slots: {groups:?}"
    );

    // A worker ran the first two groups' scripts, then died.
    for group in &groups[..2] {
        assert_eq!(apply_group_by_hand(&mut redis, &revision, group), 1);
    }
    // Re-applying moves exactly the groups that had not moved.
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    for (key, n) in counter_keys(&revision) {
        assert_eq!(get(&mut redis, &key), Some(n), "{key}");
    }
    // And again: nothing moves.
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    for (key, n) in counter_keys(&revision) {
        assert_eq!(get(&mut redis, &key), Some(n), "{key}");
    }

    // A revision whose every group had moved is answered Already.
    let other = counting(&e, "B2", "leeds", 1, &[("a", 1), ("b", 1)]);
    for group in groups_of(&other) {
        assert_eq!(apply_group_by_hand(&mut redis, &other, &group), 1);
    }
    assert_eq!(
        tally.apply(std::slice::from_ref(&other))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    assert_eq!(
        get(&mut redis, &format!("election:{e}:party:a")),
        Some(5 + 1)
    );
}

fn groups_of(counting: &Counting) -> Vec<Vec<(String, i64)>> {
    groups(counting)
}

#[test]
fn one_marker_per_slot_group() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let e = unique_election("markers");
    let batch = [
        counting(&e, "B1", "york", 1, &[("a", 1), ("b", 2), ("c", 3)]),
        counting(&e, "B2", "leeds", 1, &[("a", 1)]),
    ];
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
    let mut expected = BTreeSet::new();
    for counting in &batch {
        for group in groups(counting) {
            let anchor = &group[0].0;
            let bucket = keys::marker_bucket(anchor, &counting.ballot_box);
            // The marker's bucket shares its group's slot.
            assert!(
                group
                    .iter()
                    .all(|(key, _)| keys::slot(key.as_bytes()) == keys::slot(bucket.as_bytes()))
            );
            expected.insert(marker_of(anchor, counting));
        }
    }
    assert_eq!(markers_on(&cluster().urls(), &e), expected);
}

#[test]
fn falls_back_to_loading_the_script_on_every_master() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let e = unique_election("noscript");
    tally.apply(&[counting(&e, "B0", "york", 1, &[("a", 1)])])[0]
        .as_ref()
        .unwrap();
    for url in cluster().urls() {
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec(&mut connection(&url))
            .unwrap();
    }
    let batch: Vec<Counting> = (0..20)
        .map(|i| {
            counting(
                &e,
                &format!("B{}", i + 1),
                "york",
                1,
                &[("a", 1), ("b", 1), ("c", 1)],
            )
        })
        .collect();
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
    let sha = redis::Script::new(APPLY_SCRIPT).get_hash().to_owned();
    for url in cluster().urls() {
        let exists: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query(&mut connection(&url))
            .unwrap();
        assert_eq!(exists, [true], "{url}");
    }
    assert_eq!(
        tally
            .snapshot(&e)
            .unwrap()
            .totals
            .national()
            .values()
            .sum::<i64>(),
        1 + 20 * 3
    );
}

#[test]
fn follows_a_slot_moved_to_another_master() {
    let _layout = cluster_exclusive();
    let tally = cluster_tally();
    // The tally reads the slot map now, before the move.
    tally.ping().unwrap();
    let e = unique_election("moved");
    let first = counting(&e, "B1", "york", 1, &[("a", 10)]);
    assert_eq!(
        tally.apply(std::slice::from_ref(&first))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );

    let national = keys::national(&e, &election_core::PartyId::parse("a").unwrap());
    let slot = keys::slot(national.as_bytes());
    let (from, to) = cluster().move_slot(slot);
    assert_ne!(from, to);
    assert_eq!(cluster().master_of_slot(slot), to);

    // Its slot map is out of date: MOVED, refresh, and on.
    let second = counting(&e, "B2", "york", 1, &[("a", 5)]);
    assert_eq!(
        tally.apply(std::slice::from_ref(&second))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    // The marker moved with the slot: applying the first again is a no-op.
    assert_eq!(
        tally.apply(std::slice::from_ref(&first))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    let mut redis = cluster_connection();
    assert_eq!(get(&mut redis, &national), Some(15));
    assert_eq!(
        tally
            .snapshot(&e)
            .unwrap()
            .totals
            .national()
            .values()
            .sum::<i64>(),
        15
    );
}

/// Counts B1's first revision (`a`: 10) in `e`, then starts moving the slot
/// of `e`'s national counter of `a` and moves the keys it holds so far (the
/// counter, B1's marker bucket, the anchor's layout flag) to the importing
/// master: half-way through a move, with the slot map still naming the
/// source. Returns the move, the counter's key and B1's revision.
pub(crate) fn half_way_through_a_move(
    tally: &RedisTally,
    e: &ElectionId,
) -> (SlotMove, String, Counting) {
    let first = counting(e, "B1", "york", 1, &[("a", 10)]);
    assert_eq!(
        tally.apply(std::slice::from_ref(&first))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    let national = keys::national(e, &election_core::PartyId::parse("a").unwrap());
    let slot_move = cluster().begin_slot_move(keys::slot(national.as_bytes()));
    slot_move.migrate_keys();
    (slot_move, national, first)
}

/// A ballot box whose marker bucket under `anchor` is `ballot_box`'s.
pub(crate) fn bucket_twin(anchor: &str, ballot_box: &BallotBoxId) -> String {
    (0..)
        .map(|n| format!("{ballot_box}-{n}"))
        .find(|name| {
            keys::marker_bucket(anchor, &BallotBoxId::parse(name).unwrap())
                == keys::marker_bucket(anchor, ballot_box)
        })
        .unwrap()
}

#[test]
fn follows_ask_while_a_slot_is_migrating() {
    let _layout = cluster_exclusive();
    let tally = cluster_tally();
    let e = unique_election("ask");
    // Half-way through a move: the national counter and the first marker
    // have left for the importing master; the slot map still names the
    // source, which answers ASK for them.
    let (slot_move, national, first) = half_way_through_a_move(&tally, &e);

    // Re-applying the first revision finds its marker on the importing
    // master (through ASK): a no-op. Reading follows ASK too.
    let again = tally.apply(std::slice::from_ref(&first));
    let snapshot = tally.snapshot(&e);
    // A new revision whose marker bucket does not exist yet names an absent
    // key, and Redis refuses multi-key commands naming absent keys in a
    // migrating slot (TRYAGAIN): it is Unavailable until the move ends, and
    // nothing moved.
    let second = counting(&e, "B2", "york", 1, &[("a", 5)]);
    let during = tally.apply(std::slice::from_ref(&second));
    // A box whose marker bucket already exists (here: shared with B1's, as
    // nearly every bucket is once an election is large) names only keys
    // that have moved together: its script runs on the importing master and
    // counts during the move.
    let twin = bucket_twin(&national, &first.ballot_box);
    let third = counting(&e, &twin, "york", 1, &[("a", 7)]);
    let counted_during = tally.apply(std::slice::from_ref(&third));
    // Finish before asserting, so a failure leaves the cluster whole.
    slot_move.finish();
    assert_eq!(counted_during[0].as_ref().unwrap(), &Applied::Now);
    assert_eq!(again[0].as_ref().unwrap(), &Applied::Already);
    assert_eq!(
        snapshot.unwrap().totals.national().values().sum::<i64>(),
        10
    );
    match &during[0] {
        Err(error) => assert!(error.is_unavailable(), "{error:?}"),
        Ok(applied) => panic!("expected TRYAGAIN, got {applied:?}"),
    }
    assert_eq!(get(&mut cluster_connection(), &national), Some(10 + 7));

    // After the move (MOVED from here on), it applies exactly once.
    assert_eq!(
        tally.apply(std::slice::from_ref(&second))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    assert_eq!(
        tally.apply(std::slice::from_ref(&third))[0]
            .as_ref()
            .unwrap(),
        &Applied::Already
    );
    assert_eq!(get(&mut cluster_connection(), &national), Some(10 + 7 + 5));
}

#[test]
fn a_batch_costs_one_round_trip_per_master_then_one_for_the_journal() {
    // Exclusive: another test's SCRIPT FLUSH would add a reload here.
    let _layout = cluster_exclusive();
    let tally = cluster_tally();
    let e = unique_election("cost");
    // Warm up: slot map read, and the script present on every master (a
    // NOSCRIPT anywhere loads it everywhere; other elections' counters reach
    // every master).
    tally.apply(&[counting(&e, "B0", "york", 1, &[("a", 1)])])[0]
        .as_ref()
        .unwrap();
    let warm = unique_election("warm");
    let warm_up: Vec<Counting> = (0..30)
        .map(|i| counting(&warm, &format!("B{i}"), &format!("c{i}"), 1, &[("a", 1)]))
        .collect();
    for answer in tally.apply(&warm_up) {
        answer.unwrap();
    }
    let batch: Vec<Counting> = (0..500)
        .map(|i| {
            let parties: Vec<(String, i64)> = (0..10).map(|p| (format!("p{p}"), 1)).collect();
            let parties: Vec<(&str, i64)> = parties.iter().map(|(p, n)| (p.as_str(), *n)).collect();
            counting(
                &e,
                &format!("B{}", i + 1),
                &format!("c{}", i % 20),
                1,
                &parties,
            )
        })
        .collect();
    let before = tally.round_trips();
    for answer in tally.apply(&batch) {
        assert_eq!(answer.unwrap(), Applied::Now);
    }
    assert_eq!(
        tally.round_trips() - before,
        4,
        "one pipeline per master, then the change journal's call"
    );
    let before = tally.round_trips();
    let snapshot = tally.snapshot(&e).unwrap();
    // Round one reads three index keys (on up to three masters), round two
    // every counter (on every master).
    let spent = tally.round_trips() - before;
    assert!(
        (4..=6).contains(&spent),
        "{spent} round trips for a snapshot"
    );
    assert_eq!(
        snapshot.totals.national().values().sum::<i64>(),
        1 + 500 * 10
    );
}

#[test]
fn ping_checks_every_master() {
    let _layout = cluster_shared();
    cluster_tally().ping().unwrap();
}

#[test]
fn a_list_of_urls_works_like_the_cluster_scheme() {
    let _layout = cluster_shared();
    let target = store_redis::parse_target(&cluster().urls().join(",")).unwrap();
    let tally = RedisTally::connect(&target, &store_redis::RedisOptions::DEFAULT).unwrap();
    let e = unique_election("list");
    assert_eq!(
        tally.apply(&[counting(&e, "B1", "york", 1, &[("a", 3)])])[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    assert_eq!(
        tally
            .snapshot(&e)
            .unwrap()
            .totals
            .national()
            .values()
            .sum::<i64>(),
        3
    );
}

#[test]
fn revisions_marked_before_buckets_do_not_count_again() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let mut redis = cluster_connection();
    let e = unique_election("legacy");
    let old = counting(&e, "B1", "york", 1, &[("a", 4), ("b", 6), ("c", 1)]);
    // What the tally did before buckets: the index entries, then per slot
    // group a per-key marker and the group's counters.
    for (key, member) in [
        (keys::parties(&e), "a"),
        (keys::parties(&e), "b"),
        (keys::parties(&e), "c"),
        (keys::cities(&e), "york"),
        (
            keys::city_boxes(&e, &election_core::CityId::parse("york").unwrap()),
            "B1",
        ),
    ] {
        redis::cmd("SADD")
            .arg(key)
            .arg(member)
            .exec(&mut redis)
            .unwrap();
    }
    for group in groups(&old) {
        let marker = keys::legacy_marker(&group[0].0, &old.ballot_box, old.revision);
        redis::cmd("SET")
            .arg(&marker)
            .arg("1")
            .exec(&mut redis)
            .unwrap();
        for (key, n) in &group {
            redis::cmd("INCRBY")
                .arg(key)
                .arg(*n)
                .exec(&mut redis)
                .unwrap();
        }
    }
    let new = Counting {
        report_id: election_core::ReportId(2),
        ..counting(&e, "B1", "york", 2, &[("a", 1)])
    };
    assert_eq!(
        tally.unapplied(&[old.clone(), new.clone()]).unwrap(),
        [new.report_id],
        "the per-key markers are found"
    );
    let answers: Vec<Applied> = tally
        .apply(&[old.clone(), new.clone()])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers, [Applied::Already, Applied::Now]);
    assert_eq!(get(&mut redis, &format!("election:{e}:party:a")), Some(5));
    assert_eq!(get(&mut redis, &format!("election:{e}:party:b")), Some(6));
    assert!(tally.unapplied(&[old, new]).unwrap().is_empty());
}

#[test]
fn every_counter_a_script_creates_is_flagged_in_its_slot() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let mut redis = cluster_connection();
    let e = unique_election("flags");
    let party = election_core::PartyId::parse("a").unwrap();
    // A city whose counter of `a` shares a slot with the national one: one
    // script group of two new counters, the national one not its anchor, so
    // its flag is written without being declared. (The city varies, not the
    // party: CRC16 is linear, so two keys differing only in a common suffix
    // of one length keep the same difference of slots whatever it holds.)
    let national_slot = keys::slot(keys::national(&e, &party).as_bytes());
    let city = (0..)
        .map(|n| election_core::CityId::parse(&format!("c{n}")).unwrap())
        .find(|city| keys::slot(keys::city(&e, city, &party).as_bytes()) == national_slot)
        .unwrap();
    let revision = counting(&e, "B1", city.as_str(), 1, &[("a", 3)]);
    assert_eq!(groups(&revision).len(), 1);
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    for key in [keys::city(&e, &city, &party), keys::national(&e, &party)] {
        let flagged: bool = redis::cmd("EXISTS")
            .arg(keys::layout_flag(&key))
            .query(&mut redis)
            .unwrap();
        assert!(flagged, "{key} has its layout flag");
        assert_eq!(get(&mut redis, &key), Some(3));
    }
}
