//! The hot path's plans, checked against every state of the statistics an
//! election night meets (see `crate::record`, "Plans that do not depend on
//! statistics").
//!
//! Every hot-path statement is prepared and explained the way the write path
//! runs it (inside a transaction with [`HOT_PATH_SETTINGS`]), both as the
//! generic plan a connection caches (the one those settings force) and as a
//! custom plan (should anything run one), on tables that are
//! empty and never analysed, filled but never analysed, analysed while empty
//! and filled afterwards, and filled and analysed. A plan fails when it scans
//! a log table (`reports`) sequentially or through another
//! index than a unique key, hash- or merge-joins one, or would be JIT-compiled. The same check run without the settings must find the
//! bad plan PostgreSQL makes over empty tables, so the check can fail. A
//! third test counts how each statement was planned over repeated runs: once,
//! generic, with the settings; without the forcing, PostgreSQL planned the
//! record statements afresh on every run. A fourth checks, in the same
//! states, that the sealer's and `verify`'s reads of an id range reach
//! `reports` through the primary key alone (`crate::seal`,
//! `READ_PLAN_SETTINGS`), and that without their settings they do not.

use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use election_test_support::pg::PgSchema;

use crate::pending::{CLAIM_ROWS, CLAIMED_REPORTS, LEASE_ROWS, MARK_WHOLE};
use crate::record::{HOT_PATH_SETTINGS, READ_BOXES, READ_KNOWN, WRITE_FRESH};
use crate::seal::{COUNT_AFTER, READ_PLAN_SETTINGS, READ_ROWS};

/// Tables that grow with the election: never scanned whole on the hot path.
const LOG_TABLES: &[&str] = &["reports"];

/// The indexes the hot path may reach log-table rows through: unique keys,
/// so one lookup finds at most one row.
const KEY_INDEXES: &[&str] = &["reports_pkey", "reports_chain_key"];

/// Every hot-path statement with sample arguments (any values do: the
/// generic plan ignores them, and custom plans only need the right types).
const STATEMENTS: &[(&str, &str, &str)] = &[
    (
        "record: definition versions and the boxes' latest revisions",
        READ_BOXES,
        "'{e,e}', '{B1,B2}', '{e}'",
    ),
    (
        "record: same revisions (replays and conflicts)",
        READ_KNOWN,
        "'{e}', '{B1}', '{1}'",
    ),
    (
        "record: write reports and the pending batch",
        WRITE_FRESH,
        "'{e,e}', '{B1,B2}', '{c,c}', '{1,2}', '{0,1}', '{NULL,NULL}', '{\"{}\",\"{}\"}', \
         ARRAY['\\x00'::bytea, '\\x01'::bytea], '{a,a}', '{1,1}', '{1,1}', '{1,2}'",
    ),
    ("mark counted (whole batches)", MARK_WHOLE, "'{1,2,3}'"),
    ("claim: pending batches", CLAIM_ROWS, "100, 1000000"),
    ("claim: lease", LEASE_ROWS, "'{1,2}', 1000000"),
    ("claim: read claimed reports", CLAIMED_REPORTS, "'{1,2}'"),
];

/// Adds `n` reports of one election, each its box's first, the last 100 of
/// them pending: rows enough that anything but a key lookup reads far too
/// much.
fn fill(conn: &mut PgConnection, n: u32) {
    conn.batch_execute(&format!(
        "INSERT INTO reports (election_id, ballot_box_id, city, revision, replaces, payload,
                              payload_hash, parties, votes, differences)
         SELECT 'e', 'B' || g, 'c' || (g % 200), 1, 0, '{{}}', sha256(g::text::bytea),
                '{{a,b}}', '{{1,2}}', '{{1,2}}'
         FROM generate_series((SELECT count(*) FROM reports) + 1, (SELECT count(*) FROM reports) + {n}) AS g;
         INSERT INTO pending_batches (first_report_id, report_ids)
         SELECT id, ARRAY[id] FROM reports ORDER BY id DESC LIMIT 100
         ON CONFLICT DO NOTHING;"
    ))
    .unwrap();
}

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// One statement's plan, as JSON and as text (for reading).
struct Plan {
    json: serde_json::Value,
    text: String,
}

