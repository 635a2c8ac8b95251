//! Posting reports to election-ingest from outside, with `wrk` and the Lua
//! scripts kept next to the bench (`tools/bench/wrk/report.lua`, `bulk.lua`,
//! and `pace.lua`, which paces `report.lua`).
//!
//! Why wrk: the load generator shares the 2 cores with everything it
//! measures, so the lighter it is, the closer the figures are to what the
//! servers do for real clients on other machines. An in-process Rust client
//! (the loadgen) costs ~20 µs of CPU per report; wrk with a small script
//! costs a few, and the bench reads and prints what it did cost (its
//! user + system time from `/proc`, read once it has exited but before it
//! is waited for, when its times are final).
//!
//! Every request is a new ballot box (the script's `RUN-<thread>-<n>` ids),
//! and every answer is checked by the script: a single answer that is not
//! 2xx, or a request left without an answer, fails the run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::usage;

/// The Lua scripts, built into the bench so it runs from any directory:
/// one report per request, `BATCH` reports per bulk request, and the pacing
/// that is appended to the first for a steady rate.
const REPORT_SCRIPT: &str = include_str!("../wrk/report.lua");
const BULK_SCRIPT: &str = include_str!("../wrk/bulk.lua");
const PACE_SCRIPT: &str = include_str!("../wrk/pace.lua");

/// wrk's own request timeout: far above any latency the bench may meet, so
/// that slow answers are measured (wrk leaves answers slower than its
/// timeout out of its latency distribution) and none is dropped.
const TIMEOUT: &str = "60s";

/// How often a running wrk is looked at (its memory, the caller's watch).
const TICK: Duration = Duration::from_millis(100);

/// The scripts as files of this run's own.
#[derive(Debug, Clone)]
pub struct Scripts {
    /// One report per request (`report.lua`).
    pub report: PathBuf,
    /// A batch per request (`bulk.lua`).
    pub bulk: PathBuf,
    /// One report per request at a steady rate (`report.lua`, then
    /// `pace.lua`).
    pub paced: PathBuf,
}

impl Scripts {
    /// Writes the scripts into `dir`.
    pub fn write(dir: &Path) -> anyhow::Result<Scripts> {
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("election-bench-{name}-{}.lua", std::process::id()));
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(text.as_bytes())?;
            Ok(path)
        };
        Ok(Scripts {
            report: write("report", REPORT_SCRIPT)?,
            bulk: write("bulk", BULK_SCRIPT)?,
            paced: write("paced", &format!("{REPORT_SCRIPT}\n{PACE_SCRIPT}"))?,
        })
    }

    /// Removes the files.
    pub fn remove(&self) {
        for path in [&self.report, &self.bulk, &self.paced] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What to post, where, and how hard.
#[derive(Debug, Clone)]
pub struct Posting {
    /// `http://host:port` of election-ingest.
    pub base: String,
    pub election: String,
    pub token: String,
    /// Names this run's ballot boxes (unique per run on an election).
    pub run: String,
    pub threads: usize,
    pub connections: usize,
    /// How long wrk runs unless the watch stops it first.
    pub duration: Duration,
    /// Reports per request: 1 posts to `/reports`, more to
    /// `/report-batches`.
    pub batch: usize,
    /// Requests per second per wrk thread (`pace.lua`; single reports
    /// only); `None`: as fast as ingest answers.
    pub rate: Option<u32>,
}

/// What the caller's watch tells a running wrk, every [`TICK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Let it run.
    Go,
    /// Stop it now (SIGINT: wrk stops and prints its results as usual).
    Stop,
}

/// What wrk prints at the end of a run.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Requests answered.
    pub requests: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// wrk's socket errors.
    pub socket: SocketErrors,
    /// wrk's count of answers of status 400 or above.
    pub error_statuses: u64,
}

