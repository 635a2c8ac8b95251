//! The real `election-query` binary: it refuses an unmigrated database,
//! SIGTERM ends it promptly with exit status 0 even while a live stream is
//! open (streams never end by themselves), its stream sends a snapshot and
//! then deltas (bridging `Last-Event-ID`, scoped, bad parameters refused), and
//! no password reaches its logs or metrics.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use election_test_support::pg::PgSchema;
use election_test_support::process::{free_port, send_signal};

use crate::harness::{Events, migrated_schema};

const BIN: &str = env!("CARGO_BIN_EXE_election-query");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn query(schema: &PgSchema, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", election_test_support::redis::redis_url())
        .env_remove("LISTEN_ADDR");
    command
}

#[test]
fn serve_refuses_an_unmigrated_database() {
    let schema = PgSchema::new();
    let output = query(&schema, &["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the database is not migrated; run `election-ingest migrate` first"),
        "{stderr}"
    );
}

fn wait_listening(address: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("election-query exited early: {status}");
        }
        if std::net::TcpStream::connect(address).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("election-query did not start listening at {address}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let (schema, pool) = migrated_schema();
    crate::harness::define_election(&pool, "sigterm-test");
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = query(&schema, &["serve", "--listen", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&address, &mut child);

    let client = reqwest::Client::new();
    let (status, page) =
        crate::harness::get(&client, &format!("http://{address}/?election=2025")).await;
    assert_eq!(status, 200);
    assert!(
        page.as_str()
            .unwrap()
            .contains("<title>Live results</title>")
    );
    let response = client
        .get(format!("http://{address}/v1/elections/sigterm-test/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response);
    let first = events.next_within(Duration::from_secs(10)).await;
    assert_eq!(first.event, "snapshot");

    let signalled = Instant::now();
    send_signal(child.id(), "TERM");
    // The open stream ends...
    let ended = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream was still open 10 s after SIGTERM");
    assert!(ended.is_none(), "unexpected event after SIGTERM: {ended:?}");
    // ...and the process exits 0.
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("election-query stopped"), "{stderr}");
    eprintln!("stopped {:?} after SIGTERM", signalled.elapsed());
}

const DB_PASSWORD: &str = "S3cretDbPw";
const REDIS_PASSWORD: &str = "S3cretRedisPw";

/// Secrets never reach logs or metrics (issue #7): the real binary with
/// passwords in its PostgreSQL and Redis URLs, at `RUST_LOG=debug` in both
/// log formats, through a Redis stall (so the error paths log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_logs_or_metrics() {
    let (schema, pool) = migrated_schema();
    crate::harness::define_election(&pool, "secrets");
    let database_url = election_test_support::pg::with_password(schema.url(), DB_PASSWORD);
    let redis =
        election_test_support::redis::RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    let client = reqwest::Client::new();
    for format in ["human", "json"] {
        let dir = std::env::temp_dir().join(format!(
            "election-query-secrets-{}-{format}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", &address])
            .env("DATABASE_URL", &database_url)
            .env("REDIS_URL", redis.url())
            .env("RUST_LOG", "debug")
            .env("LOG_FORMAT", format)
            .env("REDIS_TIMEOUT_MS", "300")
            .env("SNAPSHOT_INTERVAL_MS", "50")
            .env_remove("LISTEN_ADDR")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        wait_listening(&address, &mut child);
        let base = format!("http://{address}");
        let (status, totals) =
            crate::harness::get(&client, &format!("{base}/v1/elections/secrets/totals")).await;
        assert_eq!(status, 200, "{totals}");
        let (status, _) =
            crate::harness::get(&client, &format!("{base}/v1/elections/secrets/timeline")).await;
        assert_eq!(status, 200);

        // Redis stalls for a while: snapshots fail and are logged.
        let paused = redis.pause();
        let (ready_status, ready) = crate::harness::get(&client, &format!("{base}/readyz")).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.resume(paused);
        assert_eq!(ready_status, 503, "{ready}");
        let (_, metrics) = crate::harness::get(&client, &format!("{base}/metrics")).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        assert!(metrics.contains("query_requests_total"), "{metrics}");

        send_signal(child.id(), "TERM");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "exit {status:?}");
        let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
        let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(stderr.contains("election-query serving"), "{stderr}");
        assert!(stderr.contains(":***@127.0.0.1"), "{stderr}");
        assert!(
            stderr.contains("DEBUG"),
            "{format}: no debug lines: {stderr}"
        );
        assert!(
            stderr.contains("cannot read the live totals"),
            "{format}: the Redis failure was not logged: {stderr}"
        );
        let ready = ready.to_string();
        for secret in [DB_PASSWORD, REDIS_PASSWORD] {
            for (what, output) in [
                ("stdout", &stdout),
                ("stderr", &stderr),
                ("metrics", &metrics),
                ("readyz", &ready),
            ] {
                assert!(
                    !output.contains(secret),
                    "{format}: {secret:?} appears in {what}:\n{output}"
                );
            }
        }
    }
}

