//! The embedded migrations go up, down and up again, and `schema_status`
//! tells services where the schema stands.

use std::time::Duration;

use election_core::{ReportLog, contract};
use election_test_support::pg::PgSchema;
use store_pg::{PgLog, SchemaStatus};

use crate::support::{execute, lines};

const INITIAL: &str = "20250601000000";
const DEFINITIONS: &str = "20261101000000";
const WRITE_PATH: &str = "20261130000000";
const SEALS: &str = "20261201000000";
const CERTIFICATIONS: &str = "20261201000100";
const ELECTORATE: &str = "20261201000200";
const ID_COLLATION: &str = "20261201000300";
const SEAL_STORAGE: &str = "20261203000000";
const BOX_CHAIN: &str = "20261204000000";
const PENDING_UNCOMPRESSED: &str = "20261204000100";
/// Every migration, in the order they apply.
const ALL: [&str; 10] = [
    INITIAL,
    DEFINITIONS,
    WRITE_PATH,
    SEALS,
    CERTIFICATIONS,
    ELECTORATE,
    ID_COLLATION,
    SEAL_STORAGE,
    BOX_CHAIN,
    PENDING_UNCOMPRESSED,
];

/// The id columns (election, ballot box, city, party) of this schema's
/// tables whose collation is not `C`.
fn id_columns_not_c(pool: &store_pg::PgPool) -> Vec<String> {
    lines(
        pool,
        "SELECT c.relname || '.' || a.attname AS line \
         FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT a.attisdropped \
           AND a.attname IN ('election_id', 'ballot_box_id', 'city', 'party', 'parties') \
           AND a.attcollation <> '\"C\"'::regcollation \
         ORDER BY 1",
    )
}

fn tables(pool: &store_pg::PgPool) -> Vec<String> {
    lines(
        pool,
        "SELECT table_name::text AS line FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY 1",
    )
}

#[test]
fn migrations_go_up_down_and_up_again() {
    let schema = PgSchema::new();
    let pool = store_pg::connect(schema.url(), 2, Duration::from_secs(10)).unwrap();

    assert_eq!(
        store_pg::schema_status(&pool).unwrap(),
        SchemaStatus::Unmigrated
    );
    // Checking the status creates nothing (diesel's harness would).
    assert!(tables(&pool).is_empty());

    assert_eq!(store_pg::migrate(&pool).unwrap(), ALL);
    assert_eq!(
        id_columns_not_c(&pool),
        Vec::<String>::new(),
        "every id column compares as bytes"
    );
    // The checkpoints' arrays out of line and never compressed ('e').
    assert_eq!(
        lines(
            &pool,
            "SELECT attname || ' ' || attstorage::text AS line FROM pg_attribute \
             WHERE attrelid = 'seals'::regclass AND attname IN ('report_ids', 'leaves') \
             ORDER BY attname"
        ),
        ["leaves e", "report_ids e"]
    );
    assert_eq!(
        tables(&pool),
        [
            "__diesel_schema_migrations",
            "api_tokens",
            "ballot_boxes",
            "certified_cities",
            "election_ballot_boxes",
            "election_box_electorates",
            "election_cities",
            "election_definitions",
            "election_parties",
            "pending_batches",
            "pending_reports",
            "reports",
            "seals",
            "vote_log"
        ]
    );
    assert_eq!(
        store_pg::schema_status(&pool).unwrap(),
        SchemaStatus::UpToDate
    );
    assert!(
        store_pg::migrate(&pool).unwrap().is_empty(),
        "nothing left to apply"
    );

    // A newer release migrated the database: this one must not run on it.
    execute(
        &pool,
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('29991231000000')",
    );
    let newer = store_pg::schema_status(&pool).unwrap();
    assert_eq!(newer, SchemaStatus::Newer(vec!["29991231000000".into()]));
    assert!(
        newer.to_string().contains("newer than this release"),
        "{newer}"
    );
    execute(
        &pool,
        "DELETE FROM __diesel_schema_migrations WHERE version = '29991231000000'",
    );

    // Use the schema, then take it all down.
    let log = PgLog::new(pool.clone());
    let e = contract::unique_election("migrate");
    log.record(&contract::seed_reports(&e)).unwrap();
    store_pg::revert_all(&pool).unwrap();
    assert!(tables(&pool).is_empty(), "left behind: {:?}", tables(&pool));
    assert_eq!(
        store_pg::schema_status(&pool).unwrap(),
        SchemaStatus::Unmigrated
    );
    assert!(
        log.record(&contract::seed_reports(&e)).is_err(),
        "no tables, no records"
    );

    // And up again, empty.
    assert_eq!(store_pg::migrate(&pool).unwrap(), ALL);
    assert_eq!(
        store_pg::schema_status(&pool).unwrap(),
        SchemaStatus::UpToDate
    );
    assert_eq!(log.pending_count(&e).unwrap(), 0);
    assert_eq!(log.record(&contract::seed_reports(&e)).unwrap().len(), 3);
    assert_eq!(log.pending_count(&e).unwrap(), 3);
}

