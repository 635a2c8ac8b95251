//! The query service and the ingest service, in-process on port 0, over one
//! fresh PostgreSQL schema and the real Redis; plus helpers to post reports,
//! read answers and move recorded history in time.

use std::sync::Arc;
use std::time::Duration;

use election_core::contract::unique_election;
use election_core::{ElectionId, History};
use election_http::health::ReadyCheck;
use election_ingest::auth::{self, TokenLookup};
use election_test_support::pg::PgSchema;
use election_wiring::Serving;
use store_pg::{PgHistory, PgLog, PgPool};
use store_redis::{RedisOptions, RedisTally};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The seed article's three ballot boxes.
pub const SEED: [&str; 3] = [
    r#"{"ballot_box_id": "BB-LON-1", "city": "london", "votes": {"tories": 120, "labour": 200, "libdems": 45, "reform": 20}}"#,
    r#"{"ballot_box_id": "BB-MAN-1", "city": "manchester", "votes": {"tories": 90, "labour": 150, "libdems": 30, "reform": 10}}"#,
    r#"{"ballot_box_id": "BB-EDI-1", "city": "edinburgh", "votes": {"tories": 50, "labour": 80, "libdems": 40, "reform": 5}}"#,
];

/// Redis options for the shared Redis. Generous: no test here stops it, and
/// on a machine busy with other builds a 500 ms answer was seen to time out
/// (a post answered 202 instead of 201).
pub fn redis_options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        pool_size: 4,
    }
}

/// Query settings for tests: quick refreshes, no timeline cache.
pub fn query_settings() -> election_query::Settings {
    election_query::Settings {
        snapshot_interval: Duration::from_millis(50),
        full_read_interval: Duration::from_millis(500),
        idle_after: Duration::from_secs(60),
        max_elections: 16,
        first_snapshot_timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(15),
        stream_history: 64,
        timeline_cache: Duration::ZERO,
        timeline_full_refresh: Duration::from_secs(300),
        flag_correction_share: 0.2,
        serve: election_http::ServeConfig {
            header_read_timeout: election_http::serve::DEFAULT_HEADER_TIMEOUT,
        },
        live_max_age_secs: 1,
        history_max_age_secs: 10,
        elections_refresh: Duration::from_millis(500),
        cors_origins: election_http::layers::CorsOrigins::Any,
    }
}

/// Ingest settings for tests.
pub use election_ingest::testing::settings as ingest_settings;

/// A fresh, migrated schema and a pool on it.
pub fn migrated_schema() -> (PgSchema, PgPool) {
    let schema = PgSchema::new();
    let pool = store_pg::connect(schema.url(), 8, Duration::from_secs(2)).unwrap();
    store_pg::migrate(&pool).unwrap();
    (schema, pool)
}

/// Defines `election` with the seed's parties and cities: it then exists
/// for the read API before any report, and the seed may be posted to it.
pub fn define_election(pool: &PgPool, election: &str) {
    let name = format!("Election {election}");
    define_seed_election(
        pool,
        election,
        &name,
        &[("london", 4), ("manchester", 4), ("edinburgh", 4)],
    );
}

/// Defines `election`, named `name`, with the seed's four parties (in their
/// colours) and the seed's cities with the ballot boxes each expects.
pub fn define_seed_election(pool: &PgPool, election: &str, name: &str, cities: &[(&str, u32)]) {
    let mut toml = format!("id = \"{election}\"\nname = \"{name}\"\n");
    for (party, colour) in [
        ("tories", "#0087dc"),
        ("labour", "#e4003b"),
        ("libdems", "#faa61a"),
        ("reform", "#12b6cf"),
    ] {
        toml.push_str(&format!(
            "[[parties]]\nid = \"{party}\"\nname = \"{party}\"\ncolour = \"{colour}\"\n"
        ));
    }
    for (city, expected) in cities {
        toml.push_str(&format!(
            "[[cities]]\nid = \"{city}\"\nname = \"{city}\"\nexpected_ballot_boxes = {expected}\n"
        ));
    }
    let definition = election_core::Definition::from_toml(&toml).unwrap();
    store_pg::definitions::load(pool, &definition).unwrap();
}

/// A token for any ballot box of `election`.
pub fn issue_token(pool: &PgPool, election: &str) -> String {
    let secret = auth::generate();
    store_pg::tokens::insert(pool, &auth::hash(&secret), election, None, Some("test")).unwrap();
    secret
}

pub use election_ingest::auth::FixedTokens;

