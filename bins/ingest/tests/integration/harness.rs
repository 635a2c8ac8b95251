//! An ingest service on port 0 over real PostgreSQL (a fresh schema) and real
//! Redis, plus helpers to read what the stores hold.

use std::sync::Arc;
use std::time::Duration;

use election_core::contract::unique_election;
use election_core::{ElectionId, Tally};
use election_http::health::ReadyCheck;
use election_ingest::auth::{self, Scope, TokenLookup};
use election_ingest::{Services, Settings};
use election_test_support::pg::PgSchema;
use election_wiring::Serving;
use redis::Commands;
use store_pg::{PgLog, PgPool};
use store_redis::{RedisOptions, RedisTally};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where the tally lives.
#[derive(Clone)]
pub enum RedisChoice {
    /// The Redis on REDIS_URL.
    Standalone,
    /// The test process's Redis Cluster.
    Cluster,
    /// Any URL (a dead port, a server the test kills).
    Url(String),
}

impl RedisChoice {
    pub fn url(&self) -> String {
        match self {
            RedisChoice::Standalone => election_test_support::redis::redis_url(),
            RedisChoice::Cluster => election_test_support::redis::cluster().target_url(),
            RedisChoice::Url(url) => url.clone(),
        }
    }
}

/// A running ingest service.
pub struct Ingest {
    pub base: String,
    pub election: ElectionId,
    /// A token for any ballot box of `election`.
    pub token: String,
    pub pool: PgPool,
    pub tally: Arc<RedisTally>,
    pub redis_url: String,
    pub client: reqwest::Client,
    // Kept for its Drop (drops the schema).
    _schema: PgSchema,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn redis_options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(500),
        pool_size: 4,
    }
}

pub fn migrated_schema() -> (PgSchema, PgPool) {
    let schema = PgSchema::new();
    let pool = store_pg::connect(schema.url(), 8, Duration::from_secs(2)).unwrap();
    store_pg::migrate(&pool).unwrap();
    (schema, pool)
}

pub use election_ingest::auth::FixedTokens;

pub fn issue_token(pool: &PgPool, election: &str, ballot_box: Option<&str>) -> (i64, String) {
    let secret = auth::generate();
    let id = store_pg::tokens::insert(
        pool,
        &auth::hash(&secret),
        election,
        ballot_box,
        Some("test"),
    )
    .unwrap();
    (id, secret)
}

pub use election_ingest::testing::settings;

impl Ingest {
    pub async fn start(redis: RedisChoice) -> Ingest {
        Ingest::start_with(redis, settings()).await
    }

    /// [`Ingest::start`] with other settings (timeouts, a rate limit).
    pub async fn start_with(redis: RedisChoice, settings: Settings) -> Ingest {
        let (schema, pool) = migrated_schema();
        let redis_url = redis.url();
        let target = store_redis::parse_target(&redis_url).unwrap();
        let tally = Arc::new(RedisTally::connect(&target, &redis_options()).unwrap());
        let election = unique_election("ingest");
        let (_, token) = issue_token(&pool, election.as_str(), None);
        let log = Arc::new(PgLog::new(pool.clone()));
        let tokens = Arc::new(election_ingest::commands::PgTokens(pool.clone()));
        Ingest::serve(
            schema, pool, tally, redis_url, election, token, log, tokens, settings,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)] // One constructor, called twice.
    pub async fn serve(
        schema: PgSchema,
        pool: PgPool,
        tally: Arc<RedisTally>,
        redis_url: String,
        election: ElectionId,
        token: String,
        log: Arc<dyn election_core::ReportLog>,
        tokens: Arc<dyn TokenLookup>,
        settings: Settings,
    ) -> Ingest {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let ready: ReadyCheck = election_ingest::commands::ready_check(pool.clone(), tally.clone());
        let services = Services {
            log,
            tally: tally.clone(),
            redis: Some(tally.clone()),
            tokens,
            definitions: Arc::new(election_ingest::commands::PgDefinitions(pool.clone())),
            ready,
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
            election,
            token,
            pool,
            tally,
            redis_url,
            client: reqwest::Client::new(),
            _schema: schema,
            shutdown: Some(stop),
            task: Some(task),
        }
    }

