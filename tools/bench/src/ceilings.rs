//! What the servers allow without our code in the way, and the seed's
//! PostgreSQL-only alternative, measured with plain clients on threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel::{Connection, PgConnection, RunQueryDsl};
use election_loadgen::{Plan, city_of, night, party_name};

/// Runs `work(thread, stop)` on `threads` threads for `seconds` and returns
/// the total of their counts per second.
fn for_a_while(
    threads: usize,
    seconds: Duration,
    work: impl Fn(usize, &AtomicBool) -> anyhow::Result<usize> + Send + Sync + 'static,
) -> anyhow::Result<f64> {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let work = Arc::clone(&work);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || work(thread, &stop))
        })
        .collect();
    std::thread::sleep(seconds);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for handle in handles {
        total += handle
            .join()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The seed article's alternative: counters as PostgreSQL rows, each report
/// one transaction of `SELECT … FOR UPDATE` then `UPDATE` for the national
/// and the city row of every party. Reports per second.
pub fn pg_only(
    url: &str,
    plan: &Plan,
    connections: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    // Connected as the services connect (no TLS to this host unless asked).
    let url = store_pg::without_tls_on_loopback(url).into_owned();
    let mut conn = PgConnection::establish(&url)?;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS vote_count (city text NOT NULL, party text NOT NULL, \
         votes bigint NOT NULL, PRIMARY KEY (city, party))",
    )
    .execute(&mut conn)?;
    diesel::sql_query("TRUNCATE vote_count").execute(&mut conn)?;
    // The national row is city ''.
    diesel::sql_query(
        "INSERT INTO vote_count SELECT c, p, 0 FROM unnest($1::text[]) c, unnest($2::text[]) p",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(
        std::iter::once(String::new())
            .chain((0..plan.cities).map(|i| city_of(plan, i)))
            .collect::<Vec<_>>(),
    )
    .bind::<diesel::sql_types::Array<Text>, _>(
        (0..plan.parties).map(party_name).collect::<Vec<_>>(),
    )
    .execute(&mut conn)?;
    diesel::sql_query("ANALYZE vote_count").execute(&mut conn)?;
    // Each report: its city and its votes per party.
    let reports: Arc<Vec<(String, Vec<u32>)>> = Arc::new(
        night(plan)
            .into_iter()
            .map(|post| (city_of(plan, post.ballot_box), post.votes))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    for_a_while(connections, seconds, move |_, stop| {
        let mut conn = PgConnection::establish(&url)?;
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            let (city, votes) = &reports[next.fetch_add(1, Ordering::Relaxed) % reports.len()];
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                for (party, &votes) in votes.iter().enumerate() {
                    let party = party_name(party);
                    for scope in ["", city.as_str()] {
                        diesel::sql_query("SELECT votes FROM vote_count WHERE city = $1 AND party = $2 FOR UPDATE")
                            .bind::<Text, _>(scope)
                            .bind::<Text, _>(&party)
                            .execute(conn)?;
                        diesel::sql_query("UPDATE vote_count SET votes = votes + $3 WHERE city = $1 AND party = $2")
                            .bind::<Text, _>(scope)
                            .bind::<Text, _>(&party)
                            .bind::<BigInt, _>(i64::from(votes))
                            .execute(conn)?;
                    }
                }
                Ok(())
            })
            .context("a PostgreSQL-only report")?;
            done += 1;
        }
        Ok(done)
    })
}

/// PostgreSQL's ceiling for our kind of write: reports with a jsonb payload
/// and 4 party rows, `per_txn` reports per transaction as multi-row inserts.
/// Reports per second.
pub fn pg_insert(
    url: &str,
    connections: usize,
    per_txn: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    let url = store_pg::without_tls_on_loopback(url).into_owned();
    let mut conn = PgConnection::establish(&url)?;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS ceiling_reports (id bigserial PRIMARY KEY, ballot_box_id text NOT NULL, \
         city text NOT NULL, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut conn)?;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS ceiling_votes (report_id bigint NOT NULL, party text NOT NULL, \
         votes integer NOT NULL, PRIMARY KEY (report_id, party))",
    )
    .execute(&mut conn)?;
    for_a_while(connections, seconds, move |thread, stop| {
        let mut conn = PgConnection::establish(&url)?;
        let mut done = 0;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let boxes: Vec<String> = (0..per_txn)
                .map(|_| {
                    n += 1;
                    format!("T{thread}-{n}")
                })
                .collect();
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                diesel::sql_query(
                    "WITH r AS (INSERT INTO ceiling_reports (ballot_box_id, city, payload) \
                       SELECT b, 'london', '{\"a\":1,\"b\":2,\"c\":3,\"d\":4}'::jsonb FROM unnest($1::text[]) b RETURNING id) \
                     INSERT INTO ceiling_votes SELECT r.id, p, $2 FROM r, unnest(ARRAY['a','b','c','d']) p",
                )
                .bind::<diesel::sql_types::Array<Text>, _>(&boxes)
                .bind::<Integer, _>(1)
                .execute(conn)?;
                Ok(())
            })?;
            done += per_txn;
        }
        Ok(done)
    })
}

/// Redis's ceiling for our script: a marker and `counters` INCRBYs per call,
/// `pipeline` calls per round trip. Scripts per second.
pub fn redis_scripts(
    url: &str,
    connections: usize,
    pipeline: usize,
    counters: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(store_redis::APPLY_SCRIPT)
        .query(&mut client.get_connection()?)?;
    for_a_while(connections, seconds, move |thread, stop| {
        let mut conn = client.get_connection()?;
        let mut done = 0;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut pipe = redis::pipe();
            for _ in 0..pipeline {
                n += 1;
                // As the tally calls it: a marker bucket (16,384 of them,
                // as for a national anchor), the anchor's layout flag, the
                // counters; the marker's field, a per-key marker name
                // (never set), the amounts.
                let command = pipe
                    .cmd("EVALSHA")
                    .arg(&sha)
                    .arg(counters + 2)
                    .arg(format!("{{ceiling}}:applied:{}", n % 16_384))
                    .arg("{ceiling}:applied:layout");
                for c in 0..counters {
                    command.arg(format!("ceiling:counter:{c}"));
                }
                command
                    .arg(format!("{thread}:{n}"))
                    .arg(format!("{{ceiling}}:applied:{thread}:{n}"));
                for _ in 0..counters {
                    command.arg(1);
                }
            }
            let _: Vec<i64> = pipe.query(&mut conn)?;
            done += pipeline;
        }
        Ok(done)
    })
}
