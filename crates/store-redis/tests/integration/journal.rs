//! The change journal (`journal` module) beyond the contract suite: what a
//! reader is told when the journal was lost, that a journal that cannot be
//! written fails no revision, and that it is written after the counters on
//! a Cluster. Also `Tally::incarnation`, the other way a reader (healing)
//! learns that a server was lost.

use election_core::{Applied, CityId, JournalCursor, StoreError, Tally};
use election_test_support::redis::{RedisServer, connection};
use store_redis::{RedisOptions, RedisTally, RedisTarget, keys};

use crate::{cluster_shared, cluster_tally, counting, private_tally, unique_election};

fn city(name: &str) -> CityId {
    CityId::parse(name).unwrap()
}

#[test]
fn a_journal_lost_since_the_cursor_says_read_everything() {
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("journal-lost");
    let batch = [
        counting(&e, "B1", "york", 1, &[("a", 1)]),
        counting(&e, "B2", "leeds", 1, &[("a", 2)]),
    ];
    assert!(tally.apply(&batch).iter().all(Result::is_ok));
    let moved = tally.moved_since(&e, None).unwrap().unwrap();
    assert_eq!(moved.cities, None, "no cursor: the journal cannot tell");
    assert!(moved.cursor > JournalCursor(0));

    // Redis restarts empty: the position starts again from nothing.
    redis::cmd("FLUSHALL")
        .exec(&mut connection(&server.url()))
        .unwrap();
    let lost = tally.moved_since(&e, Some(moved.cursor)).unwrap().unwrap();
    assert_eq!(lost.cities, None, "the journal is behind the cursor");
    assert_eq!(lost.cursor, JournalCursor(0));

    // A reader that took the new cursor follows the new journal.
    assert!(
        tally.apply(&[counting(&e, "B3", "hull", 1, &[("a", 1)])])[0]
            .as_ref()
            .is_ok()
    );
    let after = tally.moved_since(&e, Some(lost.cursor)).unwrap().unwrap();
    assert_eq!(after.cities, Some(vec![city("hull")]));
}

/// A journal lost and begun again reads as lost even once it has taken
/// more steps than the old one had: counted from 1 again, three steps would
/// have passed the old journal's one, and the reader been told only "hull,
/// leeds, york" moved instead of "read everything".
#[test]
fn a_journal_begun_again_reads_as_lost_however_many_steps_it_took() {
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("journal-again");
    assert!(
        tally.apply(&[counting(&e, "B1", "york", 1, &[("a", 1)])])[0]
            .as_ref()
            .is_ok()
    );
    let seen = tally.moved_since(&e, None).unwrap().unwrap().cursor;
    assert!(
        seen.0 < store_redis::JOURNAL_ORIGIN_CEILING && seen.0 > (1 << 50),
        "a journal starts at its origin, not at 1: {seen:?}"
    );

    redis::cmd("FLUSHALL")
        .exec(&mut connection(&server.url()))
        .unwrap();
    for (ballot_box, city) in [("B2", "york"), ("B3", "leeds"), ("B4", "hull")] {
        assert!(
            tally.apply(&[counting(&e, ballot_box, city, 1, &[("a", 1)])])[0]
                .as_ref()
                .is_ok()
        );
    }
    let lost = tally.moved_since(&e, Some(seen)).unwrap().unwrap();
    assert_eq!(lost.cities, None, "the new journal is below the cursor");
    assert!(lost.cursor < seen, "{:?} against {seen:?}", lost.cursor);

    // Within one journal, positions rise by one a step.
    assert!(
        tally.apply(&[counting(&e, "B5", "bath", 1, &[("a", 1)])])[0]
            .as_ref()
            .is_ok()
    );
    let next = tally.moved_since(&e, Some(lost.cursor)).unwrap().unwrap();
    assert_eq!(next.cities, Some(vec![city("bath")]));
    assert_eq!(next.cursor.0, lost.cursor.0 + 1);
}

#[test]
fn a_journal_that_cannot_be_written_fails_no_revision() {
    let server = RedisServer::start();
    let tally = private_tally(&server);
    let e = unique_election("journal-broken");
    let mut redis = connection(&server.url());
    redis::cmd("SET")
        .arg(keys::moved(&e))
        .arg("not a sorted set")
        .exec(&mut redis)
        .unwrap();
    let answers = tally.apply(&[counting(&e, "B1", "york", 1, &[("a", 4)])]);
    assert_eq!(answers[0].as_ref().unwrap(), &Applied::Now);
    let totals = tally.snapshot(&e).unwrap().totals;
    assert_eq!(totals.len(), 2, "both counters moved: {totals:?}");
    let error = tally.moved_since(&e, Some(JournalCursor(0))).unwrap_err();
    assert!(
        error.to_string().contains("change journal"),
        "the reader's error names the journal: {error}"
    );
}