#[test]
fn concurrent_migrate_commands_apply_each_migration_once() {
    let schema = PgSchema::new();
    let pool = store_pg::connect(schema.url(), 4, Duration::from_secs(10)).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || store_pg::migrate(&pool).unwrap())
        })
        .collect();
    let applied: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(applied, ALL);
    assert_eq!(
        store_pg::schema_status(&pool).unwrap(),
        SchemaStatus::UpToDate
    );
}

#[test]
fn connections_commit_synchronously_even_when_configured_not_to() {
    // A URL (standing in for a role or database setting) that turns
    // synchronous commit off: the pool turns it back on (I1).
    let schema = PgSchema::new();
    let url = format!("{}%20-c%20synchronous_commit%3Doff", schema.url());
    let pool = store_pg::connect(&url, 1, Duration::from_secs(10)).unwrap();
    assert_eq!(
        lines(
            &pool,
            "SELECT current_setting('synchronous_commit') AS line"
        ),
        ["on"]
    );
    assert_eq!(
        lines(&pool, "SELECT current_setting('search_path') AS line"),
        [schema.name()]
    );
}

#[test]
fn connections_name_their_program_unless_the_url_names_one() {
    // What pg_stat_activity shows an operator for each connection.
    let schema = PgSchema::new();
    let named = store_pg::with_fallback_application_name(schema.url(), "election-test");
    let pool = store_pg::connect(&named, 1, Duration::from_secs(10)).unwrap();
    assert_eq!(
        lines(
            &pool,
            "SELECT application_name AS line FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ),
        ["election-test"]
    );
    // The operator's choice wins over the program's.
    let chosen = format!("{}&application_name=night-shift", schema.url());
    let named = store_pg::with_fallback_application_name(&chosen, "election-test");
    let pool = store_pg::connect(&named, 1, Duration::from_secs(10)).unwrap();
    assert_eq!(
        lines(&pool, "SELECT current_setting('application_name') AS line"),
        ["night-shift"]
    );
}

#[test]
fn the_write_path_migration_moves_recorded_reports_forward() {
    use diesel::Connection;
    use diesel_migrations::MigrationHarness;

    let schema = PgSchema::new();
    let pool = store_pg::connect(schema.url(), 2, Duration::from_secs(10)).unwrap();
    {
        // The schema as the release before the write path left it.
        let mut conn = diesel::PgConnection::establish(schema.url()).unwrap();
        for _ in [INITIAL, DEFINITIONS] {
            conn.run_next_migration(store_pg::MIGRATIONS).unwrap();
        }
    }
    // Box B1: revision 1 counted (a: 4, b: 0 posted), revision 2 pending
    // (a: 6, b omitted). Box B2: revision 1 pending.
    execute(
        &pool,
        "INSERT INTO reports (id, election_id, ballot_box_id, city, revision, reason, payload, \
         payload_hash, completed, attempts, last_error) VALUES \
         (1, 'old', 'B1', 'york', 1, NULL, '{\"ballot_box_id\":\"B1\",\"city\":\"york\",\"votes\":{\"a\":4,\"b\":0}}', \
          sha256('1'), true, 0, NULL), \
         (2, 'old', 'B1', 'york', 2, 'recount', '{\"ballot_box_id\":\"B1\",\"city\":\"york\",\"votes\":{\"a\":6}}', \
          sha256('2'), false, 3, 'redis is unavailable'), \
         (3, 'old', 'B2', 'york', 1, NULL, '{\"ballot_box_id\":\"B2\",\"city\":\"york\",\"votes\":{\"a\":1}}', \
          sha256('3'), false, 0, NULL)",
    );
    execute(
        &pool,
        "INSERT INTO vote_log (report_id, election_id, ballot_box_id, city, party, revision, votes, difference) VALUES \
         (1, 'old', 'B1', 'york', 'a', 1, 4, 4), (1, 'old', 'B1', 'york', 'b', 1, 0, 0), \
         (2, 'old', 'B1', 'york', 'a', 2, 6, 2), (2, 'old', 'B1', 'york', 'b', 2, 0, 0), \
         (3, 'old', 'B2', 'york', 'a', 1, 1, 1)",
    );
    execute(
        &pool,
        "INSERT INTO ballot_boxes (election_id, ballot_box_id, city, latest_revision, latest_report_id) \
         VALUES ('old', 'B1', 'york', 2, 2), ('old', 'B2', 'york', 1, 3)",
    );
    execute(&pool, "SELECT setval('reports_id_seq', 3)");

    assert_eq!(store_pg::migrate(&pool).unwrap(), ALL[2..]);

    // The per-party rows read as before, through the view.
    assert_eq!(
        lines(
            &pool,
            "SELECT concat_ws(' ', report_id, party, votes, difference) AS line FROM vote_log \
             ORDER BY report_id, party"
        ),
        ["1 a 4 4", "1 b 0 0", "2 a 6 2", "2 b 0 0", "3 a 1 1"]
    );
    // What the old log could not tell apart is kept: b was posted with 0 in
    // revision 1 and omitted in revision 2.
    assert_eq!(
        lines(&pool, "SELECT votes::text AS line FROM reports ORDER BY id"),
        ["{4,0}", "{6,NULL}", "{1}"]
    );
    // The pending revisions are pending still, with their claim history.
    assert_eq!(
        lines(
            &pool,
            "SELECT concat_ws(' ', report_id, attempts, last_error) AS line FROM pending_reports \
             ORDER BY report_id"
        ),
        ["2 3 redis is unavailable", "3 0"]
    );
    let log = PgLog::new(pool.clone());
    let e = election_core::ElectionId::parse("old").unwrap();
    assert_eq!(log.pending_count(&e).unwrap(), 2);
    let claimed = log
        .claim_pending(&election_core::Claim {
            limit: 10,
            pending_for: Duration::ZERO,
            lease: Duration::from_secs(60),
        })
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.report_id.0).collect::<Vec<_>>(),
        [2, 3]
    );

    // A new revision of B1 moves from the migrated latest votes: a from 6 to
    // 7, b (omitted before) from nothing to 1.
    let next = election_core::Report::from_json(
        &e,
        br#"{"ballot_box_id":"B1","city":"york","revision":3,"reason":"r","votes":{"a":7,"b":1}}"#,
    )
    .unwrap();
    let recorded = log.record(&[next]).unwrap();
    let election_core::Recorded::Fresh(counting) = &recorded[0] else {
        panic!("not fresh: {recorded:?}");
    };
    assert_eq!(counting.report_id.0, 4);
    assert_eq!(
        counting
            .difference
            .iter()
            .map(|(p, d)| format!("{p} {d}"))
            .collect::<Vec<_>>(),
        ["a 1", "b 1"]
    );
    // The box chain: each revision names the one it replaces (0 for a
    // box's first), the migrated ones filled from their order, and the
    // boxes read as before through the view.
    assert_eq!(
        lines(
            &pool,
            "SELECT concat_ws(' ', id, ballot_box_id, revision, replaces) AS line FROM reports \
             ORDER BY id"
        ),
        ["1 B1 1 0", "2 B1 2 1", "3 B2 1 0", "4 B1 3 2"]
    );
    assert_eq!(
        lines(
            &pool,
            "SELECT concat_ws(' ', ballot_box_id, city, latest_revision, latest_report_id) AS line \
             FROM ballot_boxes ORDER BY ballot_box_id"
        ),
        ["B1 york 3 4", "B2 york 1 3"]
    );
}
