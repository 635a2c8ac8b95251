//! Measurements of election-query: requests per second on the live totals
//! (with `wrk`, which costs far less CPU per request than an in-process Rust
//! client on a 2-core machine), and how fast one new report reaches thousands
//! of stream subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;

use crate::wrk;

/// Requests per second and latency of a fixed-duration run.
pub struct Rate {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// The `Accept-Encoding` browsers send (Chromium's), which CDNs pass on in
/// their own words.
pub const BROWSER_ENCODINGS: &str = "gzip, deflate, br, zstd";

/// `GET /v1/elections/{election}/{resource}` with `connections` connections
/// for `seconds`, measured by wrk, asking for `accept_encoding` if given.
pub async fn hammer(
    base: &str,
    election: &str,
    resource: &str,
    accept_encoding: Option<&str>,
    connections: usize,
    seconds: Duration,
) -> anyhow::Result<Rate> {
    let url = format!("{base}/v1/elections/{election}/{resource}");
    // The first request starts the election's snapshot.
    let first = reqwest::get(&url).await?.status();
    anyhow::ensure!(first.is_success(), "GET {url} answered {first}");
    // wrk splits a header at ": ", so the space matters.
    let header = accept_encoding.map(|value| format!("Accept-Encoding: {value}"));
    let mut command = tokio::process::Command::new("wrk");
    command.args([
        "--latency",
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{}s", seconds.as_secs().max(1)),
    ]);
    if let Some(header) = &header {
        command.args(["-H", header]);
    }
    let output = command
        .arg(&url)
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = wrk::Summary::parse(&text)?;
    if summary.error_statuses > 0 {
        bail!("wrk saw answers of status 400 or above:\n{text}");
    }
    Ok(Rate {
        per_second: summary.per_second,
        p50: summary.p50,
        p99: summary.p99,
    })
}

/// How `GET /v1/elections/{election}/{resource}` is answered to a client
/// asking for `accept_encoding`: the `Content-Encoding` (`None`: plain), the
/// bytes sent, and the bytes of the plain answer.
pub async fn encoded_size(
    base: &str,
    election: &str,
    resource: &str,
    accept_encoding: &str,
) -> anyhow::Result<(Option<String>, usize, usize)> {
    let url = format!("{base}/v1/elections/{election}/{resource}");
    let client = reqwest::Client::new();
    let plain = client.get(&url).send().await?.bytes().await?.len();
    let response = client
        .get(&url)
        .header("accept-encoding", accept_encoding)
        .send()
        .await?;
    let encoding = response
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((encoding, response.bytes().await?.len(), plain))
}

/// Delivery of one new report to many stream subscribers.
pub struct Fanout {
    pub received: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Opens `subscribers` streams on `election`, posts one report, and measures
/// when each subscriber sees it.
pub async fn stream_fanout(
    pool: &store_pg::PgPool,
    query_base: &str,
    ingest_base: &str,
    election: &str,
    subscribers: usize,
) -> anyhow::Result<Fanout> {
    let token = election_core::token::from_bytes(rand::random());
    store_pg::tokens::insert(
        pool,
        &election_core::token::hash(&token),
        election,
        None,
        Some("bench"),
    )?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let post = |ballot_box: &str, votes: u32| {
        client
            .post(format!("{ingest_base}/v1/elections/{election}/reports"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"ballot_box_id":"{ballot_box}","city":"york","votes":{{"a":{votes}}}}}"#
            ))
            .send()
    };
    anyhow::ensure!(
        post("FIRST", 1).await?.status().is_success(),
        "first post failed"
    );

    let connected = Arc::new(AtomicUsize::new(0));
    let posted_at: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let url = format!("{query_base}/v1/elections/{election}/stream");
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let client = client.clone();
        let url = url.clone();
        let connected = Arc::clone(&connected);
        let posted_at = Arc::clone(&posted_at);
        tasks.push(tokio::spawn(async move {
            let response = client.get(&url).send().await.ok()?;
            let mut body = response.bytes_stream();
            let mut seen = String::new();
            let mut counted = false;
            while let Some(Ok(chunk)) = body.next().await {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if !counted && seen.contains("event: snapshot") {
                    counted = true;
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                // The second report brings the total to 1 + 54321.
                if seen.contains("54322") {
                    return posted_at.get().map(Instant::elapsed);
                }
                if seen.len() > 1 << 20 {
                    seen.drain(..seen.len() - 4096);
                }
            }
            None
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < subscribers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {subscribers} subscribers got their first event (raise `ulimit -n`?)",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = posted_at.set(Instant::now());
    anyhow::ensure!(
        post("SECOND", 54321).await?.status().is_success(),
        "second post failed"
    );
    let mut latencies = Vec::with_capacity(subscribers);
    for task in tasks {
        if let Ok(Ok(Some(latency))) = tokio::time::timeout(Duration::from_secs(30), task).await {
            latencies.push(latency);
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    anyhow::ensure!(!latencies.is_empty(), "no subscriber saw the new report");
    Ok(Fanout {
        received: latencies.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    })
}