#[test]
fn on_a_cluster_the_journal_names_what_moved_and_only_that() {
    let _layout = cluster_shared();
    let tally = cluster_tally();
    let e = unique_election("journal-cluster");
    let start = tally.moved_since(&e, None).unwrap().unwrap().cursor;
    let first = [
        counting(&e, "B1", "york", 1, &[("a", 1), ("b", 2)]),
        counting(&e, "B2", "leeds", 1, &[("a", 3)]),
    ];
    assert!(tally.apply(&first).iter().all(Result::is_ok));
    let one = tally.moved_since(&e, Some(start)).unwrap().unwrap();
    assert_eq!(one.cities, Some(vec![city("leeds"), city("york")]));

    // Applied again, nothing moves: nothing is journalled.
    assert!(
        tally
            .apply(&first)
            .into_iter()
            .all(|answer| answer.unwrap() == Applied::Already)
    );
    let again = tally.moved_since(&e, Some(one.cursor)).unwrap().unwrap();
    assert_eq!(again.cities, Some(vec![]));
    assert_eq!(again.cursor, one.cursor);

    // What the journal names reads as the whole grid would.
    let known = tally.grid(&e, None).unwrap();
    let second = counting(&e, "B1", "york", 2, &[("a", 5), ("b", 2)]);
    assert!(tally.apply(std::slice::from_ref(&second))[0].is_ok());
    let two = tally.moved_since(&e, Some(one.cursor)).unwrap().unwrap();
    let cities = two.cities.unwrap();
    assert_eq!(cities, [city("york")]);
    assert_eq!(
        tally.grid_moved(&e, &known, &cities).unwrap(),
        tally.grid(&e, None).unwrap()
    );
}

/// `Tally::incarnation`, which healing watches between sweeps: the same
/// while the server is and keeps its data, another once it was flushed
/// (its witness key lost) and again once it restarted; on a Cluster one
/// entry per master, and a master that lost its data changes its own.
#[test]
fn the_incarnation_changes_when_a_server_restarts_or_loses_its_data() {
    let mut server = RedisServer::start();
    let tally = private_tally(&server);
    let first = tally.incarnation().unwrap().expect("Redis can tell");
    assert_eq!(first.0.len(), 1, "{first:?}");
    assert_eq!(tally.incarnation().unwrap(), Some(first.clone()));
    redis::cmd("FLUSHALL")
        .exec(&mut connection(&server.url()))
        .unwrap();
    let flushed = tally.incarnation().unwrap().expect("Redis can tell");
    assert_ne!(flushed, first, "a flushed server lost its data");
    assert_eq!(tally.incarnation().unwrap(), Some(flushed.clone()));

    server.kill();
    assert!(tally.incarnation().is_err(), "a dead server cannot tell");
    server.restart();
    let after = tally.incarnation().unwrap().expect("Redis can tell");
    assert_ne!(after, flushed, "a restarted server is another incarnation");

    let _layout = cluster_shared();
    let cluster = election_test_support::redis::cluster();
    let tally = cluster_tally();
    let before = tally.incarnation().unwrap().unwrap();
    assert_eq!(before.0.len(), 3, "{before:?}");
    assert_eq!(tally.incarnation().unwrap(), Some(before.clone()));
    // One master loses its witness, as a flush of it would (the shared
    // Cluster's other keys belong to other tests).
    let url = &cluster.urls()[1];
    let mut master = connection(url);
    let witnesses: Vec<String> = redis::cmd("KEYS")
        .arg("election::witness:*")
        .query(&mut master)
        .unwrap();
    assert_eq!(witnesses.len(), 1, "{url}: {witnesses:?}");
    redis::cmd("DEL").arg(&witnesses).exec(&mut master).unwrap();
    let after = tally.incarnation().unwrap().unwrap();
    let changed: Vec<(&String, &String)> = before
        .0
        .iter()
        .zip(&after.0)
        .filter(|(was, is)| was != is)
        .collect();
    assert_eq!(changed.len(), 1, "{before:?} then {after:?}");
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    assert!(
        changed[0].1.contains(&format!(":{port} ")),
        "{url} lost its witness, yet {changed:?} changed"
    );
}

/// A Redis user whose ACL refuses `INFO` cannot tell who the servers are:
/// a failure retrying will not fix (`StoreError::Failed`, which healing
/// warns of once), not an outage, and the answer names the refusal.
#[test]
fn an_acl_that_refuses_info_is_a_failure_not_an_outage() {
    let server = RedisServer::start();
    redis::cmd("ACL")
        .arg(&["SETUSER", "healer", "on", "nopass", "~*", "+@all", "-info"])
        .exec(&mut connection(&server.url()))
        .unwrap();
    let url = server.url().replacen("redis://", "redis://healer:any@", 1);
    let tally = RedisTally::connect(&RedisTarget::Standalone(url), &RedisOptions::DEFAULT).unwrap();
    match tally.incarnation() {
        Err(error @ StoreError::Failed { .. }) => {
            let why = election_core::engine::explain(&error);
            assert!(why.contains("refused INFO server"), "{why}");
            assert!(why.to_lowercase().contains("noperm"), "{why}");
        }
        other => panic!("expected a failure naming the refusal, got {other:?}"),
    }
    // The same user may count: the refusal is the watch's alone.
    let election = unique_election("acl");
    let applied = tally.apply(&[counting(&election, "box-1", "c", 1, &[("a", 3)])]);
    assert!(matches!(applied[..], [Ok(Applied::Now)]), "{applied:?}");
}
