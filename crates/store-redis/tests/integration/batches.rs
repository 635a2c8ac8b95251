//! What batching the apply script adds: the groups of one batch that share a
//! slot (standalone: every group of the batch) are one script call, yet
//! each group stays all or nothing and each revision gets the answer it
//! would get alone.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use election_core::{Applied, Counting, ElectionId, Tally, Totals};
use election_test_support::redis::{RedisServer, cluster, connection, redis_url};
use store_redis::{GROUPS_PER_CALL, RedisTally, keys};

use crate::cluster::{bucket_twin, half_way_through_a_move};
use crate::safety::{assert_failed_naming, city_key, exists};
use crate::{
    cluster_exclusive, cluster_shared, cluster_tally, counter_keys, counting, marker_of,
    markers_on, private_tally, standalone_tally, unique_election,
};

/// The totals `batch` adds, each revision once.
fn totals_of<'a>(batch: impl IntoIterator<Item = &'a Counting>) -> Totals {
    let mut totals = Totals::new();
    let mut seen = BTreeSet::new();
    for counting in batch {
        if seen.insert((counting.ballot_box.clone(), counting.revision)) {
            totals.add_difference(&counting.city, &counting.difference);
        }
    }
    totals
}

/// `n` first revisions of boxes `B0..` in `cities` cities, of parties a, b
/// and c.
fn night(e: &ElectionId, n: usize, cities: usize) -> Vec<Counting> {
    (0..n)
        .map(|i| {
            counting(
                e,
                &format!("B{i}"),
                &format!("c{}", i % cities),
                1,
                &[("a", 1), ("b", 2), ("c", 3)],
            )
        })
        .collect()
}

/// Applies `batch` with `tally`, every revision answered `expected`.
#[track_caller]
fn apply_expecting(tally: &RedisTally, batch: &[Counting], expected: Applied) {
    for (answer, counting) in tally.apply(batch).into_iter().zip(batch) {
        assert_eq!(answer.unwrap(), expected, "{}", counting.ballot_box);
    }
}

/// How many `EVALSHA` calls the servers at `urls` have run so far.
fn evalsha_calls(urls: &[String]) -> u64 {
    calls(urls, "evalsha")
}

/// How many times the servers at `urls` have run `command` (lowercase) so
/// far, inside scripts included.
fn calls(urls: &[String], command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    urls.iter()
        .map(|url| {
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut connection(url))
                .unwrap();
            stats
                .lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .map_or(0, |rest| {
                    rest.split(',').next().unwrap().parse::<u64>().unwrap()
                })
        })
        .sum()
}

#[test]
fn a_call_moves_each_counter_once_however_many_revisions_move_it() {
    // A private server, so the commands counted are this test's.
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("merged");
    // 40 revisions of parties a, b, c in 4 cities: 3 national and 12 city
    // counters.
    let batch = night(&e, 40, 4);
    let (incrby, hset) = (
        calls(&[server.url()], "incrby"),
        calls(&[server.url()], "hset"),
    );
    apply_expecting(&tally, &batch, Applied::Now);
    assert_eq!(
        calls(&[server.url()], "incrby") - incrby,
        15,
        "each counter once"
    );
    assert_eq!(calls(&[server.url()], "hset") - hset, 40, "each marker");
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
    assert_eq!(markers_on(&[server.url()], &e).len(), 40);
    // Every counter the call created carries its layout flag.
    let mut redis = connection(&server.url());
    for counting in &batch {
        for (key, _) in counter_keys(counting) {
            let flagged: bool = redis::cmd("EXISTS")
                .arg(keys::layout_flag(&key))
                .query(&mut redis)
                .unwrap();
            assert!(flagged, "{key} has no layout flag");
        }
    }

    // A second batch of the same cities adds to what the first moved.
    let later: Vec<Counting> = (0..10)
        .map(|i| {
            counting(
                &e,
                &format!("L{i}"),
                &format!("c{}", i % 4),
                1,
                &[("a", 10), ("d", 1)],
            )
        })
        .collect();
    apply_expecting(&tally, &later, Applied::Now);
    assert_eq!(
        tally.snapshot(&e).unwrap().totals,
        totals_of(batch.iter().chain(&later))
    );
}

