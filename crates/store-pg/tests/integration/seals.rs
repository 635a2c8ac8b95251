//! The sealed log on a real server: every recorded report is sealed, a
//! report still being recorded holds the horizon back instead of being left
//! out, and `verify` names each kind of tampering (a vote or a per-party
//! row altered, a report removed, one inserted below a checkpoint, the
//! seals rewritten, a noted head that is gone).

use election_core::contract::{report, unique_election};
use election_core::{ElectionId, Recorded, Report, ReportLog};
use store_pg::PgLog;
use store_pg::seal::{self, Finding, Head, Sealer, ZERO_HEAD};

use crate::support::{Migrated, execute, number};

fn night(e: &ElectionId) -> Vec<Report> {
    vec![
        report(e, "B1", "london", 1, &[("labour", 200), ("tories", 120)]),
        report(e, "B2", "leeds", 1, &[("labour", 90), ("reform", 30)]),
        report(e, "B3", "york", 1, &[("tories", 70)]),
    ]
}

fn record(log: &PgLog, reports: &[Report]) -> Vec<i64> {
    log.record(reports)
        .expect("recording")
        .iter()
        .map(|answer| match answer {
            Recorded::Fresh(counting) => counting.report_id.0,
            other => panic!("expected fresh, got {other:?}"),
        })
        .collect()
}

/// Rounds until `sealer` has sealed `expected` reports of `e` (at most 10).
fn seal_all(sealer: &mut Sealer, db: &Migrated, e: &ElectionId, expected: i64) {
    for _ in 0..10 {
        sealer.round().expect("a sealing round");
        let heads = seal::audit_heads(&db.pool, e, None, 10).unwrap();
        if heads.latest.as_ref().map(|c| c.sealed_count) == Some(expected) {
            return;
        }
    }
    panic!("{expected} reports of {e} were not sealed in 10 rounds");
}

fn first(db: &Migrated, e: &ElectionId) -> Option<Finding> {
    seal::verify(&db.pool, e, None)
        .expect("verify runs")
        .findings
        .into_iter()
        .next()
}

#[test]
fn every_report_is_sealed_and_verify_names_each_kind_of_tampering() {
    let db = Migrated::new(4);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("seal");
    let mut ids = record(&log, &night(&e));
    // An id handed out and never committed (a rolled-back batch): a gap a
    // forger could try to fill.
    let gap = number(&db.pool, "SELECT nextval('reports_id_seq') AS n");
    ids.extend(record(
        &log,
        &[report(
            &e,
            "B1",
            "london",
            2,
            &[("labour", 201), ("tories", 118)],
        )],
    ));
    let correction = ids[3];

    let mut sealer = Sealer::new(db.pool.clone());
    // The first round only reads a horizon; nothing is sealed before it is
    // proved.
    let first_round = sealer.round().unwrap();
    assert!(first_round.sealed.is_empty(), "{first_round:?}");
    seal_all(&mut sealer, &db, &e, 4);
    let heads = seal::audit_heads(&db.pool, &e, None, 10).unwrap();
    let latest = heads.latest.clone().unwrap();
    assert!(latest.sealed_through_report_id >= correction);
    assert_ne!(latest.head, ZERO_HEAD);

    let intact = seal::verify(&db.pool, &e, Some(latest.head)).unwrap();
    assert_eq!(intact.findings, vec![]);
    assert_eq!(intact.unsealed, 0);
    assert_eq!(intact.latest.as_ref(), Some(&latest));

    // A vote changed by hand.
    execute(
        &db.pool,
        &format!(
            "UPDATE reports SET votes[1] = votes[1] + 1 WHERE id = {}",
            ids[1]
        ),
    );
    assert_eq!(first(&db, &e), Some(Finding::Altered { report_id: ids[1] }));
    execute(
        &db.pool,
        &format!(
            "UPDATE reports SET votes[1] = votes[1] - 1 WHERE id = {}",
            ids[1]
        ),
    );
    assert_eq!(first(&db, &e), None, "restored");

    // A per-party difference, a NULL vote made 0, the payload, the time.
    for (change, undo) in [
        (
            "differences[1] = differences[1] + 5",
            "differences[1] = differences[1] - 5",
        ),
        (
            "received_at = received_at + interval '1 microsecond'",
            "received_at = received_at - interval '1 microsecond'",
        ),
        ("reason = 'tampered'", "reason = 'recount 2'"),
    ] {
        execute(
            &db.pool,
            &format!("UPDATE reports SET {change} WHERE id = {correction}"),
        );
        assert_eq!(
            first(&db, &e),
            Some(Finding::Altered {
                report_id: correction
            }),
            "{change}"
        );
        execute(
            &db.pool,
            &format!("UPDATE reports SET {undo} WHERE id = {correction}"),
        );
        assert_eq!(first(&db, &e), None, "undoing {change}");
    }
    execute(
        &db.pool,
        &format!(
            "UPDATE reports SET payload = '{{\"ballot_box_id\":\"B3\",\"city\":\"york\",\"votes\":{{\"tories\":71}}}}' \
             WHERE id = {}",
            ids[2]
        ),
    );
    assert_eq!(first(&db, &e), Some(Finding::Altered { report_id: ids[2] }));

    // Removed: the report's row is gone.
    execute(
        &db.pool,
        &format!(
            "CREATE TABLE kept AS SELECT * FROM reports WHERE id = {}",
            ids[0]
        ),
    );
    execute(
        &db.pool,
        &format!("DELETE FROM reports WHERE id = {}", ids[0]),
    );
    let found = seal::verify(&db.pool, &e, None).unwrap().findings;
    assert_eq!(found[0], Finding::Removed { report_id: ids[0] });
    assert_eq!(found[1], Finding::Altered { report_id: ids[2] });
    execute(&db.pool, "INSERT INTO reports SELECT * FROM kept");
    assert_eq!(first(&db, &e), Some(Finding::Altered { report_id: ids[2] }));

    // Inserted: a row in the gap, below the checkpoint.
    execute(
        &db.pool,
        &format!(
            "INSERT INTO reports (id, election_id, ballot_box_id, city, revision, replaces, payload, \
             payload_hash, parties, votes, differences) \
             SELECT {gap}, election_id, 'B9', city, 1, 0, payload, payload_hash, parties, votes, differences \
             FROM reports WHERE id = {}",
            ids[1]
        ),
    );
    let found = seal::verify(&db.pool, &e, None).unwrap().findings;
    assert_eq!(
        found,
        vec![
            Finding::Altered { report_id: ids[2] },
            Finding::Inserted { report_id: gap },
        ]
    );
}

