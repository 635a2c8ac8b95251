//! `election-bench reshard`: how long moving the hash slot of a national
//! counter takes once an election is large, and whether counting stalls while
//! it moves (issue 13, point 5).
//!
//! A national counter's slot is the busiest of the Cluster: every revision
//! that moves that party's national counter leaves its marker there. This
//! mode fills a private 3-master Redis Cluster with `--boxes` ballot boxes'
//! first revisions through the real [`RedisTally::apply`] (batches of a few
//! hundred, `--cities` cities, 4 to 10 parties per box, every box naming
//! party-00 so every box leaves a marker in its national counter's slot),
//! prints Redis memory per box, then moves the slot of
//! `election:<e>:party:party-00` to another master the way
//! `redis-cli --cluster reshard` does (`CLUSTER SETSLOT IMPORTING/MIGRATING`,
//! `CLUSTER GETKEYSINSLOT` and `MIGRATE ... KEYS` in batches, `SETSLOT
//! NODE` on every master) while a writer keeps applying revision 2 of the
//! boxes (each moving party-00's national counter) at a steady rate. It
//! prints the migration's duration and keys moved, and the writer's apply
//! latency, failures and longest stretch without a counted revision before,
//! during and after the move. Revisions that failed are applied again at the
//! end (as the reprocessor would) and the national counter is checked
//! against what was applied: nothing lost, nothing doubled.
//!
//! With `--standalone-memory` the same boxes are first counted on a private
//! standalone `redis-server`, for its memory per box.
//!
//! Timing on a shared machine is noisy: the figures say what one run saw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use election_core::{
    BallotBoxId, CityId, Counting, Difference, ElectionId, PartyId, ReportId, Revision, Tally,
};
use store_redis::{RedisOptions, RedisTally, parse_target};

use crate::procs::{RedisCluster, RedisProc, used_memory};
use crate::table::thousands;

/// `election-bench reshard`'s options.
#[derive(clap::Args, Debug)]
pub struct ReshardArgs {
    /// Ballot boxes counted before the slot moves.
    #[arg(long, default_value_t = 1_000_000)]
    boxes: u64,
    /// Cities the boxes are spread over.
    #[arg(long, default_value_t = 200)]
    cities: u64,
    /// Revisions per apply while filling.
    #[arg(long, default_value_t = 400)]
    batch: usize,
    /// Threads applying while filling.
    #[arg(long, default_value_t = 2)]
    fill_threads: usize,
    /// Revisions per second the writer applies around the move.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Revisions per apply of the writer.
    #[arg(long, default_value_t = 10)]
    writer_batch: usize,
    /// Keys per `MIGRATE` (redis-cli --cluster reshard's --cluster-pipeline
    /// is 10 by default; 100 is what the e2e scenario uses).
    #[arg(long, default_value_t = 100)]
    keys_per_migrate: usize,
    /// Seconds the writer runs before the move starts.
    #[arg(long, default_value_t = 10)]
    before_seconds: u64,
    /// Seconds the writer runs after the move ends.
    #[arg(long, default_value_t = 5)]
    after_seconds: u64,
    /// Also count the boxes on a standalone redis-server, for its memory per
    /// box.
    #[arg(long)]
    standalone_memory: bool,
}

const ELECTION: &str = "bench-reshard";
/// Every box names this party, so every box leaves a marker in the slot of
/// its national counter.
const PARTY: usize = 0;

