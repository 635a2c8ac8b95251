//! The live stream at scale: an election of many cities and parties whose
//! counters move at a steady rate of reports, watched by many subscribers.
//!
//! What a user of the stream meets is how many bytes it receives and how
//! long a change takes to reach it; what the operator pays is the query
//! service's CPU per refresh. So:
//!
//! - The counters are written straight into the bench's private Redis, as
//!   the tally's scripts leave them (national and city counters, the index
//!   sets, the change journal), on a fixed schedule of ticks (10 ms): the stream's cost does not
//!   depend on how reports got counted, and ingest and PostgreSQL stay out
//!   of the CPU budget of a 2-core machine.
//! - Every tick also moves a probe: city `0probe`'s counter of the first
//!   party counts the ticks. Its id sorts before every other city, so its
//!   entry leads the `cities` of a delta (or a snapshot) and a subscriber
//!   finds it in the first bytes of an event, without parsing the rest. The
//!   probe's value says which ticks an event carries; the time since each of
//!   those ticks was written is that change's delay to this subscriber, and
//!   the largest over subscribers its delay to the last one.
//! - Subscribers are light: one tokio task each, reading the raw bytes of
//!   the response, looking only at the start of each `data:` line. They
//!   ask for no compression, since decompressing thousands of streams on
//!   the service's two cores would measure the bench. One more subscriber
//!   asks for gzip, as browsers and CDNs do, and counts only the bytes it
//!   receives: what a compressed stream costs a reader's network.
//! - The query service's CPU comes from `/proc/<pid>/stat` (user + system)
//!   before and after the measured window, divided by the refreshes it made
//!   (its `query_snapshot_refresh_seconds_count`, full reads, plus
//!   `query_partial_refresh_seconds_count`, reads of the cities the change
//!   journal named).
//!
//! The window starts once every subscriber has its first snapshot, so the
//! bytes per subscriber are the deltas' alone; the snapshot's size is shown
//! apart. It runs from one reading of the bytes, the CPU and the last tick
//! written to the next, so its ticks, its counters and its length cover the
//! same time, and the writer first drops the ticks it owes from the
//! connecting (which would raise the window's rate above the plan).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diesel::RunQueryDsl;
use futures_util::StreamExt;
use rand::Rng;

use crate::procs::{Database, Service};
use crate::table::{Line, ms, thousands};
use crate::usage;

/// The election the measurement writes and watches.
const ELECTION: &str = "bench-stream";
/// The city whose counter counts the ticks (sorts before `c00000`).
const PROBE: &str = "0probe";
/// Time between two writes of the counters.
const TICK: Duration = Duration::from_millis(10);
/// How much of an event's `data:` line a subscriber keeps to find the probe.
const PREFIX: usize = 4096;

/// The sizes of one stream measurement.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub cities: usize,
    pub parties: usize,
    pub reports_per_second: f64,
    pub subscribers: usize,
    pub seconds: Duration,
}

