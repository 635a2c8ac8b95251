//! How much the metrics cost on the hot path: two threads (a 2-core machine's
//! worth of request handlers) each counting N answers the way ingest does per
//! report, a counter by `status` and `code` plus a latency observation.
//!
//! `cargo run --release -p election-http --example metrics_contention [N]`
//! prints nanoseconds per request (both series) for the named API (what
//! every call site used before prometheus-client) and for handles made once
//! (what the hot paths use now). Figures:
//! docs/benchmarks.md, "Metrics on the hot path".

use std::sync::Arc;
use std::time::Instant;

use election_http::metrics::{EncodeLabelSet, LATENCY_BUCKETS, Registry};

const CODES: [(&str, &str); 4] = [
    ("201", "counted"),
    ("202", "pending"),
    ("200", "counted"),
    ("409", "conflict"),
];

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("N: a number"));
    let registry = Arc::new(Registry::for_service());
    let named = run(n, {
        let registry = Arc::clone(&registry);
        move |i| {
            let (status, code) = CODES[(i % 4) as usize];
            registry.inc(
                "ingest_responses_total",
                "Report requests answered.",
                &[("status", status), ("code", code)],
                1,
            );
            registry.observe(
                "ingest_request_duration_seconds",
                "Time from request to answer.",
                LATENCY_BUCKETS,
                &[],
                0.003,
            );
        }
    });
    println!("named API: {named:.0} ns per request (2 threads, {n} requests each)");
    handles(&registry, n);
}

/// Runs `work(i)` for i in 0..n on two threads at once; nanoseconds per call
/// (wall time over calls per thread).
fn run(n: u64, work: impl Fn(u64) + Send + Sync + Clone + 'static) -> f64 {
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let work = work.clone();
            std::thread::spawn(move || (0..n).for_each(&work))
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker");
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// The hot path as ingest and query count it: handles made once, labels a
/// `Copy` struct.
fn handles(registry: &Registry, n: u64) {
    #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Answer {
        status: &'static str,
        code: &'static str,
    }
    let responses = registry.counter_family::<Answer>("bench_responses_total", "Answers.");
    let duration = registry.histogram("bench_duration_seconds", "Latency.", LATENCY_BUCKETS);
    let per_request = run(n, move |i| {
        let (status, code) = CODES[(i % 4) as usize];
        responses.get_or_create(&Answer { status, code }).inc();
        duration.observe(0.003);
    });
    println!("handles: {per_request:.0} ns per request (2 threads, {n} requests each)");
}
