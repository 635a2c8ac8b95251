//! The public read API behind a real caching reverse proxy, as broadcasters
//! and news sites serve it: nginx (Debian's, installed by `cargo xtask
//! setup`) with a shared cache in front of the query service, trusting the
//! origin's `Cache-Control` and revalidating with its validators, as a CDN
//! does.
//!
//! What it proves, beyond the other tests' checks of the service's own
//! headers: a cache serves the live totals at most `max-age` old (rounded
//! to its whole seconds), revalidates them with the validators it holds (the
//! service answers 304 and the cache keeps serving its copy), fetches them
//! anew once they changed, and serves one copy to the pages of every site
//! (the answers do not vary on `Origin`); error answers are never kept,
//! even with the cache set to keep errors (`no-store`); the Server-Sent
//! Events stream passes through as events happen, plain or gzipped (the
//! proxy adds no encoding and passes the service's intact), is never served
//! from the cache, and resumes through it with `Last-Event-ID`.
//!
//! Not proved here: what the stream's `X-Accel-Buffering: no` and
//! `Cache-Control: no-cache` buy. nginx forwards a stream's bytes as they
//! arrive even with its buffering on, and never stores an answer that does
//! not end (tried: with both headers changed to allow buffering and caching
//! the tests still pass). They are for proxies that hold answers whole and
//! for a slow reader, whose backlog nginx would otherwise keep on disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use election_test_support::process::free_port;

use crate::harness::{Events, SEED, Stack, read};

/// A private nginx on a free port, proxying to `origin` with a shared cache;
/// stopped and its directory removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Nginx {
    fn start(origin: &str) -> Nginx {
        let binary = [
            "/usr/sbin/nginx",
            "/usr/local/sbin/nginx",
            "/usr/local/nginx/sbin/nginx",
        ]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("nginx is not installed: run `cargo xtask setup` (Debian package nginx)");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "election-query-nginx-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["", "cache", "temp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            // nginx's workers run as `nobody` under a root master.
            open_to_workers(&dir.join(sub));
        }
        let origin = origin.trim_start_matches("http://");
        let config = format!(
            r#"
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    proxy_cache_path {dir}/cache keys_zone=live:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{origin};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache live;
            proxy_cache_revalidate on;
            # An operator's negative caching: errors kept for a minute when
            # the origin says nothing about them.
            proxy_cache_valid 404 429 503 1m;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"#,
            dir = dir.display()
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let mut nginx = Nginx {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}) before accepting connections:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not accept connections within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

/// Lets nginx's workers (`nobody` when the tests run as root) use `path`.
fn open_to_workers(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

impl Drop for Nginx {
    /// Stops nginx as its own `nginx -s stop` would (`TERM` to the master,
    /// which stops its worker and cache manager before it exits). `KILL`
    /// would orphan those two, still serving the port: only after 10 s.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Not `send_signal`, which panics on failure: this may run while
            // a test is already panicking.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET through the proxy: status, the cache's verdict and the JSON body.
async fn get(stack: &Stack, nginx: &Nginx, path: &str) -> (u16, String, serde_json::Value) {
    let (status, verdict, _, body) = get_from(stack, nginx, path, None).await;
    (status, verdict, body)
}

/// [`get`] as a browser page on `origin` asks (`Origin` sent), with the
/// answer's `Access-Control-Allow-Origin`.
async fn get_from(
    stack: &Stack,
    nginx: &Nginx,
    path: &str,
    origin: Option<&str>,
) -> (u16, String, Option<String>, serde_json::Value) {
    let url = format!("{}/v1/elections/{}{path}", nginx.base, stack.election);
    let mut request = stack.client.get(&url);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let verdict = header("x-cache-status").unwrap_or_default();
    let allowed = header("access-control-allow-origin");
    // A body that is not JSON comes back as a string, which no assertion
    // on totals accepts.
    let (status, body) = read(response).await;
    (status, verdict, allowed, body)
}

#[tokio::test]
async fn a_caching_proxy_serves_the_totals_fresh_and_revalidates_them() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    let direct = stack.wait_for_total(840, Duration::from_secs(10)).await;
    let nginx = Nginx::start(&stack.query.base);

    // The first read fills the cache; a read within max-age (1 s in the
    // tests' settings) is served from it. Each is retried once, as a read
    // a whole second late (a loaded machine) finds the copy expired.
    let (status, verdict, body) = get(&stack, &nginx, "/totals").await;
    assert_eq!((status, verdict.as_str()), (200, "MISS"));
    assert_eq!(body, direct);
    let mut hit = false;
    for _ in 0..2 {
        let (status, verdict, body) = get(&stack, &nginx, "/totals").await;
        assert_eq!(status, 200);
        assert_eq!(body, direct);
        if verdict == "HIT" {
            hit = true;
            break;
        }
    }
    assert!(hit, "a read within max-age was not served from the cache");
    // Pages of any site read the same copy: the answer is the same for
    // every origin (`Access-Control-Allow-Origin: *`), so it must not vary
    // on `Origin`, or a cache keeps, and fetches, one copy per site.
    let mut shared = false;
    for origin in ["https://news.example", "https://tv.example"] {
        let (status, verdict, allowed, body) =
            get_from(&stack, &nginx, "/totals", Some(origin)).await;
        assert_eq!((status, allowed.as_deref()), (200, Some("*")), "{origin}");
        assert_eq!(body, direct, "{origin}");
        shared |= verdict == "HIT";
    }
    assert!(
        shared,
        "pages of other sites were not served the cached copy"
    );

    // An error answer is never kept, even by a cache set to keep errors
    // when the origin says nothing: a 404 for an election not defined yet
    // would otherwise outlive its definition by that long.
    let unknown = format!(
        "{}/v1/elections/not-yet-{}/totals",
        nginx.base, stack.election
    );
    for _ in 0..2 {
        let response = stack.client.get(&unknown).send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_ne!(
            response
                .headers()
                .get("x-cache-status")
                .map(|v| v.to_str().unwrap()),
            Some("HIT"),
            "a 404 was served from the cache"
        );
    }

    // Past max-age the cache asks the origin with the validators it holds;
    // nothing changed, so the service answers 304 and the cache serves its
    // copy (REVALIDATED is nginx's word for exactly that). nginx counts
    // whole seconds: a copy of max-age 1 is stale within 2 s.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, verdict, body) = get(&stack, &nginx, "/totals").await;
    assert_eq!((status, verdict.as_str()), (200, "REVALIDATED"));
    assert_eq!(body, direct);

    // A new report: once the copy is past max-age the cache fetches the new
    // totals (EXPIRED: asked again, answered in full), so a reader behind it
    // is at most max-age (and the cache's rounding to seconds) behind the
    // service.
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 7}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    stack.wait_for_total(847, Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, verdict, body) = get(&stack, &nginx, "/totals").await;
        assert_eq!(status, 200);
        if body["total_votes"] == 847 {
            assert_eq!(body["parties"]["labour"], 437);
            assert!(
                verdict == "EXPIRED" || verdict == "MISS",
                "new totals through the cache as {verdict}"
            );
            break;
        }
        assert_eq!(body, direct, "neither the old totals nor the new");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache still served the old totals 5 s after they changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.stop().await;
}