/// Runs the measurement and prints what it saw.
pub fn run(args: &ReshardArgs) -> anyhow::Result<()> {
    ensure!(
        args.boxes > 0 && args.cities > 0 && args.batch > 0 && args.writer_batch > 0,
        "--boxes, --cities, --batch and --writer-batch must be positive"
    );
    ensure!(args.rate > 0.0, "--rate must be positive");
    let election = ElectionId::parse(ELECTION).context("the bench's election id")?;
    println!("reshard: {}", machine_load());

    if args.standalone_memory {
        standalone_memory(&election, args)?;
    }

    let cluster = RedisCluster::start()?;
    let nodes = cluster.node_urls();
    let tally = Arc::new(tally(&cluster.url())?);
    fill_cluster(&tally, &nodes, &election, args)?;

    let party = PartyId::parse(&election_loadgen::party_name(PARTY))?;
    let national = store_redis::keys::national(&election, &party);
    let slot = store_redis::keys::slot(national.as_bytes());
    let masters = Masters::read(&nodes)?;
    let source = masters.owner(slot)?;
    let destination = masters
        .ports
        .iter()
        .map(|(port, _)| *port)
        .find(|port| *port != source)
        .context("a Cluster of one master")?;
    let in_slot: u64 = query(
        &port_url(source),
        redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
    )?;
    println!(
        "reshard: slot {slot} of {national} holds {} keys on {source}; moving it to {destination}",
        thousands(in_slot as f64)
    );

    // The writer: revision 2 of boxes 0, 1, 2..., each adding 1 to party-00.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let tally = Arc::clone(&tally);
        let stop = Arc::clone(&stop);
        let election = election.clone();
        let (cities, boxes, per_apply) = (args.cities, args.boxes, args.writer_batch);
        let pause = Duration::from_secs_f64(args.writer_batch as f64 / args.rate);
        std::thread::spawn(move || {
            write_steadily(&tally, &election, cities, boxes, per_apply, pause, &stop)
        })
    };
    let clock = Instant::now();
    std::thread::sleep(Duration::from_secs(args.before_seconds));
    let move_started = clock.elapsed();
    let migration = migrate(&masters, slot, source, destination, args.keys_per_migrate);
    let move_ended = clock.elapsed();
    std::thread::sleep(Duration::from_secs(args.after_seconds));
    stop.store(true, Ordering::Relaxed);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let migration = migration?;
    println!(
        "reshard: slot {slot} moved from {source} to {destination} in {:.2} s: {} keys in {} MIGRATE calls (longest {:.1} ms)",
        (move_ended - move_started).as_secs_f64(),
        thousands(migration.keys as f64),
        thousands(migration.calls as f64),
        migration.longest_call.as_secs_f64() * 1000.0,
    );
    for (phase, from, to) in [
        ("before the move", Duration::ZERO, move_started),
        ("during the move", move_started, move_ended),
        ("after the move", move_ended, Duration::MAX),
    ] {
        println!(
            "reshard: writer {phase}: {}",
            written.describe(from, to, clock_offset(&written, clock))
        );
    }
    if let Some(error) = &written.first_error {
        println!("reshard: first apply error: {error}");
    }

    reapply_and_check(
        &tally,
        &election,
        args,
        &written,
        (&masters, slot),
        &national,
    )
}

/// Fills a standalone Redis and prints its memory per box.
fn standalone_memory(election: &ElectionId, args: &ReshardArgs) -> anyhow::Result<()> {
    let redis = RedisProc::start()?;
    let tally = tally(&redis.url())?;
    let nodes = vec![redis.url()];
    let filled = fill_measured(&tally, &nodes, election, args)?;
    println!(
        "reshard: standalone: {filled} bytes per box; {}",
        script_time(&nodes)?,
    );
    Ok(())
}

/// Fills the Redis `nodes` through `tally`: how long it took and how much
/// memory it used, as `<boxes> boxes counted in <s> s; used_memory +<MiB> MiB
/// = <bytes>`.
fn fill_measured(
    tally: &RedisTally,
    nodes: &[String],
    election: &ElectionId,
    args: &ReshardArgs,
) -> anyhow::Result<String> {
    let before = used_memory(nodes)?;
    let started = Instant::now();
    fill(tally, election, args)?;
    let after = used_memory(nodes)?;
    Ok(format!(
        "{} boxes counted in {:.1} s; used_memory +{:.1} MiB = {}",
        thousands(args.boxes as f64),
        started.elapsed().as_secs_f64(),
        mib(after.saturating_sub(before)),
        thousands(after.saturating_sub(before) as f64 / args.boxes as f64),
    ))
}

/// Fills the Cluster through `tally` and prints its memory per box and keys.
fn fill_cluster(
    tally: &RedisTally,
    nodes: &[String],
    election: &ElectionId,
    args: &ReshardArgs,
) -> anyhow::Result<()> {
    let filled = fill_measured(tally, nodes, election, args)?;
    let keys: u64 = nodes
        .iter()
        .map(|url| query::<u64>(url, &mut redis::cmd("DBSIZE")))
        .sum::<anyhow::Result<u64>>()?;
    println!(
        "reshard: Cluster of 3 masters: {filled} bytes per box (summed over the masters); {} keys; {}",
        thousands(keys as f64),
        script_time(nodes)?,
    );
    Ok(())
}

