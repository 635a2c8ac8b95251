//! The embedded migrations go up, down and up again, and `schema_status`
//! tells services where the schema stands.

use std::time::Duration;

use election_core::{ReportLog, contract};
use store_pg::{PgLog, SchemaStatus};
use test_support::pg::PgSchema;

use crate::support::{execute, lines};

const INITIAL: &str = "20250601000000";
const DEFINITIONS: &str = "20261101000000";

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

    assert_eq!(store_pg::migrate(&pool).unwrap(), [INITIAL, DEFINITIONS]);
    assert_eq!(
        tables(&pool),
        [
            "__diesel_schema_migrations",
            "api_tokens",
            "ballot_boxes",
            "election_ballot_boxes",
            "election_cities",
            "election_definitions",
            "election_parties",
            "reports",
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
    assert_eq!(store_pg::migrate(&pool).unwrap(), [INITIAL, DEFINITIONS]);
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
    assert_eq!(applied, [INITIAL, DEFINITIONS]);
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
