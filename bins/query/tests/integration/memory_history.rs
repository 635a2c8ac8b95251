//! The history, audit and export endpoints in-process against the
//! in-memory history adapter (`MemoryLog` behind `election_core::History`):
//! the read API asks the port, not PostgreSQL, so the same reports give the
//! same answers without a database behind the history. (Definitions still
//! come from a fresh PostgreSQL schema, which defines nothing here.)

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use election_core::contract::{seed_correction, seed_reports, unique_election};
use election_core::memory::{MemoryLog, MemoryTally};
use election_core::{ElectionId, Engine, History, Outcome, Report, ReportLog, Tally};
use election_http::health::ReadyCheck;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::harness::{migrated_schema, query_settings, read};

/// A query service whose history is `log`, serving until the sender drops.
struct MemoryStack {
    base: String,
    election: ElectionId,
    client: reqwest::Client,
    engine: Engine,
    _stop: oneshot::Sender<()>,
    _schema: election_test_support::pg::PgSchema,
}

impl MemoryStack {
    async fn start() -> MemoryStack {
        let (schema, pool) = migrated_schema();
        let log = Arc::new(MemoryLog::new());
        let tally = Arc::new(MemoryTally::new());
        let engine = Engine::new(
            Arc::clone(&log) as Arc<dyn ReportLog>,
            Arc::clone(&tally) as Arc<dyn Tally>,
        );
        let ready: ReadyCheck = Arc::new(|| Ok(Vec::new()));
        let services = election_query::Services {
            tally,
            pg: pool,
            catalog: Arc::clone(&log) as Arc<dyn History>,
            history: log,
            ready,
            redis: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(election_query::run(
            election_wiring::Serving::new(listener, async {
                let _ = stopped.await;
            }),
            services,
            query_settings(),
        ));
        MemoryStack {
            base,
            election: unique_election("memory"),
            client: reqwest::Client::new(),
            engine,
            _stop: stop,
            _schema: schema,
        }
    }

    /// Records and counts `reports`, each counted.
    fn submit(&self, reports: &[Report]) {
        let outcomes = self.engine.submit(reports).unwrap();
        assert!(
            outcomes.iter().all(|o| matches!(o, Outcome::Counted(_))),
            "{outcomes:?}"
        );
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/v1/elections/{}{rest}", self.base, self.election)
    }

    async fn get(&self, rest: &str) -> (u16, Value) {
        read(self.client.get(self.url(rest)).send().await.unwrap()).await
    }

    /// A CSV export's lines, header first, after checking it answered 200.
    async fn csv(&self, rest: &str) -> Vec<String> {
        let response = self.client.get(self.url(rest)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{rest}");
        let text = response.text().await.unwrap();
        text.split("\r\n")
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_endpoints_answer_from_the_in_memory_history() {
    let stack = MemoryStack::start().await;
    // Existence is the port's answer too.
    let never = unique_election("never");
    let (status, body) = read(
        stack
            .client
            .get(format!(
                "{}/v1/elections/{never}/analytics/cities",
                stack.base
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "nothing recorded: {body}");
    assert_eq!(body["error"], "unknown_election");

    stack.submit(&seed_reports(&stack.election));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stack.submit(&[seed_correction(&stack.election)]);

    let (status, cities) = stack.get("/analytics/cities").await;
    assert_eq!(status, 200, "{cities}");
    assert_eq!(
        cities["cities"],
        json!([
            {"city": "edinburgh", "votes": 475, "reports": 2},
            {"city": "london", "votes": 385, "reports": 1},
            {"city": "manchester", "votes": 280, "reports": 1},
        ])
    );
    let from = between.to_rfc3339_opts(SecondsFormat::Micros, true);
    let (status, window) = stack
        .get(&format!(
            "/analytics/cities?from={}",
            from.replace('+', "%2B")
        ))
        .await;
    assert_eq!(status, 200, "{window}");
    assert_eq!(
        window["cities"],
        json!([{"city": "edinburgh", "votes": 300, "reports": 1}])
    );

    let (status, first) = stack.get("/analytics/first-reports?limit=2").await;
    assert_eq!(status, 200, "{first}");
    let boxes = first["ballot_boxes"].as_array().unwrap();
    assert_eq!(
        boxes
            .iter()
            .map(|b| (
                b["rank"].clone(),
                b["ballot_box_id"].clone(),
                b["city"].clone()
            ))
            .collect::<Vec<_>>(),
        [
            (json!(1), json!("BB-EDI-1"), json!("edinburgh")),
            (json!(2), json!("BB-LON-1"), json!("london")),
        ]
    );

    let (status, timeline) = stack.get("/timeline?bucket=1d").await;
    assert_eq!(status, 200, "{timeline}");
    let last = timeline["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["parties"],
        json!({"greens": 300, "labour": 430, "libdems": 115, "reform": 35, "tories": 260})
    );
    assert_eq!(last["total_votes"], 1140);

    let (status, flags) = stack.get("/flags").await;
    assert_eq!(status, 200, "{flags}");
    let flags = flags["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0]["ballot_box_id"], "BB-EDI-1");
    assert_eq!(flags[0]["reason"], "large_correction");
    assert_eq!(flags[0]["total_votes"], 475);
    assert_eq!(flags[0]["previous_total"], 175);
    assert_eq!(flags[0]["electorate"], Value::Null);

    // As it stood before the correction: the seed's totals.
    let (status, then) = stack
        .get(&format!("/totals?as_of={}", from.replace('+', "%2B")))
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["total_votes"], 840, "{then}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_and_the_audit_answer_from_the_in_memory_history() {
    let stack = MemoryStack::start().await;
    let seed = seed_reports(&stack.election);
    stack.submit(&seed);
    let fix = seed_correction(&stack.election);
    stack.submit(std::slice::from_ref(&fix));

    let lines = stack.csv("/reports.csv").await;
    assert_eq!(lines[0], election_query::analytics::CSV_HEADER.trim_end());
    assert_eq!(lines.len(), 1 + 3 * 4 + 5, "{lines:?}");
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let greens = lines
        .iter()
        .find(|l| l.contains(",greens,"))
        .expect("the correction's new party");
    let fields: Vec<&str> = greens.split(',').collect();
    assert_eq!(
        (fields[0], fields[1], fields[2], fields[3], fields[4]),
        ("4", "BB-EDI-1", "edinburgh", "2", "recount 2")
    );
    assert_eq!(
        (fields[6], fields[7], fields[9], fields[10]),
        ("300", "300", "counted", "false")
    );
    assert_eq!(fields[11], hex(&Sha256::digest(fix.payload().as_bytes())));
    assert_eq!(fields[12], hex(&fix.payload_hash().0));

    // Incremental: only what came after report 3.
    let rows = stack.csv("/reports.csv?after=3").await;
    assert_eq!(rows.len(), 1 + 5, "{rows:?}");
    assert!(
        rows[1..].iter().all(|l| l.starts_with("4,BB-EDI-1,")),
        "{rows:?}"
    );

    // Nothing is sealed in memory: the empty chain's head.
    let (status, audit) = stack.get("/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["head"], "0".repeat(64));
    assert_eq!(audit["sealed_reports"], 0);
    assert_eq!(audit["heads"], json!([]));

    // The election list comes from the same port.
    let (status, list) = read(
        stack
            .client
            .get(format!("{}/v1/elections", stack.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let ours = list["elections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["election"] == stack.election.as_str())
        .expect("listed")
        .clone();
    assert_eq!(ours["ballot_boxes_reported"], 3);
    assert_eq!(ours["defined"], false);
}
