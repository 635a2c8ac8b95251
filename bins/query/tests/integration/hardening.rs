//! Hostile clients and access (issue #7) on the query service: a stream
//! outlives the header timeout while a client that stalls in its headers is
//! cut off; and the service has no write path (every other method on every
//! route is refused, and no Redis key or PostgreSQL row changes).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Stack, open_stream, query_settings};

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_header_timeout_while_a_stalled_client_is_cut_off() {
    let mut settings = query_settings();
    settings.serve.header_read_timeout = HEADER_TIMEOUT;
    settings.keep_alive = Duration::from_millis(100);
    let stack = Stack::start_with(settings).await;
    crate::harness::define_election(&stack.pool, stack.election.as_str());
    let mut events = open_stream(&stack, None).await;
    let first = events.next_within(Duration::from_secs(10)).await;
    assert_eq!(first.event, "snapshot");
    let opened = Instant::now();

    // A client that sends half a header line and stalls.
    let address = stack.query.base.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /v1/elections/x/totals HTTP/1.1\r\nHo")
        .unwrap();
    let stalled = Instant::now();
    let cut_off = tokio::task::spawn_blocking(move || {
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buffer = [0u8; 1024];
        // 0 bytes: closed by the server; an error other than a timeout:
        // reset by it. Either way, no answer.
        match slow.read(&mut buffer) {
            Ok(0) => Ok(stalled.elapsed()),
            Ok(n) => Err(format!(
                "answered: {:?}",
                String::from_utf8_lossy(&buffer[..n])
            )),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err("still open after 10 s".to_owned())
            }
            Err(_) => Ok(stalled.elapsed()),
        }
    });
    // Meanwhile other clients are served.
    let (status, totals) = stack.get("/totals").await;
    assert_eq!(status, 200, "{totals}");
    let waited = cut_off.await.unwrap().unwrap();
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_millis(50) && waited < Duration::from_secs(3),
        "cut off after {waited:?}"
    );

    // Well past the header timeout, the stream still delivers news.
    tokio::time::sleep(HEADER_TIMEOUT * 4).await;
    stack.post_seed().await;
    loop {
        let event = events.next_within(Duration::from_secs(10)).await;
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        if data["national"]["total_votes"] == 840 {
            break;
        }
    }
    assert!(opened.elapsed() > HEADER_TIMEOUT * 4);
    stack.stop().await;
}

/// Everything the stack's election has in Redis (every key naming it, with
/// its value whatever its type) and in PostgreSQL (a digest of every table
/// of the schema).
fn state_of(stack: &Stack) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut redis =
        election_test_support::redis::connection(&election_test_support::redis::redis_url());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{}*", stack.election))
        .query(&mut redis)
        .unwrap();
    let mut in_redis = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut redis).unwrap();
        let value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query::<String>(&mut redis)
                .unwrap(),
            "set" => {
                let mut members: Vec<String> =
                    redis::cmd("SMEMBERS").arg(&key).query(&mut redis).unwrap();
                members.sort();
                members.join(",")
            }
            "hash" => {
                let fields: BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query(&mut redis).unwrap();
                format!("{fields:?}")
            }
            "zset" => {
                let members: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut redis)
                    .unwrap();
                members.join(",")
            }
            other => panic!("key {key} has type {other}: read it here"),
        };
        in_redis.insert(key, format!("{kind}:{value}"));
    }

    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    #[derive(diesel::QueryableByName)]
    struct Digest {
        #[diesel(sql_type = diesel::sql_types::Text)]
        digest: String,
    }
    let mut conn = stack.pool.get().unwrap();
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .load(&mut conn)
    .unwrap();
    assert!(tables.len() >= 3, "no tables found in the test schema");
    let mut in_pg = BTreeMap::new();
    for table in tables {
        // Table names come from the catalogue of our own schema.
        let digest: Digest = diesel::sql_query(format!(
            "SELECT count(*)::text || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) \
             AS digest FROM \"{}\" t",
            table.name
        ))
        .get_result(&mut conn)
        .unwrap();
        in_pg.insert(table.name, digest.digest);
    }
    (in_redis, in_pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_service_has_no_write_path() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let before = state_of(&stack);
    assert!(
        before.0.len() >= 8,
        "the seed left too few keys: {:?}",
        before.0
    );

    let body = r#"{"ballot_box_id":"BB-W","city":"london","votes":{"labour":1000}}"#;
    let mut answers = Vec::new();
    let mut paths: Vec<String> = election_query::api::routes()
        .iter()
        .map(|(_, path)| {
            path.replace("{election}", stack.election.as_str())
                .replace("{city}", "london")
        })
        .collect();
    // The ingest route, on the query service.
    paths.push(format!("/v1/elections/{}/reports", stack.election));
    for path in &paths {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let response = stack
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", stack.query.base),
                )
                .bearer_auth(&stack.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if path.ends_with("/reports") {
                assert_eq!(status, 404, "{method} {path}");
            } else {
                assert_eq!(status, 405, "{method} {path}");
                let allow = response.headers()["allow"].to_str().unwrap().to_owned();
                assert!(allow.contains("GET"), "{method} {path}: Allow {allow}");
                assert!(!allow.contains(method), "{method} {path}: Allow {allow}");
            }
            answers.push((method, path.clone(), status));
        }
    }
    assert_eq!(answers.len(), paths.len() * 4);
    assert_eq!(state_of(&stack), before, "a write method changed something");
    let (status, totals) = stack.get("/totals").await;
    assert_eq!((status, totals["total_votes"].as_i64()), (200, Some(840)));
    stack.stop().await;
}
