//! `election-bench` (`just bench`): one run that measures, side by side on
//! this machine, what users of the election system meet: ingest on a freshly
//! migrated database driven from outside by wrk, how its rate holds while an
//! election grows to millions of reports, the CPU and memory every process
//! spends, the Redis memory of a ballot box (standalone and Cluster), the
//! seed article's PostgreSQL-only alternative, the raw ceilings of
//! PostgreSQL and Redis, the floor of one HTTP request per report
//! (`floor.rs`), the query service, the live stream at 10,000 cities
//! (`stream.rs`; alone with `--stream-only`) and reconcile. It prints one
//! table with each target and whether it is met.
//!
//! Everything runs against a database of its own (`election_bench`,
//! recreated for every ingest measurement, see `ingest.rs`) on
//! `DATABASE_URL`'s server, a private `redis-server` on a free port (and a
//! private 3-master Redis Cluster for its memory), with the release binaries
//! as child processes, so the figures include HTTP, process boundaries and
//! the real servers. Noise between runs is large on a shared 2-core machine
//! (docs/benchmarks.md): compare the figures of one run, not across runs.
//!
//! `election-bench reshard` is a separate measurement, not part of `just
//! bench`: moving a national counter's hash slot under load (`reshard.rs`).
//!
//! The bench fails on errors (an answer that is not 2xx, drift found by
//! reconcile), never on a missed target.

mod ceilings;
mod floor;
mod ingest;
mod procs;
mod query;
mod reshard;
mod stream;
mod table;
mod usage;
mod wrk;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use election_core::{ElectionId, Engine, Report, ReportLog};
use election_loadgen::{Plan, night};
use store_pg::PgLog;
use store_redis::{RedisOptions, RedisTally};

use crate::ingest::{Bench, Growth, PacedWriter, RedisTarget, Stage, Start, Throughput};
use crate::procs::{Database, RedisCluster, RedisProc, Service};
use crate::table::{Line, mib, ms, thousands};
use crate::usage::{Snapshot, Spent, Watched};

/// Measures the election system on this machine.
#[derive(Parser, Debug)]
#[command(name = "election-bench", about)]
struct Cli {
    /// PostgreSQL server to use (a database `election_bench` is recreated on
    /// it, again for every ingest measurement).
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
    /// Smaller sizes and shorter runs, for a quick look (figures are less
    /// stable).
    #[arg(long)]
    quick: bool,
    /// Seconds each wrk run of ingest lasts [default: 15; quick: 8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ingest_seconds: Option<u64>,
    /// Seconds each other fixed-duration measurement runs [default: 10;
    /// quick: 5].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: Option<u64>,
    /// Reports the growth curve goes up to [default: 2,000,000; quick:
    /// 200,000].
    #[arg(long)]
    growth_reports: Option<u64>,
    /// Longest time the growth curve may take, in seconds [default: 600;
    /// quick: 180].
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..))]
    growth_seconds: Option<u64>,
    /// Ballot boxes counted to measure Redis memory per box.
    #[arg(long, default_value_t = 20_000)]
    memory_reports: u64,
    /// Measure only the live stream (see `stream.rs`), nothing else.
    #[arg(long, conflicts_with = "bulk_only")]
    stream_only: bool,
    /// Measure only bulk reporting (batches of 100 on a fresh database).
    #[arg(long, conflicts_with = "sealing_only")]
    bulk_only: bool,
    /// Measure only what sealing costs ingest (512 connections on a fresh
    /// database: without, with, with and without a sealing reprocessor).
    #[arg(long, conflicts_with = "stream_only")]
    sealing_only: bool,
    /// Measure only what the shipped logging costs ingest (512 connections
    /// on a fresh database: `RUST_LOG=warn`, then the shipped `info` with
    /// JSON lines twice, then `warn` again).
    #[arg(long, conflicts_with_all = ["stream_only", "bulk_only", "sealing_only"])]
    logging_only: bool,
    /// Measure only the growth curve (64 connections from an empty database
    /// to `--growth-reports`): for comparing PostgreSQL servers or settings
    /// (`--database-url`).
    #[arg(long, conflicts_with_all = ["stream_only", "bulk_only", "sealing_only", "logging_only"])]
    growth_only: bool,
    /// Measure only the query service (`GET /totals` while ingest posts and
    /// alone, one report to many stream subscribers) on a fresh database.
    #[arg(long, conflicts_with_all = ["stream_only", "bulk_only", "sealing_only", "logging_only", "growth_only"])]
    query_only: bool,
    /// Measure only ingest at 512 connections on a fresh database and the
    /// floor of one HTTP request per report beside it (`floor.rs`).
    #[arg(long, conflicts_with_all = ["stream_only", "bulk_only", "sealing_only", "logging_only", "growth_only", "query_only"])]
    floor_only: bool,
    /// Stream subscribers [default: 5,000; quick: 1,000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stream_subscribers: Option<u64>,
    /// Cities of the stream's election.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    stream_cities: u64,
    /// Parties of the stream's election.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..100))]
    stream_parties: u64,
    /// Reports written per second while the stream is measured.
    #[arg(long, default_value_t = 1000)]
    stream_reports_per_second: u64,
    /// Seconds the stream is measured once every subscriber is connected
    /// [default: 20; quick: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stream_seconds: Option<u64>,
    /// A single measurement instead of the whole run.
    #[command(subcommand)]
    mode: Option<Mode>,
}