/// What failed stays pending: applies it again, as the reprocessor would,
/// then checks the national counter (read from the master that owns its
/// slot then) against everything applied.
fn reapply_and_check(
    tally: &RedisTally,
    election: &ElectionId,
    args: &ReshardArgs,
    written: &Written,
    (masters, slot): (&Masters, u16),
    national: &str,
) -> anyhow::Result<()> {
    let mut pending = written.failed.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        let batch: Vec<Counting> = pending
            .iter()
            .map(|&index| correction(election, args.cities, index))
            .collect();
        let results = tally.apply(&batch);
        pending = pending
            .into_iter()
            .zip(results)
            .filter_map(|(index, result)| result.is_err().then_some(index))
            .collect();
        if Instant::now() > deadline {
            bail!("{} revisions still fail 30 s after the move", pending.len());
        }
    }
    let expected: i64 = (0..args.boxes)
        .map(|index| votes(index, PARTY))
        .sum::<i64>()
        + i64::try_from(written.revisions).context("revision count")?;
    let value: Option<i64> = query(&masters.url_of_slot(slot)?, redis::cmd("GET").arg(national))?;
    ensure!(
        value == Some(expected),
        "{national} holds {value:?} after the move, expected {expected}"
    );
    println!(
        "reshard: {national} = {expected} after re-applying the {} failed revisions: exact",
        written.failed.len()
    );
    Ok(())
}

fn tally(url: &str) -> anyhow::Result<RedisTally> {
    let target = parse_target(url).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let options = RedisOptions {
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        pool_size: 8,
    };
    RedisTally::connect(&target, &options).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The votes of box `index` for party `party`.
fn votes(index: u64, party: usize) -> i64 {
    1 + i64::try_from((index * 7 + party as u64 * 13) % 97).unwrap_or(0)
}

/// How many parties box `index` names: 4 to 10.
fn parties_of(index: u64) -> usize {
    4 + usize::try_from(index % 7).unwrap_or(0)
}

fn ids(election: &ElectionId, cities: u64, index: u64) -> (BallotBoxId, CityId, ElectionId) {
    let ballot_box = BallotBoxId::parse(&format!("BX{index:07}")).expect("a valid box id");
    let city = CityId::parse(&format!("city-{:04}", index % cities)).expect("a valid city id");
    (ballot_box, city, election.clone())
}

/// Revision 1 of box `index`.
fn first(election: &ElectionId, cities: u64, index: u64) -> Counting {
    let (ballot_box, city, election) = ids(election, cities, index);
    let parts: BTreeMap<PartyId, i64> = (0..parties_of(index))
        .map(|party| {
            (
                PartyId::parse(&election_loadgen::party_name(party)).expect("a valid party id"),
                votes(index, party),
            )
        })
        .collect();
    Counting {
        report_id: ReportId(i64::try_from(index).unwrap_or(i64::MAX)),
        election,
        ballot_box,
        city,
        revision: Revision::new(1).expect("revision 1"),
        difference: Difference::from_parts(parts),
    }
}

/// Revision 2 of box `index` modulo the boxes: one more vote for party-00.
fn correction(election: &ElectionId, cities: u64, index: u64) -> Counting {
    let (ballot_box, city, election) = ids(election, cities, index);
    let party = PartyId::parse(&election_loadgen::party_name(PARTY)).expect("a valid party id");
    Counting {
        report_id: ReportId(-1 - i64::try_from(index).unwrap_or(0)),
        election,
        ballot_box,
        city,
        revision: Revision::new(2).expect("revision 2"),
        difference: Difference::from_parts(BTreeMap::from([(party, 1)])),
    }
}

/// Counts revision 1 of every box, `--fill-threads` threads each applying
/// batches of `--batch`; every revision must be answered `Applied::Now`.
fn fill(tally: &RedisTally, election: &ElectionId, args: &ReshardArgs) -> anyhow::Result<()> {
    let next = AtomicU64::new(0);
    let batch = args.batch as u64;
    let progress = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.fill_threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let from = next.fetch_add(batch, Ordering::Relaxed);
                        if from >= args.boxes {
                            return Ok(());
                        }
                        let to = (from + batch).min(args.boxes);
                        let countings: Vec<Counting> = (from..to)
                            .map(|index| first(election, args.cities, index))
                            .collect();
                        for (result, counting) in
                            tally.apply(&countings).into_iter().zip(&countings)
                        {
                            let applied = result.with_context(|| {
                                format!("applying revision 1 of {}", counting.ballot_box)
                            })?;
                            ensure!(
                                applied == election_core::Applied::Now,
                                "revision 1 of {} was already applied",
                                counting.ballot_box
                            );
                        }
                        let done = progress.fetch_add(to - from, Ordering::Relaxed) + (to - from);
                        if done / 100_000 != (done - (to - from)) / 100_000 {
                            eprintln!(
                                "reshard: {} boxes counted ({:.0}/s)",
                                thousands(done as f64),
                                done as f64 / started.elapsed().as_secs_f64()
                            );
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a fill thread panicked"))?
        })
    })
}

