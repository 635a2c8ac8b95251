//! The real `election-ingest` binary as an operator meets it (issue #15
//! point 4): `--version` names the version and git revision, `/metrics`
//! carries `build_info`, a start-up error is a JSON line with
//! `LOG_FORMAT=json`, and the settings' old names still work, with a
//! deprecation warning.

use std::process::{Command, Stdio};

use election_test_support::pg::{PgSchema, PgServer};

use crate::process::{BIN, free_port, send_signal, text, wait_ready};

#[test]
fn version_names_the_release_and_the_revision() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    let line = text(&output.stdout);
    let expected = format!(
        "election-ingest {} ({})\n",
        env!("CARGO_PKG_VERSION"),
        election_http::build::REVISION
    );
    assert_eq!(line, expected);
    assert_ne!(env!("CARGO_PKG_VERSION"), "0.0.0");
    assert!(
        election_http::build::REVISION.len() == 12
            && election_http::build::REVISION
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
}

/// `election-ingest migrate` against `url` with JSON logs: the warnings it
/// printed (every command's pool sets up its connections the same way).
fn migrate_warnings(url: &str) -> Vec<String> {
    let output = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    election_test_support::logs::json_lines(&stderr)
        .into_iter()
        .filter(|line| line["level"] == "WARN")
        .map(|line| line["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_postgresql_without_fsync_is_named_when_a_connection_opens() {
    // fsync off cannot be overridden by a client, unlike synchronous_commit
    // (turned on per connection and per recording transaction): the
    // operator is told, on every new connection.
    let server = PgServer::start_with_options("-c fsync=off");
    let warnings = migrate_warnings(&server.url());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("fsync off") && w.contains("turn fsync on")),
        "{warnings:?}"
    );
    // The shared server, with fsync on, gets no such warning.
    let schema = PgSchema::new();
    let warnings = migrate_warnings(schema.url());
    assert!(
        !warnings.iter().any(|w| w.contains("fsync")),
        "{warnings:?}"
    );
}

#[test]
fn start_up_errors_are_json_lines_with_log_format_json() {
    let schema = PgSchema::new();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", election_test_support::redis::redis_url())
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let lines = election_test_support::logs::json_lines(&stderr);
    election_test_support::logs::assert_fatal(
        &lines,
        &stderr,
        "election-ingest",
        "the database is not migrated",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_setting_names_still_work_and_metrics_say_what_runs() {
    let schema = PgSchema::new();
    let migrated = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", schema.url())
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    for (variable, deprecated) in [("LISTEN_ADDR", true), ("INGEST_LISTEN_ADDR", false)] {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .arg("serve")
            .env("DATABASE_URL", schema.url())
            .env("REDIS_URL", election_test_support::redis::redis_url())
            .env("LOG_FORMAT", "json")
            .env_remove("LISTEN_ADDR")
            .env_remove("INGEST_LISTEN_ADDR")
            .env(variable, format!("127.0.0.1:{port}"))
            // An old duration name, and one next to its new name, which
            // wins (1 ms for headers would fail the requests below).
            .env("REDIS_TIMEOUT_MS", "300")
            .env("HTTP_HEADER_TIMEOUT_MS", "1")
            .env("HTTP_HEADER_TIMEOUT", "5s")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_ready(&base, &mut child);
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        election_test_support::logs::assert_build_info(
            &metrics,
            env!("CARGO_PKG_VERSION"),
            election_http::build::REVISION,
        );
        send_signal(child.id(), "TERM");
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success());
        let stderr = text(&output.stderr);
        let warnings: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|line| line["level"] == "WARN")
            .collect();
        let said = |text: &str| {
            warnings
                .iter()
                .any(|w| w["message"].as_str().is_some_and(|m| m.contains(text)))
        };
        assert!(
            said("REDIS_TIMEOUT_MS is deprecated: set INGEST_REDIS_TIMEOUT=300ms instead"),
            "{stderr}"
        );
        assert!(!said("HTTP_HEADER_TIMEOUT_MS"), "{stderr}");
        assert_eq!(
            said("LISTEN_ADDR is deprecated: set INGEST_LISTEN_ADDR="),
            deprecated,
            "{stderr}"
        );
    }
}