#[test]
fn sums_that_could_leave_64_bits_go_group_by_group() {
    // A private server, so the commands counted are this test's.
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("bigsums");
    // Two revisions whose amounts of `a` sum to 10^15 or more: the merged
    // call is not sent, and each group moves its own counters.
    let n = 600_000_000_000_000;
    let batch = [
        counting(&e, "B1", "york", 1, &[("a", n)]),
        counting(&e, "B2", "york", 1, &[("a", n)]),
    ];
    let incrby = calls(&[server.url()], "incrby");
    apply_expecting(&tally, &batch, Applied::Now);
    assert_eq!(
        calls(&[server.url()], "incrby") - incrby,
        4,
        "two per group"
    );
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
}

#[test]
fn a_batch_mixing_counted_and_new_revisions_counts_each_once() {
    let tally = standalone_tally();
    let e = unique_election("mixed");
    let batch = night(&e, 12, 3);
    // Revisions 2, 5 and 9 were counted before (a crash after the apply,
    // before the log learnt it).
    let counted = [batch[2].clone(), batch[5].clone(), batch[9].clone()];
    apply_expecting(&tally, &counted, Applied::Now);
    let answers: Vec<Applied> = tally
        .apply(&batch)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<Applied> = (0..12)
        .map(|i| {
            if [2, 5, 9].contains(&i) {
                Applied::Already
            } else {
                Applied::Now
            }
        })
        .collect();
    assert_eq!(answers, expected);
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
}

#[test]
fn counters_a_merged_call_cannot_take_are_applied_group_by_group() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = unique_election("unmerged");
    let batch = night(&e, 9, 3);
    // City c1's counter of b is a list; c2's counter of c holds an integer
    // of 16 digits, which the merged call leaves to the careful check.
    let list = city_key(&e, "c1", "b");
    let long = city_key(&e, "c2", "c");
    redis::cmd("RPUSH")
        .arg(&list)
        .arg("x")
        .exec(&mut redis)
        .unwrap();
    redis::cmd("SET")
        .arg(&long)
        .arg("1000000000000000")
        .exec(&mut redis)
        .unwrap();

    let answers = tally.apply(&batch);
    for (i, answer) in answers.iter().enumerate() {
        if i % 3 == 1 {
            assert_failed_naming(
                answer,
                &[&format!("counter {list} holds a list, not an integer")],
            );
        } else {
            assert_eq!(answer.as_ref().unwrap(), &Applied::Now, "B{i}");
        }
    }
    let moved: Vec<&Counting> = batch.iter().filter(|c| c.city.as_str() != "c1").collect();
    let value: i64 = redis::cmd("GET").arg(&long).query(&mut redis).unwrap();
    assert_eq!(
        value,
        1_000_000_000_000_000 + 3 * 3,
        "three revisions of c2"
    );
    let expected = totals_of(moved.iter().copied());
    assert_eq!(
        tally.snapshot(&e).unwrap().totals.national(),
        expected.national()
    );
    assert_eq!(markers_on(&[redis_url()], &e).len(), moved.len());
}

