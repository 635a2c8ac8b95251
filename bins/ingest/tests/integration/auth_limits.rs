//! Token checks under a flood of made-up tokens (issue #15 point 5): failed
//! authentications are limited per client address before any database
//! lookup (429 `auth_rate_limited` with `Retry-After`), a token cached as
//! valid still passes from that address, the real binary limits by
//! default, and behind a trusted proxy each forwarded client is limited
//! apart.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use election_core::StoreError;
use election_core::contract::unique_election;
use election_ingest::auth::{self, Scope, TokenLookup};
use election_ingest::limit::RateLimit;
use election_ingest::{Settings, commands::PgTokens};
use election_test_support::pg::PgSchema;
use store_pg::PgLog;
use store_redis::RedisTally;

use crate::harness::{Ingest, RedisChoice, issue_token, migrated_schema, redis_options, settings};
use crate::process::{BIN, free_port, stop, text, wait_ready};

/// PostgreSQL's token table, counting the lookups.
struct Counting {
    inner: PgTokens,
    lookups: Arc<AtomicU32>,
}

impl TokenLookup for Counting {
    fn find(&self, sha256: &[u8; 32]) -> Result<Option<Scope>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find(sha256)
    }
}

const REPORT: &str = r#"{"ballot_box_id":"BB1","city":"york","votes":{"a":1}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_before_any_lookup() {
    let (schema, pool) = migrated_schema();
    let redis = RedisChoice::Standalone;
    let redis_url = redis.url();
    let target = store_redis::parse_target(&redis_url).unwrap();
    let tally = Arc::new(RedisTally::connect(&target, &redis_options()).unwrap());
    let election = unique_election("authlimit");
    let (_, token) = issue_token(&pool, election.as_str(), None);
    let lookups = Arc::new(AtomicU32::new(0));
    let tokens = Arc::new(Counting {
        inner: PgTokens(pool.clone()),
        lookups: Arc::clone(&lookups),
    });
    let settings = Settings {
        token_cache_ttl: Duration::from_secs(60),
        auth_failures: Some(RateLimit {
            per_second: 0.01,
            burst: 3,
        }),
        ..settings()
    };
    let log = Arc::new(PgLog::new(pool.clone()));
    let ingest = Ingest::serve(
        schema, pool, tally, redis_url, election, token, log, tokens, settings,
    )
    .await;

    // The valid token: looked up once, then cached.
    let (status, body) = ingest.post(REPORT).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(lookups.load(Ordering::SeqCst), 1);

    // Three made-up tokens: each looked up, each 401.
    let made_up: Vec<String> = (0..3).map(|_| auth::generate()).collect();
    for token in &made_up {
        let (status, body) = ingest.post_with(token, REPORT).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(lookups.load(Ordering::SeqCst), 4);

    // A fourth (single report), and one of the three again (cached as
    // unknown; bulk): 429 with Retry-After, and no lookup.
    let batches_url = ingest.reports_url().replace("/reports", "/report-batches");
    for (url, token) in [
        (ingest.reports_url(), auth::generate()),
        (batches_url, made_up[0].clone()),
    ] {
        let response = ingest
            .client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(REPORT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429, "{url}");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1, "{retry_after}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "auth_rate_limited", "{body}");
    }
    assert_eq!(lookups.load(Ordering::SeqCst), 4, "no lookup once limited");

    // The valid token, cached, still reports from the same address.
    let (status, body) = ingest
        .post(r#"{"ballot_box_id":"BB2","city":"york","votes":{"a":1}}"#)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(lookups.load(Ordering::SeqCst), 4);
    ingest.stop().await;
}

/// The real binary limits failed authentications by default; the limit is
/// configured by environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_limits_failed_authentications() {
    let (_schema, base, child) = serve_binary(&[("INGEST_AUTH_FAILURE_BURST", "2")]);
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_made_up(&client, &base, None).await);
    }
    assert_eq!(statuses, [401, 401, 429]);
    stop(child).await;
}

/// Behind a trusted proxy each client has its own allowance, named by the
/// `X-Forwarded-For` the proxy appended; a client that is not a trusted
/// proxy cannot pick an address by sending the header. The service listens
/// on 127.0.0.1 and trusts only that address as a proxy; the other client
/// connects from 127.0.0.2 (all of 127.0.0.0/8 is loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let (_schema, base, child) = serve_binary(&[
        ("INGEST_AUTH_FAILURE_BURST", "2"),
        ("INGEST_TRUSTED_PROXIES", "127.0.0.1/32"),
    ]);
    let proxy = reqwest::Client::builder()
        .local_address("127.0.0.1".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let stranger = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();

    // Through the proxy, client A spends its allowance...
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_made_up(&proxy, &base, Some("203.0.113.1")).await);
    }
    assert_eq!(statuses, [401, 401, 429], "client A through the proxy");
    // ...and client B, also through it, still has its own; so has the
    // proxy itself (no header).
    assert_eq!(post_made_up(&proxy, &base, Some("203.0.113.2")).await, 401);
    assert_eq!(post_made_up(&proxy, &base, None).await, 401);
    // A client's own claim to the left of what the proxy appended is not
    // read: "203.0.113.1, 203.0.113.2" is client B.
    assert_eq!(
        post_made_up(&proxy, &base, Some("203.0.113.1, 203.0.113.2")).await,
        401
    );

    // A peer that is not a trusted proxy is limited by its own address,
    // whatever it writes in the header.
    let mut statuses = Vec::new();
    for forwarded in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        statuses.push(post_made_up(&stranger, &base, Some(forwarded)).await);
    }
    assert_eq!(statuses, [401, 401, 429], "the untrusted peer");
    stop(child).await;
}

/// A trusted-proxy list that does not parse stops the service at start-up,
/// naming the entry.
#[test]
fn a_bad_trusted_proxy_list_is_refused_naming_the_entry() {
    let output = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("INGEST_TRUSTED_PROXIES", "10.0.0.0/8,balancer")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("\"balancer\" is not an IP network"),
        "{stderr}"
    );
    assert!(stderr.contains("trusted-proxies"), "{stderr}");
}

/// The real binary, migrated and serving on a fresh schema with `env`.
fn serve_binary(env: &[(&str, &str)]) -> (PgSchema, String, std::process::Child) {
    let schema = PgSchema::new();
    let migrated = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", schema.url())
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", election_test_support::redis::redis_url())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&base, &mut child);
    (schema, base, child)
}

/// Posts a report with a made-up token, `X-Forwarded-For: forwarded` if
/// given; the answer's status.
async fn post_made_up(client: &reqwest::Client, base: &str, forwarded: Option<&str>) -> u16 {
    let mut request = client
        .post(format!("{base}/v1/elections/e/reports"))
        .bearer_auth(auth::generate())
        .header("content-type", "application/json")
        .body(REPORT);
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap().status().as_u16()
}
