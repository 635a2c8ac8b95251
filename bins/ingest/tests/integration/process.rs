//! The real `election-ingest` binary: `migrate`, the token workflow, refusing
//! an unmigrated database, and SIGTERM in the middle of a burst (every request
//! answered 2xx is in PostgreSQL, and the process exits 0).

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use election_core::contract::unique_election;
use election_test_support::pg::PgSchema;
pub use election_test_support::process::{free_port, send_signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_election-ingest");

fn ingest(schema: &PgSchema, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", election_test_support::redis::redis_url())
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// SIGTERM to a served binary, and its standard error once it exited 0.
pub async fn stop(child: Child) -> String {
    send_signal(child.id(), "TERM");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    stderr
}

#[test]
fn serve_refuses_an_unmigrated_database_and_migrate_fixes_it() {
    let schema = PgSchema::new();
    let output = ingest(&schema, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the database is not migrated; run `election-ingest migrate` first"),
        "{stderr}"
    );
    let output = ingest(&schema, &["migrate"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("applied migration"));
    let output = ingest(&schema, &["migrate"]);
    assert_eq!(text(&output.stdout), "database schema is up to date\n");
}

/// A budget of request bodies below the largest bulk body would refuse
/// every bulk request that declares its size: the binary refuses to start.
#[test]
fn serve_refuses_a_bodies_budget_below_the_largest_bulk_body() {
    let schema = PgSchema::new();
    let output = ingest(
        &schema,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--bodies-in-flight-mib",
            "3",
        ],
    );
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("--bodies-in-flight-mib (INGEST_BODIES_IN_FLIGHT_MIB) must be at least 4"),
        "{stderr}"
    );
}

#[test]
fn token_issue_list_revoke() {
    let schema = PgSchema::new();
    assert!(ingest(&schema, &["migrate"]).status.success());
    let issued = ingest(
        &schema,
        &[
            "token",
            "issue",
            "--election",
            "2025",
            "--ballot-box",
            "BB123",
            "--label",
            "station 123",
        ],
    );
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let token = text(&issued.stdout);
    // The token alone on standard output, so `$(...)` captures it.
    let token = token.strip_suffix('\n').unwrap();
    assert!(token.starts_with("et_") && token.len() == 67, "{token:?}");
    assert!(!token.contains(char::is_whitespace));

    let listed = text(&ingest(&schema, &["token", "list"]).stdout);
    assert!(
        listed.contains("2025") && listed.contains("BB123") && listed.contains("station 123"),
        "{listed}"
    );
    assert!(
        !listed.contains(token),
        "token list must never show secrets"
    );
    let id = listed
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_owned();
    let revoked = ingest(&schema, &["token", "revoke", &id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let listed = text(&ingest(&schema, &["token", "list", "--election", "2025"]).stdout);
    assert!(
        !listed.lines().nth(1).unwrap().contains(" - "),
        "revocation time shown: {listed}"
    );
    let again = ingest(&schema, &["token", "revoke", &id]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains(&format!("no active token with id {id}")));

    let bad = ingest(&schema, &["token", "issue", "--election", "Bad Election"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--election: election: \"Bad Election\" must be"),
        "{}",
        text(&bad.stderr)
    );
}

pub fn wait_ready(base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("election-ingest exited early: {status}");
        }
        if std::net::TcpStream::connect(base.trim_start_matches("http://")).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("election-ingest did not start listening at {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_burst_loses_no_acknowledged_report() {
    let schema = PgSchema::new();
    assert!(ingest(&schema, &["migrate"]).status.success());
    // An election of its own: its counters and markers are on the shared
    // Redis, which outlives the schema (a second run must not meet them).
    let election = unique_election("burst");
    let issued = ingest(
        &schema,
        &["token", "issue", "--election", election.as_str()],
    );
    let token = text(&issued.stdout).trim().to_owned();
    let (child, base) = serve(&schema);
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/elections/{election}/reports");
    let mut posts = Vec::new();
    for i in 0..400 {
        let client = client.clone();
        let url = url.clone();
        let token = token.clone();
        posts.push(tokio::spawn(async move {
            // Stagger the burst so SIGTERM lands in the middle of it.
            tokio::time::sleep(Duration::from_millis(i / 4)).await;
            let body = format!(r#"{{"ballot_box_id":"B{i}","city":"york","votes":{{"a":1}}}}"#);
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            (i, response.map(|r| r.status().as_u16()).ok())
        }));
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    send_signal(child.id(), "TERM");

    let mut acknowledged = Vec::new();
    let mut refused_or_dropped = 0;
    for post in posts {
        match post.await.unwrap() {
            (i, Some(status)) if (200..300).contains(&status) => acknowledged.push(i),
            _ => refused_or_dropped += 1,
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.status.success(),
        "exit {:?}: {}",
        status.status,
        text(&status.stderr)
    );
    assert!(
        text(&status.stderr).contains("SIGTERM received"),
        "{}",
        text(&status.stderr)
    );
    assert!(
        !acknowledged.is_empty(),
        "some requests were answered before the signal"
    );

    // Every acknowledged report is in PostgreSQL.
    let pool = store_pg::connect(schema.url(), 1, Duration::from_secs(2)).unwrap();
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        ballot_box_id: String,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT ballot_box_id FROM reports WHERE election_id = $1")
            .bind::<diesel::sql_types::Text, _>(election.as_str())
            .load(&mut pool.get().unwrap())
            .unwrap();
    let recorded: std::collections::HashSet<String> =
        rows.into_iter().map(|r| r.ballot_box_id).collect();
    for i in &acknowledged {
        assert!(
            recorded.contains(&format!("B{i}")),
            "acknowledged B{i} is not in PostgreSQL"
        );
    }
    eprintln!(
        "SIGTERM burst: {} acknowledged, {} refused or cut off, {} recorded",
        acknowledged.len(),
        refused_or_dropped,
        recorded.len()
    );
}

/// Starts `election-ingest serve` (batches of 16) on a free port, ready.
fn serve(schema: &PgSchema) -> (Child, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--batch-size",
            "16",
        ])
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", election_test_support::redis::redis_url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&base, &mut child);
    (child, base)
}

/// The real binary takes a bulk request: 60 items, one of them invalid, in
/// one request larger than a group-commit batch; every valid item recorded
/// and counted, the invalid one answered 422 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_records_a_bulk_request_item_by_item() {
    let schema = PgSchema::new();
    assert!(ingest(&schema, &["migrate"]).status.success());
    let election = unique_election("bulkbin");
    let issued = ingest(
        &schema,
        &["token", "issue", "--election", election.as_str()],
    );
    let token = text(&issued.stdout).trim().to_owned();
    let (mut child, base) = serve(&schema);
    let mut items: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"ballot_box_id":"B{i}","city":"york","votes":{{"a":2}}}}"#))
        .collect();
    items[30] = r#"{"ballot_box_id":"B 30","city":"york","votes":{"a":2}}"#.to_owned();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/elections/{election}/report-batches"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"reports":[{}]}}"#, items.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.len(), 60);
    assert_eq!(statuses[30], 422);
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 59);
    let total: Option<i64> = redis::Commands::get(
        &mut election_test_support::redis::connection(&election_test_support::redis::redis_url()),
        format!("election:{election}:party:a"),
    )
    .unwrap();
    assert_eq!(total, Some(59 * 2));
    send_signal(child.id(), "TERM");
    let _ = child.wait();
}

