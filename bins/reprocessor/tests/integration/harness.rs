//! Helpers: a migrated schema, the real binary, an in-process ingest service,
//! reports by the hundred, and counters read as a user reads them.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use election_core::contract::report;
use election_core::{Counter, ElectionId, Engine, Outcome, Report, ReportLog, Tally, Totals};
use election_ingest::auth;
use election_test_support::pg::PgSchema;
pub use election_test_support::process::send_signal;
use election_wiring::Serving;
use redis::Commands;
use store_pg::{PgLog, PgPool};
use store_redis::{RedisOptions, RedisTally, RedisTarget};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_election-reprocessor");

/// A migrated schema of its own, with a pool and the log on it.
pub struct Db {
    pub pool: PgPool,
    pub log: Arc<PgLog>,
    // Dropped last: drops the schema.
    pub schema: PgSchema,
}

impl Db {
    pub fn new() -> Db {
        let schema = PgSchema::new();
        let pool = store_pg::connect(schema.url(), 8, Duration::from_secs(5)).unwrap();
        store_pg::migrate(&pool).unwrap();
        Db {
            log: Arc::new(PgLog::new(pool.clone())),
            pool,
            schema,
        }
    }

    pub fn url(&self) -> &str {
        self.schema.url()
    }

    /// Runs a query returning one `bigint` column named `n`.
    pub fn number(&self, sql: &str) -> i64 {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct Number {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let rows: Vec<Number> = diesel::sql_query(sql)
            .load(&mut self.pool.get().unwrap())
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows[0].n
    }
}

pub fn redis_options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        pool_size: 4,
    }
}

pub fn tally(redis_url: &str) -> Arc<RedisTally> {
    let target = store_redis::parse_target(redis_url).unwrap();
    Arc::new(RedisTally::connect(&target, &redis_options()).unwrap())
}

/// `n` reports of `election`: boxes `B0..`, five cities, four parties.
pub fn reports(election: &ElectionId, first: u32, n: u32) -> Vec<Report> {
    (first..first + n)
        .map(|i| {
            report(
                election,
                &format!("B{i}"),
                &format!("c{}", i % 5),
                1,
                &[("a", i % 11), ("b", 100 + i % 7), ("c", 3), ("d", i % 2)],
            )
        })
        .collect()
}

/// Corrections (revision 2) of boxes `first..first + n`.
pub fn corrections(election: &ElectionId, first: u32, n: u32) -> Vec<Report> {
    (first..first + n)
        .map(|i| {
            report(
                election,
                &format!("B{i}"),
                &format!("c{}", i % 5),
                2,
                &[("a", i % 11 + 1), ("b", 100 + i % 7), ("e", 4)],
            )
        })
        .collect()
}

/// Records reports without counting them (as if Redis had been down).
pub fn record(log: &dyn ReportLog, reports: &[Report]) {
    for chunk in reports.chunks(250) {
        log.record(chunk).unwrap();
    }
}

/// Records and counts reports, as ingest does.
pub fn submit(engine: &Engine, reports: &[Report]) {
    for chunk in reports.chunks(250) {
        for outcome in engine.submit(chunk).unwrap() {
            assert!(matches!(outcome, Outcome::Counted(_)), "{outcome:?}");
        }
    }
}

/// A plain `GET` as a user would do it (cluster-aware when the URL says so).
pub fn plain_get(redis_url: &str, key: &str) -> Option<i64> {
    match store_redis::parse_target(redis_url).unwrap() {
        RedisTarget::Standalone(url) => {
            let mut conn = election_test_support::redis::connection(&url);
            conn.get(key).unwrap()
        }
        RedisTarget::Cluster(urls) => {
            let client = redis::cluster::ClusterClient::new(urls).unwrap();
            let mut conn = client.get_connection().unwrap();
            conn.get(key).unwrap()
        }
    }
}

