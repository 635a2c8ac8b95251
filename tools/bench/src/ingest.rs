//! Ingest as users meet it on election night: a freshly migrated database
//! that was never analysed, and clients outside the service (wrk).
//!
//! Each measurement gets a [`Stage`] of its own: the database
//! `election_bench` dropped, created and migrated, empty Redis counters, and
//! a freshly started election-ingest. So no measurement benefits from the
//! data, the caches or the planner statistics another one left behind. The
//! bench used to warm up with 5,000 reports and `ANALYZE` first, and the
//! figures of election night, on a freshly migrated database that nothing
//! had analysed yet, were 2–4× worse than its. The warmed-up and analysed
//! condition is still measured, as a labelled comparison
//! ([`Start::Analyzed`]).
//!
//! What a run measures: reports per second and latency as wrk saw them, the
//! CPU each process spent per report recorded (election-ingest, the whole
//! PostgreSQL server, the bench's redis-server, wrk), resident memory, the
//! rate in every 10-second window while an election grows to millions of
//! reports, and the Redis memory one ballot box takes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, RunQueryDsl};

use crate::procs::{Database, Logging, Service, flush_redis, used_memory};
use crate::usage::{self, Snapshot, Spent, Watched};
use crate::wrk::{self, Posted, Posting, Watch};

/// The database every stage recreates.
const DATABASE: &str = "election_bench";

/// What every measurement needs: where the server and the binaries are, the
/// wrk script, and the clock of `/proc` times.
pub struct Bench {
    pub admin_url: String,
    pub bin_dir: String,
    pub scripts: wrk::Scripts,
    pub ticks_per_second: u64,
}

/// Where the counters go: a Redis URL in the form the services take, and the
/// nodes to empty and to read memory from.
pub struct RedisTarget {
    pub url: String,
    pub nodes: Vec<String>,
    /// The redis-server whose CPU is read (standalone only).
    pub pid: Option<u32>,
}

/// A fresh database with election-ingest serving on it. Dropped in field
/// order: ingest stops before the pool closes.
pub struct Stage {
    pub ingest: Service,
    pub pool: store_pg::PgPool,
    pub database: Database,
    bin_dir: String,
}

impl Stage {
    /// Recreates and migrates the database, empties Redis, starts ingest.
    pub async fn fresh(bench: &Bench, redis: &RedisTarget) -> anyhow::Result<Stage> {
        Stage::fresh_logging(bench, redis, &Logging::Quiet).await
    }

    /// [`Stage::fresh`] with ingest logging as `logging` says.
    pub async fn fresh_logging(
        bench: &Bench,
        redis: &RedisTarget,
        logging: &Logging,
    ) -> anyhow::Result<Stage> {
        flush_redis(&redis.nodes)?;
        let database = Database::recreate(&bench.admin_url, DATABASE)?;
        let pool = store_pg::connect(database.url(), 4, Duration::from_secs(5))?;
        store_pg::migrate(&pool).context("migrating the bench database")?;
        let ingest = Service::start_logging(
            &bench.bin_dir,
            "election-ingest",
            &["serve"],
            database.url(),
            &redis.url,
            logging,
        )
        .await?;
        Ok(Stage {
            ingest,
            pool,
            database,
            bin_dir: bench.bin_dir.clone(),
        })
    }

