//! Secrets never reach logs or metrics (issue #7): the real binary, with a
//! PostgreSQL URL and a Redis URL that carry passwords, logging at
//! `RUST_LOG=debug` in both formats, posting with a valid token and with
//! wrong ones, answering `/metrics`, and taking a Redis outage (so the error
//! paths log). Neither password nor any token secret may appear in its
//! standard output, standard error or metrics.

use std::process::{Command, Stdio};

use election_test_support::pg::PgSchema;
use election_test_support::redis::RedisServer;

use crate::process::{BIN, free_port, send_signal, text, wait_ready};

const DB_PASSWORD: &str = "S3cretDbPw";
const REDIS_PASSWORD: &str = "S3cretRedisPw";

fn report(ballot_box: &str) -> String {
    format!(r#"{{"ballot_box_id":"{ballot_box}","city":"york","votes":{{"a":1}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_token_reaches_logs_or_metrics() {
    let schema = PgSchema::new();
    let database_url = election_test_support::pg::with_password(schema.url(), DB_PASSWORD);
    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    let redis_url = redis.url();
    assert!(redis_url.contains(REDIS_PASSWORD));
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &database_url)
            .env("REDIS_URL", &redis_url)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap()
    };
    let migrated = run(&["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let issued = run(&["token", "issue", "--election", "secrets"]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let token = text(&issued.stdout).trim().to_owned();
    let issued_other = run(&["token", "issue", "--election", "other"]);
    let other_election_token = text(&issued_other.stdout).trim().to_owned();
    let wrong_tokens = [
        format!("et_{}", "5ec7e7".repeat(10) + "abcd"),
        "WrongS3cretToken".to_owned(),
    ];
    let mut secrets: Vec<String> = vec![
        DB_PASSWORD.to_owned(),
        REDIS_PASSWORD.to_owned(),
        token.clone(),
        token.trim_start_matches("et_").to_owned(),
        other_election_token.clone(),
    ];
    secrets.extend(wrong_tokens.iter().cloned());
    // What the commands printed: the token itself on stdout (that is the
    // point of `issue`), nothing else anywhere.
    for output in [&migrated, &issued, &issued_other] {
        let stderr = text(&output.stderr);
        for secret in &secrets {
            assert!(!stderr.contains(secret.as_str()), "{secret} in: {stderr}");
        }
    }

    let client = reqwest::Client::new();
    for format in ["human", "json"] {
        let dir = std::env::temp_dir().join(format!(
            "election-secrets-{}-{format}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &database_url)
            .env("REDIS_URL", &redis_url)
            .env("RUST_LOG", "debug")
            .env("LOG_FORMAT", format)
            .env("REDIS_TIMEOUT_MS", "300")
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        wait_ready(&base, &mut child);
        let url = format!("{base}/v1/elections/secrets/reports");
        let post = |token: String, body: String| {
            let request = client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body);
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(
            post(token.clone(), report(&format!("OK-{format}"))).await,
            201
        );
        for wrong in &wrong_tokens {
            assert_eq!(post(wrong.clone(), report("W")).await, 401);
        }
        assert_eq!(post(other_election_token.clone(), report("W")).await, 403);
        // Redis stalls: the report is recorded and answered 202, and the
        // failure is logged.
        let paused = redis.pause();
        assert_eq!(
            post(token.clone(), report(&format!("LATE-{format}"))).await,
            202
        );
        // Ready without Redis; the note names it (without its password).
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let ready = ready.text().await.unwrap();
        redis.resume(paused);
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("ingest_responses_total"), "{metrics}");
        // A request with a query string and a request id, for the access log.
        let traced = client
            .get(format!("{base}/healthz?api_key=QuerySecret42"))
            .header("x-request-id", format!("trace-{format}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            traced.headers()["x-request-id"].to_str().unwrap(),
            format!("trace-{format}")
        );
        send_signal(child.id(), "TERM");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "exit {status:?}");
        let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
        let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        // The logs are there, at debug level, with the error paths taken
        // and the URLs shown redacted.
        assert!(stderr.contains("election-ingest serving"), "{stderr}");
        assert!(stderr.contains(":***@127.0.0.1"), "{stderr}");
        assert!(
            stderr.contains("DEBUG"),
            "{format}: no debug lines: {stderr}"
        );
        assert!(
            stderr.contains("WARN"),
            "{format}: no error path logged: {stderr}"
        );
        // Written to a file: no colour codes.
        assert!(
            !stderr.contains('\u{1b}'),
            "{format}: colour codes: {stderr}"
        );
        // One access line per request: method, path without its query
        // string, status, duration and request id.
        assert!(!stderr.contains("QuerySecret42"), "{format}: {stderr}");
        let line = stderr
            .lines()
            .find(|line| line.contains(&format!("trace-{format}")) && line.contains("answered"))
            .unwrap_or_else(|| panic!("{format}: no access line: {stderr}"));
        for field in ["GET", "/healthz", "200", "duration_ms", "access"] {
            assert!(line.contains(field), "{format}: {field} missing: {line}");
        }
        if format == "json" {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["http.status"], 200, "{line}");
            assert_eq!(entry["span"]["http.path"], "/healthz", "{line}");
            assert_eq!(entry["span"]["request.id"], "trace-json", "{line}");
            // The request's span once: no list of spans repeating it.
            assert!(entry.get("spans").is_none(), "{line}");
        }
        for secret in &secrets {
            for (what, output) in [
                ("stdout", &stdout),
                ("stderr", &stderr),
                ("metrics", &metrics),
                ("readyz", &ready),
            ] {
                assert!(
                    !output.contains(secret.as_str()),
                    "{format}: {secret:?} appears in {what}:\n{output}"
                );
            }
        }
    }
}