#[test]
fn a_bad_counter_fails_its_revision_alone_and_the_re_apply_moves_exactly_the_rest() {
    let tally = standalone_tally();
    let mut redis = connection(&redis_url());
    let e = unique_election("batchoops");
    // B3 alone reports in city `bad`, whose counter of `a` holds "oops".
    let mut batch = night(&e, 8, 4);
    batch[3] = counting(&e, "B3", "bad", 1, &[("a", 5), ("b", 7)]);
    let bad = city_key(&e, "bad", "a");
    redis::cmd("SET")
        .arg(&bad)
        .arg("oops")
        .exec(&mut redis)
        .unwrap();

    let answers = tally.apply(&batch);
    assert_failed_naming(
        &answers[3],
        &[
            &format!("counter {bad} holds \"oops\", not an integer"),
            "applying revision 1 of ballot box B3",
        ],
    );
    for (i, answer) in answers.iter().enumerate() {
        if i != 3 {
            assert_eq!(answer.as_ref().unwrap(), &Applied::Now, "B{i}");
        }
    }
    // Every other revision moved, with its marker; B3 moved nothing.
    let others: Vec<&Counting> = batch
        .iter()
        .filter(|c| c.ballot_box.as_str() != "B3")
        .collect();
    let snapshot = tally.snapshot(&e).unwrap();
    assert_eq!(snapshot.totals, totals_of(others.iter().copied()));
    assert_eq!(snapshot.unreadable, std::slice::from_ref(&bad));
    let expected: BTreeSet<String> = others
        .iter()
        .map(|c| {
            marker_of(
                &counter_keys(c).into_iter().map(|(k, _)| k).min().unwrap(),
                c,
            )
        })
        .collect();
    assert_eq!(markers_on(&[redis_url()], &e), expected);

    // Fixed: the whole batch again moves B3 alone.
    redis::cmd("DEL").arg(&bad).exec(&mut redis).unwrap();
    let answers: Vec<Applied> = tally
        .apply(&batch)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut expected = vec![Applied::Already; batch.len()];
    expected[3] = Applied::Now;
    assert_eq!(answers, expected);
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
}

/// Applies a batch holding one revision three times (and batch-mates around
/// it) with `tally`: it counts once, answered `Now` the first time.
fn the_same_revision_twice_counts_once(tally: &RedisTally, e: &ElectionId) {
    let twice = counting(e, "B1", "york", 1, &[("a", 5), ("b", 7)]);
    let other = counting(e, "B2", "leeds", 1, &[("a", 1)]);
    let batch = [twice.clone(), twice.clone(), other.clone(), twice];
    let answers: Vec<Applied> = tally
        .apply(&batch)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        answers,
        [
            Applied::Now,
            Applied::Already,
            Applied::Now,
            Applied::Already
        ]
    );
    assert_eq!(tally.snapshot(e).unwrap().totals, totals_of(&batch));
}

#[test]
fn the_same_revision_twice_in_a_batch_counts_once() {
    the_same_revision_twice_counts_once(&standalone_tally(), &unique_election("twice"));
}

#[test]
fn the_same_revision_twice_in_a_batch_counts_once_on_a_cluster() {
    let _layout = cluster_shared();
    the_same_revision_twice_counts_once(&cluster_tally(), &unique_election("twice"));
}

#[test]
fn two_tallies_applying_the_same_batch_at_once_count_it_once() {
    let e = unique_election("race");
    let batch = Arc::new(night(&e, 300, 7));
    let start = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            // Two tallies: two services with connections of their own.
            let tally = standalone_tally();
            let batch = Arc::clone(&batch);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                tally
                    .apply(&batch)
                    .into_iter()
                    .map(Result::unwrap)
                    .collect::<Vec<Applied>>()
            })
        })
        .collect();
    let answers: Vec<Vec<Applied>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (i, (mine, theirs)) in answers[0].iter().zip(&answers[1]).enumerate() {
        let mut pair = [*mine, *theirs];
        pair.sort_by_key(|applied| *applied == Applied::Already);
        assert_eq!(
            pair,
            [Applied::Now, Applied::Already],
            "B{i}: one of the two moved it"
        );
    }
    assert_eq!(answers[0].len(), batch.len());
    assert_eq!(answers[1].len(), batch.len());
    let tally = standalone_tally();
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(batch.iter()));
    assert!(
        tally
            .apply(&batch)
            .into_iter()
            .all(|a| a.unwrap() == Applied::Already)
    );
}