/// One running service.
pub struct Running {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops the service and waits for it to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

async fn listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

/// Starts a query service.
pub async fn start_query(
    pool: PgPool,
    tally: Arc<RedisTally>,
    settings: election_query::Settings,
) -> Running {
    let (listener, base) = listener().await;
    serve_query(listener, base, pool, tally, settings)
}

fn serve_query(
    listener: tokio::net::TcpListener,
    base: String,
    pool: PgPool,
    tally: Arc<RedisTally>,
    settings: election_query::Settings,
) -> Running {
    let ready: ReadyCheck = election_query::commands::ready_check(pool.clone(), tally.clone());
    let history: Arc<dyn History> = Arc::new(PgHistory::new(pool.clone()));
    let services = election_query::Services {
        redis: Some(tally.clone()),
        tally,
        pg: pool,
        catalog: Arc::clone(&history),
        history,
        ready,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(election_query::run(
        Serving::new(listener, async {
            let _ = stopped.await;
        }),
        services,
        settings,
    ));
    Running {
        base,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Starts an ingest service.
pub async fn start_ingest(
    pool: PgPool,
    tally: Arc<RedisTally>,
    tokens: Arc<dyn TokenLookup>,
) -> Running {
    start_ingest_with(pool, tally, tokens, ingest_settings()).await
}

/// Starts an ingest service with other settings (timeouts, a rate limit).
pub async fn start_ingest_with(
    pool: PgPool,
    tally: Arc<RedisTally>,
    tokens: Arc<dyn TokenLookup>,
    settings: election_ingest::Settings,
) -> Running {
    let (listener, base) = listener().await;
    let ready: ReadyCheck = election_ingest::commands::ready_check(pool.clone(), tally.clone());
    let services = election_ingest::Services {
        log: Arc::new(PgLog::new(pool.clone())),
        redis: Some(tally.clone()),
        tally,
        tokens,
        definitions: Arc::new(election_ingest::commands::PgDefinitions(pool)),
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
    Running {
        base,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Both services on one schema and the shared Redis, for one election.
pub struct Stack {
    pub query: Running,
    pub ingest: Running,
    pub election: ElectionId,
    pub token: String,
    pub pool: PgPool,
    /// The query service's own tally (its round trips are the query's only).
    pub query_tally: Arc<RedisTally>,
    /// The query service's settings (for a restart).
    pub query_settings: election_query::Settings,
    pub client: reqwest::Client,
    // Kept for its Drop (drops the schema).
    pub schema: PgSchema,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(query_settings()).await
    }

    pub async fn start_with(settings: election_query::Settings) -> Stack {
        let (schema, pool) = migrated_schema();
        let target = store_redis::parse_target(&election_test_support::redis::redis_url()).unwrap();
        let tally = Arc::new(RedisTally::connect(&target, &redis_options()).unwrap());
        let election = unique_election("query");
        let token = issue_token(&pool, election.as_str());
        let tokens = Arc::new(election_ingest::commands::PgTokens(pool.clone()));
        let ingest = start_ingest(pool.clone(), tally.clone(), tokens).await;
        let query_tally = Arc::new(RedisTally::connect(&target, &redis_options()).unwrap());
        let query = start_query(pool.clone(), query_tally.clone(), settings.clone()).await;
        Stack {
            query,
            ingest,
            election,
            token,
            pool,
            query_tally,
            query_settings: settings,
            client: reqwest::Client::new(),
            schema,
        }
    }

    /// `{query}/v1/elections/{election}{rest}`.
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v1/elections/{}{rest}", self.query.base, self.election)
    }

    /// Posts a report through ingest.
    pub async fn post(&self, body: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(format!(
                "{}/v1/elections/{}/reports",
                self.ingest.base, self.election
            ))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Posts the seed's three reports; each must be counted.
    pub async fn post_seed(&self) {
        for body in SEED {
            let (status, answer) = self.post(body).await;
            assert_eq!(status, 201, "{answer}");
        }
    }

    /// GET on the query service, as JSON (or the text as a string).
    pub async fn get(&self, rest: &str) -> (u16, serde_json::Value) {
        get(&self.client, &self.url(rest)).await
    }

    /// Waits (up to `within`) until the national total is `total`.
    pub async fn wait_for_total(&self, total: i64, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.get("/totals").await;
            if status == 200 && body["total_votes"] == total {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "total {total} not seen within {within:?}; last answer {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the query service (its streams end, as in a deployment) and
    /// waits for it to return.
    pub async fn stop_query(&mut self) {
        let base = self.query.base.clone();
        let stopped = std::mem::replace(
            &mut self.query,
            Running {
                base,
                stop: None,
                task: None,
            },
        );
        stopped.stop().await;
    }

    /// Starts a new query service (a new process, as far as its feeds and
    /// versions go) at the address of the one [`Stack::stop_query`] stopped.
    pub async fn restart_query(&mut self) {
        let address = self.query.base.trim_start_matches("http://").to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot listen on {address} again: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.query = serve_query(
            listener,
            self.query.base.clone(),
            self.pool.clone(),
            self.query_tally.clone(),
            self.query_settings.clone(),
        );
    }

    /// Runs SQL on the schema (to move history in time).
    pub fn execute(&self, sql: &str) {
        execute(&self.pool, sql);
    }

    pub async fn stop(self) {
        self.query.stop().await;
        self.ingest.stop().await;
    }
}

pub async fn get(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    read(client.get(url).send().await.unwrap()).await
}

pub async fn read(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

pub fn execute(pool: &PgPool, sql: &str) {
    use diesel::RunQueryDsl;
    let mut conn = pool.get().unwrap();
    diesel::sql_query(sql).execute(&mut conn).unwrap();
}

/// Reads Server-Sent Events from a response, one at a time; a gzip-encoded
/// stream is decompressed as it arrives, as a browser does.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
    /// `Some` on a gzip stream: the decompressor and every byte received.
    gzip: Option<Gzip>,
}

struct Gzip {
    inflate: flate2::Decompress,
    raw: Vec<u8>,
}

/// The 10 bytes of a gzip header without optional fields, as the service
/// sends it.
const GZIP_HEADER: usize = 10;

/// One event: its fields.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
    pub retry: Option<String>,
}

impl Events {
    pub fn new(response: reqwest::Response) -> Events {
        let gzip = response
            .headers()
            .get("content-encoding")
            .is_some_and(|coding| coding == "gzip")
            .then(|| Gzip {
                inflate: flate2::Decompress::new(false),
                raw: Vec::new(),
            });
        Events {
            response,
            buffer: String::new(),
            gzip,
        }
    }

    /// Every byte received so far, as sent (compressed on a gzip stream).
    pub fn raw(&self) -> &[u8] {
        self.gzip.as_ref().map_or(&[], |gzip| &gzip.raw)
    }

    /// Adds what arrived: decompressed, on a gzip stream, as far as the
    /// bytes so far allow (each event ends with a flush, so whole).
    fn received(&mut self, chunk: &[u8]) {
        let Some(gzip) = &mut self.gzip else {
            self.buffer.push_str(&String::from_utf8_lossy(chunk));
            return;
        };
        gzip.raw.extend_from_slice(chunk);
        if gzip.raw.len() <= GZIP_HEADER {
            return;
        }
        assert_eq!(&gzip.raw[..3], &[0x1f, 0x8b, 8], "not a gzip header");
        let mut plain = Vec::new();
        loop {
            let from = GZIP_HEADER + usize::try_from(gzip.inflate.total_in()).unwrap();
            plain.reserve(64 * 1024);
            let status = gzip
                .inflate
                .decompress_vec(
                    &gzip.raw[from.min(gzip.raw.len())..],
                    &mut plain,
                    flate2::FlushDecompress::Sync,
                )
                .expect("the stream is valid DEFLATE");
            let consumed = GZIP_HEADER + usize::try_from(gzip.inflate.total_in()).unwrap();
            if status == flate2::Status::StreamEnd
                || (consumed >= gzip.raw.len() && plain.len() < plain.capacity())
            {
                break;
            }
        }
        self.buffer.push_str(&String::from_utf8_lossy(&plain));
    }

    /// The next event (comments are skipped), or `None` when the stream
    /// ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut fields = 0;
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    fields += 1;
                    match name {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = value.to_owned(),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                        }
                        "retry" => event.retry = Some(value.to_owned()),
                        _ => {}
                    }
                }
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.received(&chunk),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event within `within`, failing the test otherwise.
    pub async fn next_within(&mut self, within: Duration) -> SseEvent {
        tokio::time::timeout(within, self.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))
            .expect("the stream ended")
    }
}

/// Opens the stream of the stack's election, optionally with a
/// `Last-Event-ID`.
pub async fn open_stream(stack: &Stack, last_event_id: Option<&str>) -> Events {
    open_stream_at(stack, "/stream", last_event_id).await
}

/// Opens `rest` (the stream with its query string) of the stack's election,
/// optionally with a `Last-Event-ID`.
pub async fn open_stream_at(stack: &Stack, rest: &str, last_event_id: Option<&str>) -> Events {
    let mut request = stack.client.get(stack.url(rest));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Events::new(response)
}