/// The stream of the real binary, fed by a real ingest service: a snapshot
/// on connect, a delta naming only the city that reported, the missed
/// deltas on reconnection with a `Last-Event-ID` it keeps, a snapshot for
/// one it never gave, `?scope=national`, and a 400 for a bad city.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binarys_stream_sends_a_snapshot_then_deltas() {
    use serde_json::Value;

    let (schema, pool) = migrated_schema();
    let election = election_core::contract::unique_election("binary-stream");
    let token = crate::harness::issue_token(&pool, election.as_str());
    let target = store_redis::parse_target(&election_test_support::redis::redis_url()).unwrap();
    let tally = std::sync::Arc::new(
        store_redis::RedisTally::connect(&target, &crate::harness::redis_options()).unwrap(),
    );
    let ingest = crate::harness::start_ingest(
        pool.clone(),
        tally,
        std::sync::Arc::new(election_ingest::commands::PgTokens(pool.clone())),
    )
    .await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = query(&schema, &["serve", "--listen", &address])
        .env("SNAPSHOT_INTERVAL_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&address, &mut child);
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client
            .post(format!("{}/v1/elections/{election}/reports", ingest.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in crate::harness::SEED {
        assert_eq!(post(body).await.unwrap().status(), 201);
    }
    let stream = format!("http://{address}/v1/elections/{election}/stream");
    let open = |query: &str, last_event_id: Option<&str>| {
        let mut request = client.get(format!("{stream}{query}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            Events::new(response)
        }
    };
    let data =
        |event: &crate::harness::SseEvent| -> Value { serde_json::from_str(&event.data).unwrap() };

    // A snapshot with the seed (once all three reports are in it).
    let mut events = open("", None).await;
    let mut snapshot = events.next_within(Duration::from_secs(10)).await;
    assert_eq!(snapshot.event, "snapshot");
    while data(&snapshot)["national"]["ballot_boxes_reported"] != 3 {
        snapshot = events.next_within(Duration::from_secs(10)).await;
        assert_eq!(snapshot.event, "delta");
    }
    let seeded = snapshot.id.clone();

    // London reports: deltas naming London alone, each after the one before.
    assert_eq!(
        post(r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 7}}"#)
            .await
            .unwrap()
            .status(),
        201
    );
    let mut previous = seeded.clone();
    let latest = loop {
        let delta = events.next_within(Duration::from_secs(5)).await;
        assert_eq!(delta.event, "delta");
        let body = data(&delta);
        assert_eq!(body["previous"].to_string(), previous);
        for city in body["cities"].as_array().unwrap() {
            assert_eq!(city["city"], "london", "{body}");
        }
        previous = delta.id.clone();
        if body["national"]["total_votes"] == 847 && body["national"]["ballot_boxes_reported"] == 4
        {
            break delta.id;
        }
    };
    drop(events);

    // Back with the seeded id: only the deltas missed.
    let mut events = open("", Some(&seeded)).await;
    let first = events.next_within(Duration::from_secs(5)).await;
    assert_eq!(first.event, "delta");
    assert_eq!(data(&first)["previous"].to_string(), seeded);
    let mut last = first;
    while last.id != latest {
        last = events.next_within(Duration::from_secs(5)).await;
        assert_eq!(last.event, "delta");
    }
    drop(events);

    // An id this process never gave: a snapshot.
    let mut events = open("", Some("1")).await;
    let event = events.next_within(Duration::from_secs(5)).await;
    assert_eq!(event.event, "snapshot");
    assert_eq!(data(&event)["national"]["total_votes"], 847);
    drop(events);

    // The national ticker, and a bad city.
    let mut events = open("?scope=national", None).await;
    let event = events.next_within(Duration::from_secs(5)).await;
    assert_eq!(event.event, "snapshot");
    let body = data(&event);
    assert_eq!(body["national"]["total_votes"], 847);
    assert!(body.get("cities").is_none(), "{body}");
    drop(events);
    let (status, body) = crate::harness::get(&client, &format!("{stream}?city=Paris")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_parameter");
    assert!(
        body["message"].as_str().unwrap().starts_with("city:"),
        "{body}"
    );

    send_signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit {status:?}");
    ingest.stop().await;
}

#[test]
fn version_names_the_release_and_the_revision() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout),
        format!(
            "election-query {} ({})\n",
            env!("CARGO_PKG_VERSION"),
            election_http::build::REVISION
        )
    );
}