#[test]
fn a_batch_larger_than_the_cap_is_several_calls_in_one_pipeline() {
    // A private server, so the calls counted are this test's.
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("cap");
    let size = 2 * GROUPS_PER_CALL + 10;
    let batch = night(&e, size, 30);
    let (calls, trips) = (evalsha_calls(&[server.url()]), tally.round_trips());
    apply_expecting(&tally, &batch, Applied::Now);
    // Three calls and the journal's step meet NOSCRIPT, and are sent again
    // after SCRIPT LOAD.
    assert_eq!(
        evalsha_calls(&[server.url()]) - calls,
        (3 + 1) * 2,
        "three calls and the journal's"
    );
    assert_eq!(
        tally.round_trips() - trips,
        3,
        "pipeline, SCRIPT LOAD, pipeline"
    );
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
    assert_eq!(markers_on(&[server.url()], &e).len(), size);

    // Again: each merged call finds a marker set and writes nothing, and
    // its groups go through the per-group script in a second pipeline.
    let (calls, trips) = (evalsha_calls(&[server.url()]), tally.round_trips());
    apply_expecting(&tally, &batch, Applied::Already);
    assert_eq!(evalsha_calls(&[server.url()]) - calls, 3 + 1 + 3);
    assert_eq!(tally.round_trips() - trips, 2);
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
}

#[test]
fn revisions_sharing_national_counters_share_a_call_on_a_cluster() {
    // Exclusive: the EVALSHA calls counted on the masters are this test's.
    let _layout = cluster_exclusive();
    let tally = cluster_tally();
    let e = unique_election("shared");
    // Warm up: the slot map read and the script on every master.
    let warm = unique_election("warm");
    for answer in tally.apply(&night(&warm, 30, 30)) {
        answer.unwrap();
    }
    let batch = night(&e, 40, 40);
    let slots: BTreeSet<u16> = batch
        .iter()
        .flat_map(counter_keys)
        .map(|(key, _)| keys::slot(key.as_bytes()))
        .collect();
    // Every revision's national counter of `a` is one key, so one slot.
    assert!(slots.len() < 40 * 6, "{} slots", slots.len());
    let calls = evalsha_calls(&cluster().urls());
    apply_expecting(&tally, &batch, Applied::Now);
    assert_eq!(
        evalsha_calls(&cluster().urls()) - calls,
        slots.len() as u64 + 1,
        "one call per slot, and the journal's step"
    );
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
    apply_expecting(&tally, &batch, Applied::Already);
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
}

#[test]
fn a_bad_national_counter_on_a_cluster_stops_its_groups_in_every_revision() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let mut redis = redis::cluster::ClusterClient::new(cluster().urls())
        .unwrap()
        .get_connection()
        .unwrap();
    let e = unique_election("natoops");
    let bad = keys::national(&e, &election_core::PartyId::parse("a").unwrap());
    redis::cmd("SET")
        .arg(&bad)
        .arg("oops")
        .exec(&mut redis)
        .unwrap();
    let batch = night(&e, 20, 20);
    // Every revision has a group with the bad key, in one call for all.
    for answer in tally.apply(&batch) {
        assert_failed_naming(
            &answer,
            &[&format!("counter {bad} holds \"oops\", not an integer")],
        );
    }
    let bad_slot = keys::slot(bad.as_bytes());
    let get = |redis: &mut redis::cluster::ClusterConnection, key: &str| -> Option<i64> {
        redis::cmd("GET").arg(key).query(redis).unwrap()
    };
    // Per key, what the groups without the bad key moved.
    let mut moved: std::collections::BTreeMap<String, i64> = Default::default();
    for (key, n) in batch.iter().flat_map(counter_keys) {
        if keys::slot(key.as_bytes()) != bad_slot {
            *moved.entry(key).or_default() += n;
        }
    }
    for (key, _) in batch.iter().flat_map(counter_keys) {
        if key != bad {
            assert_eq!(get(&mut redis, &key), moved.get(&key).copied(), "{key}");
        }
    }
    assert!(!moved.is_empty(), "some groups are in other slots");

    // Fixed: the re-apply moves exactly the groups that had not moved.
    redis::cmd("DEL").arg(&bad).exec(&mut redis).unwrap();
    apply_expecting(&tally, &batch, Applied::Now);
    apply_expecting(&tally, &batch, Applied::Already);
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
}