    /// Issues a token for `election` as an operator does:
    /// `election-ingest token issue --election <e>`.
    pub fn token(&self, election: &str) -> anyhow::Result<String> {
        let path = format!("{}/election-ingest", self.bin_dir);
        let output = Command::new(&path)
            .args(["token", "issue", "--election", election, "--label", "bench"])
            .env("DATABASE_URL", self.database.url())
            .output()
            .with_context(|| format!("running {path} token issue"))?;
        let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || token.is_empty() {
            bail!(
                "election-ingest token issue failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(token)
    }

    /// Reports recorded so far in this database (every post of the bench is
    /// a new ballot box, so each is one row): the last value drawn from the
    /// reports' id sequence, which costs nothing to read at any size.
    pub fn recorded(&self) -> anyhow::Result<u64> {
        let mut conn = self.pool.get()?;
        let row: Count = diesel::sql_query(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM reports_id_seq",
        )
        .get_result(&mut conn)?;
        Ok(u64::try_from(row.n)?)
    }

    /// Reports of `election` recorded.
    fn rows(&self, election: &str) -> anyhow::Result<u64> {
        self.count(
            "SELECT count(*) AS n FROM reports WHERE election_id = $1",
            election,
        )
    }

    /// Reports of `election` recorded and not counted yet.
    fn pending(&self, election: &str) -> anyhow::Result<u64> {
        self.count(
            "SELECT count(*) AS n FROM pending_reports WHERE election_id = $1",
            election,
        )
    }

    /// Reports of `election` recorded and counted (in no pending batch).
    fn counted(&self, election: &str) -> anyhow::Result<u64> {
        Ok(self.rows(election)? - self.pending(election)?)
    }

    fn count(&self, sql: &str, election: &str) -> anyhow::Result<u64> {
        let mut conn = self.pool.get()?;
        let row: Count = diesel::sql_query(sql)
            .bind::<Text, _>(election)
            .get_result(&mut conn)?;
        Ok(u64::try_from(row.n)?)
    }

    /// A posting of 2 wrk threads and 64 connections for 10 s to `election`
    /// with `token`, its boxes named `run-…` (callers change what differs).
    fn posting(&self, election: &str, token: String) -> Posting {
        Posting {
            base: self.ingest.base().to_owned(),
            election: election.to_owned(),
            token,
            run: "run".to_owned(),
            threads: 2,
            connections: 64,
            duration: Duration::from_secs(10),
            batch: 1,
            rate: None,
        }
    }

    /// Posts with wrk (see [`wrk::post_reports`]) on a blocking section of
    /// the runtime.
    fn post(
        &self,
        bench: &Bench,
        posting: &Posting,
        watch: impl FnMut() -> anyhow::Result<Watch>,
    ) -> anyhow::Result<Posted> {
        tokio::task::block_in_place(|| {
            wrk::post_reports(&bench.scripts, posting, bench.ticks_per_second, watch)
        })
    }

    /// Posts to a new election with 64 connections until at least `reports`
    /// are recorded in the database (looking every 100 ms), or `limit` has
    /// passed.
    fn post_until(
        &self,
        bench: &Bench,
        election: &str,
        reports: u64,
        limit: Duration,
    ) -> anyhow::Result<Posted> {
        let posting = Posting {
            duration: limit,
            ..self.posting(election, self.token(election)?)
        };
        self.post(bench, &posting, || {
            Ok(if self.recorded()? >= reports {
                Watch::Stop
            } else {
                Watch::Go
            })
        })
    }

    /// Counts what ingest left pending (answered 202) with
    /// `election-reprocessor run --once`, so every recorded report is in
    /// the counters.
    fn drain(&self, redis_url: &str, election: &str) -> anyhow::Result<()> {
        // Ingest marks a batch counted just after its answers go out.
        std::thread::sleep(Duration::from_secs(1));
        if self.pending(election)? == 0 {
            return Ok(());
        }
        let path = format!("{}/election-reprocessor", self.bin_dir);
        let status = Command::new(&path)
            .args(["run", "--once", "--pending-after", "0"])
            .env("DATABASE_URL", self.database.url())
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .status()
            .with_context(|| format!("running {path} run --once"))?;
        let left = self.pending(election)?;
        if !status.success() || left > 0 {
            bail!(
                "{left} reports of {election} stayed pending after election-reprocessor run --once"
            );
        }
        Ok(())
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How the database is when a measurement starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Freshly migrated, empty, never analysed: election night.
    Fresh,
    /// After 5,000 reports and `ANALYZE`: what the bench used to measure.
    Analyzed,
}

/// Reports posted before `ANALYZE` in [`Start::Analyzed`].
const WARM_UP_REPORTS: u64 = 5_000;

/// Resident memory at the end of a run, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub ingest: Option<u64>,
    pub redis: Option<u64>,
    pub wrk: Option<u64>,
}

/// One fixed-duration run at a number of connections.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub connections: usize,
    /// Reports per request.
    pub batch: usize,
    pub posted: Posted,
    /// Reports recorded from just before wrk started to just after it ended
    /// (including the ones in flight when it stopped).
    pub recorded: u64,
    pub spent: Spent,
    pub rss: Rss,
    /// With a sealing reprocessor beside ingest: the reports of the
    /// election it had sealed when the run ended (see [`throughput_sealing`]).
    pub sealed: Option<u64>,
}

impl Throughput {
    /// Machine CPU per report: every process of the path and the client.
    pub fn machine_micros(&self) -> f64 {
        let total = self.spent.ingest + self.spent.postgres + self.spent.redis + self.posted.cpu;
        usage::micros_per(total, self.recorded)
    }
}

/// Posts for `seconds` with `connections` connections (2 wrk threads) on a
/// stage of its own, reading every process's CPU before and after.
pub async fn throughput(
    bench: &Bench,
    redis: &RedisTarget,
    start: Start,
    connections: usize,
    seconds: Duration,
) -> anyhow::Result<Throughput> {
    throughput_with(
        bench,
        redis,
        start,
        connections,
        seconds,
        Variant::default(),
    )
    .await
}

/// [`throughput`] with `batch` reports per request (`/report-batches`).
pub async fn throughput_of(
    bench: &Bench,
    redis: &RedisTarget,
    start: Start,
    connections: usize,
    batch: usize,
    seconds: Duration,
) -> anyhow::Result<Throughput> {
    let variant = Variant {
        batch,
        ..Variant::default()
    };
    throughput_with(bench, redis, start, connections, seconds, variant).await
}

/// [`throughput`] with `election-reprocessor run` sealing beside ingest
/// (`--seal-interval 1s`, the default; healing off, so the difference from
/// [`throughput`] is the sealing alone): what the sealed log costs ingest
/// (docs/audit.md; the target is at most 5% fewer reports per second).
pub async fn throughput_sealing(
    bench: &Bench,
    redis: &RedisTarget,
    connections: usize,
    seconds: Duration,
) -> anyhow::Result<Throughput> {
    let variant = Variant {
        sealing: true,
        ..Variant::default()
    };
    throughput_with(bench, redis, Start::Fresh, connections, seconds, variant).await
}

/// [`throughput`] on a fresh database with ingest logging as
/// docs/systemd/common.env.example ships it (`RUST_LOG=info`,
/// `LOG_FORMAT=json`: an access-log line per request) into `log`: what that
/// logging costs, against [`throughput`]'s `RUST_LOG=warn`.
pub async fn throughput_logged(
    bench: &Bench,
    redis: &RedisTarget,
    connections: usize,
    seconds: Duration,
    log: PathBuf,
) -> anyhow::Result<Throughput> {
    let variant = Variant {
        logging: Logging::Shipped(log),
        ..Variant::default()
    };
    throughput_with(bench, redis, Start::Fresh, connections, seconds, variant).await
}

/// What differs between the throughput runs besides the database's start.
#[derive(Debug)]
struct Variant {
    /// Reports per request.
    batch: usize,
    /// A sealing reprocessor beside ingest.
    sealing: bool,
    /// How ingest logs.
    logging: Logging,
}

impl Default for Variant {
    fn default() -> Variant {
        Variant {
            batch: 1,
            sealing: false,
            logging: Logging::Quiet,
        }
    }
}

async fn throughput_with(
    bench: &Bench,
    redis: &RedisTarget,
    start: Start,
    connections: usize,
    seconds: Duration,
    variant: Variant,
) -> anyhow::Result<Throughput> {
    let Variant {
        batch,
        sealing,
        logging,
    } = variant;
    let stage = Stage::fresh_logging(bench, redis, &logging).await?;
    let sealer = if sealing {
        Some(
            Service::start(
                &bench.bin_dir,
                "election-reprocessor",
                &["run", "--heal-interval", "0", "--seal-interval", "1s"],
                stage.database.url(),
                &redis.url,
            )
            .await?,
        )
    } else {
        None
    };
    let election = format!("bench-{connections}");
    if start == Start::Analyzed {
        let warm_up = format!("{election}-warm-up");
        stage.post_until(bench, &warm_up, WARM_UP_REPORTS, Duration::from_secs(120))?;
        tokio::task::block_in_place(|| stage.database.analyze())?;
    }
    let posting = Posting {
        connections,
        duration: seconds,
        batch,
        ..stage.posting(&election, stage.token(&election)?)
    };
    let watched = Watched {
        ingest: stage.ingest.pid(),
        redis: redis.pid,
        sealer: sealer.as_ref().map(Service::pid),
    };
    let recorded_before = stage.recorded()?;
    let before = Snapshot::take(watched)?;
    let posted = stage.post(bench, &posting, || Ok(Watch::Go))?;
    // Let the reports still in flight when wrk stopped finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = Snapshot::take(watched)?;
    let recorded = stage.recorded()? - recorded_before;
    let rss = Rss {
        ingest: usage::rss_kib(watched.ingest),
        redis: redis.pid.and_then(usage::rss_kib),
        wrk: posted.rss_kib,
    };
    let sealed = match sealer {
        Some(sealer) => {
            let sealed = stage.count(
                "SELECT coalesce(max(sealed_count), 0) AS n FROM seals WHERE election_id = $1",
                &election,
            )?;
            drop(sealer);
            Some(sealed)
        }
        None => None,
    };
    Ok(Throughput {
        connections,
        batch,
        recorded,
        sealed,
        spent: Spent::between(before, after, bench.ticks_per_second),
        rss,
        posted,
    })
}

/// One window of the growth curve.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Reports recorded at its end.
    pub recorded: u64,
    /// Reports recorded in it.
    pub reports: u64,
    pub seconds: f64,
}

