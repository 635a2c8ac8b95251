//! CPU time and resident memory of the processes a measurement involves,
//! read from `/proc` (so everything measured must run on this machine).
//!
//! Throughput alone hides where a report's cost goes: on 2 shared cores every
//! process's CPU comes out of the same budget, the load generator's included.
//! So the bench reads the user + system time of each process before and after
//! a run and divides by the reports recorded in between.
//!
//! PostgreSQL is a server of many processes (postmaster, one backend per
//! connection, WAL writer, checkpointer, autovacuum workers that come and
//! go). Its time is the sum over every process whose command is `postgres`,
//! plus the time of their children already reaped (`cutime` + `cstime`), so a
//! backend that ends during a run still counts. It is the whole server: any
//! other client of it during the run counts too.

use std::time::Duration;

use anyhow::Context;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`,
/// from the kernel's auxiliary vector).
pub fn clock_ticks() -> anyhow::Result<u64> {
    let ticks = rustix::param::clock_ticks_per_second();
    if ticks == 0 {
        anyhow::bail!("the kernel reports 0 clock ticks per second");
    }
    Ok(ticks)
}

/// Raises this process's soft limit of open files to its hard limit: 5,000
/// stream subscribers are 5,000 sockets here and in the query service, and
/// wrk's 512 connections as many in ingest; the services and wrk are children
/// and inherit the limit. Returns the limit now in force (`None`: none).
pub fn raise_open_files() -> anyhow::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).context("raising the open-file limit")?;
    }
    Ok(limit.current)
}

/// The fields of `/proc/<pid>/stat` that the bench reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `Z` (exited, not yet waited for: its times are final) ...
    pub state: char,
    /// User + system ticks of the process (all its threads).
    pub ticks: u64,
    /// User + system ticks of its children that have been waited for.
    pub children_ticks: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when the process is gone.
pub fn stat(pid: u32) -> Option<(String, Stat)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`, where
/// utime, stime, cutime and cstime are fields 14 to 17. The command may hold
/// spaces and parentheses, so it ends at the last `)`.
fn parse_stat(line: &str) -> Option<(String, Stat)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let command = line.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
    let stat = Stat {
        state: fields.first()?.chars().next()?,
        ticks: number(11)? + number(12)?,
        children_ticks: number(13)? + number(14)?,
    };
    Some((command, stat))
}

/// CPU ticks used so far by the process `pid` (0 when it is gone).
pub fn process_ticks(pid: u32) -> u64 {
    stat(pid).map_or(0, |(_, stat)| stat.ticks)
}

/// CPU ticks used so far by the whole PostgreSQL server: every `postgres`
/// process and its reaped children (see the module docs).
pub fn postgres_ticks() -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may end between the listing and the read.
        if let Some((command, stat)) = stat(pid)
            && command == "postgres"
        {
            total += stat.ticks + stat.children_ticks;
        }
    }
    Ok(total)
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`); `None`
/// when it is gone or has exited.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The processes of an ingest run whose CPU is read before and after.
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    /// election-ingest.
    pub ingest: u32,
    /// The bench's redis-server (none: a Cluster, not measured).
    pub redis: Option<u32>,
    /// A sealing election-reprocessor beside ingest, if one runs.
    pub sealer: Option<u32>,
}

/// CPU ticks of the watched processes at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    ingest: u64,
    redis: u64,
    postgres: u64,
    sealer: u64,
}

impl Snapshot {
    /// Reads them now.
    pub fn take(watched: Watched) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            ingest: process_ticks(watched.ingest),
            redis: watched.redis.map_or(0, process_ticks),
            postgres: postgres_ticks()?,
            sealer: watched.sealer.map_or(0, process_ticks),
        })
    }
}

/// CPU each process spent between two snapshots.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub ingest: Duration,
    pub postgres: Duration,
    pub redis: Duration,
    /// The sealing reprocessor's (zero when none ran).
    pub sealer: Duration,
}

impl Spent {
    /// What was spent from `before` to `after`, with `ticks_per_second`.
    pub fn between(before: Snapshot, after: Snapshot, ticks_per_second: u64) -> Spent {
        let time = |a: u64, b: u64| ticks_to_duration(b.saturating_sub(a), ticks_per_second);
        Spent {
            ingest: time(before.ingest, after.ingest),
            postgres: time(before.postgres, after.postgres),
            redis: time(before.redis, after.redis),
            sealer: time(before.sealer, after.sealer),
        }
    }
}

/// `ticks` of a clock of `ticks_per_second` as a duration.
pub fn ticks_to_duration(ticks: u64, ticks_per_second: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64)
}

/// `spent` per report in microseconds.
pub fn micros_per(spent: Duration, reports: u64) -> f64 {
    spent.as_secs_f64() * 1e6 / reports.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_and_parentheses_in_the_command_parse() {
        let line = "42 (postgres: a (b)) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 100 1000 200";
        let (command, stat) = parse_stat(line).expect("parses");
        assert_eq!(command, "postgres: a (b)");
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ticks: 300,
                children_ticks: 10
            }
        );
    }

    #[test]
    fn truncated_stat_lines_are_refused() {
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_stat_and_a_resident_size() {
        let pid = std::process::id();
        assert!(stat(pid).is_some());
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
    }
}