/// With `LOG_FORMAT=json`, a start-up error is a JSON line too, and the old
/// duration names are accepted with a warning.
#[test]
fn start_up_errors_are_json_lines_with_log_format_json() {
    let schema = PgSchema::new();
    let output = query(&schema, &["serve", "--listen", "127.0.0.1:0"])
        .env("LOG_FORMAT", "json")
        .env("SNAPSHOT_INTERVAL_MS", "50")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let lines = election_test_support::logs::json_lines(&stderr);
    assert!(
        lines.iter().any(|line| line["level"] == "WARN"
            && line["message"]
                == "SNAPSHOT_INTERVAL_MS is deprecated: set SNAPSHOT_INTERVAL=50ms instead"),
        "{stderr}"
    );
    election_test_support::logs::assert_fatal(
        &lines,
        &stderr,
        "election-query",
        "the database is not migrated",
    );
}

/// `/metrics` says which version and revision runs; the listen address comes
/// from `QUERY_LISTEN_ADDR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_build_info() {
    let (schema, _pool) = migrated_schema();
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = query(&schema, &["serve"])
        .env("QUERY_LISTEN_ADDR", &address)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&address, &mut child);
    let metrics = reqwest::get(format!("http://{address}/metrics"))
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
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `QUERY_WORKER_THREADS` sets how many threads answer HTTP; without it,
/// half the cores the process may use, at least one (`cli.rs`,
/// `default_worker_threads`). The count is the start-up line's
/// `runtime.workers`, which is tokio's own count of the runtime's workers
/// (its blocking threads carry the same thread name, so `/proc` cannot
/// tell them apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_worker_threads_sets_the_runtimes_workers() {
    let (schema, _pool) = migrated_schema();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for (setting, expected) in [
        (Some("3"), 3),
        (None, election_query::cli::default_worker_threads(cores)),
    ] {
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = query(&schema, &["serve"]);
        command
            .env("QUERY_LISTEN_ADDR", &address)
            .env("LOG_FORMAT", "json")
            .env_remove("QUERY_WORKER_THREADS");
        if let Some(setting) = setting {
            command.env("QUERY_WORKER_THREADS", setting);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_listening(&address, &mut child);
        send_signal(child.id(), "TERM");
        let output = child.wait_with_output().unwrap();
        let stderr = text(&output.stderr);
        let lines = election_test_support::logs::json_lines(&stderr);
        let serving = lines
            .iter()
            .find(|line| {
                line["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("election-query serving"))
            })
            .unwrap_or_else(|| panic!("no start-up line: {stderr}"));
        assert_eq!(
            serving["runtime.workers"], expected,
            "QUERY_WORKER_THREADS={setting:?}: {stderr}"
        );
    }
    // 0 is refused at start-up, naming the setting.
    let output = query(&schema, &["serve"])
        .env("QUERY_WORKER_THREADS", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

/// With `HISTORY_DATABASE_URL`, history (here the CSV export) is read from
/// that database, a stand-in for a replica, while the list of elections
/// still comes from `DATABASE_URL` and live totals from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_from_history_database_url() {
    let stack = crate::harness::Stack::start().await;
    stack.post_seed().await;
    // The "replica": migrated, but it has not received the reports.
    let (replica, _replica_pool) = migrated_schema();
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for history in [None, Some(replica.url())] {
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = query(&stack.schema, &["serve", "--listen", &address]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(url) = history {
            command.env("HISTORY_DATABASE_URL", url);
        }
        let mut child = command.spawn().unwrap();
        wait_listening(&address, &mut child);
        let base = format!("http://{address}/v1/elections/{}", stack.election);
        let (status, totals) = crate::harness::get(&client, &format!("{base}/totals")).await;
        assert_eq!(status, 200, "{totals}");
        assert_eq!(totals["total_votes"], 840, "{totals}");
        let csv = client
            .get(format!("{base}/reports.csv"))
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), 200);
        rows.push(csv.text().await.unwrap().lines().count());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Header and 3 reports × 4 parties from the primary; the header alone
    // from the replica.
    assert_eq!(rows, [13, 1]);
}
