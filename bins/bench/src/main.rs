//! `election-bench` (`just bench`): one run that measures, side by side on
//! this machine, the whole ingest path, the seed article's PostgreSQL-only
//! alternative, the raw ceilings of PostgreSQL and Redis, the query service
//! and reconcile, and prints one table with ratios.
//!
//! Everything runs against a database of its own (`election_bench`, recreated)
//! on `DATABASE_URL`'s server and a private `redis-server` on a free port, with
//! the release binaries from `target/release` as child processes, so the
//! figures include HTTP, process boundaries and the real servers. Noise
//! between runs is large on a shared 2-core machine (../shared/LIMITS.md):
//! compare the ratios of one run, not absolute figures across runs.

mod ceilings;
mod procs;
mod query;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use election_core::{ElectionId, Engine, Report, ReportLog};
use election_loadgen::{Load, Plan, Progress, night};
use store_pg::PgLog;
use store_redis::{RedisOptions, RedisTally};

use crate::procs::{Database, RedisProc, Service};

/// Measures the election system on this machine.
#[derive(Parser, Debug)]
#[command(name = "election-bench", about)]
struct Cli {
    /// PostgreSQL server to use (a database `election_bench` is recreated on it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_url: String,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: String,
    /// Smaller sizes, for a quick look (figures are less stable).
    #[arg(long)]
    quick: bool,
    /// Seconds each fixed-duration measurement runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

/// One line of the result table.
struct Line {
    what: String,
    result: String,
    ratio: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(cli))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    let seconds = Duration::from_secs_f64(cli.seconds);
    let scale = if cli.quick { 1 } else { 4 };
    let database = Database::recreate(&cli.database_url, "election_bench")?;
    let redis = RedisProc::start()?;
    eprintln!(
        "bench: database election_bench, private redis on {}",
        redis.url()
    );
    let pool = store_pg::connect(database.url(), 16, Duration::from_secs(5))?;
    store_pg::migrate(&pool)?;

    let ingest = Service::start(
        &cli.bin_dir,
        "election-ingest",
        &["serve"],
        database.url(),
        &redis.url(),
    )
    .await?;
    let mut lines = Vec::new();

    // --- Ingest, end to end -------------------------------------------------
    // Warm up (connections, caches, JIT-free but page cache), then ANALYZE so
    // the planner sees realistic statistics (../shared/LIMITS.md).
    let warm = ingest_run(&pool, &ingest, "bench-warmup", 5_000, 64, 11).await?;
    eprintln!("bench: warm-up {:.0} reports/s", warm.throughput());
    database.analyze()?;
    let boxes = 15_000 * scale;
    let at64 = ingest_run(&pool, &ingest, "bench-e2e-64", boxes, 64, 12).await?;
    let at512 = ingest_run(&pool, &ingest, "bench-e2e-512", boxes, 512, 13).await?;
    for (concurrency, outcome) in [(64, &at64), (512, &at512)] {
        lines.push(Line {
            what: format!(
                "ingest end to end (HTTP → PostgreSQL → Redis), {concurrency} concurrent boxes"
            ),
            result: format!(
                "{:.0} reports/s, p50 {:.1} ms, p99 {:.1} ms",
                outcome.throughput(),
                ms(outcome.percentile(0.5)),
                ms(outcome.percentile(0.99))
            ),
            ratio: String::new(),
        });
    }

    // --- The seed's PostgreSQL-only alternative -----------------------------
    let plan = Plan {
        boxes: 200_000,
        cities: 300,
        parties: 4,
        duplicates: 0.0,
        revisions: 0.0,
        seed: 14,
    };
    let pg_only = tokio::task::spawn_blocking({
        let url = database.url().to_owned();
        move || ceilings::pg_only(&url, &plan, 64, seconds)
    })
    .await??;
    lines.push(Line {
        what: "PostgreSQL-only alternative (SELECT … FOR UPDATE + UPDATE per counter, 1 txn per report), 64 connections, no HTTP".into(),
        result: format!("{pg_only:.0} reports/s"),
        ratio: String::new(),
    });
    lines[0].ratio = format!(
        "{:.1}× the PostgreSQL-only alternative",
        at64.throughput() / pg_only
    );

    // --- Ceilings ------------------------------------------------------------
    let pg_ceiling = tokio::task::spawn_blocking({
        let url = database.url().to_owned();
        move || ceilings::pg_insert(&url, 8, 100, seconds)
    })
    .await??;
    lines.push(Line {
        what: "ceiling: PostgreSQL multi-row INSERT, 100 reports (+4 party rows each) per txn, 8 connections".into(),
        result: format!("{pg_ceiling:.0} reports/s"),
        ratio: format!("ingest@64 reaches {:.0}% of it", 100.0 * at64.throughput() / pg_ceiling),
    });
    let redis_ceiling = tokio::task::spawn_blocking({
        let url = redis.url();
        move || ceilings::redis_scripts(&url, 8, 16, 8, seconds)
    })
    .await??;
    lines.push(Line {
        what: "ceiling: Redis, marker + 8 INCRBY script, pipelined 16, 8 connections".into(),
        result: format!("{redis_ceiling:.0} scripts/s"),
        ratio: format!(
            "ingest@64 uses {:.0}% of it",
            100.0 * at64.throughput() / redis_ceiling
        ),
    });