    /// An ingest whose log points at a port where no PostgreSQL listens
    /// (tokens from memory, a real Redis).
    pub async fn with_dead_postgres(prefix: &str) -> Ingest {
        let (schema, pool) = migrated_schema();
        let election = unique_election(prefix);
        let token = auth::generate();
        let tokens = Arc::new(FixedTokens(vec![(
            token.clone(),
            Scope {
                election: election.clone(),
                ballot_box: None,
            },
        )]));
        let dead = store_pg::connect(
            "postgres://postgres@127.0.0.1:1/postgres",
            2,
            Duration::from_millis(500),
        )
        .unwrap();
        let redis_url = election_test_support::redis::redis_url();
        let tally = Arc::new(
            RedisTally::connect(
                &store_redis::parse_target(&redis_url).unwrap(),
                &redis_options(),
            )
            .unwrap(),
        );
        Ingest::serve(
            schema,
            pool,
            tally,
            redis_url,
            election,
            token,
            Arc::new(PgLog::new(dead)),
            tokens,
            settings(),
        )
        .await
    }

    pub fn reports_url(&self) -> String {
        format!("{}/v1/elections/{}/reports", self.base, self.election)
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Posts `body` as JSON with the service's token.
    pub async fn post(&self, body: &str) -> (u16, serde_json::Value) {
        self.post_with(&self.token, body).await
    }

    pub async fn post_with(&self, token: &str, body: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.reports_url())
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Rows in `reports` and `vote_log` of this election.
    pub fn rows(&self) -> (i64, i64) {
        count_rows(&self.pool, self.election.as_str())
    }

    /// The national and city counters, read with plain GETs.
    pub fn get(&self, key: &str) -> Option<i64> {
        plain_get(&self.redis_url, key)
    }

    pub fn national(&self, party: &str) -> Option<i64> {
        self.get(&format!("election:{}:party:{party}", self.election))
    }

    pub fn city(&self, city: &str, party: &str) -> Option<i64> {
        self.get(&format!(
            "election:{}:city:{city}:party:{party}",
            self.election
        ))
    }

    pub fn snapshot_total(&self) -> i64 {
        self.tally
            .snapshot(&self.election)
            .unwrap()
            .totals
            .national()
            .values()
            .sum()
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

pub async fn read(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

pub fn count_rows(pool: &PgPool, election: &str) -> (i64, i64) {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        reports: i64,
        #[diesel(sql_type = BigInt)]
        log_rows: i64,
    }
    let mut conn = pool.get().unwrap();
    let counts: Counts = diesel::sql_query(
        "SELECT (SELECT count(*) FROM reports WHERE election_id = $1) AS reports, \
                (SELECT count(*) FROM vote_log WHERE election_id = $1) AS log_rows",
    )
    .bind::<Text, _>(election)
    .get_result(&mut conn)
    .unwrap();
    (counts.reports, counts.log_rows)
}

/// A plain `GET` as a user would do it (cluster-aware when the URL says so).
pub fn plain_get(redis_url: &str, key: &str) -> Option<i64> {
    match store_redis::parse_target(redis_url).unwrap() {
        store_redis::RedisTarget::Standalone(url) => {
            let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
            conn.get(key).unwrap()
        }
        store_redis::RedisTarget::Cluster(urls) => {
            let client = redis::cluster::ClusterClient::new(urls).unwrap();
            let mut conn = client.get_connection().unwrap();
            conn.get(key).unwrap()
        }
    }
}

/// Reads a raw connection, on the blocking pool, until the server closes it
/// (or `within` passes): what the server sent, and whether it closed.
pub async fn read_to_close(mut socket: std::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    use std::io::Read;
    tokio::task::spawn_blocking(move || {
        socket.set_read_timeout(Some(within)).unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer) {
                Ok(0) => return (received, true),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) => {
                    let timed_out = matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                    return (received, !timed_out);
                }
            }
        }
    })
    .await
    .unwrap()
}