/// What one stream measurement saw.
pub struct Figures {
    pub subscribers: usize,
    pub window: Duration,
    /// Reports written per second during the window.
    pub reports_per_second: f64,
    /// Bytes received per subscriber per second during the window.
    pub bytes_per_subscriber_second: f64,
    /// Bytes received per second during the window by the subscriber that
    /// asked for gzip.
    pub gzip_bytes_per_second: f64,
    /// Size of the unscoped snapshot event when the first subscriber got it.
    pub snapshot_bytes: usize,
    /// Mean size of a delta (the query's `query_stream_delta_bytes`).
    pub delta_bytes: f64,
    /// Refreshes (snapshot reads) per second, and the query's CPU per one.
    pub refreshes_per_second: f64,
    pub cpu_per_refresh: Duration,
    /// Share of one core the query used during the window.
    pub cpu_share: f64,
    /// Mean wall time of a refresh's read of the counters (from the query's
    /// `query_snapshot_refresh_seconds`): what bounds refreshes per second
    /// when the query is not short of CPU.
    pub read_time: Duration,
    /// Share of one core Redis used during the window (the writes and the
    /// query's reads), when the bench started it.
    pub redis_share: Option<f64>,
    /// Changes (ticks) of the window, and how many reached every subscriber.
    pub changes: usize,
    pub reached_all: usize,
    /// Delay from a change to the last subscriber receiving it, over the
    /// changes that reached every subscriber.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// What the subscribers share.
struct Shared {
    started: Instant,
    /// When each tick's write was acknowledged (µs since `started`, +1; 0:
    /// not yet).
    written: Vec<AtomicU64>,
    /// Per tick: the largest delay to a subscriber (µs) and how many got it.
    slowest: Vec<AtomicU64>,
    reached: Vec<AtomicU32>,
    bytes: AtomicU64,
    /// Bytes the gzip subscriber received, as sent (compressed).
    gzip_bytes: AtomicU64,
    connected: AtomicUsize,
    snapshot_bytes: AtomicUsize,
    failed: AtomicUsize,
    /// Why the first subscriber that failed did.
    first_failure: Mutex<Option<String>>,
    /// Subscribers count ticks only while this is set.
    measuring: AtomicBool,
    /// Set once the subscribers are connected: the writer drops the ticks
    /// it owes from before (see [`write()`]) and keeps its rate from then on.
    rebase: AtomicBool,
}

impl Shared {
    /// Room for `ticks` ticks, nothing written or received yet.
    fn new(ticks: usize) -> Shared {
        Shared {
            started: Instant::now(),
            written: (0..ticks).map(|_| AtomicU64::new(0)).collect(),
            slowest: (0..ticks).map(|_| AtomicU64::new(0)).collect(),
            reached: (0..ticks).map(|_| AtomicU32::new(0)).collect(),
            bytes: AtomicU64::new(0),
            gzip_bytes: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            snapshot_bytes: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_failure: Mutex::new(None),
            measuring: AtomicBool::new(false),
            rebase: AtomicBool::new(false),
        }
    }

    /// The last tick written so far, if any.
    fn last_written(&self) -> Option<usize> {
        self.written
            .iter()
            .rposition(|at| at.load(Ordering::Acquire) != 0)
    }

    /// The delays to the last subscriber of the `ticks` that reached all
    /// `subscribers`, sorted.
    fn delays(&self, ticks: std::ops::RangeInclusive<usize>, subscribers: usize) -> Vec<Duration> {
        let mut delays: Vec<Duration> = ticks
            .filter(|&tick| self.reached[tick].load(Ordering::Relaxed) as usize >= subscribers)
            .map(|tick| Duration::from_micros(self.slowest[tick].load(Ordering::Relaxed)))
            .collect();
        delays.sort_unstable();
        delays
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A subscriber could not open its stream, for `why`.
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
    }

