//! `election-loadgen`: parses the command line, posts the night, prints the
//! figures, and checks the live totals against what was acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use election_core::{ElectionId, Tally};
use election_loadgen::{Load, Outcome, Plan, Progress, national_drift, night, run};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use store_redis::{RedisOptions, RedisTally};

/// Simulated ballot boxes posting to election-ingest.
#[derive(Parser, Debug)]
#[command(name = "election-loadgen", version, about)]
struct Cli {
    /// election-ingest's base URL.
    #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:8080")]
    ingest_url: String,
    /// The election to post to.
    #[arg(long, env = "ELECTION")]
    election: String,
    /// A token for that election (`election-ingest token issue --election E`).
    #[arg(long, env = "ELECTION_TOKEN", hide_env_values = true)]
    token: String,
    /// Ballot boxes.
    #[arg(long, default_value_t = 10_000)]
    boxes: usize,
    /// Cities.
    #[arg(long, default_value_t = 100)]
    cities: usize,
    /// Parties per report.
    #[arg(long, default_value_t = 4)]
    parties: usize,
    /// Share of boxes that post their report twice.
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Share of boxes that send a correction (revision 2).
    #[arg(long, default_value_t = 0.02)]
    revisions: f64,
    /// Clients posting at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Posts per second (default: as fast as the service answers).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop starting posts after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Spread the posts over this many seconds on an election-night curve.
    #[arg(long, conflicts_with = "rate")]
    spread_secs: Option<f64>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Reports per request: 1 posts each report alone; N > 1 posts N at a
    /// time to the bulk endpoint (`/report-batches`, at most 1,000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// Redis to read the live totals from for the final check (plain GETs on the counters).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// How long to wait for pending (202) reports to be counted before declaring drift.
    #[arg(long, default_value_t = 30.0)]
    verify_timeout_secs: f64,
    /// Print a progress bar.
    #[arg(long)]
    progress: bool,
    /// Print one JSON line with the figures instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(go(cli)));
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("election-loadgen: {error:#}");
            std::process::exit(2);
        }
    }
}

async fn go(cli: Cli) -> anyhow::Result<bool> {
    let election = ElectionId::parse(&cli.election).context("--election")?;
    let plan = Plan {
        boxes: cli.boxes,
        cities: cli.cities,
        parties: cli.parties,
        duplicates: cli.duplicates,
        revisions: cli.revisions,
        seed: cli.seed,
    };
    let posts = Arc::new(night(&plan));
    let load = Load {
        ingest_url: cli.ingest_url.clone(),
        election: election.to_string(),
        token: cli.token.clone(),
        concurrency: cli.concurrency,
        rate: cli.rate,
        duration: cli.duration_secs.map(Duration::from_secs_f64),
        spread: cli.spread_secs.map(Duration::from_secs_f64),
        batch: usize::try_from(cli.batch).unwrap_or(1),
    };
    let progress = Arc::new(Progress::default());
    {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                progress.stop.store(true, Ordering::Relaxed);
            }
        });
    }
    // indicatif draws on stderr only when it is a terminal, so a redirected
    // run (the bench's logs) gets no bar codes.
    let bar = cli
        .progress
        .then(|| progress_bar(&progress, posts.len() as u64));
    let outcome = run(&load, Arc::clone(&posts), Arc::clone(&progress)).await?;
    if let Some(bar) = bar {
        bar.set_position(outcome.sent as u64);
        bar.finish();
        if !bar.is_hidden() {
            // The bar leaves the cursor on its line.
            eprintln!();
        }
    }
    print_outcome(&outcome, cli.json, cli.concurrency);

    let Some(redis_url) = cli.redis_url else {
        eprintln!("(no --redis-url: the live totals were not checked)");
        return Ok(true);
    };
    check_live_totals(&redis_url, &election, &outcome, cli.verify_timeout_secs).await
}

/// A bar of `len` reports that follows `progress` every 250 ms.
fn progress_bar(progress: &Arc<Progress>, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} reports, {rate}")
            .expect("a constant template")
            .with_key(
                "rate",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                },
            )
            .progress_chars("#>-"),
    );
    let ticker = bar.clone();
    let progress = Arc::clone(progress);
    tokio::spawn(async move {
        while !ticker.is_finished() {
            ticker.set_position(progress.answered.load(Ordering::Relaxed) as u64);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    bar
}

/// Prints the run's figures: a few lines, or one JSON object with `--json`.
fn print_outcome(outcome: &Outcome, json: bool, concurrency: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "sent": outcome.sent,
                "acknowledged": outcome.acknowledged_posts(),
                "statuses": outcome.statuses,
                "transport_errors": outcome.transport_errors,
                "seconds": outcome.elapsed.as_secs_f64(),
                "reports_per_second": outcome.throughput(),
                "p50_ms": ms(outcome.percentile(0.50)),
                "p90_ms": ms(outcome.percentile(0.90)),
                "p99_ms": ms(outcome.percentile(0.99)),
                "max_ms": ms(outcome.percentile(1.0)),
            })
        );
    } else {
        println!(
            "{} posts in {:.2} s: {:.0} reports/s with {} clients",
            outcome.sent,
            outcome.elapsed.as_secs_f64(),
            outcome.throughput(),
            concurrency
        );
        println!(
            "latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(outcome.percentile(0.50)),
            ms(outcome.percentile(0.90)),
            ms(outcome.percentile(0.99)),
            ms(outcome.percentile(1.0))
        );
        let statuses: Vec<String> = outcome
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        println!(
            "answers {}; no answer: {}",
            statuses.join(", "),
            outcome.transport_errors
        );
    }
}

/// Checks that the national counters in Redis equal what the acknowledged
/// reports add up to, polling until they do or `timeout_secs` passed (the
/// reprocessor may still be counting 202s); prints the drift if any.
async fn check_live_totals(
    redis_url: &str,
    election: &ElectionId,
    outcome: &Outcome,
    timeout_secs: f64,
) -> anyhow::Result<bool> {
    let target = store_redis::parse_target(redis_url).context("--redis-url")?;
    let tally = Arc::new(
        RedisTally::connect(
            &target,
            &RedisOptions {
                connect_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(10),
                pool_size: 1,
            },
        )
        .context("connecting to Redis")?,
    );
    let expected = outcome.expected_national();
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_secs);
    loop {
        let tally = Arc::clone(&tally);
        let election = election.clone();
        let snapshot = tokio::task::spawn_blocking(move || tally.snapshot(&election)).await??;
        let live = snapshot
            .totals
            .national()
            .into_iter()
            .map(|(party, n)| (party.to_string(), n))
            .collect();
        let drift = national_drift(&live, &expected);
        if drift.is_empty() {
            let total: i64 = expected.values().sum();
            println!(
                "check: the live totals equal the acknowledged reports exactly ({} boxes, {total} votes)",
                outcome.acknowledged.len()
            );
            return Ok(true);
        }
        if Instant::now() >= deadline {
            println!("check: DRIFT between the live totals and the acknowledged reports:");
            println!(
                "{:<12} {:>12} {:>12} {:>8}",
                "party", "live", "acknowledged", "diff"
            );
            for (party, live, expected) in drift {
                println!(
                    "{party:<12} {live:>12} {expected:>12} {:>8}",
                    live - expected
                );
            }
            if outcome.statuses.contains_key(&202) {
                println!("(some reports were answered 202: is election-reprocessor running?)");
            }
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn nonsense_is_refused() {
        let parsed = Cli::try_parse_from([
            "election-loadgen",
            "--election",
            "e",
            "--token",
            "t",
            "--boxes",
            "x",
        ]);
        assert!(parsed.is_err());
    }
}
