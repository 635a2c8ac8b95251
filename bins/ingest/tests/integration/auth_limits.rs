//! Token checks under a flood of made-up tokens (issue #15 point 5): failed
//! authentications are limited per client address before any database
//! lookup (429 `auth_rate_limited` with `Retry-After`), a token cached as
//! valid still passes from that address, and the real binary limits by
//! default.

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
use crate::process::{BIN, free_port, send_signal, text, wait_ready};

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
        .env("INGEST_AUTH_FAILURE_BURST", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&base, &mut child);
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/v1/elections/e/reports"))
            .bearer_auth(auth::generate())
            .header("content-type", "application/json")
            .body(REPORT)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429]);
    send_signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