impl Window {
    pub fn rate(&self) -> f64 {
        self.reports as f64 / self.seconds
    }
}

/// The growth curve: the rate in consecutive windows while one election
/// grows on a fresh database.
#[derive(Debug, Clone)]
pub struct Growth {
    pub windows: Vec<Window>,
    /// Reports the run was to reach.
    pub target: u64,
    /// Reports recorded at the end of the last window (the id sequence).
    pub recorded: u64,
    /// Rows of the election in `reports` once wrk has stopped: the
    /// sequence's count checked (it may only be ahead by the reports in
    /// flight at the stop).
    pub rows: u64,
}

impl Growth {
    /// The best and the worst window's rate.
    pub fn best_and_worst(&self) -> Option<(f64, f64)> {
        let rates = self.windows.iter().map(Window::rate);
        let best = rates.clone().reduce(f64::max)?;
        let worst = rates.reduce(f64::min)?;
        Some((best, worst))
    }
}

/// How long one window of the growth curve lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Posts with 64 connections on a fresh stage until `target` reports are
/// recorded (or `limit` has passed), reading the number recorded every
/// [`WINDOW`]. Every window is a whole one: wrk is stopped right after the
/// reading that reaches the target.
pub async fn growth(
    bench: &Bench,
    redis: &RedisTarget,
    target: u64,
    limit: Duration,
) -> anyhow::Result<Growth> {
    let stage = Stage::fresh(bench, redis).await?;
    let election = "bench-growth";
    // The watch stops wrk at the limit; its own duration is only a backstop.
    let posting = Posting {
        duration: limit + WINDOW * 3,
        ..stage.posting(election, stage.token(election)?)
    };
    let mut windows = Vec::new();
    let started = Instant::now();
    let mut last = (started, stage.recorded()?);
    stage.post(bench, &posting, || {
        let now = Instant::now();
        if now.duration_since(last.0) < WINDOW {
            return Ok(Watch::Go);
        }
        let recorded = stage.recorded()?;
        let window = Window {
            recorded,
            reports: recorded.saturating_sub(last.1),
            seconds: now.duration_since(last.0).as_secs_f64(),
        };
        eprintln!(
            "bench: growth window {}: {:.0} reports/s, {recorded} recorded",
            windows.len() + 1,
            window.rate()
        );
        windows.push(window);
        last = (now, recorded);
        let done = recorded >= target || now.duration_since(started) + WINDOW > limit;
        Ok(if done { Watch::Stop } else { Watch::Go })
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Growth {
        windows,
        target,
        recorded: last.1,
        rows: stage.rows(election)?,
    })
}

/// Redis memory per ballot box counted.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub boxes: u64,
    pub bytes: u64,
}