/// Every counter the log implies holds its value in Redis (read with plain
/// `GET`s under the specification's key names), and nothing is pending.
#[track_caller]
pub fn assert_exact(db: &Db, redis_url: &str, election: &ElectionId) -> Totals {
    assert_eq!(
        db.log.pending_count(election).unwrap(),
        0,
        "pending revisions"
    );
    let expected = db.log.counted_totals(election).unwrap();
    assert!(!expected.is_empty());
    for (counter, value) in expected.iter() {
        let key = store_redis::keys::counter(election, counter);
        assert_eq!(plain_get(redis_url, &key).unwrap_or(0), value, "GET {key}");
    }
    // And nothing more than that: the tally's own view agrees.
    let held = tally(redis_url).snapshot(election).unwrap().totals;
    assert_eq!(held.drift(&expected), [], "snapshot vs log");
    expected
}

/// Whether nothing is pending and Redis holds exactly what PostgreSQL says
/// was counted: [`assert_exact`]'s first checks, answered instead of
/// asserted, for waiting on.
pub fn is_exact(db: &Db, redis_url: &str, election: &ElectionId) -> bool {
    if db.log.pending_count(election).unwrap() != 0 {
        return false;
    }
    let expected = db.log.counted_totals(election).unwrap();
    !expected.is_empty()
        && expected.iter().all(|(counter, value)| {
            plain_get(redis_url, &store_redis::keys::counter(election, counter)).unwrap_or(0)
                == value
        })
}

/// Runs the binary to the end.
pub fn reprocessor(db: &Db, redis_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", redis_url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Starts the binary.
pub fn spawn(db: &Db, redis_url: &str, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", redis_url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Standard output and error, for failure messages.
pub fn both(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// The number in `counted N report(s)` of a `run --once` summary.
pub fn counted_in(output: &Output) -> u64 {
    let stdout = text(&output.stdout);
    stdout
        .split("counted ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {}", both(output)))
}

/// Whether some line of `stdout`, split on whitespace, is exactly `fields`.
pub fn has_row(stdout: &str, fields: &[&str]) -> bool {
    stdout
        .lines()
        .any(|line| line.split_whitespace().collect::<Vec<_>>() == fields)
}

/// Waits until `condition` holds, failing with `what` after a generous
/// minute (a guard against hanging, not a performance assertion).
#[track_caller]
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    election_test_support::process::wait_until(what, Duration::from_secs(60), condition)
}

/// The national counter of `party`.
pub fn national(party: &str) -> Counter {
    Counter::National(election_core::PartyId::parse(party).unwrap())
}

/// An ingest service on port 0, in this process, over `db` and `redis_url`.
pub struct Ingest {
    pub base: String,
    pub election: ElectionId,
    token: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Ingest {
    pub async fn start(db: &Db, redis_url: &str, election: &ElectionId) -> Ingest {
        let secret = auth::generate();
        store_pg::tokens::insert(
            &db.pool,
            &auth::hash(&secret),
            election.as_str(),
            None,
            Some("test"),
        )
        .unwrap();
        let tally = tally(redis_url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let services = election_ingest::Services {
            log: db.log.clone(),
            tally: tally.clone(),
            redis: Some(tally.clone()),
            tokens: Arc::new(election_ingest::commands::PgTokens(db.pool.clone())),
            definitions: Arc::new(election_ingest::definitions::NoDefinitions),
            ready: election_ingest::commands::ready_check(db.pool.clone(), tally),
        };
        let settings = election_ingest::Settings {
            token_cache_ttl: Duration::from_secs(60),
            definition_cache_ttl: Duration::from_secs(60),
            ..election_ingest::testing::settings()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(election_ingest::run(
            Serving::new(listener, async {
                let _ = stopped.await;
            }),
            services,
            settings,
        ));
        Ingest {
            base,
            election: election.clone(),
            token: secret,
            client: reqwest::Client::new(),
            shutdown: Some(stop),
            task: Some(task),
        }
    }

    /// Posts a report; returns the status.
    pub async fn post(&self, report: &Report) -> u16 {
        let response = self
            .client
            .post(format!(
                "{}/v1/elections/{}/reports",
                self.base, self.election
            ))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(report.payload().to_owned())
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}
