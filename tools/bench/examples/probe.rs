//! Times the three storage steps of one group-commit batch (record in
//! PostgreSQL, apply in Redis, mark counted), to see where a batch's time
//! goes, and how much PostgreSQL CPU each report costs:
//!
//! `cargo run --release -p election-bench --example probe -- [BATCH] [BATCHES] [THREADS]`
//! with `PROBE_DATABASE_URL` (a migrated database; default
//! `postgres://postgres@127.0.0.1:5432/perfcheck`) and `PROBE_REDIS_URL`.
//!
//! Each thread reports its own election (fresh ballot boxes, revision 1), so
//! threads share no box. The PostgreSQL CPU is the user + system time of the
//! backends of the probe's database (read from `/proc`, so PostgreSQL must
//! run on this machine), divided by the reports recorded: it excludes the
//! WAL writer and checkpointer, which are shared with other databases.

use diesel::{QueryableByName, RunQueryDsl, sql_types};
use election_core::*;
use std::time::{Duration, Instant};

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = sql_types::Integer)]
    pid: i32,
}

/// CPU seconds (user + system) used so far by each client backend of the
/// probe's database (autovacuum workers come and go: they are left out).
fn backend_cpu(pool: &store_pg::PgPool) -> std::collections::HashMap<i32, f64> {
    let mut conn = pool.get().unwrap();
    let pids: Vec<Pid> = diesel::sql_query(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_type = 'client backend'",
    )
    .load(&mut conn)
    .unwrap();
    // Clock ticks per second on Linux.
    let tick = 100.0;
    let mut cpu = std::collections::HashMap::new();
    for &Pid { pid } in &pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name (which ends with ')'): utime is
            // the 14th field overall, stime the 15th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields[11].parse().unwrap();
            let stime: f64 = fields[12].parse().unwrap();
            cpu.insert(pid, (utime + stime) / tick);
        }
    }
    cpu
}

fn main() {
    let url = std::env::var("PROBE_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/perfcheck".into());
    let redis_url =
        std::env::var("PROBE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let arg = |n: usize, default: usize| -> usize {
        std::env::args()
            .nth(n)
            .map(|s| s.parse().unwrap())
            .unwrap_or(default)
    };
    let batch = arg(1, 32);
    let batches = arg(2, 200);
    let threads = arg(3, 1).max(1);
    let pool = store_pg::connect(&url, threads as u32 + 1, Duration::from_secs(5)).unwrap();
    // Open every connection before measuring, so their start-up is in the
    // "before" figure.
    {
        let conns: Vec<_> = (0..=threads).map(|_| pool.get().unwrap()).collect();
        drop(conns);
    }
    let log = store_pg::PgLog::new(pool.clone());
    let tally = store_redis::RedisTally::connect(
        &store_redis::parse_target(&redis_url).unwrap(),
        &store_redis::RedisOptions {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_size: threads + 1,
        },
    )
    .unwrap();
    let plan = election_loadgen::Plan {
        boxes: batch * batches,
        cities: 300,
        parties: 4,
        duplicates: 0.0,
        revisions: 0.0,
        seed: 3,
    };
    let posts = election_loadgen::night(&plan);
    let cpu_before = backend_cpu(&pool);
    let started = Instant::now();
    let results: Vec<(usize, Duration, Duration, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (log, tally, posts) = (&log, &tally, &posts);
                s.spawn(move || {
                    let e =
                        ElectionId::parse(&format!("probe-{}-{t}", std::process::id())).unwrap();
                    let (mut rec, mut app, mut mark) =
                        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
                    let mut n = 0;
                    for chunk in posts.chunks(batch).take(batches) {
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
                    (n, rec, app, mark)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let cpu_after = backend_cpu(&pool);
    let backends = cpu_after.len();
    let cpu: f64 = cpu_after
        .iter()
        .map(|(pid, after)| after - cpu_before.get(pid).copied().unwrap_or(0.0))
        .sum();
    let n: usize = results.iter().map(|r| r.0).sum();
    let k = (batches * threads) as f64;
    let ms = |f: fn(&(usize, Duration, Duration, Duration)) -> Duration| {
        results.iter().map(f).sum::<Duration>().as_secs_f64() * 1000.0 / k
    };
    println!(
        "batch {batch} x{threads} threads: {:.0} reports/s; per batch: record {:.2} ms, apply {:.2} ms, \
         mark {:.2} ms; PostgreSQL CPU {:.0} us/report ({backends} backends)",
        n as f64 / elapsed.as_secs_f64(),
        ms(|r| r.1),
        ms(|r| r.2),
        ms(|r| r.3),
        cpu * 1e6 / n as f64,
    );
}