#[tokio::test]
async fn events_pass_through_a_caching_proxy_as_they_happen() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let nginx = Nginx::start(&stack.query.base);
    let url = format!("{}/v1/elections/{}/stream", nginx.base, stack.election);

    // Each pass posts a box of 186 votes (the seed's first, with labour at 1).
    let mut expected = 840;
    let mut first_snapshot = None;
    for (n, encoding) in [(2, None), (3, Some("gzip"))] {
        let mut request = stack.client.get(&url);
        if let Some(encoding) = encoding {
            request = request.header("accept-encoding", encoding);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        assert_eq!(
            headers.get("content-encoding").map(|v| v.to_str().unwrap()),
            encoding,
            "the proxy passes the service's encoding on, and adds none"
        );
        let mut events = Events::new(response);
        let snapshot = events.next_within(Duration::from_secs(10)).await;
        assert_eq!(snapshot.event, "snapshot", "{encoding:?}");
        let data: serde_json::Value = serde_json::from_str(&snapshot.data).unwrap();
        assert_eq!(data["national"]["total_votes"], expected, "{encoding:?}");
        first_snapshot.get_or_insert(snapshot.id.clone());

        // A report posted now reaches the open stream through the proxy,
        // while the stream stays open: nothing holds events back.
        let body = SEED[0]
            .replace("BB-LON-1", &format!("BB-LON-{n}"))
            .replace("\"labour\": 200", "\"labour\": 1");
        let (status, answer) = stack.post(&body).await;
        assert_eq!(status, 201, "{answer}");
        expected += 186;
        loop {
            let event = events.next_within(Duration::from_secs(10)).await;
            assert_eq!(event.event, "delta", "{encoding:?}: {event:?}");
            let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            if data["national"]["total_votes"] == expected {
                break;
            }
        }
    }

    // The stream was never stored: a third subscriber starts from the
    // service's current state, not from a cached copy of an earlier stream.
    let response = stack.client.get(&url).send().await.unwrap();
    assert_ne!(
        response
            .headers()
            .get("x-cache-status")
            .map(|v| v.to_str().unwrap()),
        Some("HIT")
    );
    let mut events = Events::new(response);
    let snapshot = events.next_within(Duration::from_secs(10)).await;
    let data: serde_json::Value = serde_json::from_str(&snapshot.data).unwrap();
    assert_eq!(data["national"]["total_votes"], expected);

    // A subscriber that reconnects through the proxy with `Last-Event-ID`
    // (a browser does, after a dropped connection) gets the deltas it
    // missed, not a whole snapshot: the proxy passes the header on.
    let first = first_snapshot.unwrap();
    let response = stack
        .client
        .get(&url)
        .header("last-event-id", &first)
        .send()
        .await
        .unwrap();
    let mut events = Events::new(response);
    let bridged = events.next_within(Duration::from_secs(10)).await;
    assert_eq!(bridged.event, "delta", "{bridged:?}");
    let mut data: serde_json::Value = serde_json::from_str(&bridged.data).unwrap();
    assert_eq!(data["previous"].to_string(), first, "{data}");
    while data["national"]["total_votes"] != expected {
        let event = events.next_within(Duration::from_secs(10)).await;
        assert_eq!(event.event, "delta", "{event:?}");
        data = serde_json::from_str(&event.data).unwrap();
    }
    stack.stop().await;
}