fn explain(
    conn: &mut PgConnection,
    sql: &str,
    args: &str,
    generic: bool,
    settings: Option<&str>,
) -> Plan {
    conn.transaction(|conn| {
        if let Some(settings) = settings {
            conn.batch_execute(settings)?;
        }
        let mode = if generic {
            "force_generic_plan"
        } else {
            "force_custom_plan"
        };
        conn.batch_execute(&format!(
            "SET LOCAL plan_cache_mode = {mode}; DEALLOCATE ALL; PREPARE hot AS {sql}"
        ))?;
        let json: Vec<PlanLine> =
            diesel::sql_query(format!("EXPLAIN (FORMAT JSON) EXECUTE hot({args})")).load(conn)?;
        let text: Vec<PlanLine> =
            diesel::sql_query(format!("EXPLAIN EXECUTE hot({args})")).load(conn)?;
        conn.batch_execute("DEALLOCATE hot")?;
        let json = serde_json::from_str(&json[0].line).expect("EXPLAIN's JSON");
        let text = text.into_iter().map(|l| l.line + "\n").collect();
        Ok::<_, diesel::result::Error>(Plan { json, text })
    })
    .unwrap_or_else(|e| panic!("explaining {sql}: {e}"))
}

/// The relations a plan node and its children scan.
fn scanned(node: &serde_json::Value, into: &mut Vec<String>) {
    if let Some(relation) = node["Relation Name"].as_str() {
        into.push(relation.to_owned());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        scanned(child, into);
    }
}

/// What is wrong with a plan: sequential scans, scans of other indexes than
/// the keys, and hash or merge joins over log tables.
fn problems(node: &serde_json::Value, found: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let relation = node["Relation Name"].as_str().unwrap_or_default();
    if LOG_TABLES.contains(&relation) {
        if kind == "Seq Scan" {
            found.push(format!("sequential scan of {relation}"));
        }
        if let Some(index) = node["Index Name"].as_str()
            && !KEY_INDEXES.contains(&index)
        {
            found.push(format!("{kind} of {relation} through {index}"));
        }
    }
    if kind.starts_with("Bitmap Index Scan")
        && let Some(index) = node["Index Name"].as_str()
        && LOG_TABLES
            .iter()
            .any(|table| index.starts_with(&format!("{table}_")))
        && !KEY_INDEXES.contains(&index)
    {
        found.push(format!("{kind} through {index}"));
    }
    if kind == "Hash Join" || kind == "Merge Join" {
        let mut relations = Vec::new();
        scanned(node, &mut relations);
        for relation in relations {
            if LOG_TABLES.contains(&relation.as_str()) {
                found.push(format!("{kind} over {relation}"));
            }
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        problems(child, found);
    }
}

fn plan_problems(plan: &Plan) -> Vec<String> {
    let mut found = Vec::new();
    problems(&plan.json[0]["Plan"], &mut found);
    if plan.json[0].get("JIT").is_some() {
        found.push("JIT compiles it on every execution".to_owned());
    }
    found
}

/// Explains each of `statements` as generic and as custom plan, planned
/// with `settings`, in the state `conn`'s tables are in: every plan that
/// `problems` finds fault with, named and with its text. Each generic plan
/// is also handed to `seen`.
fn failures(
    conn: &mut PgConnection,
    state: &str,
    statements: &[(&str, &str, &str)],
    settings: Option<&str>,
    problems: fn(&Plan) -> Vec<String>,
    mut seen: impl FnMut(&str, &Plan),
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, sql, args) in statements {
        for generic in [true, false] {
            let plan = explain(conn, sql, args, generic, settings);
            let kind = if generic { "generic" } else { "custom" };
            let found = problems(&plan);
            if !found.is_empty() {
                failures.push(format!(
                    "{state}, {kind} plan of \"{name}\": {}\n{}",
                    found.join(", "),
                    plan.text
                ));
            }
            if generic {
                seen(name, &plan);
            }
        }
    }
    failures
}