/// wrk's `Socket errors: connect N, read N, write N, timeout N`.
///
/// They are of two kinds. A read error or a timeout is a request that was
/// sent and never answered: the bench fails on it. A connect or write error
/// is a connection refused or reset before its request went out (wrk then
/// opens another and sends a new request): nothing was recorded, the client
/// knows and would retry. That happens when ingest's listen queue overflows
/// as hundreds of connections arrive at once on a busy machine, so the bench
/// shows these rather than failing on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    fn parse(text: &str) -> anyhow::Result<SocketErrors> {
        let mut errors = SocketErrors::default();
        for part in text.split(',') {
            let mut words = part.split_whitespace();
            let (Some(name), Some(count)) = (words.next(), words.next()) else {
                bail!("cannot read wrk's socket errors {text:?}");
            };
            let count = count
                .parse()
                .with_context(|| format!("cannot read wrk's socket errors {text:?}"))?;
            match name {
                "connect" => errors.connect = count,
                "read" => errors.read = count,
                "write" => errors.write = count,
                "timeout" => errors.timeout = count,
                _ => {}
            }
        }
        Ok(errors)
    }

    /// Connections refused or reset before their request went out.
    pub fn failed_connections(&self) -> u64 {
        self.connect + self.write
    }
}

/// What the script counted (its `bench-wrk:` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    /// 2xx answers.
    pub ok: u64,
    /// Of them, 202: recorded, left to the reprocessor.
    pub pending: u64,
    /// Any other status.
    pub failed: u64,
    /// The first failure's status and the start of its body.
    pub first_failure: String,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Posted {
    pub summary: Summary,
    pub answers: Answers,
    /// wrk's own CPU time (user + system, all threads).
    pub cpu: Duration,
    /// wrk's resident memory, last read while it ran, in KiB.
    pub rss_kib: Option<u64>,
}

/// Runs wrk with the report script, calling `watch` every [`TICK`] while it
/// runs. Fails on any answer that is not 2xx, any request left without an
/// answer, and any failure of wrk or its script.
pub fn post_reports(
    scripts: &Scripts,
    posting: &Posting,
    ticks_per_second: u64,
    mut watch: impl FnMut() -> anyhow::Result<Watch>,
) -> anyhow::Result<Posted> {
    let (script, extra_arg) = script_for(scripts, posting)?;
    let child = Command::new("wrk")
        .arg("--latency")
        .args(["--timeout", TIMEOUT])
        .args(["-t", &posting.threads.to_string()])
        .args(["-c", &posting.connections.to_string()])
        .args(["-d", &format!("{}s", posting.duration.as_secs().max(1))])
        .arg("-s")
        .arg(script)
        .arg(&posting.base)
        .args(["--", &posting.election, &posting.token, &posting.run])
        .args(extra_arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running wrk (apt-get install wrk)")?;
    let pid = child.id();
    let (ticks, rss_kib, watched) = follow(pid, &mut watch);
    // wrk's output is a few lines: it fits the pipes until it is read here.
    let output = child.wait_with_output().context("waiting for wrk")?;
    watched?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let summary = Summary::parse(&stdout)?;
    let answers = Answers::parse(&stdout)?;
    check(&summary, &answers, posting).with_context(|| format!("wrk's output:\n{stdout}"))?;
    Ok(Posted {
        summary,
        answers,
        cpu: usage::ticks_to_duration(ticks, ticks_per_second),
        rss_kib,
    })
}

/// The script a posting runs and the argument it takes after ELECTION TOKEN
/// RUN: bulk takes the batch size, the paced script the rate.
fn script_for<'a>(
    scripts: &'a Scripts,
    posting: &Posting,
) -> anyhow::Result<(&'a PathBuf, Option<String>)> {
    Ok(match (posting.batch, posting.rate) {
        (batch, None) if batch > 1 => (&scripts.bulk, Some(batch.to_string())),
        (_, None) => (&scripts.report, None),
        (1, Some(rate)) => (&scripts.paced, Some(rate.to_string())),
        (batch, Some(_)) => bail!("wrk cannot pace bulk requests (batches of {batch})"),
    })
}