#[test]
fn election_load_and_show() {
    let schema = PgSchema::new();
    assert!(ingest(&schema, &["migrate"]).status.success());
    let dir = std::env::temp_dir().join(format!("election-def-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "id = \"cli-e\"\nname = \"CLI election\"\n\n[[parties]]\nid = \"labour\"\nname = \"Labour\"\ncolour = \"#e4003b\"\n\n[[cities]]\nid = \"london\"\nname = \"London\"\nexpected_ballot_boxes = 2\n\n[ballot_boxes]\nlondon = [\"BB1\"]\n",
    )
    .unwrap();
    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        "id = \"cli-e\"\nname = \"CLI election\"\nnmae = \"typo\"\n\n[[parties]]\nid = \"labour\"\nname = \"Labour\"\ncolour = \"#e4003\"\n\n[[cities]]\nid = \"london\"\nname = \"London\"\nexpected_ballot_boxes = 2\n",
    )
    .unwrap();

    let output = ingest(&schema, &["election", "load", broken.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("line 3: unknown key \"nmae\""), "{stderr}");
    assert!(stderr.contains("line 8: colour of party #1"), "{stderr}");
    let output = ingest(&schema, &["election", "show", "cli-e"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("election cli-e is not defined"));

    let output = ingest(&schema, &["election", "load", good.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with(
        "defined election cli-e: 1 parties, 1 cities, 2 ballot boxes expected, 1 registered"
    ));
    let output = ingest(&schema, &["election", "show", "cli-e"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(
        shown.starts_with("election cli-e: CLI election\n"),
        "{shown}"
    );
    assert!(
        shown.contains("labour               #e4003b  Labour"),
        "{shown}"
    );
    assert!(
        shown.contains("london               expected       2  registered       1  London"),
        "{shown}"
    );

    // Removing the registered box is refused, whole.
    let shrunk = dir.join("shrunk.toml");
    std::fs::write(
        &shrunk,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("[\"BB1\"]", "[]"),
    )
    .unwrap();
    let output = ingest(&schema, &["election", "load", shrunk.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("ballot box \"BB1\" is registered and may not be removed"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// That the checked-in file is what `cargo xtask demo-definition` writes is
/// the xtask's own test (tools/xtask/src/definition.rs).
#[test]
fn the_demo_definition_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema = PgSchema::new();
    assert!(ingest(&schema, &["migrate"]).status.success());
    let file = root.join("demo/demo-night.toml");
    let output = ingest(&schema, &["election", "load", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "defined election demo-night: 6 parties, 300 cities, 20000 ballot boxes expected, 0 registered\n"
    );
    // Loading it again (a second `just demo` on the same database) adds nothing.
    let output = ingest(&schema, &["election", "load", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout)
            .starts_with("updated election demo-night: added 0 parties, 0 cities, 0 ballot boxes")
    );
}

#[test]
fn election_certify_records_who_and_when() {
    let schema = PgSchema::new();
    assert!(ingest(&schema, &["migrate"]).status.success());
    let dir = std::env::temp_dir().join(format!("election-certify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cert.toml");
    std::fs::write(
        &file,
        "id = \"cert-e\"\nname = \"Certified election\"\n\n[[parties]]\nid = \"labour\"\nname = \"Labour\"\ncolour = \"#e4003b\"\n\n[[cities]]\nid = \"london\"\nname = \"London\"\nexpected_ballot_boxes = 2\n\n[[cities]]\nid = \"york\"\nname = \"York\"\nexpected_ballot_boxes = 1\n",
    )
    .unwrap();

    // Not defined yet: nothing to certify.
    let output = ingest(
        &schema,
        &[
            "election",
            "certify",
            "--election",
            "cert-e",
            "--all",
            "--by",
            "Returning Officer",
        ],
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("election cert-e is not defined"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        ingest(&schema, &["election", "load", file.to_str().unwrap()])
            .status
            .success()
    );
    // Exactly one of --city and --all.
    let output = ingest(&schema, &["election", "certify", "--election", "cert-e"]);
    assert!(!output.status.success());
    let output = ingest(
        &schema,
        &[
            "election",
            "certify",
            "--election",
            "cert-e",
            "--city",
            "paris",
            "--by",
            "x",
        ],
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("\"paris\" is not a city of election cert-e"),
        "{}",
        text(&output.stderr)
    );

    let output = ingest(
        &schema,
        &[
            "election",
            "certify",
            "--election",
            "cert-e",
            "--city",
            "london",
            "--by",
            "Returning Officer",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("certified city london of election cert-e (by Returning Officer, at "),
        "{stdout}"
    );
    // --all certifies the rest; london keeps its first certification.
    let output = ingest(
        &schema,
        &[
            "election",
            "certify",
            "--election",
            "cert-e",
            "--all",
            "--by",
            "Deputy",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("certified city york of election cert-e (by Deputy, at "),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "city london of election cert-e was certified already (by Returning Officer, at "
        ),
        "{stdout}"
    );
    let output = ingest(&schema, &["election", "show", "cert-e"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert_eq!(shown.matches("certified by ").count(), 2, "{shown}");
    assert!(shown.contains("certified by Deputy at "), "{shown}");
    std::fs::remove_dir_all(&dir).unwrap();
}