    /// A subscriber got the probe's value `seen` (it had `had`).
    fn received(&self, had: u64, seen: u64) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let now = self.micros();
        for tick in had + 1..=seen {
            let Some(written) = self.written.get(tick as usize) else {
                break;
            };
            let at = written.load(Ordering::Acquire);
            if at == 0 {
                continue;
            }
            let delay = now.saturating_sub(at - 1);
            self.slowest[tick as usize].fetch_max(delay, Ordering::Relaxed);
            self.reached[tick as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn city(index: usize) -> String {
    format!("c{index:05}")
}

fn party(index: usize) -> String {
    format!("p{index:02}")
}

/// Writes the election's starting state: every city with a ballot box and
/// every party's counter, so the first snapshot is already whole.
fn seed(conn: &mut redis::Connection, plan: &Plan) -> anyhow::Result<()> {
    let e = ELECTION;
    let parties: Vec<String> = (0..plan.parties).map(party).collect();
    let mut cities: Vec<String> = (0..plan.cities).map(city).collect();
    cities.push(PROBE.to_owned());
    redis::cmd("SADD")
        .arg(format!("election:{e}:meta:parties"))
        .arg(&parties)
        .exec(conn)?;
    let mut rng = rand::rng();
    let mut national = vec![0i64; plan.parties];
    for chunk in cities.chunks(500) {
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(format!("election:{e}:meta:cities"))
            .arg(chunk)
            .ignore();
        for city in chunk {
            let ballot_box = format!("seed-{city}");
            pipe.cmd("SADD")
                .arg(format!("election:{e}:meta:city:{city}:boxes"))
                .arg(&ballot_box)
                .ignore();
            for (index, party) in parties.iter().enumerate() {
                let votes = if city == PROBE {
                    0
                } else {
                    rng.random_range(0..400)
                };
                national[index] += votes;
                pipe.cmd("SET")
                    .arg(format!("election:{e}:city:{city}:party:{party}"))
                    .arg(votes)
                    .ignore();
            }
        }
        pipe.exec(conn).context("seeding the stream election")?;
    }
    let mut pipe = redis::pipe();
    for (index, party) in parties.iter().enumerate() {
        pipe.cmd("SET")
            .arg(format!("election:{e}:party:{party}"))
            .arg(national[index])
            .ignore();
    }
    pipe.exec(conn)?;
    Ok(())
}

/// Writes `plan.reports_per_second` reports a second, one pipeline per
/// tick, until `stop`; returns the reports written and the ticks done.
fn write(
    conn: &mut redis::Connection,
    plan: &Plan,
    shared: &Shared,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let e = ELECTION;
    let parties: Vec<String> = (0..plan.parties).map(party).collect();
    let per_tick = plan.reports_per_second * TICK.as_secs_f64();
    let election = election_core::ElectionId::parse(e).context("the stream's election id")?;
    let mut rng = rand::rng();
    let mut owed = 0.0;
    let mut reports = 0u64;
    let mut start = Instant::now();
    for tick in 1..shared.written.len() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Before the window, 5,000 snapshots of megabytes each can starve
        // this thread for seconds; written at once in the window, the ticks
        // it owes would double the planned rate there (seen on a slow
        // machine: 1,962 reports/s for a plan of 1,000). So once the
        // subscribers are in, the schedule starts again from this tick.
        if shared.rebase.swap(false, Ordering::AcqRel) {
            let done = TICK * u32::try_from(tick - 1).unwrap_or(u32::MAX);
            start = Instant::now().checked_sub(done).unwrap_or(start);
        }
        // A fixed schedule: a late tick is written at once, not skipped.
        let due = start + TICK * u32::try_from(tick).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        owed += per_tick;
        let mut pipe = redis::pipe();
        let mut moved = vec![PROBE.to_owned()];
        while owed >= 1.0 {
            owed -= 1.0;
            reports += 1;
            let city = city(rng.random_range(0..plan.cities));
            moved.push(city.clone());
            let ballot_box = format!("b{reports}");
            pipe.cmd("SADD")
                .arg(format!("election:{e}:meta:city:{city}:boxes"))
                .arg(&ballot_box)
                .ignore();
            for party in &parties {
                let votes: i64 = rng.random_range(0..400);
                pipe.cmd("INCRBY")
                    .arg(format!("election:{e}:city:{city}:party:{party}"))
                    .arg(votes)
                    .ignore();
                pipe.cmd("INCRBY")
                    .arg(format!("election:{e}:party:{party}"))
                    .arg(votes)
                    .ignore();
            }
        }
        pipe.cmd("INCRBY")
            .arg(format!("election:{e}:city:{PROBE}:party:{}", parties[0]))
            .arg(1)
            .ignore();
        pipe.cmd("INCRBY")
            .arg(format!("election:{e}:party:{}", parties[0]))
            .arg(1)
            .ignore();
        // The change journal, after the counters it names, as the tally
        // writes it on a standalone Redis (store-redis `journal`).
        moved.sort();
        moved.dedup();
        pipe.add_command(store_redis::journal_step(
            &election,
            moved.iter().map(String::as_str),
        ))
        .ignore();
        pipe.exec(conn)
            .with_context(|| format!("writing tick {tick}"))?;
        shared.written[tick].store(shared.micros() + 1, Ordering::Release);
    }
    Ok(reports)
}

/// The probe's value in an event's `data:` line, if it is there.
fn probe(line: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"{\"city\":\"0probe\",";
    let at = memchr::memmem::find(line, NEEDLE)?;
    let rest = &line[at..];
    // `"parties":{"p00":<value>`: the first party's counter.
    let parties = memchr::memmem::find(rest, b"\"parties\":{\"")?;
    let rest = &rest[parties..];
    let colon = memchr::memchr(b':', &rest[11..])? + 11 + 1;
    let digits: &[u8] = &rest[colon..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Sends `request` for a stream; `None` (the failure counted, with `who`
/// and why) unless it was answered with success.
async fn open(
    request: reqwest::RequestBuilder,
    shared: &Shared,
    who: &str,
) -> Option<reqwest::Response> {
    match request.send().await {
        Ok(response) if response.status().is_success() => Some(response),
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            shared.fail(format!("{who}answered {status}: {body}"));
            None
        }
        Err(error) => {
            shared.fail(format!("{who}{error:#}"));
            None
        }
    }
}

/// One subscriber: reads the stream until it ends or the task is aborted.
async fn subscribe(client: reqwest::Client, url: String, shared: Arc<Shared>) {
    let Some(response) = open(client.get(&url), &shared, "").await else {
        return;
    };
    let mut body = response.bytes_stream();
    let mut line: Vec<u8> = Vec::with_capacity(PREFIX);
    let mut line_length = 0usize;
    let mut has: Option<u64> = None;
    while let Some(Ok(chunk)) = body.next().await {
        shared
            .bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let mut rest = &chunk[..];
        loop {
            let (piece, ended) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..end], true),
                None => (rest, false),
            };
            let room = PREFIX.saturating_sub(line.len());
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            line_length += piece.len();
            if !ended {
                break;
            }
            rest = &rest[piece.len() + 1..];
            if let Some(data) = line.strip_prefix(b"data: ")
                && let Some(seen) = probe(data)
            {
                match has {
                    None => {
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                        shared
                            .snapshot_bytes
                            .fetch_max(line_length, Ordering::Relaxed);
                    }
                    Some(had) => shared.received(had, seen),
                }
                has = Some(has.map_or(seen, |had| had.max(seen)));
            }
            line.clear();
            line_length = 0;
        }
    }
}

/// The subscriber that asks for gzip: counts the bytes it receives until
/// the stream ends or the task is aborted. A stream that is not gzip fails
/// the measurement.
async fn subscribe_gzip(client: reqwest::Client, url: String, shared: Arc<Shared>) {
    let request = client
        .get(&url)
        .header("accept-encoding", "gzip, deflate, br, zstd");
    let Some(response) = open(request, &shared, "the gzip subscriber: ").await else {
        return;
    };
    if response
        .headers()
        .get("content-encoding")
        .is_none_or(|coding| coding != "gzip")
    {
        shared.fail("the gzip subscriber: the stream is not gzip-encoded".to_owned());
        return;
    }
    let mut body = response.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        shared
            .gzip_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// A counter or histogram count of the query's `/metrics` (no labels).
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Runs the measurement on the private Redis at `redis_url`, with a query
/// service from `bin_dir` over a fresh database on `admin_url`'s server.
pub async fn measure(
    bin_dir: &str,
    admin_url: &str,
    redis_url: &str,
    redis_pid: Option<u32>,
    ticks_per_second: u64,
    plan: Plan,
) -> anyhow::Result<Figures> {
    let mut conn = redis::Client::open(redis_url)?
        .get_connection()
        .context("connecting to the bench's Redis")?;
    redis::cmd("FLUSHALL").exec(&mut conn)?;
    eprintln!(
        "bench: stream: seeding {} cities × {} parties",
        thousands(plan.cities as f64),
        plan.parties
    );
    seed(&mut conn, &plan)?;
    let database = known_election(admin_url)?;
    let query = Service::start(
        bin_dir,
        "election-query",
        &["serve"],
        database.url(),
        redis_url,
    )
    .await?;

    // Enough ticks for connecting, the window and the drain after it.
    let ticks = (Duration::from_secs(600) + plan.seconds * 2).as_millis() / TICK.as_millis();
    let shared = Arc::new(Shared::new(usize::try_from(ticks).unwrap_or(usize::MAX)));
    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(Mutex::new(None));
    let writer = {
        let shared = Arc::clone(&shared);
        let stop = Arc::clone(&stop);
        let reports = Arc::clone(&reports);
        std::thread::spawn(move || {
            let written = write(&mut conn, &plan, &shared, &stop);
            *reports.lock().unwrap_or_else(|p| p.into_inner()) = Some(written);
        })
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let url = format!("{}/v1/elections/{ELECTION}/stream", query.base());
    // First, so its snapshot is long received when the window starts.
    let gzip = tokio::spawn(subscribe_gzip(
        client.clone(),
        url.clone(),
        Arc::clone(&shared),
    ));
    let tasks = connect_subscribers(&client, &url, &shared, plan.subscribers).await?;
    eprintln!(
        "bench: stream: {} subscribers have their snapshot; measuring {} s",
        plan.subscribers,
        plan.seconds.as_secs()
    );

    // The window, once the writer has dropped what it owed from before and
    // written a few ticks at its rate; from one reading's instant to the
    // other's, their ticks and counters alike.
    shared.rebase.store(true, Ordering::Release);
    let asked = Instant::now();
    while shared.rebase.load(Ordering::Acquire) {
        if writer.is_finished() || asked.elapsed() > Duration::from_secs(60) {
            bail!("the stream's writer stopped, or did not take up its schedule within 60 s");
        }
        tokio::time::sleep(TICK).await;
    }
    tokio::time::sleep(TICK * 5).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let before = Readings::take(&client, &query, redis_pid, &shared).await?;
    tokio::time::sleep(plan.seconds).await;
    let spent = Readings::take(&client, &query, redis_pid, &shared)
        .await?
        .since(&before);
    let window = spent.at.duration_since(before.at);
    let (first_tick, last_tick) = (before.tick + 1, spent.tick);
    // Changes of the window get 5 s more to arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks.iter().chain([&gzip]) {
        task.abort();
    }
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))
        .and_then(|()| {
            reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .context("the writer did not finish")
        })??;
    eprintln!("bench: stream: {written} reports written in all");
    drop(query);

