//! The tally on the standalone Redis of `REDIS_URL`.

use std::sync::Arc;

use election_core::contract::{self, SEED_NATIONAL, seed_reports};
use election_core::{Applied, BallotBoxId, Engine, Outcome, Tally};
use election_test_support::redis::{connection, redis_url};
use store_redis::keys;

use crate::{
    counter_keys, counting, markers_on, memory_log, standalone_tally, tally_dyn, unique_election,
};

#[test]
fn passes_the_tally_contract() {
    contract::tally(&|| tally_dyn(standalone_tally()));
}

#[test]
fn passes_the_engine_contract() {
    contract::engine(&|| (memory_log(), tally_dyn(standalone_tally())));
}

fn get(connection: &mut redis::Connection, key: &str) -> Option<i64> {
    redis::cmd("GET").arg(key).query(connection).unwrap()
}

#[test]
fn users_read_the_seed_totals_with_plain_get() {
    let engine = Engine::new(memory_log(), standalone_tally());
    let e = unique_election("seed");
    let outcomes = engine.submit(&seed_reports(&e)).unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))),
        "{outcomes:?}"
    );
    let mut redis = connection(&redis_url());
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
    assert_eq!(
        get(
            &mut redis,
            &format!("election:{e}:city:edinburgh:party:reform")
        ),
        Some(5)
    );
}

#[test]
fn applying_again_changes_nothing() {
    let tally = standalone_tally();
    let e = unique_election("again");
    let revision = counting(&e, "B1", "york", 1, &[("a", 7), ("b", 0), ("c", 3)]);
    assert_eq!(
        tally.apply(std::slice::from_ref(&revision))[0]
            .as_ref()
            .unwrap(),
        &Applied::Now
    );
    let before = tally.snapshot(&e).unwrap();
    for _ in 0..3 {
        assert_eq!(
            tally.apply(std::slice::from_ref(&revision))[0]
                .as_ref()
                .unwrap(),
            &Applied::Already
        );
    }
    assert_eq!(tally.snapshot(&e).unwrap(), before);
    // A zero difference still creates its key, so users see "0".
    let mut redis = connection(&redis_url());
    assert_eq!(get(&mut redis, &format!("election:{e}:party:b")), Some(0));
    assert_eq!(
        get(&mut redis, &format!("election:{e}:city:york:party:a")),
        Some(7)
    );
}

#[test]
fn one_marker_per_revision() {
    let tally = standalone_tally();
    let e = unique_election("markers");
    let engine = Engine::new(memory_log(), tally);
    engine.submit(&seed_reports(&e)).unwrap();
    let mut redis = connection(&redis_url());
    let markers = markers_on(&[redis_url()], &e);
    // Three revisions of 4 parties (8 counters each): three markers, each
    // a field of a bucket anchored on the revision's first counter key in
    // sorted order.
    let bucket = |city: &str, ballot_box: &str| {
        keys::marker_bucket(
            &format!("election:{e}:city:{city}:party:labour"),
            &BallotBoxId::parse(ballot_box).unwrap(),
        )
    };
    assert_eq!(
        markers.into_iter().collect::<Vec<_>>(),
        [
            format!("{} BB-EDI-1:1", bucket("edinburgh", "BB-EDI-1")),
            format!("{} BB-LON-1:1", bucket("london", "BB-LON-1")),
            format!("{} BB-MAN-1:1", bucket("manchester", "BB-MAN-1")),
        ]
    );
    // Markers never expire: a revision re-applied much later is still a
    // no-op. Neither do the anchors' layout flags.
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{election:{e}:*}}:applied:*"))
        .query(&mut redis)
        .unwrap();
    assert_eq!(names.len(), 3 + 4 + 12, "3 buckets, a flag per counter");
    for name in &names {
        let ttl: i64 = redis::cmd("TTL").arg(name).query(&mut redis).unwrap();
        assert_eq!(ttl, -1, "{name} has no TTL");
    }
}

/// What the tally did for one revision before buckets: its index entries,
/// then its per-key marker and its counters in one step.
fn apply_as_before_buckets(redis: &mut redis::Connection, counting: &election_core::Counting) {
    let e = &counting.election;
    let mut counters = counter_keys(counting);
    counters.sort();
    let marker = keys::legacy_marker(&counters[0].0, &counting.ballot_box, counting.revision);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (party, _) in counting.difference.iter() {
        pipe.cmd("SADD").arg(keys::parties(e)).arg(party.as_str());
    }
    pipe.cmd("SADD")
        .arg(keys::cities(e))
        .arg(counting.city.as_str());
    pipe.cmd("SADD")
        .arg(keys::city_boxes(e, &counting.city))
        .arg(counting.ballot_box.as_str());
    pipe.cmd("SET").arg(&marker).arg("1");
    for (key, n) in &counters {
        pipe.cmd("INCRBY").arg(key).arg(*n);
    }
    pipe.exec(redis).unwrap();
}

