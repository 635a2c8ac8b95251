//! The floor of one HTTP request per report on this machine: a server on
//! ingest's own HTTP stack (tokio's multi-threaded runtime, hyper's HTTP/1
//! connection through `election_http::serve`, an axum router) that reads
//! each report's body and answers a fixed 201 of the size of ingest's, with
//! no layers, no parsing, no PostgreSQL and no Redis; driven by wrk with
//! the bench's own report script at 512 connections.
//!
//! Why it is measured: issue 12's target counts the machine's CPU per
//! report, the client's included, and docs/benchmarks.md's profiles put
//! about a third of it in the HTTP request itself (hyper, tokio's
//! scheduling, the kernel's loopback TCP on both sides, wrk). Profiles
//! attribute samples; this measures the part no design of the handler can
//! remove while every report is a request of its own. The figure, next to
//! PostgreSQL's and Redis's ceilings in the same run, says how much of the
//! 75 µs is left for recording and counting at all.
//!
//! The server runs as a child process (`election-bench http-floor`, hidden
//! from `--help`), so its CPU is read from `/proc` like ingest's.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::ingest::Bench;
use crate::procs::Service;
use crate::usage;
use crate::wrk::{self, Posted, Posting, Watch};

/// The body of every answer: ingest's 2xx answer to a first report, with
/// the same fields and about the same length.
const ANSWER: &str =
    r#"{"report_id":1234567,"ballot_box_id":"run1-1-123456","revision":1,"status":"counted"}"#;

/// Serves the floor on `listen` until killed, holding each answer for
/// `hold` (zero: answering at once); with `layers`, inside ingest's own
/// layers (`election_http::layers`, as ingest sets them: CORS closed, no
/// compression), to measure what they cost by hand.
pub fn serve(listen: &str, hold: Duration, layers: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let app = router(hold);
        let config = election_http::ServeConfig {
            header_read_timeout: election_http::serve::DEFAULT_HEADER_TIMEOUT,
        };
        if layers {
            let app = election_http::layers::Layers {
                cors_origins: election_http::layers::CorsOrigins::None,
                cors_methods: vec![axum::http::Method::POST],
                cors_request_headers: Vec::new(),
                cors_exposed_headers: Vec::new(),
                compress: false,
            }
            .apply(app);
            election_http::serve(listener, app, config, std::future::pending()).await?;
        } else {
            election_http::serve(listener, app, config, std::future::pending()).await?;
        }
        Ok(())
    })
}

/// The floor's routes: `/healthz`, and ingest's report route answering
/// every post after `hold`.
fn router(hold: Duration) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/elections/{election}/reports",
            post(move |body: Bytes| answer(body, hold)),
        )
}

/// Takes the whole body, as ingest does before it parses it, and answers
/// after `hold`.
async fn answer(body: Bytes, hold: Duration) -> impl IntoResponse {
    drop(body);
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        ANSWER,
    )
}

/// One run of the floor.
pub struct Floor {
    /// The connections wrk held.
    pub connections: usize,
    /// How long the server held each answer.
    pub hold: Duration,
    pub posted: Posted,
    /// The server's CPU over the run.
    pub server: Duration,
}

impl Floor {
    /// Requests answered per second.
    pub fn per_second(&self) -> f64 {
        self.posted.summary.per_second
    }

    /// Machine CPU per request (the server's and wrk's), in µs.
    pub fn machine_micros(&self) -> f64 {
        usage::micros_per(self.server + self.posted.cpu, self.posted.summary.requests)
    }

    /// wrk's CPU per request, in µs.
    pub fn client_micros(&self) -> f64 {
        usage::micros_per(self.posted.cpu, self.posted.summary.requests)
    }

    /// The server's CPU per request, in µs.
    pub fn server_micros(&self) -> f64 {
        usage::micros_per(self.server, self.posted.summary.requests)
    }
}

/// Starts the floor server (holding each answer for `hold`) and posts to it
/// with `connections` connections for `seconds`, as ingest's runs do.
pub async fn measure(
    bench: &Bench,
    connections: usize,
    hold: Duration,
    seconds: Duration,
) -> anyhow::Result<Floor> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|dir| dir.to_str())
        .ok_or_else(|| anyhow::anyhow!("cannot name the bench's own directory"))?
        .to_owned();
    let name = exe
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| anyhow::anyhow!("cannot name the bench's own binary"))?
        .to_owned();
    let hold_us = hold.as_micros().to_string();
    let server =
        Service::start(&dir, &name, &["http-floor", "--hold-us", &hold_us], "", "").await?;
    let pid = server.pid();
    let posting = Posting {
        base: server.base().to_owned(),
        election: "floor".to_owned(),
        token: "none".to_owned(),
        run: "floor".to_owned(),
        threads: 2,
        connections,
        duration: seconds,
        batch: 1,
        rate: None,
    };
    let scripts = bench.scripts.clone();
    let ticks_per_second = bench.ticks_per_second;
    let before = usage::process_ticks(pid);
    let posted = tokio::task::spawn_blocking(move || {
        wrk::post_reports(&scripts, &posting, ticks_per_second, || Ok(Watch::Go))
    })
    .await??;
    let after = usage::process_ticks(pid);
    Ok(Floor {
        connections,
        hold,
        posted,
        server: usage::ticks_to_duration(after.saturating_sub(before), ticks_per_second),
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_report_is_read_and_answered_as_ingest_answers_it() {
        let post = Request::post("/v1/elections/e1/reports")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"ballot_box_id":"b1","city":"c1","votes":{"a":1}}"#,
            ))
            .unwrap();
        let held = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let answer = router(held).oneshot(post).await.unwrap();
        assert!(started.elapsed() >= held, "the answer was not held");
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(body, ANSWER.as_bytes());
        let fields: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for field in ["report_id", "ballot_box_id", "revision", "status"] {
            assert!(fields.get(field).is_some(), "{field} missing from {fields}");
        }
    }
}