/// Measurements run on their own, outside `just bench`.
#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Moves the hash slot of a national counter of a large election to
    /// another master of a private Redis Cluster while a writer keeps
    /// counting: how long it takes and whether counting stalls (see
    /// `reshard.rs`).
    Reshard(reshard::ReshardArgs),
    /// The floor's do-nothing HTTP server (`floor.rs`), which the bench
    /// starts as a child process of its own.
    #[command(hide = true)]
    HttpFloor {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// Microseconds each answer is held.
        #[arg(long, default_value_t = 0)]
        hold_us: u64,
        /// Inside ingest's HTTP layers (a measurement by hand).
        #[arg(long)]
        layers: bool,
    },
}

/// The sizes of one run, from the command line.
struct Sizes {
    ingest: Duration,
    fixed: Duration,
    growth_reports: u64,
    growth_limit: Duration,
    memory_reports: u64,
    subscribers: usize,
    stream: stream::Plan,
    reconcile_boxes: usize,
}

impl Sizes {
    fn of(cli: &Cli) -> Sizes {
        let pick = |full: u64, quick: u64| if cli.quick { quick } else { full };
        Sizes {
            ingest: Duration::from_secs(cli.ingest_seconds.unwrap_or(pick(15, 8))),
            fixed: Duration::from_secs(cli.seconds.unwrap_or(pick(10, 5))),
            growth_reports: cli.growth_reports.unwrap_or(pick(2_000_000, 200_000)),
            growth_limit: Duration::from_secs(cli.growth_seconds.unwrap_or(pick(600, 180))),
            memory_reports: cli.memory_reports,
            subscribers: if cli.quick { 1_000 } else { 5_000 },
            stream: stream::Plan {
                cities: usize::try_from(cli.stream_cities).unwrap_or(usize::MAX),
                parties: usize::try_from(cli.stream_parties).unwrap_or(usize::MAX),
                reports_per_second: cli.stream_reports_per_second as f64,
                subscribers: usize::try_from(cli.stream_subscribers.unwrap_or(pick(5_000, 1_000)))
                    .unwrap_or(usize::MAX),
                seconds: Duration::from_secs(cli.stream_seconds.unwrap_or(pick(20, 10))),
            },
            reconcile_boxes: if cli.quick { 20_000 } else { 100_000 },
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.mode {
        Some(Mode::Reshard(args)) => return reshard::run(args),
        Some(Mode::HttpFloor {
            listen,
            hold_us,
            layers,
        }) => {
            return floor::serve(listen, Duration::from_micros(*hold_us), *layers);
        }
        None => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(cli))
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    let sizes = Sizes::of(&cli);
    let open_files = usage::raise_open_files()?;
    let redis = RedisProc::start()?;
    let standalone = RedisTarget {
        url: redis.url(),
        nodes: vec![redis.url()],
        pid: Some(redis.pid()),
    };
    let bench = Bench {
        admin_url: cli.database_url.clone(),
        bin_dir: cli.bin_dir.clone(),
        scripts: wrk::Scripts::write(&std::env::temp_dir())?,
        ticks_per_second: usage::clock_ticks()?,
    };
    eprintln!(
        "bench: database election_bench, private redis on {}, wrk scripts {}, open files {}",
        redis.url(),
        bench.scripts.report.display(),
        open_files.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
    );
    let result = if cli.stream_only {
        stream_lines(&bench, &standalone, &sizes).await
    } else if cli.bulk_only {
        bulk_run(&bench, &standalone, &sizes).await
    } else if cli.sealing_only {
        comparison_run(&bench, &standalone, &sizes, Comparison::Sealing).await
    } else if cli.logging_only {
        comparison_run(&bench, &standalone, &sizes, Comparison::Logging).await
    } else if cli.growth_only {
        growth_run(&bench, &standalone, &sizes).await
    } else if cli.query_only {
        query_run(&bench, &standalone, &sizes).await
    } else if cli.floor_only {
        floor_run(&bench, &standalone, &sizes).await
    } else {
        measure(&bench, &standalone, &sizes).await
    };
    bench.scripts.remove();
    let lines = result?;
    table::print(&lines);
    Ok(())
}

async fn measure(bench: &Bench, redis: &RedisTarget, sizes: &Sizes) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();

    // --- Ingest on a fresh database, wrk outside -----------------------------
    let at64 = ingest::throughput(bench, redis, Start::Fresh, 64, sizes.ingest).await?;
    log_run("fresh", &at64);
    let at512 = ingest::throughput(bench, redis, Start::Fresh, 512, sizes.ingest).await?;
    log_run("fresh", &at512);
    lines.push(throughput_line(&at64, None));
    lines.push(throughput_line(&at512, Some((15_000.0, 50.0))));
    lines.push(sealing_comparison(bench, redis, sizes, &at512).await?);
    lines.push(logging_comparison(bench, redis, sizes, &at512).await?);
    for connections in [64, 512] {
        let analyzed =
            ingest::throughput(bench, redis, Start::Analyzed, connections, sizes.ingest).await?;
        log_run("analysed", &analyzed);
        lines.push(analyzed_line(&analyzed));
    }
    lines.extend(cpu_lines(&at512));
    lines.extend(floor_lines(bench, &at512, sizes.ingest).await?);

    // --- Bulk reporting: batches of 100 on a fresh database -------------------
    lines.extend(bulk_run(bench, redis, sizes).await?);

    // --- The seed's PostgreSQL-only alternative and the ceilings ---------------
    let database = Database::recreate(&bench.admin_url, "election_bench")?;
    lines.extend(pg_only_lines(&database, &at64, sizes.fixed).await?);
    lines.extend(ceiling_lines(&database, &redis.url, &at64, sizes.fixed).await?);
    drop(database);

    // --- How the rate holds while an election grows ---------------------------
    lines.extend(growth_run(bench, redis, sizes).await?);

    // --- Redis memory per ballot box -----------------------------------------
    lines.extend(memory_lines(bench, redis, sizes.memory_reports).await?);

    // --- Query and reconcile -----------------------------------------------------
    let stage = Stage::fresh(bench, redis).await?;
    lines.extend(query_lines(bench, &stage, redis, sizes).await?);
    lines.push(reconcile_line(bench, &stage, &redis.url, sizes.reconcile_boxes).await?);
    drop(stage);

    // --- The live stream at scale (last: it flushes Redis) ----------------------
    lines.extend(stream_lines(bench, redis, sizes).await?);
    Ok(lines)
}

/// The live stream: bytes per subscriber, query CPU per refresh, delay to
/// the last subscriber.
async fn stream_lines(
    bench: &Bench,
    redis: &RedisTarget,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Line>> {
    let figures = stream::measure(
        &bench.bin_dir,
        &bench.admin_url,
        &redis.url,
        redis.pid,
        bench.ticks_per_second,
        sizes.stream,
    )
    .await?;
    Ok(stream::lines(&sizes.stream, &figures))
}

/// Reports per bulk request, and connections posting them: 32 requests of
/// 100 in flight keep every batch of the group commit full.
const BULK_BATCH: usize = 100;
const BULK_CONNECTIONS: usize = 32;

/// Reports per second of a run: requests per second times reports per
/// request (every report of every request was checked 2xx).
fn reports_per_second(run: &Throughput) -> f64 {
    run.posted.summary.per_second * run.batch as f64
}

/// What a `--sealing-only` or `--logging-only` run compares.
#[derive(Clone, Copy, Debug)]
enum Comparison {
    /// A sealing reprocessor beside ingest ([`sealing_comparison`]).
    Sealing,
    /// Ingest logging as shipped ([`logging_comparison`]).
    Logging,
}

/// Ingest at 512 connections on a fresh database as the other measurements
/// run it, then `comparison`'s runs (with, with, without).
async fn comparison_run(
    bench: &Bench,
    redis: &RedisTarget,
    sizes: &Sizes,
    comparison: Comparison,
) -> anyhow::Result<Vec<Line>> {
    let first = ingest::throughput(bench, redis, Start::Fresh, 512, sizes.ingest).await?;
    log_run("fresh", &first);
    let line = match comparison {
        Comparison::Sealing => sealing_comparison(bench, redis, sizes, &first).await?,
        Comparison::Logging => logging_comparison(bench, redis, sizes, &first).await?,
    };
    Ok(vec![throughput_line(&first, None), line])
}

/// What sealing costs, measured in the order without, with, with, without
/// (`first_without` is the first run, already made): this machine's speed
/// drifts by tens of percent within minutes, and one run of each, one
/// after the other, judged the drift as often as the sealer (+15.8 %,
/// +5.3 % and −29.2 % in three full runs one day, of services that
/// differed only in their listen backlog). Comparing the sums of the two
/// pairs cancels a drift that is steady over the four runs.
async fn sealing_comparison(
    bench: &Bench,
    redis: &RedisTarget,
    sizes: &Sizes,
    first_without: &Throughput,
) -> anyhow::Result<Line> {
    let mut with = Vec::new();
    for _ in 0..2 {
        let run = ingest::throughput_sealing(bench, redis, 512, sizes.ingest).await?;
        log_run("fresh, sealing", &run);
        with.push(run);
    }
    let last_without = ingest::throughput(bench, redis, Start::Fresh, 512, sizes.ingest).await?;
    log_run("fresh, again without sealing", &last_without);
    Ok(sealing_line(
        [first_without, &last_without],
        [&with[0], &with[1]],
    ))
}

/// What the logging of docs/systemd/common.env.example (`RUST_LOG=info`,
/// JSON: an access-log line per request) costs ingest against the
/// measurements' `RUST_LOG=warn`, in the order warn, shipped, shipped, warn
/// (`first_quiet` is the first run, already made), as for sealing. The
/// lines go to a file in the temporary directory, removed after each run.
async fn logging_comparison(
    bench: &Bench,
    redis: &RedisTarget,
    sizes: &Sizes,
    first_quiet: &Throughput,
) -> anyhow::Result<Line> {
    let mut logged = Vec::new();
    let mut log_bytes = 0;
    for _ in 0..2 {
        let file =
            std::env::temp_dir().join(format!("election-bench-ingest-{}.log", std::process::id()));
        let run = ingest::throughput_logged(bench, redis, 512, sizes.ingest, file.clone()).await;
        log_bytes += std::fs::metadata(&file).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(&file);
        let run = run?;
        log_run("fresh, shipped logging", &run);
        logged.push(run);
    }
    let last_quiet = ingest::throughput(bench, redis, Start::Fresh, 512, sizes.ingest).await?;
    log_run("fresh, again logging at warn", &last_quiet);
    let recorded: u64 = logged.iter().map(|run| run.recorded).sum();
    Ok(logging_line(
        [first_quiet, &last_quiet],
        [&logged[0], &logged[1]],
        log_bytes as f64 / recorded.max(1) as f64,
    ))
}

/// The change in reports per second of the two runs of `variant` against the
/// two of `baseline`, from their sums (a fraction: −0.1 is 10 % fewer), as
/// the order baseline, variant, variant, baseline measures it.
fn rate_change(baseline: [&Throughput; 2], variant: [&Throughput; 2]) -> f64 {
    let sum = |runs: [&Throughput; 2]| -> f64 {
        runs.iter().map(|run| run.posted.summary.per_second).sum()
    };
    sum(variant) / sum(baseline).max(1.0) - 1.0
}

fn logging_line(quiet: [&Throughput; 2], logged: [&Throughput; 2], bytes_per_report: f64) -> Line {
    let rate = |run: &Throughput| run.posted.summary.per_second;
    let ingest = |run: &Throughput| usage::micros_per(run.spent.ingest, run.recorded);
    Line::info(
        format!(
            "ingest logging as shipped (RUST_LOG=info, LOG_FORMAT=json: an access-log line per \
             request, to a file) against RUST_LOG=warn, fresh database, wrk {} connections, runs \
             in the order warn, shipped, shipped, warn",
            logged[0].connections
        ),
        format!(
            "{} and {} reports/s shipped, {} and {} at warn: {:+.1}% shipped; ingest CPU per \
             report {:.1} and {:.1} µs shipped, {:.1} and {:.1} at warn; {:.0} bytes of log per \
             report",
            thousands(rate(logged[0])),
            thousands(rate(logged[1])),
            thousands(rate(quiet[0])),
            thousands(rate(quiet[1])),
            100.0 * rate_change(quiet, logged),
            ingest(logged[0]),
            ingest(logged[1]),
            ingest(quiet[0]),
            ingest(quiet[1]),
            bytes_per_report
        ),
    )
}

/// Bulk reporting on a fresh database, and its lines.
async fn bulk_run(bench: &Bench, redis: &RedisTarget, sizes: &Sizes) -> anyhow::Result<Vec<Line>> {
    let bulk = ingest::throughput_of(
        bench,
        redis,
        Start::Fresh,
        BULK_CONNECTIONS,
        BULK_BATCH,
        sizes.ingest,
    )
    .await?;
    log_run("fresh bulk", &bulk);
    Ok(bulk_lines(&bulk))
}

/// The bulk run: its rate against the target, and its machine CPU per report.
fn bulk_lines(run: &Throughput) -> Vec<Line> {
    let rate = reports_per_second(run);
    vec![
        Line::judged(
            format!(
                "ingest bulk (report-batches of {}), fresh database, wrk {} connections",
                run.batch, run.connections
            ),
            format!(
                "{} reports/s ({} requests/s, p50 {:.1} ms, p99 {:.1} ms per request)",
                thousands(rate),
                thousands(run.posted.summary.per_second),
                ms(run.posted.summary.p50),
                ms(run.posted.summary.p99)
            ),
            "≥ 50,000 reports/s".to_owned(),
            rate >= 50_000.0,
        ),
        Line::info(
            "CPU per report in bulk: the machine (ingest, PostgreSQL, Redis, wrk)",
            format!(
                "{:.1} µs (ingest {:.1}, PostgreSQL {:.1}, Redis {:.1}, wrk {:.1})",
                run.machine_micros(),
                usage::micros_per(run.spent.ingest, run.recorded),
                usage::micros_per(run.spent.postgres, run.recorded),
                usage::micros_per(run.spent.redis, run.recorded),
                usage::micros_per(run.posted.cpu, run.recorded)
            ),
        ),
    ]
}

fn log_run(start: &str, run: &Throughput) {
    let micros = |spent| usage::micros_per(spent, run.recorded);
    eprintln!(
        "bench: ingest {start} {} connections: {:.0} reports/s, p99 {:.1} ms; \
         CPU per report: ingest {:.0} µs, postgres {:.0} µs, redis {:.0} µs, wrk {:.1} µs",
        run.connections,
        reports_per_second(run),
        ms(run.posted.summary.p99),
        micros(run.spent.ingest),
        micros(run.spent.postgres),
        micros(run.spent.redis),
        micros(run.posted.cpu),
    );
}

/// `8,773 reports/s, p50 7.1 ms, p99 12.2 ms`, and how many answers were
/// 202 (recorded, left to the reprocessor) if any.
fn rate_text(run: &Throughput) -> String {
    let summary = &run.posted.summary;
    let mut text = format!(
        "{} reports/s, p50 {:.1} ms, p99 {:.1} ms",
        thousands(summary.per_second),
        ms(summary.p50),
        ms(summary.p99)
    );
    let failed = run.posted.summary.socket.failed_connections();
    if failed > 0 {
        text += &format!(
            " ({} connections refused or reset before their request went out)",
            thousands(failed as f64)
        );
    }
    if run.posted.answers.pending > 0 {
        text += &format!(
            " ({} of {} answered 202: left pending)",
            thousands(run.posted.answers.pending as f64),
            thousands(run.posted.answers.ok as f64)
        );
    }
    text
}

/// Ingest on a fresh database; `target` is reports/s and p99 in ms.
fn throughput_line(run: &Throughput, target: Option<(f64, f64)>) -> Line {
    let what = format!(
        "ingest end to end (HTTP → PostgreSQL → Redis), fresh database, wrk {} connections",
        run.connections
    );
    match target {
        Some((rate, p99)) => Line::judged(
            what,
            rate_text(run),
            format!("≥ {} reports/s, p99 ≤ {p99:.0} ms", thousands(rate)),
            run.posted.summary.per_second >= rate && ms(run.posted.summary.p99) <= p99,
        ),
        None => Line::info(what, rate_text(run)),
    }
}

/// What sealing costs ingest: two fresh runs with a sealing reprocessor
/// beside it against two without, in the order without, with, with,
/// without (see [`sealing_comparison`]).
fn sealing_line(without: [&Throughput; 2], with: [&Throughput; 2]) -> Line {
    let rate = |run: &Throughput| run.posted.summary.per_second;
    let sealer = |run: &Throughput| usage::micros_per(run.spent.sealer, run.recorded);
    let postgres = |run: &Throughput| usage::micros_per(run.spent.postgres, run.recorded);
    let cost = -rate_change(without, with);
    let last = with[1];
    Line::judged(
        format!(
            "ingest with the reprocessor sealing (--seal-interval 1s), fresh database, wrk {} connections, \
             runs in the order without, with, with, without",
            last.connections
        ),
        format!(
            "{} and {} reports/s with, {} and {} without: {:+.1}% with; the last run with: {}; \
             {} of {} reports sealed when wrk stopped; CPU per report recorded: the sealing \
             reprocessor {:.1} and {:.1} µs, PostgreSQL {:.1} and {:.1} µs with, {:.1} and {:.1} without",
            thousands(rate(with[0])),
            thousands(rate(with[1])),
            thousands(rate(without[0])),
            thousands(rate(without[1])),
            -100.0 * cost,
            rate_text(last),
            thousands(last.sealed.unwrap_or(0) as f64),
            thousands(last.recorded as f64),
            sealer(with[0]),
            sealer(with[1]),
            postgres(with[0]),
            postgres(with[1]),
            postgres(without[0]),
            postgres(without[1]),
        ),
        "≤ 5% fewer reports/s than without sealing",
        cost <= 0.05,
    )
}

fn analyzed_line(run: &Throughput) -> Line {
    Line::info(
        format!(
            "for comparison: the same after 5,000 warm-up reports and ANALYZE (the old bench's condition), {} connections",
            run.connections
        ),
        rate_text(run),
    )
}

/// Issue 12's target for the machine's CPU per report at saturation, in µs:
/// judged on the 512-connection run, and what the floor's lines leave of it.
const CPU_TARGET_MICROS: f64 = 75.0;

/// Ingest at 512 connections on a fresh database, its CPU lines, and the
/// floor after it (`--floor-only`).
async fn floor_run(bench: &Bench, redis: &RedisTarget, sizes: &Sizes) -> anyhow::Result<Vec<Line>> {
    let at512 = ingest::throughput(bench, redis, Start::Fresh, 512, sizes.ingest).await?;
    log_run("fresh", &at512);
    let mut lines = vec![throughput_line(&at512, Some((15_000.0, 50.0)))];
    lines.extend(cpu_lines(&at512));
    lines.extend(floor_lines(bench, &at512, sizes.ingest).await?);
    Ok(lines)
}

/// The floor of one HTTP request per report beside ingest's run `run`:
/// answered at once, and held for `run`'s median latency (so the server
/// answers about as many requests a second as ingest did, each parked and
/// woken as ingest's are), with what each leaves of the 75 µs target.
async fn floor_lines(
    bench: &Bench,
    run: &Throughput,
    seconds: Duration,
) -> anyhow::Result<Vec<Line>> {
    let at_once = floor::measure(bench, run.connections, Duration::ZERO, seconds).await?;
    let median = run.posted.summary.p50;
    let held = floor::measure(bench, run.connections, median, seconds).await?;
    Ok(vec![floor_line(&at_once, run), floor_line(&held, run)])
}

/// One floor run's line, against the machine's CPU per report in `run`.
fn floor_line(floor: &floor::Floor, run: &Throughput) -> Line {
    let machine = floor.machine_micros();
    let held = if floor.hold.is_zero() {
        "answered at once".to_owned()
    } else {
        format!(
            "each answer held {:.1} ms (ingest's median)",
            ms(floor.hold)
        )
    };
    eprintln!(
        "bench: HTTP floor {} connections, {held}: {:.0} requests/s, p99 {:.1} ms; \
         CPU per request: server {:.1} µs, wrk {:.1} µs",
        floor.connections,
        floor.per_second(),
        ms(floor.posted.summary.p99),
        floor.server_micros(),
        floor.client_micros(),
    );
    Line::info(
        format!(
            "floor: one HTTP request per report on ingest's stack, no work (a server that reads the report and answers), {} connections, {held}",
            floor.connections
        ),
        format!(
            "{} requests/s; machine CPU {machine:.1} µs per request (server {:.1}, wrk {:.1}): {:.0}% of the machine's {:.1} µs per report in ingest's run; {:.1} µs of the {CPU_TARGET_MICROS} µs target left for the rest",
            thousands(floor.per_second()),
            floor.server_micros(),
            floor.client_micros(),
            100.0 * machine / run.machine_micros(),
            run.machine_micros(),
            CPU_TARGET_MICROS - machine,
        ),
    )
}

/// CPU per report of each process and of the machine, and resident memory,
/// during the 512-connection run.
fn cpu_lines(run: &Throughput) -> Vec<Line> {
    let micros = |spent| usage::micros_per(spent, run.recorded);
    let at = format!("at {} connections", run.connections);
    let machine = run.machine_micros();
    vec![
        Line::info(
            format!("CPU per report {at}: election-ingest"),
            format!("{:.1} µs", micros(run.spent.ingest)),
        ),
        Line::info(
            format!(
                "CPU per report {at}: PostgreSQL (the whole server: every postgres process, any other client included)"
            ),
            format!("{:.1} µs", micros(run.spent.postgres)),
        ),
        Line::info(
            format!("CPU per report {at}: redis-server (the bench's)"),
            format!("{:.1} µs", micros(run.spent.redis)),
        ),
        Line::info(
            format!("CPU per report {at}: wrk (the client, 2 threads)"),
            format!("{:.1} µs", micros(run.posted.cpu)),
        ),
        Line::judged(
            format!("machine CPU per report {at} (the four above)"),
            format!(
                "{machine:.1} µs ({} reports recorded)",
                thousands(run.recorded as f64)
            ),
            format!("≤ {CPU_TARGET_MICROS} µs"),
            machine <= CPU_TARGET_MICROS,
        ),
        Line::info(
            format!("resident memory at the end of the run {at}"),
            format!(
                "election-ingest {}, redis-server {}, wrk {}",
                mib(run.rss.ingest),
                mib(run.rss.redis),
                mib(run.rss.wrk)
            ),
        ),
    ]
}

async fn pg_only_lines(
    database: &Database,
    at64: &Throughput,
    seconds: Duration,
) -> anyhow::Result<Vec<Line>> {
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
    let ratio = at64.posted.summary.per_second / pg_only;
    Ok(vec![
        Line::info(
            "the seed's PostgreSQL-only alternative (SELECT … FOR UPDATE + UPDATE per counter, 1 txn per report), 64 connections, no HTTP",
            format!("{} reports/s", thousands(pg_only)),
        ),
        Line::judged(
            "ingest at 64 connections (fresh database) / the PostgreSQL-only alternative",
            format!("{ratio:.1}×"),
            "≥ 25×",
            ratio >= 25.0,
        ),
    ])
}

async fn ceiling_lines(
    database: &Database,
    redis_url: &str,
    at64: &Throughput,
    seconds: Duration,
) -> anyhow::Result<Vec<Line>> {
    let ingest = at64.posted.summary.per_second;
    let pg_ceiling = tokio::task::spawn_blocking({
        let url = database.url().to_owned();
        move || ceilings::pg_insert(&url, 8, 100, seconds)
    })
    .await??;
    let redis_ceiling = tokio::task::spawn_blocking({
        let url = redis_url.to_owned();
        move || ceilings::redis_scripts(&url, 8, 16, 8, seconds)
    })
    .await??;
    Ok(vec![
        Line::info(
            "ceiling: PostgreSQL multi-row INSERT, 100 reports (+4 party rows each) per txn, 8 connections",
            format!(
                "{} reports/s (ingest at 64 reaches {:.0}% of it)",
                thousands(pg_ceiling),
                100.0 * ingest / pg_ceiling
            ),
        ),
        Line::info(
            "ceiling: Redis, marker + 8 INCRBY script, pipelined 16, 8 connections",
            format!(
                "{} scripts/s (ingest at 64 uses {:.0}% of it)",
                thousands(redis_ceiling),
                100.0 * ingest / redis_ceiling
            ),
        ),
    ])
}

/// The growth curve, printed window by window, and its line.
async fn growth_run(
    bench: &Bench,
    redis: &RedisTarget,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Line>> {
    let growth = ingest::growth(bench, redis, sizes.growth_reports, sizes.growth_limit).await?;
    print_growth(&growth);
    Ok(vec![growth_line(&growth)])
}

fn print_growth(growth: &Growth) {
    println!();
    println!(
        "Growth: wrk 64 connections on a fresh database, reports/s in each {}-s window:",
        ingest::WINDOW.as_secs()
    );
    for (index, window) in growth.windows.iter().enumerate() {
        println!(
            "  window {:>3}: {:>8} reports/s, {:>10} recorded",
            index + 1,
            thousands(window.rate()),
            thousands(window.recorded as f64)
        );
    }
    println!(
        "  {} rows in reports once wrk stopped (the id sequence read {} at the last window's end)",
        thousands(growth.rows as f64),
        thousands(growth.recorded as f64)
    );
}

fn growth_line(growth: &Growth) -> Line {
    let target = format!(
        "every window ≥ 80% of the best, up to {} reports",
        thousands(growth.target as f64)
    );
    let what = format!(
        "growth: ingest rate in each {}-s window, wrk 64 connections, fresh database",
        ingest::WINDOW.as_secs()
    );
    let Some((best, worst)) = growth.best_and_worst() else {
        return Line::judged(what, "no whole window", target, false);
    };
    let share = 100.0 * worst / best;
    let reached = growth.recorded >= growth.target;
    let mut result = format!(
        "{} windows up to {} reports: best {}/s, worst {}/s = {share:.0}% of the best",
        growth.windows.len(),
        thousands(growth.recorded as f64),
        thousands(best),
        thousands(worst)
    );
    if !reached {
        result += " (stopped at the time limit before the target)";
    }
    Line::judged(what, result, target, reached && share >= 80.0)
}

async fn memory_lines(
    bench: &Bench,
    standalone: &RedisTarget,
    reports: u64,
) -> anyhow::Result<Vec<Line>> {
    let single = ingest::memory(bench, standalone, reports).await?;
    let cluster = tokio::task::block_in_place(RedisCluster::start)?;
    let clustered = RedisTarget {
        url: cluster.url(),
        nodes: cluster.node_urls(),
        pid: None,
    };
    let spread = ingest::memory(bench, &clustered, reports).await?;
    let line = |what: &str, memory: &ingest::Memory| {
        Line::info(
            format!("Redis memory per ballot box (4 parties), {what}"),
            format!(
                "{} bytes (used_memory +{:.1} MiB for {} boxes)",
                thousands(memory.per_box()),
                memory.bytes as f64 / (1024.0 * 1024.0),
                thousands(memory.boxes as f64)
            ),
        )
    };
    Ok(vec![
        line("standalone", &single),
        line(
            "Redis Cluster of 3 masters (summed over the masters)",
            &spread,
        ),
    ])
}

/// `--query-only`: the query lines on a fresh stage of their own.
async fn query_run(bench: &Bench, redis: &RedisTarget, sizes: &Sizes) -> anyhow::Result<Vec<Line>> {
    let stage = Stage::fresh(bench, redis).await?;
    query_lines(bench, &stage, redis, sizes).await
}

/// The rate of the query measurement's background writer, reports per
/// second.
const WRITER_RATE: u32 = 2_000;

async fn query_lines(
    bench: &Bench,
    stage: &Stage,
    redis: &RedisTarget,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Line>> {
    let query_service = Service::start(
        &bench.bin_dir,
        "election-query",
        &["serve"],
        stage.database.url(),
        &redis.url,
    )
    .await?;
    // The writer: wrk posting new ballot boxes at a steady 2,000 reports/s
    // (`pace.lua`). It was the in-process load generator until 2026-12-02,
    // which spent ~90 µs of CPU per report at this rate, twice wrk's, out of
    // the query's share.
    let writer = PacedWriter::start(
        bench,
        stage,
        "bench-query",
        WRITER_RATE,
        sizes.fixed * 4 + Duration::from_secs(60),
    )
    .await?;
    // `GET /totals` as the bench's wrk asks: no compression.
    let plain_totals = || {
        query::hammer(
            query_service.base(),
            "bench-query",
            "totals",
            None,
            64,
            sizes.fixed,
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (totals, cpu_line) =
        while_writing(bench, stage, redis, &query_service, writer, plain_totals()).await?;
    let mut lines = vec![
        Line::judged(
            format!(
                "query: GET /totals, wrk 64 connections, while ingest posts {} reports/s",
                thousands(f64::from(WRITER_RATE))
            ),
            format!(
                "{} requests/s, p50 {:.2} ms, p99 {:.2} ms ({} reports/s recorded meanwhile)",
                thousands(totals.rate.per_second),
                ms(totals.rate.p50),
                ms(totals.rate.p99),
                thousands(totals.written)
            ),
            "≥ 30,000 requests/s, p99 ≤ 5 ms",
            totals.rate.per_second >= 30_000.0 && ms(totals.rate.p99) <= 5.0,
        ),
        cpu_line,
    ];
    let totals = totals.rate;
    // The same with the machine to itself: what the query service does when
    // reading is all that happens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alone = plain_totals().await?;
    lines.push(Line::info(
        "query: GET /totals, wrk 64 connections, nothing else running",
        format!(
            "{} requests/s, p50 {:.2} ms, p99 {:.2} ms ({:.2}× the rate while ingest runs)",
            thousands(alone.per_second),
            ms(alone.p50),
            ms(alone.p99),
            alone.per_second / totals.per_second
        ),
    ));
    lines.extend(browser_lines(query_service.base(), sizes).await?);
    lines.push(fanout_line(stage, &query_service, sizes).await?);
    Ok(lines)
}

/// `GET /totals` and `GET /cities` as browsers and CDNs ask: compression
/// accepted, on the national totals (under 1 KiB: answered plain) and on
/// the city list (compressed once per version; docs/benchmarks.md, "Large
/// bodies compressed once per version").
async fn browser_lines(base: &str, sizes: &Sizes) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();
    for resource in ["totals", "cities"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let asked = query::hammer(
            base,
            "bench-query",
            resource,
            Some(query::BROWSER_ENCODINGS),
            64,
            sizes.fixed,
        )
        .await?;
        let (encoding, sent, plain) =
            query::encoded_size(base, "bench-query", resource, query::BROWSER_ENCODINGS).await?;
        lines.push(Line::info(
            format!(
                "query: GET /{resource} as browsers ask (Accept-Encoding: {}), wrk 64 connections, nothing else running",
                query::BROWSER_ENCODINGS
            ),
            format!(
                "{} requests/s, p50 {:.2} ms, p99 {:.2} ms; answered {}, {} bytes ({} plain)",
                thousands(asked.per_second),
                ms(asked.p50),
                ms(asked.p99),
                encoding.as_deref().unwrap_or("plain"),
                thousands(sent as f64),
                thousands(plain as f64)
            ),
        ));
    }
    Ok(lines)
}

/// One new report to every stream subscriber: how long until the last has it.
async fn fanout_line(
    stage: &Stage,
    query_service: &Service,
    sizes: &Sizes,
) -> anyhow::Result<Line> {
    let stream = query::stream_fanout(
        &stage.pool,
        query_service.base(),
        stage.ingest.base(),
        "bench-stream",
        sizes.subscribers,
    )
    .await?;
    Ok(Line::info(
        format!(
            "query: stream, {} subscribers, one new report",
            sizes.subscribers
        ),
        format!(
            "all {} got it: p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms after the post",
            stream.received,
            ms(stream.p50),
            ms(stream.p99),
            ms(stream.max)
        ),
    ))
}

async fn reconcile_line(
    bench: &Bench,
    stage: &Stage,
    redis_url: &str,
    boxes: usize,
) -> anyhow::Result<Line> {
    let election = ElectionId::parse("bench-reconcile")?;
    fill_directly(&stage.pool, redis_url, &election, boxes).await?;
    let started = Instant::now();
    let output = tokio::process::Command::new(format!("{}/election-reprocessor", bench.bin_dir))
        .args(["reconcile", "--election", election.as_str()])
        .env("DATABASE_URL", stage.database.url())
        .env("REDIS_URL", redis_url)
        .output()
        .await
        .context("running election-reprocessor reconcile")?;
    let took = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "reconcile found drift or failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(Line::info(
        format!(
            "reconcile: {} ballot boxes × 4 parties, exact",
            thousands(boxes as f64)
        ),
        format!("{:.2} s", took.as_secs_f64()),
    ))
}

/// A rate measured while the paced writer posted, and the reports per
/// second recorded meanwhile.
struct WhileWriting {
    rate: query::Rate,
    written: f64,
}

/// Runs `measure` while `writer` posts, then stops the writer, and returns
/// what was measured with a line saying what each process spent meanwhile:
/// the ingest side at a steady rate, where a batch holds a few reports and
/// per-batch costs dominate, takes its share of the same two cores.
async fn while_writing(
    bench: &Bench,
    stage: &Stage,
    redis: &RedisTarget,
    query_service: &Service,
    writer: PacedWriter,
    measure: impl Future<Output = anyhow::Result<query::Rate>>,
) -> anyhow::Result<(WhileWriting, Line)> {
    let watched = Watched {
        ingest: stage.ingest.pid(),
        redis: redis.pid,
        sealer: None,
    };
    let recorded_before = stage.recorded()?;
    let before = Snapshot::take(watched)?;
    let query_before = usage::process_ticks(query_service.pid());
    let started = Instant::now();
    let rate = measure.await?;
    let window = started.elapsed();
    let after = Snapshot::take(watched)?;
    let query_spent = usage::ticks_to_duration(
        usage::process_ticks(query_service.pid()).saturating_sub(query_before),
        bench.ticks_per_second,
    );
    let recorded = stage.recorded()? - recorded_before;
    let posted = writer.stop().await?;
    let spent = Spent::between(before, after, bench.ticks_per_second);
    let written = recorded as f64 / window.as_secs_f64();
    let cores = |spent: Duration| spent.as_secs_f64() / window.as_secs_f64();
    let writer_per_report = usage::micros_per(posted.cpu, posted.summary.requests);
    let line = Line::info(
        format!(
            "query while ingest posts {} reports/s: CPU of each process in that window",
            thousands(f64::from(WRITER_RATE))
        ),
        format!(
            "the query {:.2} cores; the ingest side {:.2} cores: election-ingest {:.0} µs per report, \
             PostgreSQL {:.0} µs, redis-server {:.0} µs (its reads by the query included), \
             the writer (wrk, paced) {:.0} µs ({} reports recorded)",
            cores(query_spent),
            cores(spent.ingest + spent.postgres + spent.redis) + writer_per_report * written / 1e6,
            usage::micros_per(spent.ingest, recorded),
            usage::micros_per(spent.postgres, recorded),
            usage::micros_per(spent.redis, recorded),
            writer_per_report,
            thousands(recorded as f64)
        ),
    );
    Ok((WhileWriting { rate, written }, line))
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
