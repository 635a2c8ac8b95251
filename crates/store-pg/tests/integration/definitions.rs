//! Election definitions: stored whole, read back equal, grown by later loads,
//! never shrunk, and never touching the report log.

use election_core::{Definition, ElectionId, ReportLog, contract};
use store_pg::PgLog;
use store_pg::definitions::{self, LoadError, Loaded};

use crate::support::{Migrated, lines, number};

const FIRST: &str = r##"id = "def-e"
name = "Definition test"

[[parties]]
id = "labour"
name = "Labour"
colour = "#e4003b"

[[cities]]
id = "london"
name = "London"
expected_ballot_boxes = 3

[ballot_boxes]
london = ["BB1", "BB2"]
"##;

#[test]
fn definitions_load_grow_and_refuse_to_shrink() {
    let db = Migrated::new(2);
    let election = ElectionId::parse("def-e").unwrap();
    assert_eq!(definitions::find(&db.pool, &election).unwrap(), None);

    // Counted data that predates the definition is left alone.
    let log = PgLog::new(db.pool.clone());
    let seed = contract::unique_election("def");
    log.record(&contract::seed_reports(&seed)).unwrap();
    let reports_before = number(&db.pool, "SELECT count(*) AS n FROM reports");

    let first = Definition::from_toml(FIRST).unwrap();
    assert_eq!(
        definitions::load(&db.pool, &first).unwrap(),
        Loaded::Created
    );
    assert_eq!(
        definitions::find(&db.pool, &election).unwrap().as_ref(),
        Some(&first)
    );
    let defined = definitions::defined_elections(&db.pool).unwrap();
    assert_eq!(defined.len(), 1);
    assert_eq!(defined[0], election);

    let grown_text = FIRST
        .replace("name = \"London\"", "name = \"Greater London\"")
        .replace("#e4003b", "#ff0000")
        .replace("[ballot_boxes]", "[[cities]]\nid = \"leeds\"\nname = \"Leeds\"\nexpected_ballot_boxes = 1\n\n[[parties]]\nid = \"greens\"\nname = \"Greens\"\ncolour = \"#00aa00\"\n\n[ballot_boxes]")
        .replace("london = [\"BB1\", \"BB2\"]", "london = [\"BB1\", \"BB2\", \"BB4\"]\nleeds = [\"BB3\"]");
    let grown = Definition::from_toml(&grown_text).unwrap();
    match definitions::load(&db.pool, &grown).unwrap() {
        Loaded::Updated(added) => {
            assert_eq!((added.parties, added.cities, added.ballot_boxes), (1, 1, 2));
        }
        other => panic!("expected an update, got {other:?}"),
    }
    let stored = definitions::find(&db.pool, &election).unwrap().unwrap();
    assert_eq!(stored, grown);
    assert_eq!(stored.cities()[0].name, "Greater London");
    assert_eq!(stored.parties()[0].colour.as_str(), "#ff0000");

    // Loading the first file again would remove leeds, greens and two boxes:
    // refused whole, nothing changes.
    match definitions::load(&db.pool, &first) {
        Err(LoadError::Refused(refused)) => {
            let text = refused.to_string();
            assert!(
                text.contains("party \"greens\" is defined and may not be removed"),
                "{text}"
            );
            assert!(
                text.contains("city \"leeds\" is defined and may not be removed"),
                "{text}"
            );
            assert!(
                text.contains("ballot box \"BB3\" is registered and may not be removed"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        definitions::find(&db.pool, &election).unwrap().unwrap(),
        grown
    );
    assert_eq!(
        number(&db.pool, "SELECT count(*) AS n FROM reports"),
        reports_before
    );
}

#[test]
fn a_definition_is_read_again_only_when_a_load_changed_its_version() {
    use election_core::Lookup;
    let db = Migrated::new(2);
    let election = ElectionId::parse("def-e").unwrap();
    assert!(matches!(
        definitions::find_if_changed(&db.pool, &election, None).unwrap(),
        Lookup::Current(None)
    ));

    let first = Definition::from_toml(FIRST).unwrap();
    definitions::load(&db.pool, &first).unwrap();
    let Lookup::Current(Some((read, v1))) =
        definitions::find_if_changed(&db.pool, &election, None).unwrap()
    else {
        panic!("a loaded definition is found");
    };
    assert_eq!(*read, first);
    assert!(matches!(
        definitions::find_if_changed(&db.pool, &election, Some(v1)).unwrap(),
        Lookup::Unchanged
    ));

    // Any load moves the version, even one that only adds a box.
    let grown = Definition::from_toml(&FIRST.replace("\"BB2\"]", "\"BB2\", \"BB9\"]")).unwrap();
    definitions::load(&db.pool, &grown).unwrap();
    let Lookup::Current(Some((read, v2))) =
        definitions::find_if_changed(&db.pool, &election, Some(v1)).unwrap()
    else {
        panic!("a grown definition is read again");
    };
    assert_ne!(v1, v2);
    assert_eq!(*read, grown);
    assert!(matches!(
        definitions::find_if_changed(&db.pool, &election, Some(v2)).unwrap(),
        Lookup::Unchanged
    ));
}

/// The log records a report only when it was checked against the stored
/// version of its election's definition; a load in progress holds back the
/// batches that would check against it until it commits.
#[test]
fn the_log_records_only_reports_checked_against_the_stored_definition() {
    use election_core::{Lookup, Recorded, StoreError};
    use std::time::{Duration, Instant};
    let db = Migrated::new(3);
    let log = PgLog::new(db.pool.clone());
    let election = ElectionId::parse("def-e").unwrap();
    let version = || match definitions::find_if_changed(&db.pool, &election, None).unwrap() {
        Lookup::Current(Some((_, version))) => version,
        other => panic!("defined: {other:?}"),
    };
    let mut report = contract::report(&election, "BB1", "london", 1, &[("labour", 3)]);
    definitions::load(&db.pool, &Definition::from_toml(FIRST).unwrap()).unwrap();
    let refused = |report: &election_core::Report| {
        matches!(
            log.record(std::slice::from_ref(report)),
            Err(StoreError::DefinitionChanged { election: e }) if e == election
        )
    };
    assert!(refused(&report), "checked against no definition");
    let v1 = version();
    report.set_checked_against(Some(v1));
    assert!(matches!(
        log.record(std::slice::from_ref(&report)).unwrap()[0],
        Recorded::Fresh(_)
    ));

    // A load while a recording transaction holds the shared lock waits for
    // it; once it has committed, the old version is refused.
    let grown = Definition::from_toml(&FIRST.replace("\"BB2\"]", "\"BB2\", \"BB9\"]")).unwrap();
    let mut holder = db.pool.get().unwrap();
    diesel::connection::SimpleConnection::batch_execute(
        &mut *holder,
        "BEGIN; SELECT pg_advisory_xact_lock_shared(hashtext('election-definition:def-e'))",
    )
    .unwrap();
    let pool = db.pool.clone();
    let loader = std::thread::spawn(move || {
        let started = Instant::now();
        definitions::load(&pool, &grown).unwrap();
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    diesel::connection::SimpleConnection::batch_execute(&mut *holder, "COMMIT").unwrap();
    assert!(
        loader.join().unwrap() >= Duration::from_millis(250),
        "the load waited"
    );
    let mut second = contract::report(&election, "BB2", "london", 1, &[("labour", 1)]);
    second.set_checked_against(Some(v1));
    assert!(
        refused(&second),
        "checked against the version before the load"
    );
    second.set_checked_against(Some(version()));
    assert!(matches!(
        log.record(std::slice::from_ref(&second)).unwrap()[0],
        Recorded::Fresh(_)
    ));
}

/// A certified city records nothing new, inside the recording transaction:
/// a new box and a correction are refused (`Conflict::Certified`), an
/// identical replay is still a replay, and the certification moves the
/// definition's version (so cached copies read it) and is read back with it.
#[test]
fn a_certified_city_records_nothing_new() {
    use election_core::{Conflict, Lookup, Recorded};
    let db = Migrated::new(2);
    let log = PgLog::new(db.pool.clone());
    let election = ElectionId::parse("def-e").unwrap();
    let two_cities = FIRST.replace(
        "[ballot_boxes]",
        "[[cities]]\nid = \"leeds\"\nname = \"Leeds\"\nexpected_ballot_boxes = 1\n\n[ballot_boxes]",
    );
    definitions::load(&db.pool, &Definition::from_toml(&two_cities).unwrap()).unwrap();
    let version = || match definitions::find_if_changed(&db.pool, &election, None).unwrap() {
        Lookup::Current(Some((definition, version))) => (definition, version),
        other => panic!("defined: {other:?}"),
    };
    let checked = |ballot_box: &str, city: &str, revision: u32, votes: u32| {
        let mut report =
            contract::report(&election, ballot_box, city, revision, &[("labour", votes)]);
        report.set_checked_against(Some(version().1));
        report
    };
    let first = checked("BB1", "london", 1, 3);
    assert!(matches!(
        log.record(std::slice::from_ref(&first)).unwrap()[0],
        Recorded::Fresh(_)
    ));
    let (_, before) = version();

    let london = election_core::CityId::parse("london").unwrap();
    let certified = definitions::certify(
        &db.pool,
        &election,
        Some(std::slice::from_ref(&london)),
        "Returning Officer",
    )
    .unwrap();
    assert_eq!(certified.now.len(), 1);
    assert!(certified.before.is_empty());
    let (definition, after) = version();
    assert_ne!(before, after, "a certification moves the version");
    let how = definition.certification(&london).unwrap();
    assert_eq!(how.by, "Returning Officer");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&how.at).is_ok(),
        "{}",
        how.at
    );
    // The time as PostgreSQL formats it (milliseconds, UTC), and the version
    // as the recording transaction computes it.
    assert_eq!(
        lines(
            &db.pool,
            "SELECT to_char(certified_at AT TIME ZONE 'UTC', \
                            'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS line \
             FROM certified_cities WHERE city = 'london'"
        ),
        std::slice::from_ref(&how.at)
    );
    assert_eq!(
        number(
            &db.pool,
            "SELECT (extract(epoch FROM loaded_at) * 1000000)::bigint AS n \
             FROM election_definitions WHERE election_id = 'def-e'"
        ),
        after.0
    );
    assert!(
        definition
            .certification(&election_core::CityId::parse("leeds").unwrap())
            .is_none()
    );

    let reports_before = number(&db.pool, "SELECT count(*) AS n FROM reports");
    let mut replay = first.clone();
    replay.set_checked_against(Some(after));
    let recorded = log
        .record(&[
            checked("BB2", "london", 1, 5),
            checked("BB1", "london", 2, 4),
            replay,
            checked("BB3", "leeds", 1, 7),
        ])
        .unwrap();
    assert!(
        matches!(&recorded[0], Recorded::Conflict(Conflict::Certified { city }) if *city == london),
        "{recorded:?}"
    );
    assert!(matches!(
        &recorded[1],
        Recorded::Conflict(Conflict::Certified { .. })
    ));
    assert!(
        matches!(&recorded[2], Recorded::Replay { .. }),
        "{recorded:?}"
    );
    assert!(matches!(&recorded[3], Recorded::Fresh(_)), "{recorded:?}");
    assert_eq!(
        number(&db.pool, "SELECT count(*) AS n FROM reports"),
        reports_before + 1,
        "only the other city's report was recorded"
    );

    // Certifying again keeps the first certification; --all adds the rest.
    let again = definitions::certify(&db.pool, &election, None, "Deputy").unwrap();
    assert_eq!(again.before.len(), 1);
    assert_eq!(again.before[0].1.by, "Returning Officer");
    assert_eq!(again.now.len(), 1);
    assert_eq!(again.now[0].0.as_str(), "leeds");
    assert!(matches!(
        definitions::certify(&db.pool, &ElectionId::parse("nobody").unwrap(), None, "x"),
        Err(definitions::CertifyError::NotDefined(_))
    ));
}

/// A recording transaction that had to wait for a certification holding the
/// definition lock reads what that certification committed: the read of the
/// certified cities runs in a statement after the lock was granted, so its
/// snapshot includes the certification, and the report is refused (with the
/// version it was checked against, it is refused as a changed definition;
/// checked against the new version, as certified).
#[test]
fn a_batch_that_waited_for_a_certification_sees_it() {
    use election_core::{Conflict, Lookup, Recorded, StoreError};
    use std::time::{Duration, Instant};
    let db = Migrated::new(3);
    let log = std::sync::Arc::new(PgLog::new(db.pool.clone()));
    let election = ElectionId::parse("def-e").unwrap();
    definitions::load(&db.pool, &Definition::from_toml(FIRST).unwrap()).unwrap();
    let version = || match definitions::find_if_changed(&db.pool, &election, None).unwrap() {
        Lookup::Current(Some((_, version))) => version,
        other => panic!("defined: {other:?}"),
    };
    let before = version();

    // A certification in progress, as `certify` does it: the lock held
    // exclusively, the city certified and the version moved, not committed.
    let mut certifier = db.pool.get().unwrap();
    diesel::connection::SimpleConnection::batch_execute(
        &mut *certifier,
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('election-definition:def-e'));
         INSERT INTO certified_cities (election_id, city, certified_by)
         VALUES ('def-e', 'london', 'Returning Officer');
         UPDATE election_definitions SET loaded_at = loaded_at + interval '1 second'
         WHERE election_id = 'def-e'",
    )
    .unwrap();
    let record = |checked_against| {
        let log = log.clone();
        let mut report = contract::report(&election, "BB1", "london", 1, &[("labour", 3)]);
        report.set_checked_against(Some(checked_against));
        std::thread::spawn(move || {
            let started = Instant::now();
            (log.record(&[report]), started.elapsed())
        })
    };
    let stale = record(before);
    std::thread::sleep(Duration::from_millis(300));
    diesel::connection::SimpleConnection::batch_execute(&mut *certifier, "COMMIT").unwrap();
    let (answer, waited) = stale.join().unwrap();
    assert!(waited >= Duration::from_millis(250), "the batch waited");
    assert!(
        matches!(&answer, Err(StoreError::DefinitionChanged { election: e }) if *e == election),
        "{answer:?}"
    );
    let after = version();
    assert_ne!(before, after);
    let (answer, _) = record(after).join().unwrap();
    assert!(
        matches!(
            &answer.as_deref(),
            Ok([Recorded::Conflict(Conflict::Certified { .. })])
        ),
        "{answer:?}"
    );
    assert_eq!(number(&db.pool, "SELECT count(*) AS n FROM reports"), 0);
}