/// Every hot-path statement's problems in the state `conn`'s tables are
/// in; the generic plans go into `report`.
fn check_state(conn: &mut PgConnection, state: &str, report: &mut String) -> Vec<String> {
    failures(
        conn,
        state,
        STATEMENTS,
        Some(HOT_PATH_SETTINGS),
        plan_problems,
        |name, plan| {
            report.push_str(&format!(
                "-- {state}: {name} (generic plan)\n{}\n",
                plan.text
            ));
        },
    )
}

/// `ANALYZE` of this test's own tables (those of its schema): a bare
/// `ANALYZE` would also analyse the tables of tests running beside it in
/// the same database, whose "never analysed" would then not hold.
fn analyse(conn: &mut PgConnection) {
    conn.batch_execute(
        "DO $$ DECLARE t text; BEGIN \
           FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema() LOOP \
             EXECUTE format('ANALYZE %I', t); \
           END LOOP; \
         END $$",
    )
    .unwrap();
}

/// The connection's `synchronous_commit` now (the durability tests of
/// `pending` and `record`).
pub(crate) fn synchronous_commit(conn: &mut PgConnection) -> String {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        value: String,
    }
    diesel::sql_query("SELECT current_setting('synchronous_commit') AS value")
        .get_result::<Setting>(conn)
        .unwrap()
        .value
}

/// A fresh schema, migrated, and a connection of its own to it (also for
/// the other modules' tests that need a real server).
pub(crate) fn migrated() -> (PgSchema, PgConnection) {
    let schema = PgSchema::new();
    let pool = crate::connect(schema.url(), 1, std::time::Duration::from_secs(10)).unwrap();
    crate::migrate(&pool).unwrap();
    let conn = PgConnection::establish(schema.url()).unwrap();
    (schema, conn)
}