impl Memory {
    pub fn per_box(&self) -> f64 {
        self.bytes as f64 / self.boxes.max(1) as f64
    }
}

/// `used_memory` (summed over the nodes) before and after at least
/// `reports` new ballot boxes of 4 parties are counted, on a fresh stage.
pub async fn memory(bench: &Bench, redis: &RedisTarget, reports: u64) -> anyhow::Result<Memory> {
    let stage = Stage::fresh(bench, redis).await?;
    let election = "bench-memory";
    let before = used_memory(&redis.nodes)?;
    stage.post_until(bench, election, reports, Duration::from_secs(300))?;
    tokio::task::block_in_place(|| stage.drain(&redis.url, election))?;
    let after = used_memory(&redis.nodes)?;
    Ok(Memory {
        boxes: stage.counted(election)?,
        bytes: after.saturating_sub(before),
    })
}

/// wrk posting new ballot boxes at a steady rate in the background (one
/// thread paced by `pace.lua`, with 64 connections so that answers slower
/// than the schedule do not hold it back): the load beside the query
/// measurement. Stopped through its flag and awaited, so what is measured
/// after [`PacedWriter::stop`] has nothing posting; dropped without that (an
/// error on the way), it still raises the flag, so wrk stops at its next
/// look instead of posting until its time limit.
pub struct PacedWriter {
    /// `None` once [`PacedWriter::stop`] has taken it.
    task: Option<tokio::task::JoinHandle<anyhow::Result<Posted>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for PacedWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PacedWriter {
    /// Starts posting to `election` at `rate` reports per second for at
    /// most `limit`, and returns once the first report is recorded: the
    /// query service answers 404 for an election without one (a fixed
    /// 500 ms was not always enough on a slow machine, 2026-12-01).
    pub async fn start(
        bench: &Bench,
        stage: &Stage,
        election: &str,
        rate: u32,
        limit: Duration,
    ) -> anyhow::Result<PacedWriter> {
        let posting = Posting {
            threads: 1,
            duration: limit,
            rate: Some(rate),
            ..stage.posting(election, stage.token(election)?)
        };
        let (scripts, ticks) = (bench.scripts.clone(), bench.ticks_per_second);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::task::spawn_blocking(move || {
            wrk::post_reports(&scripts, &posting, ticks, || {
                Ok(if stopped.load(Ordering::Relaxed) {
                    Watch::Stop
                } else {
                    Watch::Go
                })
            })
        });
        let writer = PacedWriter {
            task: Some(task),
            stop,
        };
        let began = Instant::now();
        while stage.recorded()? == 0 {
            anyhow::ensure!(
                !writer.finished() && began.elapsed() < Duration::from_secs(60),
                "the paced writer had no answer within a minute"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(writer)
    }

    /// Stops it and returns what it posted; fails if it had already
    /// stopped by itself (then what was measured meanwhile was not measured
    /// while it posted).
    pub async fn stop(mut self) -> anyhow::Result<Posted> {
        let still_writing = !self.finished();
        self.stop.store(true, Ordering::Relaxed);
        let task = self
            .task
            .take()
            .context("the paced writer's task was already taken")?;
        let posted = task.await.context("the paced writer")??;
        anyhow::ensure!(
            still_writing,
            "the paced writer finished before the measurement did: not measured while ingest posts"
        );
        Ok(posted)
    }

    /// Whether wrk has ended (by itself, unless stopped).
    fn finished(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.is_finished())
    }
}