#[test]
fn rewritten_seals_and_a_vanished_noted_head_are_found() {
    let db = Migrated::new(4);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("seal-rewrite");
    record(&log, &night(&e));
    let mut sealer = Sealer::new(db.pool.clone());
    seal_all(&mut sealer, &db, &e, 3);
    let noted = seal::audit_heads(&db.pool, &e, None, 1)
        .unwrap()
        .latest
        .unwrap();

    // A forger who changes a vote and recomputes the leaf, not the head.
    execute(
        &db.pool,
        "UPDATE seals SET leaves = overlay(leaves placing '\\x00'::bytea from 1 for 1)",
    );
    let found = seal::verify(&db.pool, &e, Some(noted.head))
        .unwrap()
        .findings;
    assert!(
        matches!(&found[0], Finding::SealBroken { detail, .. } if detail.contains("not the chain")),
        "{found:?}"
    );

    // A head nobody published.
    let unknown = Head([7; 32]);
    let found = seal::verify(&db.pool, &e, Some(unknown)).unwrap().findings;
    assert!(
        found.contains(&Finding::HeadUnknown { head: unknown }),
        "{found:?}"
    );
}

#[test]
fn a_report_still_being_recorded_holds_the_horizon_back() {
    let db = Migrated::new(4);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("seal-late");
    record(&log, &night(&e)[..1]);

    // A recording transaction as `crate::record` runs it: the election's
    // definition lock (shared), then an id; it has not committed yet.
    let mut late = db.pool.get().unwrap();
    use diesel::RunQueryDsl;
    use diesel::connection::SimpleConnection;
    late.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock_shared(hashtext('election-definition:' || '{e}'))"
    ))
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let early_id = diesel::sql_query("SELECT nextval('reports_id_seq') AS id")
        .get_result::<Id>(&mut late)
        .unwrap()
        .id;
    // A later id commits first.
    let later = record(&log, &night(&e)[1..2])[0];
    assert!(later > early_id);

    let mut sealer = Sealer::new(db.pool.clone());
    for _ in 0..4 {
        let round = sealer.round().unwrap();
        let sealed = seal::audit_heads(&db.pool, &e, None, 1)
            .unwrap()
            .latest
            .map_or(0, |c| c.sealed_through_report_id);
        assert!(
            sealed < early_id,
            "sealed through {sealed} while report {early_id} was being recorded: {round:?}"
        );
    }

    // It commits, after the later one.
    diesel::sql_query(format!(
        "INSERT INTO reports (id, election_id, ballot_box_id, city, revision, replaces, payload, \
         payload_hash, parties, votes, differences) \
         VALUES ({early_id}, '{e}', 'B7', 'leeds', 1, 0, '{{\"ballot_box_id\":\"B7\",\"city\":\"leeds\",\"votes\":{{\"labour\":1}}}}', \
         decode(repeat('ab', 32), 'hex'), ARRAY['labour'], ARRAY[1], ARRAY[1::bigint])"
    ))
    .execute(&mut late)
    .unwrap();
    late.batch_execute("COMMIT").unwrap();
    drop(late);

    seal_all(&mut sealer, &db, &e, 3);
    let verification = seal::verify(&db.pool, &e, None).unwrap();
    assert_eq!(
        verification.findings,
        vec![],
        "the late report is sealed, not inserted"
    );
    assert!(verification.latest.unwrap().sealed_through_report_id >= later);
}

#[test]
fn checkpoints_page_newest_first() {
    let db = Migrated::new(4);
    let log = PgLog::new(db.pool.clone());
    let e = unique_election("seal-pages");
    let mut sealer = Sealer::new(db.pool.clone());
    for i in 0..3 {
        record(
            &log,
            &[report(
                &e,
                &format!("P{i}"),
                "york",
                1,
                &[("labour", i + 1)],
            )],
        );
        seal_all(&mut sealer, &db, &e, i64::from(i) + 1);
    }
    let all = seal::audit_heads(&db.pool, &e, None, 10).unwrap();
    let latest = all.latest.unwrap();
    assert_eq!(latest.sealed_count, 3);
    let counts: Vec<i64> = all.earlier.iter().map(|c| c.sealed_count).collect();
    assert_eq!(counts, vec![2, 1]);
    assert!(!all.more);
    let page = seal::audit_heads(&db.pool, &e, None, 1).unwrap();
    assert_eq!(page.earlier.len(), 1);
    assert!(page.more);
    let next = seal::audit_heads(
        &db.pool,
        &e,
        Some(page.earlier[0].sealed_through_report_id),
        1,
    )
    .unwrap();
    assert_eq!(next.earlier[0].sealed_count, 1);
    assert!(!next.more);
    // The chain links: each head follows from the one before.
    let verification = seal::verify(&db.pool, &e, Some(all.earlier[1].head)).unwrap();
    assert_eq!(verification.findings, vec![]);
    assert_eq!(verification.checkpoints, 3);
}