#[test]
fn a_call_split_by_a_slot_migration_is_sent_again_one_group_per_call() {
    let _layout = cluster_exclusive();
    let tally = cluster_tally();
    let e = unique_election("splitcall");
    // Half-way through moving the national counter's slot. One batch, so the
    // national counter's groups of both revisions are one call: B2's bucket
    // does not exist yet (TRYAGAIN while the slot moves), the twin's is
    // B1's, which moved with the counter.
    let (slot_move, national, first) = half_way_through_a_move(&tally, &e);
    let twin = bucket_twin(&national, &first.ballot_box);
    let second = counting(&e, "B2", "york", 1, &[("a", 5)]);
    let third = counting(&e, &twin, "york", 1, &[("a", 7)]);
    let during = tally.apply(&[second.clone(), third.clone()]);
    // Finish before asserting, so a failure leaves the cluster whole.
    slot_move.finish();
    // Sent again one group per call, the twin's group counts during the
    // move as it would alone; B2's waits for the move's end.
    match &during[0] {
        Err(error) => assert!(error.is_unavailable(), "{error:?}"),
        Ok(applied) => panic!("expected TRYAGAIN, got {applied:?}"),
    }
    assert_eq!(during[1].as_ref().unwrap(), &Applied::Now);
    let answers: Vec<Applied> = tally
        .apply(&[second.clone(), third.clone()])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers, [Applied::Now, Applied::Already]);
    assert_eq!(
        tally.snapshot(&e).unwrap().totals,
        totals_of([&first, &second, &third])
    );
}

/// Runs [`store_redis::MERGED_APPLY_SCRIPT`] once with `keys` and `args`.
fn merged_eval(
    redis: &mut redis::Connection,
    keys: &[&str],
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    let mut eval = redis::cmd("EVAL");
    eval.arg(store_redis::MERGED_APPLY_SCRIPT).arg(keys.len());
    eval.arg(keys).arg(args);
    eval.query(redis)
}

/// A hash's fields, sorted (none when the key is absent).
fn fields(redis: &mut redis::Connection, key: &str) -> Vec<String> {
    let mut fields: Vec<String> = redis::cmd("HKEYS").arg(key).query(redis).unwrap();
    fields.sort();
    fields
}

/// The values of `keys` (`None` where absent).
fn values_of(redis: &mut redis::Connection, keys: &[&str]) -> Vec<Option<String>> {
    redis::cmd("MGET").arg(keys).query(redis).unwrap()
}