/// One apply of the writer.
struct Apply {
    /// When it started, from the writer's start.
    at: Duration,
    took: Duration,
    revisions: usize,
    failed: usize,
}

/// What the writer did.
struct Written {
    started: Instant,
    applies: Vec<Apply>,
    revisions: u64,
    /// Box indexes of the revisions that failed.
    failed: Vec<u64>,
    first_error: Option<String>,
}

fn clock_offset(written: &Written, clock: Instant) -> Duration {
    clock.saturating_duration_since(written.started)
}

impl Written {
    /// Latency, failures and the longest stretch without a counted revision
    /// for the applies that started in `[from, to)` of the main clock
    /// (`offset` later than the writer's start).
    fn describe(&self, from: Duration, to: Duration, offset: Duration) -> String {
        let applies: Vec<&Apply> = self
            .applies
            .iter()
            .filter(|apply| {
                let at = apply.at.saturating_sub(offset);
                at >= from && at < to
            })
            .collect();
        if applies.is_empty() {
            return "no applies".to_owned();
        }
        let mut took: Vec<Duration> = applies.iter().map(|apply| apply.took).collect();
        took.sort_unstable();
        let pick = |q: f64| {
            let rank = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len());
            took[rank - 1].as_secs_f64() * 1000.0
        };
        let revisions: usize = applies.iter().map(|apply| apply.revisions).sum();
        let failed: usize = applies.iter().map(|apply| apply.failed).sum();
        // The longest time between the ends of two applies that counted
        // everything they carried (or the phase's edges).
        let mut longest = Duration::ZERO;
        let mut last_ok = applies[0].at;
        for apply in &applies {
            if apply.failed == 0 {
                let end = apply.at + apply.took;
                longest = longest.max(end.saturating_sub(last_ok));
                last_ok = end;
            }
        }
        let phase_end = applies
            .last()
            .map(|apply| apply.at + apply.took)
            .unwrap_or_default();
        longest = longest.max(phase_end.saturating_sub(last_ok));
        format!(
            "{} applies of {} revisions, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             {} revisions failed (left pending); longest stretch without a fully counted apply {:.0} ms",
            applies.len(),
            revisions,
            pick(0.5),
            pick(0.99),
            pick(1.0),
            failed,
            longest.as_secs_f64() * 1000.0,
        )
    }
}

fn write_steadily(
    tally: &RedisTally,
    election: &ElectionId,
    cities: u64,
    boxes: u64,
    per_apply: usize,
    pause: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Written> {
    let started = Instant::now();
    let mut written = Written {
        started,
        applies: Vec::new(),
        revisions: 0,
        failed: Vec::new(),
        first_error: None,
    };
    let mut next_box = 0u64;
    let mut next_start = started;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next_start {
            std::thread::sleep(next_start - now);
        }
        next_start += pause;
        let indexes: Vec<u64> = (0..per_apply as u64)
            .map(|offset| (next_box + offset) % boxes)
            .collect();
        ensure!(
            next_box + (per_apply as u64) <= boxes,
            "the writer ran out of boxes: use fewer seconds or a lower --rate"
        );
        next_box += per_apply as u64;
        let batch: Vec<Counting> = indexes
            .iter()
            .map(|&index| correction(election, cities, index))
            .collect();
        let at = started.elapsed();
        let begun = Instant::now();
        let results = tally.apply(&batch);
        let took = begun.elapsed();
        let mut failed = 0;
        for (result, &index) in results.into_iter().zip(&indexes) {
            if let Err(error) = result {
                failed += 1;
                written.failed.push(index);
                written.first_error.get_or_insert_with(|| error.to_string());
            }
        }
        written.revisions += per_apply as u64;
        written.applies.push(Apply {
            at,
            took,
            revisions: per_apply,
            failed,
        });
    }
    Ok(written)
}

/// The Cluster's masters: port and node id.
struct Masters {
    ports: Vec<(u16, String)>,
}