    let window = Window {
        duration: window,
        first_tick,
        last_tick,
        spent,
    };
    Ok(Figures::of(&plan, &window, &shared, ticks_per_second))
}

/// The measured window: how long it lasted, its ticks, what moved in it.
struct Window {
    duration: Duration,
    first_tick: usize,
    last_tick: usize,
    spent: Readings,
}

impl Figures {
    /// The figures of `window`, from what the subscribers saw.
    fn of(plan: &Plan, window: &Window, shared: &Shared, ticks_per_second: u64) -> Figures {
        let Window {
            duration: window,
            first_tick,
            last_tick,
            ref spent,
        } = *window;
        let delays = shared.delays(first_tick..=last_tick, plan.subscribers);
        let at = |q: f64| {
            delays
                .get(((delays.len().saturating_sub(1)) as f64 * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        let cpu = usage::ticks_to_duration(spent.query_ticks, ticks_per_second);
        let redis_cpu = spent
            .redis_ticks
            .map(|ticks| usage::ticks_to_duration(ticks, ticks_per_second));
        let ticks_in_window = (last_tick + 1).saturating_sub(first_tick) as f64;
        let refreshed = spent.refreshes;
        Figures {
            subscribers: plan.subscribers,
            window,
            reports_per_second: ticks_in_window * TICK.as_secs_f64() * plan.reports_per_second
                / window.as_secs_f64(),
            bytes_per_subscriber_second: spent.bytes as f64
                / plan.subscribers as f64
                / window.as_secs_f64(),
            gzip_bytes_per_second: spent.gzip_bytes as f64 / window.as_secs_f64(),
            snapshot_bytes: shared.snapshot_bytes.load(Ordering::Relaxed),
            delta_bytes: if spent.delta_count > 0.0 {
                spent.delta_sum / spent.delta_count
            } else {
                0.0
            },
            refreshes_per_second: refreshed / window.as_secs_f64(),
            cpu_per_refresh: if refreshed > 0.0 {
                cpu.div_f64(refreshed)
            } else {
                Duration::ZERO
            },
            cpu_share: cpu.as_secs_f64() / window.as_secs_f64(),
            redis_share: redis_cpu.map(|cpu| cpu.as_secs_f64() / window.as_secs_f64()),
            read_time: if refreshed > 0.0 {
                Duration::from_secs_f64(spent.read_seconds / refreshed)
            } else {
                Duration::ZERO
            },
            changes: (last_tick + 1).saturating_sub(first_tick),
            reached_all: delays.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// A fresh database on `admin_url`'s server in which the bench's election is
/// known. The query service serves only elections it knows (defined or
/// reported to, in PostgreSQL): one report of no votes makes it known
/// without a definition, which would change the bodies. It is in no
/// pending batch, so nothing counts it.
fn known_election(admin_url: &str) -> anyhow::Result<Database> {
    let database = Database::recreate(admin_url, "election_bench_stream")?;
    let pool = store_pg::connect(database.url(), 1, Duration::from_secs(5))?;
    store_pg::migrate(&pool).context("migrating the stream bench's database")?;
    let mut conn = pool
        .get()
        .context("connecting to the stream bench's database")?;
    diesel::sql_query(
        "INSERT INTO reports (election_id, ballot_box_id, city, revision, replaces, payload, \
         payload_hash, parties, votes, differences) \
         VALUES ($1, 'bench-box', $2, 1, 0, '{}', sha256(''::bytea), '{bench}', '{0}', '{0}')",
    )
    .bind::<diesel::sql_types::Text, _>(ELECTION)
    .bind::<diesel::sql_types::Text, _>(PROBE)
    .execute(&mut conn)
    .context("making the stream bench's election known")?;
    Ok(database)
}

/// Opens `subscribers` streams in waves of 100, each wave getting its
/// snapshots before the next connects (300 s at most in all); an error when
/// any subscriber could not open its stream.
async fn connect_subscribers(
    client: &reqwest::Client,
    url: &str,
    shared: &Arc<Shared>,
    subscribers: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(subscribers);
    let deadline = Instant::now() + Duration::from_secs(300);
    for batch in 0..subscribers.div_ceil(100) {
        for _ in 0..100.min(subscribers - batch * 100) {
            tasks.push(tokio::spawn(subscribe(
                client.clone(),
                url.to_owned(),
                Arc::clone(shared),
            )));
        }
        while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
            < tasks.len()
        {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} subscribers got their snapshot within 300 s",
                    shared.connected.load(Ordering::Relaxed),
                    tasks.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let failed = shared.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let why = shared
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        bail!("{failed} subscribers could not open the stream; the first: {why}");
    }
    Ok(tasks)
}

/// The counters read at each end of the window: bytes the subscribers
/// received, CPU ticks of the query and of Redis, and the query's metrics.
struct Readings {
    /// When the bytes, the CPU and the last tick written were read: the
    /// window runs between the two ends' instants, whatever the metrics'
    /// round trips after them take (seconds, on a machine the subscribers
    /// saturate).
    at: Instant,
    /// The last tick written then.
    tick: usize,
    bytes: u64,
    gzip_bytes: u64,
    query_ticks: u64,
    redis_ticks: Option<u64>,
    /// Refreshes that read counters (full and partial reads' `_count`).
    refreshes: f64,
    /// Their reads' wall time (the same histograms' `_sum`).
    read_seconds: f64,
    /// `query_stream_delta_bytes_sum` and `_count`.
    delta_sum: f64,
    delta_count: f64,
}

impl Readings {
    async fn take(
        client: &reqwest::Client,
        query: &Service,
        redis_pid: Option<u32>,
        shared: &Shared,
    ) -> anyhow::Result<Readings> {
        // Bytes and CPU first, the metrics (HTTP round trips) after, as the
        // window's ends always read them.
        let at = Instant::now();
        let tick = shared.last_written().unwrap_or(0);
        let bytes = shared.bytes.load(Ordering::Relaxed);
        let gzip_bytes = shared.gzip_bytes.load(Ordering::Relaxed);
        let query_ticks = usage::process_ticks(query.pid());
        let redis_ticks = redis_pid.map(usage::process_ticks);
        let base = query.base();
        Ok(Readings {
            at,
            tick,
            bytes,
            gzip_bytes,
            query_ticks,
            redis_ticks,
            refreshes: metric(client, base, "query_snapshot_refresh_seconds_count").await?
                + metric(client, base, "query_partial_refresh_seconds_count").await?,
            read_seconds: metric(client, base, "query_snapshot_refresh_seconds_sum").await?
                + metric(client, base, "query_partial_refresh_seconds_sum").await?,
            delta_sum: metric(client, base, "query_stream_delta_bytes_sum").await?,
            delta_count: metric(client, base, "query_stream_delta_bytes_count").await?,
        })
    }

    /// What moved since `before`.
    fn since(&self, before: &Readings) -> Readings {
        Readings {
            at: self.at,
            tick: self.tick,
            bytes: self.bytes - before.bytes,
            gzip_bytes: self.gzip_bytes - before.gzip_bytes,
            query_ticks: self.query_ticks.saturating_sub(before.query_ticks),
            redis_ticks: self
                .redis_ticks
                .zip(before.redis_ticks)
                .map(|(now, then)| now.saturating_sub(then)),
            refreshes: self.refreshes - before.refreshes,
            read_seconds: self.read_seconds - before.read_seconds,
            delta_sum: self.delta_sum - before.delta_sum,
            delta_count: self.delta_count - before.delta_count,
        }
    }
}

/// The table's lines for one measurement.
pub fn lines(plan: &Plan, figures: &Figures) -> Vec<Line> {
    let what = format!(
        "stream: {} cities × {} parties, {} reports/s, {} subscribers",
        thousands(plan.cities as f64),
        plan.parties,
        thousands(plan.reports_per_second),
        thousands(figures.subscribers as f64)
    );
    vec![
        Line::info(
            format!("{what}: bytes and CPU"),
            format!(
                "{:.1} KiB per subscriber per second (deltas of {:.1} KiB on average; the snapshot on connect {:.1} MiB); \
                 {:.1} KiB per second to a subscriber asking for gzip ({:.1}× fewer); \
                 query CPU {:.1} ms per refresh, {:.1} refreshes/s (each reading the counters in {:.0} ms), {:.0}% of a core{}; {:.0} reports/s written in the {:.0} s window",
                figures.bytes_per_subscriber_second / 1024.0,
                figures.delta_bytes / 1024.0,
                figures.snapshot_bytes as f64 / 1024.0 / 1024.0,
                figures.gzip_bytes_per_second / 1024.0,
                figures.bytes_per_subscriber_second / figures.gzip_bytes_per_second.max(1.0),
                ms(figures.cpu_per_refresh),
                figures.refreshes_per_second,
                ms(figures.read_time),
                figures.cpu_share * 100.0,
                figures
                    .redis_share
                    .map_or_else(String::new, |share| format!(
                        " (Redis, writes and reads: {:.0}% of a core)",
                        share * 100.0
                    )),
                figures.reports_per_second,
                figures.window.as_secs_f64()
            ),
        ),
        Line::judged(
            format!("{what}: from a change to the last subscriber"),
            format!(
                "{} of {} changes reached every subscriber: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                figures.reached_all,
                figures.changes,
                ms(figures.p50),
                ms(figures.p99),
                ms(figures.max)
            ),
            "every change to every subscriber, p99 ≤ 1 s",
            figures.reached_all == figures.changes
                && figures.changes > 0
                && figures.p99 <= Duration::from_secs(1),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_found_at_the_start_of_the_cities() {
        let data = br#"{"election":"bench-stream","version":9,"previous":8,"as_of":"x","national":{"parties":{"p00":5}},"cities":[{"city":"0probe","name":null,"parties":{"p00":1234,"p01":0},"total_votes":1234},{"city":"c00001"}]}"#;
        assert_eq!(probe(data), Some(1234));
        assert_eq!(probe(br#"{"cities":[{"city":"c00001"}]}"#), None);
    }
}