#[test]
fn revisions_marked_before_buckets_do_not_count_again() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = unique_election("legacy");
    // Counted by the layout before buckets: a per-key marker each.
    let old = counting(&e, "B1", "york", 1, &[("a", 7), ("b", 2)]);
    let old_two = counting(&e, "B2", "york", 1, &[("a", 1)]);
    apply_as_before_buckets(&mut redis, &old);
    apply_as_before_buckets(&mut redis, &old_two);
    let national_a = format!("election:{e}:party:a");
    let national_b = format!("election:{e}:party:b");
    // Revision 2 of B1 is new; revision 1 of both boxes is already counted,
    // and checking the markers says so.
    let new = election_core::Counting {
        report_id: election_core::ReportId(2),
        ..counting(&e, "B1", "york", 2, &[("a", 3), ("b", -2)])
    };
    let batch = [old.clone(), new.clone(), old_two.clone()];
    assert_eq!(
        tally.unapplied(&batch).unwrap(),
        [new.report_id],
        "only the new revision lacks a marker"
    );
    let answers: Vec<Applied> = tally
        .apply(&batch)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers, [Applied::Already, Applied::Now, Applied::Already]);
    assert_eq!(get(&mut redis, &national_a), Some(7 + 1 + 3));
    assert_eq!(get(&mut redis, &national_b), Some(0));
    assert!(tally.unapplied(&batch).unwrap().is_empty());
    // The anchor was counted before buckets, so it carries no layout flag
    // and keeps checking per-key markers.
    let anchor = format!("election:{e}:city:york:party:a");
    let flagged: bool = redis::cmd("EXISTS")
        .arg(keys::layout_flag(&anchor))
        .query(&mut redis)
        .unwrap();
    assert!(!flagged, "{anchor} may be named by per-key markers");
}

#[test]
fn index_sets_name_what_was_seen() {
    let tally = standalone_tally();
    let e = unique_election("index");
    let batch = [
        counting(&e, "B1", "york", 1, &[("a", 1), ("b", 2)]),
        counting(&e, "B2", "york", 1, &[("a", 1)]),
        counting(&e, "B3", "leeds", 1, &[("c", 1)]),
    ];
    for answer in tally.apply(&batch) {
        answer.unwrap();
    }
    let mut redis = connection(&redis_url());
    // No election-wide set of boxes: the nation's are the cities' (store-redis's
    // "Indexes").
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("election:{e}:meta:boxes"))
        .query(&mut redis)
        .unwrap();
    assert!(
        !exists,
        "the election-wide set of boxes is no longer written"
    );
    let mut members = |key: String| {
        let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(key).query(&mut redis).unwrap();
        members.sort();
        members
    };
    assert_eq!(members(keys::parties(&e)), ["a", "b", "c"]);
    assert_eq!(members(keys::cities(&e)), ["leeds", "york"]);
    let york = election_core::CityId::parse("york").unwrap();
    assert_eq!(members(keys::city_boxes(&e, &york)), ["B1", "B2"]);
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(snapshot.cities.get(&york), Some(&2));
    assert_eq!(snapshot.ballot_boxes_reported, 3);
}

#[test]
fn falls_back_to_loading_the_script_after_script_flush() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = unique_election("noscript");
    // Warm up: the script is known and a connection is pooled.
    tally.apply(&[counting(&e, "B0", "york", 1, &[("a", 1)])])[0]
        .as_ref()
        .unwrap();
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut redis).unwrap();
    let answers = tally.apply(&[
        counting(&e, "B1", "york", 1, &[("a", 2), ("b", 3)]),
        counting(&e, "B2", "leeds", 1, &[("a", 4)]),
    ]);
    assert!(
        answers.iter().all(|a| matches!(a, Ok(Applied::Now))),
        "{answers:?}"
    );
    let sha = redis::Script::new(store_redis::APPLY_SCRIPT)
        .get_hash()
        .to_owned();
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query(&mut redis)
        .unwrap();
    assert_eq!(exists, [true]);
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(
        snapshot.totals.national().values().sum::<i64>(),
        1 + 2 + 3 + 4
    );
}

#[test]
fn ping_answers_when_redis_is_up() {
    standalone_tally().ping().unwrap();
}

#[test]
fn concurrent_callers_share_one_tally() {
    // Many threads, one tally: every revision counted once, and no thread
    // waits for another's connection (the pool opens more).
    let tally = standalone_tally();
    let e = unique_election("threads");
    let handles: Vec<_> = (0..8)
        .map(|thread| {
            let tally = Arc::clone(&tally);
            let e = e.clone();
            std::thread::spawn(move || {
                for round in 0..20 {
                    let batch: Vec<_> = (0..10)
                        .map(|i| {
                            counting(
                                &e,
                                &format!("B{thread}-{round}-{i}"),
                                "york",
                                1,
                                &[("a", 1)],
                            )
                        })
                        .collect();
                    for answer in tally.apply(&batch) {
                        assert_eq!(answer.unwrap(), Applied::Now);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(
        snapshot.totals.national().values().sum::<i64>(),
        8 * 20 * 10
    );
    assert_eq!(snapshot.ballot_boxes_reported, 8 * 20 * 10);
}