#[test]
fn hot_path_plans_use_indexes_whatever_the_statistics() {
    let mut report = String::new();
    let mut failures = Vec::new();

    // Election night: tables created empty, never analysed, growing. (At
    // about a thousand rows without statistics PostgreSQL once preferred a
    // non-key index for a key lookup.)
    let (_never, mut conn) = migrated();
    failures.extend(check_state(&mut conn, "empty, never analysed", &mut report));
    for rows in [10, 1_000, 20_000] {
        fill(&mut conn, rows);
        let state = format!("{rows} reports, never analysed");
        failures.extend(check_state(&mut conn, &state, &mut report));
    }
    analyse(&mut conn);
    failures.extend(check_state(
        &mut conn,
        "20000 reports, analysed",
        &mut report,
    ));

    // Statistics gone stale: analysed while empty, filled afterwards.
    let (_stale, mut conn) = migrated();
    analyse(&mut conn);
    failures.extend(check_state(&mut conn, "analysed empty", &mut report));
    fill(&mut conn, 20_000);
    failures.extend(check_state(
        &mut conn,
        "analysed empty, then 20000 reports",
        &mut report,
    ));

    if let Ok(dir) = std::env::var("HOT_PATH_PLANS_DIR") {
        std::fs::write(format!("{dir}/hot-path-plans.txt"), &report).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_check_finds_the_plans_an_empty_database_gets_without_the_settings() {
    let (_schema, mut conn) = migrated();
    let plan = explain(
        &mut conn,
        READ_KNOWN,
        "'{e,e}', '{B1,B2}', '{1,2}'",
        true,
        None,
    );
    let problems = plan_problems(&plan);
    assert!(
        problems.iter().any(|p| p.contains("reports")),
        "expected a bad plan without the settings, got {problems:?}:\n{}",
        plan.text
    );
}

/// The sealer's and `verify`'s reads, with sample arguments.
const READS: &[(&str, &str, &str)] = &[
    (
        "seal and verify: rows after an id",
        READ_ROWS,
        "'e', 10, 20, 5000",
    ),
    ("verify: count after an id", COUNT_AFTER, "'e', 10"),
];

/// What keeps a read of an id range from being a range read: `reports`
/// reached otherwise than through an index scan of its primary key (a
/// bitmap scan combines the range with the election's whole prefix of
/// the unique key on (election, box, ...), `reports_chain_key`), or a sort.
fn range_read_problems(node: &serde_json::Value, found: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let index = node["Index Name"].as_str().unwrap_or_default();
    let reports = node["Relation Name"].as_str() == Some("reports");
    if reports && !(kind.starts_with("Index") && index == "reports_pkey") {
        found.push(format!("{kind} of reports {index}"));
    }
    if kind.starts_with("Bitmap") || kind == "Sort" {
        found.push(format!("{kind} {index}"));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        range_read_problems(child, found);
    }
}

fn range_read_plan_problems(plan: &Plan) -> Vec<String> {
    let mut found = Vec::new();
    range_read_problems(&plan.json[0]["Plan"], &mut found);
    found
}

/// Every problem of the reads' plans in the state `conn`'s tables are in,
/// planned with `settings`.
fn check_reads(conn: &mut PgConnection, state: &str, settings: Option<&str>) -> Vec<String> {
    failures(
        conn,
        state,
        READS,
        settings,
        range_read_plan_problems,
        |_, _| {},
    )
}

#[test]
fn sealing_reads_only_the_new_reports_whatever_the_statistics() {
    let mut failures = Vec::new();
    let (_never, mut conn) = migrated();
    // Never analysed means never: autovacuum would analyse 20,000 new rows
    // within its next minute, and the control below needs the bad plan.
    conn.batch_execute("ALTER TABLE reports SET (autovacuum_enabled = false)")
        .unwrap();
    failures.extend(check_reads(
        &mut conn,
        "empty, never analysed",
        Some(READ_PLAN_SETTINGS),
    ));
    fill(&mut conn, 20_000);
    let unanalysed = "20000 reports, never analysed";
    failures.extend(check_reads(&mut conn, unanalysed, Some(READ_PLAN_SETTINGS)));
    // The check can fail: without the settings, this state gets the plan
    // that reads the election's whole prefix of the revision key.
    let control = explain(&mut conn, READ_ROWS, READS[0].2, true, None);
    assert!(
        !range_read_plan_problems(&control).is_empty(),
        "expected a plan that is not a range read without the settings, got\n{}",
        control.text
    );
    analyse(&mut conn);
    failures.extend(check_reads(
        &mut conn,
        "20000 reports, analysed",
        Some(READ_PLAN_SETTINGS),
    ));

    let (_stale, mut conn) = migrated();
    analyse(&mut conn);
    fill(&mut conn, 20_000);
    failures.extend(check_reads(
        &mut conn,
        "analysed empty, then 20000 reports",
        Some(READ_PLAN_SETTINGS),
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The pages of counted revisions healing and reconcile read (either
/// direction), with sample arguments: a page must be a short range of the
/// primary key, or a sweep at a million ballot boxes reads the table once
/// per page.
const PAGES: &[(&str, &str, &str)] = &[
    (
        "heal and reconcile: a page in id order",
        crate::log::COUNTED_REVISIONS,
        "'e', 10000, 1000",
    ),
    (
        "heal: a page newest first",
        crate::log::COUNTED_REVISIONS_NEWEST_FIRST,
        "'e', 9223372036854775807, 1000",
    ),
];

/// `reports` reached otherwise than through an index scan of its primary
/// key (a sort of the page itself, for the union's order, is fine).
fn key_range_problems(node: &serde_json::Value, found: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let index = node["Index Name"].as_str().unwrap_or_default();
    if node["Relation Name"].as_str() == Some("reports")
        && !(kind == "Index Scan" && index == "reports_pkey")
    {
        found.push(format!("{kind} of reports {index}"));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        key_range_problems(child, found);
    }
}

fn page_plan_problems(plan: &Plan) -> Vec<String> {
    let mut found = Vec::new();
    key_range_problems(&plan.json[0]["Plan"], &mut found);
    found
}

#[test]
fn healing_pages_are_ranges_of_the_primary_key_whatever_the_statistics() {
    let check = |conn: &mut PgConnection, state: &str| {
        failures(conn, state, PAGES, None, page_plan_problems, |_, _| {})
    };
    let mut failures = Vec::new();
    let (_never, mut conn) = migrated();
    conn.batch_execute("ALTER TABLE reports SET (autovacuum_enabled = false)")
        .unwrap();
    // Empty or at a thousand rows without statistics, a custom plan reads
    // the table whole and sorts it (measured: it expects a third of the
    // rows past the cursor, fewer than a page), as cheap as the range at
    // that size; a sweep at a scale where it would matter must read ranges.
    fill(&mut conn, 20_000);
    failures.extend(check(&mut conn, "20000 reports, never analysed"));
    // The check can fail: with index scans off the page is read otherwise.
    let control = explain(
        &mut conn,
        PAGES[1].1,
        PAGES[1].2,
        false,
        Some("SET LOCAL enable_indexscan = off"),
    );
    assert!(
        !page_plan_problems(&control).is_empty(),
        "expected another plan with index scans off, got\n{}",
        control.text
    );
    analyse(&mut conn);
    failures.extend(check(&mut conn, "20000 reports, analysed"));

    let (_stale, mut conn) = migrated();
    analyse(&mut conn);
    fill(&mut conn, 20_000);
    failures.extend(check(&mut conn, "analysed empty, then 20000 reports"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[derive(QueryableByName)]
struct Plannings {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

/// How `sql`, prepared once, was planned over `runs` executions on one
/// connection, each in a transaction begun with `settings` and rolled back
/// (so every run sees the same rows; a run that fails counts too, since
/// PostgreSQL chooses the plan before it executes).
fn plannings(
    conn: &mut PgConnection,
    sql: &str,
    args: &str,
    settings: &str,
    runs: u32,
) -> Plannings {
    conn.batch_execute(&format!("PREPARE hot AS {sql}"))
        .unwrap();
    for _ in 0..runs {
        let _ = conn.transaction(|conn| {
            conn.batch_execute(settings)?;
            conn.batch_execute(&format!("EXECUTE hot({args})"))?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        });
    }
    let counts = diesel::sql_query(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'hot'",
    )
    .get_result(conn)
    .unwrap();
    conn.batch_execute("DEALLOCATE hot").unwrap();
    counts
}

#[test]
fn hot_path_statements_are_planned_once_per_connection() {
    let (_schema, mut conn) = migrated();
    fill(&mut conn, 1_000);
    let mut replanned_by_default = Vec::new();
    for (name, sql, args) in STATEMENTS {
        let hot = plannings(&mut conn, sql, args, HOT_PATH_SETTINGS, 8);
        assert_eq!(
            (hot.generic_plans, hot.custom_plans),
            (8, 0),
            "{name}: every run should use the one generic plan"
        );
        let default_mode = format!("{HOT_PATH_SETTINGS}; SET LOCAL plan_cache_mode = auto");
        if plannings(&mut conn, sql, args, &default_mode, 8).custom_plans == 8 {
            replanned_by_default.push(*name);
        }
    }
    // The setting is what keeps them planned once: by default PostgreSQL
    // planned the record's reads again on every run.
    assert!(
        replanned_by_default
            .contains(&"record: definition versions and the boxes' latest revisions"),
        "planned on every run without the setting: {replanned_by_default:?}"
    );
}