    // --- Query ---------------------------------------------------------------
    let query_service = Service::start(
        &cli.bin_dir,
        "election-query",
        &["serve"],
        database.url(),
        &redis.url(),
    )
    .await?;
    let background = {
        let pool = pool.clone();
        let ingest_base = ingest.base().to_owned();
        tokio::spawn(async move {
            ingest_run_at(
                &pool,
                &ingest_base,
                "bench-query",
                30_000 * scale,
                32,
                15,
                Some(2_000.0),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = query::hammer_totals(query_service.base(), "bench-query", 64, seconds).await?;
    background.abort();
    lines.push(Line {
        what: "query: GET /totals, 64 concurrent clients, while ingest posts 2,000 reports/s"
            .into(),
        result: format!(
            "{:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            totals.per_second,
            ms(totals.p50),
            ms(totals.p99)
        ),
        ratio: String::new(),
    });
    // The same with the machine to itself: what the query service does when
    // reading is all that happens (the target's own condition).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alone = query::hammer_totals(query_service.base(), "bench-query", 64, seconds).await?;
    lines.push(Line {
        what: "query: GET /totals, 64 concurrent clients, nothing else running".into(),
        result: format!(
            "{:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            alone.per_second,
            ms(alone.p50),
            ms(alone.p99)
        ),
        ratio: format!(
            "{:.2}× the rate while ingest runs",
            alone.per_second / totals.per_second
        ),
    });
    let subscribers = if cli.quick { 1_000 } else { 5_000 };
    let stream = query::stream_fanout(
        &pool,
        query_service.base(),
        ingest.base(),
        "bench-stream",
        subscribers,
    )
    .await?;
    lines.push(Line {
        what: format!("query: stream, {subscribers} subscribers, one new report"),
        result: format!(
            "all {} got it: p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms after the post",
            stream.received,
            ms(stream.p50),
            ms(stream.p99),
            ms(stream.max)
        ),
        ratio: String::new(),
    });
    drop(query_service);

    // --- Reconcile -------------------------------------------------------------
    let reconcile_boxes = if cli.quick { 20_000 } else { 100_000 };
    let election = ElectionId::parse("bench-reconcile")?;
    fill_directly(&pool, &redis.url(), &election, reconcile_boxes).await?;
    let started = Instant::now();
    let output = tokio::process::Command::new(format!("{}/election-reprocessor", cli.bin_dir))
        .args(["reconcile", "--election", election.as_str()])
        .env("DATABASE_URL", database.url())
        .env("REDIS_URL", redis.url())
        .output()
        .await
        .context("running election-reprocessor reconcile")?;
    let took = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "reconcile found drift or failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    lines.push(Line {
        what: format!("reconcile: {reconcile_boxes} ballot boxes × 4 parties, exact"),
        result: format!("{:.2} s", took.as_secs_f64()),
        ratio: String::new(),
    });

    print_table(&lines);
    Ok(())
}

fn print_table(lines: &[Line]) {
    println!();
    println!("| measurement | result | ratio |");
    println!("| --- | --- | --- |");
    for line in lines {
        println!("| {} | {} | {} |", line.what, line.result, line.ratio);
    }
}

async fn ingest_run(
    pool: &store_pg::PgPool,
    ingest: &Service,
    election: &str,
    boxes: usize,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<election_loadgen::Outcome> {
    ingest_run_at(
        pool,
        ingest.base(),
        election,
        boxes,
        concurrency,
        seed,
        None,
    )
    .await
}

async fn ingest_run_at(
    pool: &store_pg::PgPool,
    ingest_base: &str,
    election: &str,
    boxes: usize,
    concurrency: usize,
    seed: u64,
    rate: Option<f64>,
) -> anyhow::Result<election_loadgen::Outcome> {
    let token = election_ingest::auth::generate();
    store_pg::tokens::insert(
        pool,
        &election_ingest::auth::hash(&token),
        election,
        None,
        Some("bench"),
    )?;
    let plan = Plan {
        boxes,
        cities: 300,
        parties: 4,
        duplicates: 0.02,
        revisions: 0.01,
        seed,
    };
    let load = Load {
        ingest_url: ingest_base.to_owned(),
        election: election.to_owned(),
        token,
        concurrency,
        rate,
        duration: None,
        spread: None,
    };
    let outcome =
        election_loadgen::run(&load, Arc::new(night(&plan)), Arc::new(Progress::default())).await?;
    anyhow::ensure!(
        outcome.transport_errors == 0 && outcome.acknowledged_posts() > 0,
        "ingest run {election} failed: {:?}",
        outcome.statuses
    );
    Ok(outcome)
}

/// Records and counts `boxes` reports straight through the engine (no HTTP),
/// to prepare a large election quickly.
async fn fill_directly(
    pool: &store_pg::PgPool,
    redis_url: &str,
    election: &ElectionId,
    boxes: usize,
) -> anyhow::Result<()> {
    let log = Arc::new(PgLog::new(pool.clone()));
    let tally = Arc::new(RedisTally::connect(
        &store_redis::parse_target(redis_url)?,
        &RedisOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            pool_size: 4,
        },
    )?);
    let engine = Engine::new(log.clone(), tally);
    let plan = Plan {
        boxes,
        cities: 300,
        parties: 4,
        duplicates: 0.0,
        revisions: 0.0,
        seed: 16,
    };
    let election = election.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let posts = night(&plan);
        for chunk in posts.chunks(1000) {
            let reports: Vec<Report> = chunk
                .iter()
                .map(|post| Report::from_json(&election, post.body.as_bytes()))
                .collect::<Result<_, _>>()?;
            engine.submit(&reports)?;
        }
        anyhow::ensure!(
            log.pending_count(&election)? == 0,
            "some reports stayed pending"
        );
        Ok(())
    })
    .await??;
    Ok(())
}