impl Masters {
    fn read(urls: &[String]) -> anyhow::Result<Masters> {
        let ports = urls
            .iter()
            .map(|url| {
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .with_context(|| format!("no port in {url}"))?;
                let id: String = query(url, redis::cmd("CLUSTER").arg("MYID"))?;
                Ok((port, id))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Masters { ports })
    }

    /// The master serving `slot`, from `CLUSTER SLOTS` of the first master.
    fn owner(&self, slot: u16) -> anyhow::Result<u16> {
        let url = port_url(self.ports[0].0);
        let ranges: Vec<redis::Value> = query(&url, redis::cmd("CLUSTER").arg("SLOTS"))?;
        for range in ranges {
            let redis::Value::Array(range) = range else {
                continue;
            };
            if let (
                Some(redis::Value::Int(start)),
                Some(redis::Value::Int(end)),
                Some(redis::Value::Array(master)),
            ) = (range.first(), range.get(1), range.get(2))
                && (*start..=*end).contains(&i64::from(slot))
                && let Some(redis::Value::Int(port)) = master.get(1)
            {
                return u16::try_from(*port).context("a port");
            }
        }
        bail!("no master serves slot {slot}")
    }

    fn url_of_slot(&self, slot: u16) -> anyhow::Result<String> {
        Ok(port_url(self.owner(slot)?))
    }

    fn id(&self, port: u16) -> &str {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or("", |(_, id)| id)
    }
}

/// What moving a slot did.
struct Migration {
    keys: u64,
    calls: u64,
    longest_call: Duration,
}

/// Moves `slot` from `source` to `destination` as `redis-cli --cluster
/// reshard` does.
fn migrate(
    masters: &Masters,
    slot: u16,
    source: u16,
    destination: u16,
    per_call: usize,
) -> anyhow::Result<Migration> {
    let setslot = |port: u16, state: &str, id: &str| -> anyhow::Result<()> {
        let mut conn = connect(&port_url(port))?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .exec(&mut conn)
            .with_context(|| format!("CLUSTER SETSLOT {slot} {state} on {port}"))
    };
    setslot(destination, "IMPORTING", masters.id(source))?;
    setslot(source, "MIGRATING", masters.id(destination))?;
    let mut migration = Migration {
        keys: 0,
        calls: 0,
        longest_call: Duration::ZERO,
    };
    let mut conn = connect(&port_url(source))?;
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(per_call)
            .query(&mut conn)
            .with_context(|| format!("CLUSTER GETKEYSINSLOT {slot} on {source}"))?;
        if keys.is_empty() {
            break;
        }
        let began = Instant::now();
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(destination)
            .arg("")
            .arg(0)
            .arg(60_000)
            .arg("KEYS")
            .arg(&keys)
            .exec(&mut conn)
            .with_context(|| format!("MIGRATE of {} keys from {source}", keys.len()))?;
        migration.longest_call = migration.longest_call.max(began.elapsed());
        migration.calls += 1;
        migration.keys += keys.len() as u64;
    }
    let destination_id = masters.id(destination).to_owned();
    setslot(destination, "NODE", &destination_id)?;
    setslot(source, "NODE", &destination_id)?;
    for (port, _) in &masters.ports {
        if *port != source && *port != destination {
            setslot(*port, "NODE", &destination_id)?;
        }
    }
    Ok(migration)
}

fn port_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(5)))
        .with_context(|| format!("connecting to {url}"))
}

fn query<T: redis::FromRedisValue>(url: &str, command: &mut redis::Cmd) -> anyhow::Result<T> {
    let mut conn = connect(url)?;
    command
        .query(&mut conn)
        .with_context(|| format!("a command on {url}"))
}

/// The server time the tally's scripts took (the apply calls and the change
/// journal's steps), from `INFO commandstats` (`cmdstat_evalsha`) summed
/// over `nodes`: a measure of the scripts' cost that a busy machine
/// disturbs less than wall time.
fn script_time(nodes: &[String]) -> anyhow::Result<String> {
    let (mut calls, mut usec) = (0u64, 0u64);
    for url in nodes {
        let info: String = query(url, redis::cmd("INFO").arg("commandstats"))?;
        let Some(line) = info
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        else {
            continue;
        };
        for part in line.split(',') {
            match part.split_once('=') {
                Some(("calls", n)) => calls += n.parse::<u64>().unwrap_or(0),
                Some(("usec", n)) => usec += n.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    Ok(format!(
        "EVALSHA: {} calls, {:.2} µs each in Redis",
        thousands(calls as f64),
        usec as f64 / calls.max(1) as f64
    ))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The load average and CPU count, so a reader can tell a busy machine.
fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "{cpus} CPUs, load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