#[test]
fn a_merged_call_that_meets_a_marker_set_takes_out_the_ones_it_set() {
    // The merged script sets each group's marker and learns from the same
    // HSET whether it was set before. One found set (or failing) makes it
    // take out the fields it added and answer without moving a counter.
    let server = RedisServer::start();
    let mut redis = connection(&server.url());
    let tag = "{election:m:city:c:party:a}";
    let (fresh, shared, marked) = (
        format!("{tag}:applied:1"),
        format!("{tag}:applied:2"),
        format!("{tag}:applied:3"),
    );
    let flag = format!("{tag}:applied:layout");
    let (anchor, new_counter) = ("election:m:city:c:party:a", "election:m:city:c:party:b");
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(&shared)
        .arg("other")
        .arg("1")
        .cmd("HSET")
        .arg(&marked)
        .arg("B3:1")
        .arg("1")
        .cmd("SET")
        .arg(&flag)
        .arg("buckets")
        .cmd("SET")
        .arg(anchor)
        .arg("5")
        .query(&mut redis)
        .unwrap();
    let keys = [
        fresh.as_str(),
        shared.as_str(),
        marked.as_str(),
        flag.as_str(),
        flag.as_str(),
        flag.as_str(),
        anchor,
        new_counter,
    ];
    let args = ["3", "B1:1", "B2:1", "B3:1", "1", "1", "1", "7", "9"];

    // The third group's marker is set: nothing moves, and the first two
    // groups' fields are gone again (the first bucket with its key).
    let reply = merged_eval(&mut redis, &keys, &args).unwrap();
    assert_eq!(reply, redis::Value::Int(0));
    assert_eq!(fields(&mut redis, &fresh), Vec::<String>::new());
    assert!(
        !exists(&mut redis, &fresh),
        "the bucket the call created is gone"
    );
    assert_eq!(fields(&mut redis, &shared), ["other"]);
    assert_eq!(fields(&mut redis, &marked), ["B3:1"]);
    let values = values_of(&mut redis, &[anchor, new_counter]);
    assert_eq!(values, [Some("5".to_owned()), None]);
    let new_flag = keys::layout_flag(new_counter);
    assert!(
        !exists(&mut redis, &new_flag),
        "no flag for a counter that was not created"
    );

    // A bucket of another type: the call answers its error, and the
    // field the first group set is taken out again.
    let _: () = redis::pipe()
        .cmd("HDEL")
        .arg(&marked)
        .arg("B3:1")
        .cmd("DEL")
        .arg(&shared)
        .cmd("SET")
        .arg(&shared)
        .arg("not a hash")
        .query(&mut redis)
        .unwrap();
    let error = merged_eval(&mut redis, &keys, &args).unwrap_err();
    assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    assert_eq!(fields(&mut redis, &fresh), Vec::<String>::new());
    assert_eq!(fields(&mut redis, &marked), Vec::<String>::new());
    let values = values_of(&mut redis, &[anchor, new_counter]);
    assert_eq!(values, [Some("5".to_owned()), None]);

    // Nothing in the way: every marker set, each counter moved once.
    let _: () = redis::cmd("DEL").arg(&shared).query(&mut redis).unwrap();
    let reply = merged_eval(&mut redis, &keys, &args).unwrap();
    assert_eq!(reply, redis::Value::Int(1));
    assert_eq!(fields(&mut redis, &fresh), ["B1:1"]);
    assert_eq!(fields(&mut redis, &shared), ["B2:1"]);
    assert_eq!(fields(&mut redis, &marked), ["B3:1"]);
    let values = values_of(&mut redis, &[anchor, new_counter]);
    assert_eq!(values, [Some("12".to_owned()), Some("9".to_owned())]);
    assert!(
        exists(&mut redis, &new_flag),
        "the counter the call created is flagged"
    );
}

#[test]
fn a_revision_counted_before_in_the_middle_of_a_batch_counts_once() {
    // A private server, so the commands counted are this test's.
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("middle");
    let batch = night(&e, 20, 4);
    apply_expecting(&tally, &batch[10..11], Applied::Now);
    let hdel = calls(&[server.url()], "hdel");
    let answers = tally.apply(&batch);
    for (i, (answer, counting)) in answers.into_iter().zip(&batch).enumerate() {
        let expected = if i == 10 {
            Applied::Already
        } else {
            Applied::Now
        };
        assert_eq!(answer.unwrap(), expected, "{}", counting.ballot_box);
    }
    // The merged call set the ten markers before the one found set, took
    // them out, and the groups went one by one.
    assert_eq!(calls(&[server.url()], "hdel") - hdel, 10);
    assert_eq!(tally.snapshot(&e).unwrap().totals, totals_of(&batch));
    assert_eq!(markers_on(&[server.url()], &e).len(), 20);
}