/// Follows wrk until it exits: its memory, its CPU ticks once final, and
/// the watch (an error of the watch stops wrk too, and is returned).
fn follow(
    pid: u32,
    watch: &mut impl FnMut() -> anyhow::Result<Watch>,
) -> (u64, Option<u64>, anyhow::Result<()>) {
    let mut ticks = 0;
    let mut rss_kib = None;
    let mut outcome = Ok(());
    let mut stopped = false;
    while let Some((_, stat)) = usage::stat(pid) {
        ticks = stat.ticks;
        if stat.state == 'Z' {
            break;
        }
        rss_kib = usage::rss_kib(pid).or(rss_kib);
        if !stopped {
            let verdict = watch();
            if !matches!(verdict, Ok(Watch::Go)) {
                stopped = true;
                interrupt(pid);
            }
            if let Err(error) = verdict {
                outcome = Err(error);
            }
        }
        std::thread::sleep(TICK);
    }
    (ticks, rss_kib, outcome)
}

/// SIGINT to wrk: it stops its threads and prints its results.
fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

fn check(summary: &Summary, answers: &Answers, posting: &Posting) -> anyhow::Result<()> {
    let what = format!(
        "wrk posting to {} with {} connections",
        posting.election, posting.connections
    );
    if answers.failed > 0 || summary.error_statuses > 0 {
        bail!(
            "{what}: {} answers were not 2xx (wrk counted {} of status ≥ 400); the first: {}",
            answers.failed,
            summary.error_statuses,
            answers.first_failure
        );
    }
    let socket = summary.socket;
    if socket.read + socket.timeout > 0 {
        bail!(
            "{what}: {} requests were sent and got no answer ({} read errors, {} timeouts)",
            socket.read + socket.timeout,
            socket.read,
            socket.timeout
        );
    }
    if socket.failed_connections() > 0 {
        eprintln!(
            "bench: warning: {what}: {} connections were refused or reset before their request \
             went out ({} connect, {} write errors)",
            socket.failed_connections(),
            socket.connect,
            socket.write
        );
    }
    let reports = summary.requests * posting.batch.max(1) as u64;
    if answers.ok != reports || answers.ok == 0 {
        bail!(
            "{what}: the script counted {} 2xx report answers, wrk {} answers of {} reports each",
            answers.ok,
            summary.requests,
            posting.batch.max(1)
        );
    }
    Ok(())
}

impl Summary {
    /// Reads wrk's output (run with `--latency`).
    pub fn parse(text: &str) -> anyhow::Result<Summary> {
        let mut requests = None;
        let mut per_second = None;
        let (mut p50, mut p99) = (None, None);
        let mut socket = SocketErrors::default();
        let mut error_statuses = 0;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("Requests/sec:") {
                per_second = rest.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix("50%") {
                p50 = parse_duration(rest);
            } else if let Some(rest) = line.strip_prefix("99%") {
                p99 = parse_duration(rest);
            } else if let Some(rest) = line.strip_prefix("Socket errors:") {
                socket = SocketErrors::parse(rest)?;
            } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
                error_statuses = rest
                    .trim()
                    .parse()
                    .with_context(|| format!("cannot read wrk's line {line:?}"))?;
            } else if line.contains(" requests in ") {
                requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
            }
        }
        match (requests, per_second, p50, p99) {
            (Some(requests), Some(per_second), Some(p50), Some(p99)) => Ok(Summary {
                requests,
                per_second,
                p50,
                p99,
                socket,
                error_statuses,
            }),
            _ => bail!("cannot read wrk's output:\n{text}"),
        }
    }
}

impl Answers {
    /// Reads the script's `bench-wrk: ok=N pending=N failed=N
    /// first_failure=...` line.
    fn parse(text: &str) -> anyhow::Result<Answers> {
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix("bench-wrk: "))
            .with_context(|| format!("the wrk script printed no counts:\n{text}"))?;
        let (counts, first_failure) = line.split_once(" first_failure=").unwrap_or((line, ""));
        let count = |name: &str| -> anyhow::Result<u64> {
            counts
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no {name}= in the wrk script's line {line:?}"))
        };
        Ok(Answers {
            ok: count("ok")?,
            pending: count("pending")?,
            failed: count("failed")?,
            first_failure: first_failure.trim().to_owned(),
        })
    }
}

/// A wrk duration: `812.00us`, `7.10ms`, `1.02s`, `1.00m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
Running 15s test @ http://127.0.0.1:8080
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.10ms    2.00ms  50.00ms   80.00%
    Req/Sec     4.40k   300.00     5.00k    70.00%
  Latency Distribution
     50%    7.00ms
     75%    8.00ms
     90%    9.00ms
     99%   12.50ms
  131000 requests in 15.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 10
