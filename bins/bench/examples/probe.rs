//! Times the three storage steps of one group-commit batch (record in
//! PostgreSQL, apply in Redis, mark counted) on one thread, to see where a
//! batch's time goes:
//!
//! `cargo run --release -p election-bench --example probe -- [BATCH] [BATCHES]`
//! with `PROBE_DATABASE_URL` (a migrated database; default
//! `postgres://postgres@127.0.0.1:5432/perfcheck`) and `PROBE_REDIS_URL`.

use election_core::*;
use std::time::{Duration, Instant};
fn main() {
    let url = std::env::var("PROBE_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/perfcheck".into());
    let redis_url =
        std::env::var("PROBE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pool = store_pg::connect(&url, 4, Duration::from_secs(2)).unwrap();
    let log = store_pg::PgLog::new(pool);
    let tally = store_redis::RedisTally::connect(
        &store_redis::parse_target(&redis_url).unwrap(),
        &store_redis::RedisOptions {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_size: 2,
        },
    )
    .unwrap();
    let e = ElectionId::parse(&format!("probe-{}", std::process::id())).unwrap();
    let plan = election_loadgen::Plan {
        boxes: 20000,
        cities: 300,
        parties: 4,
        duplicates: 0.0,
        revisions: 0.0,
        seed: 3,
    };
    let posts = election_loadgen::night(&plan);
    let batch = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(32usize);
    let (mut rec, mut app, mut mark) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    let mut n = 0;
    for chunk in posts.chunks(batch).take(
        std::env::args()
            .nth(2)
            .map(|s| s.parse().unwrap())
            .unwrap_or(200),
    ) {
        let reports: Vec<Report> = chunk
            .iter()
            .map(|p| Report::from_json(&e, p.body.as_bytes()).unwrap())
            .collect();
        let t = Instant::now();
        let r = log.record(&reports).unwrap();
        rec += t.elapsed();
        let fresh: Vec<Counting> = r
            .into_iter()
            .filter_map(|x| match x {
                Recorded::Fresh(c) => Some(c),
                _ => None,
            })
            .collect();
        let t = Instant::now();
        let _ = tally.apply(&fresh);
        app += t.elapsed();
        let t = Instant::now();
        log.mark_counted(&fresh.iter().map(|c| c.report_id).collect::<Vec<_>>())
            .unwrap();
        mark += t.elapsed();
        n += reports.len();
    }
    let k = 200.0;
    println!(
        "batch {batch}: {:.0} reports/s single-threaded; per batch: record {:.2} ms, apply {:.2} ms, mark {:.2} ms",
        n as f64 / started.elapsed().as_secs_f64(),
        rec.as_secs_f64() * 1000.0 / k,
        app.as_secs_f64() * 1000.0 / k,
        mark.as_secs_f64() * 1000.0 / k
    );
}
