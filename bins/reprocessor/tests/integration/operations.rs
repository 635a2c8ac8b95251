//! The real binary as an operator meets it: `--version`, and `run --once`
//! failing to run at all (PostgreSQL unreachable) exits 1, distinct from 3
//! ("reports left pending", tested in `counting`), logged as a JSON line
//! with `LOG_FORMAT=json`.

use std::process::{Command, Stdio};

use crate::harness::{BIN, both, text};

#[test]
fn version_names_the_release_and_the_revision() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout),
        format!(
            "election-reprocessor {} ({})\n",
            env!("CARGO_PKG_VERSION"),
            election_http::build::REVISION
        )
    );
}

#[test]
fn run_once_that_cannot_run_exits_1_with_a_json_error() {
    // Nothing listens on port 1.
    let output = Command::new(BIN)
        .args(["run", "--once", "--redis-timeout", "200ms"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres")
        .env("REDIS_URL", election_test_support::redis::redis_url())
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert_eq!(text(&output.stdout), "", "no summary: it never ran");
    let stderr = text(&output.stderr);
    // Every line is JSON, the last one the error.
    let lines = election_test_support::logs::json_lines(&stderr);
    election_test_support::logs::assert_fatal(&lines, &stderr, "election-reprocessor", "127.0.0.1");
}