Requests/sec:   8733.33
Transfer/sec:      1.33MB
bench-wrk: ok=130990 pending=3 failed=10 first_failure=401 {\"error\":\"unauthorized\"}
";

    #[test]
    fn each_posting_runs_its_script() {
        let scripts = Scripts {
            report: PathBuf::from("report.lua"),
            bulk: PathBuf::from("bulk.lua"),
            paced: PathBuf::from("paced.lua"),
        };
        let posting = |batch, rate| Posting {
            base: "http://127.0.0.1:1".to_owned(),
            election: "e".to_owned(),
            token: "t".to_owned(),
            run: "r".to_owned(),
            threads: 1,
            connections: 1,
            duration: Duration::from_secs(1),
            batch,
            rate,
        };
        let chosen = |batch, rate| {
            script_for(&scripts, &posting(batch, rate))
                .map(|(path, arg)| (path.to_str().unwrap_or_default().to_owned(), arg))
        };
        assert_eq!(chosen(1, None).unwrap(), ("report.lua".to_owned(), None));
        assert_eq!(
            chosen(100, None).unwrap(),
            ("bulk.lua".to_owned(), Some("100".to_owned()))
        );
        assert_eq!(
            chosen(1, Some(2_000)).unwrap(),
            ("paced.lua".to_owned(), Some("2000".to_owned()))
        );
        let refused = chosen(100, Some(2_000)).unwrap_err().to_string();
        assert!(refused.contains("cannot pace bulk"), "{refused}");
    }

    /// The paced script is report.lua with pace.lua after it: pace.lua
    /// wraps report.lua's `init`, so it must come second, and it must define
    /// `delay` at the top level, where wrk looks for it.
    #[test]
    fn the_paced_script_wraps_the_report_script() {
        let dir = std::env::temp_dir().join(format!("bench-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let scripts = Scripts::write(&dir).unwrap();
        let paced = std::fs::read_to_string(&scripts.paced).unwrap();
        scripts.remove();
        let _ = std::fs::remove_dir(&dir);
        let report_init = paced.find("function init(").expect("report.lua's init");
        let wrapped = paced
            .find("local report_init = init")
            .expect("pace.lua's wrapper");
        assert!(report_init < wrapped, "pace.lua must come after report.lua");
        assert!(paced.contains("\nfunction delay()"), "delay must be global");
        assert!(paced.starts_with(REPORT_SCRIPT));
    }

    #[test]
    fn wrk_output_is_read() {
        let summary = Summary::parse(OUTPUT).expect("parses");
        assert_eq!(summary.requests, 131_000);
        assert!((summary.per_second - 8733.33).abs() < 1e-6);
        assert!(close(summary.p50, Duration::from_millis(7)));
        assert!(close(summary.p99, Duration::from_micros(12_500)));
        assert_eq!(
            summary.socket,
            SocketErrors {
                connect: 0,
                read: 2,
                write: 0,
                timeout: 1
            }
        );
        assert_eq!(summary.error_statuses, 10);
    }

    #[test]
    fn the_script_counts_are_read() {
        assert_eq!(
            Answers::parse(OUTPUT).expect("parses"),
            Answers {
                ok: 130_990,
                pending: 3,
                failed: 10,
                first_failure: "401 {\"error\":\"unauthorized\"}".into(),
            }
        );
    }

    #[test]
    fn output_without_counts_is_an_error() {
        assert!(Answers::parse("Requests/sec: 1\n").is_err());
        assert!(Summary::parse("wrk: unable to connect").is_err());
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_nanos(10)
    }

    #[test]
    fn durations_of_every_unit_are_read() {
        let read = |text| parse_duration(text).expect("parses");
        assert!(close(read(" 812.00us"), Duration::from_micros(812)));
        assert!(close(read("1.50s"), Duration::from_millis(1500)));
        assert!(close(read("1.00m"), Duration::from_secs(60)));
        assert!(close(read("7ms"), Duration::from_millis(7)));
        assert_eq!(parse_duration("7"), None);
    }
}
