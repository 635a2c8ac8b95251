//! The real binary in front of a Redis it must not trust: a counter holding
//! `oops`, and a server whose `maxmemory-policy` may evict keys. Reports are
//! recorded and answered 202 pending, nothing is written to Redis for them,
//! and the reason reaches the operator: the deferral warning, `/readyz` and
//! `/metrics`.

use std::process::{Child, Command, Output, Stdio};

use election_core::contract::unique_election;
use election_test_support::pg::PgSchema;
use election_test_support::redis::{RedisServer, connection};

use crate::process::{BIN, free_port, stop, text, wait_ready};

/// Runs a one-shot subcommand of the binary.
fn ingest(schema: &PgSchema, redis_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", redis_url)
        .output()
        .unwrap()
}

/// A migrated schema, a token for `election`, and `serve` on a free port.
fn serve(schema: &PgSchema, redis_url: &str, election: &str) -> (Child, String, String) {
    assert!(ingest(schema, redis_url, &["migrate"]).status.success());
    let issued = ingest(
        schema,
        redis_url,
        &["token", "issue", "--election", election],
    );
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let token = text(&issued.stdout).trim().to_owned();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", redis_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&base, &mut child);
    (child, base, token)
}

async fn post(base: &str, election: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/elections/{election}/reports"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_gets_nothing_and_every_operator_view_says_why() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let schema = PgSchema::new();
    let (child, base, token) = serve(&schema, &redis.url(), "evict");

    let (status, answer) = post(
        &base,
        "evict",
        &token,
        r#"{"ballot_box_id":"B1","city":"york","votes":{"a":10,"b":5}}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "pending");
    let dbsize: i64 = redis::cmd("DBSIZE")
        .query(&mut connection(&redis.url()))
        .unwrap();
    assert_eq!(dbsize, 0, "no counter, no marker, no index set");

    // Still ready (reports are recorded), with the reason in a note.
    let (status, ready) = get(&base, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.starts_with("ready\nnote: redis: redis node 127.0.0.1:")
            && ready.contains("maxmemory-policy allkeys-lru")
            && ready.contains("noeviction"),
        "{ready}"
    );
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(metrics.contains("redis_evicting_policy 1\n"), "{metrics}");
    assert!(
        metrics.contains("ingest_responses_total{status=\"202\",code=\"pending\"} 1"),
        "{metrics}"
    );

    let stderr = stop(child).await;
    assert!(
        stderr.contains("reports recorded but not counted")
            && stderr.contains("maxmemory-policy allkeys-lru")
            && stderr.contains("set maxmemory-policy to noeviction"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_holding_oops_is_named_in_the_deferral_warning() {
    let url = election_test_support::redis::redis_url();
    let schema = PgSchema::new();
    let election = unique_election("oops");
    let e = election.as_str();
    let bad = format!("election:{e}:city:york:party:a");
    redis::cmd("SET")
        .arg(&bad)
        .arg("oops")
        .exec(&mut connection(&url))
        .unwrap();
    let (child, base, token) = serve(&schema, &url, e);
    let (status, answer) = post(
        &base,
        e,
        &token,
        r#"{"ballot_box_id":"B1","city":"york","votes":{"a":5,"b":7}}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    // Nothing of it moved.
    let national: Option<i64> = redis::cmd("GET")
        .arg(format!("election:{e}:party:b"))
        .query(&mut connection(&url))
        .unwrap();
    assert_eq!(national, None);
    let stderr = stop(child).await;
    assert!(
        stderr.contains(&format!("counter {bad} holds \\\"oops\\\", not an integer"))
            || stderr.contains(&format!("counter {bad} holds \"oops\", not an integer")),
        "{stderr}"
    );
}
