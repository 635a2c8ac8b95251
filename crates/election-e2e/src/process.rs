//! The binaries as child processes that never outlive the test.
//!
//! Each long-running process is started by a watchdog shell (the pattern of
//! `election_test_support::redis::RedisServer`, see `WATCHDOG`) whose standard input
//! is a pipe only this process writes to: when the test process ends,
//! however it ends, the pipe closes and the watchdog kills its child with
//! SIGKILL. The shell prints the child's pid, so a scenario can SIGKILL the
//! binary itself, as a crash would; and it waits for the child, so the
//! child's exit status ends up in its log (`[watchdog] ... exited with
//! status N`: 137 for SIGKILL, 143 for SIGTERM), which tells a death the
//! scenario caused from one it did not.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::binaries::binaries;

/// A directory for this test process's logs, one per call.
fn log_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "election-e2e-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

pub use election_test_support::process::{free_port, send_signal};

/// The state letter of `pid` in `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`...),
/// or `None` once it is gone.
fn state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_owned)
}

/// Whether `pid` still runs (not gone, not a zombie awaiting its watchdog).
pub fn is_running(pid: u32) -> bool {
    state(pid).is_some_and(|state| state != "Z" && state != "X")
}

/// The watchdog: `$0` is the log, `"$@"` the command. The pipe is kept on
/// fd 3 because an asynchronous list's standard input is `/dev/null`. When
/// the child exits, the reader is stopped, so it can never signal a process
/// that reused the child's pid.
const WATCHDOG: &str = r#"exec 3<&0
"$@" >>"$0" 2>&1 &
pid=$!
echo $pid
( read _ <&3; kill -9 $pid 2>/dev/null ) &
reader=$!
wait $pid
status=$?
kill $reader 2>/dev/null
echo "[watchdog] $1 exited with status $status" >>"$0""#;

/// A binary running under a watchdog (see the module docs).
#[derive(Debug)]
pub struct Supervised {
    pid: u32,
    log: PathBuf,
    watchdog: Child,
}

impl Supervised {
    /// Starts `program args` with `env`, its output appended to `log`.
    pub fn start(program: &Path, args: &[String], env: &[(&str, String)], log: &Path) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut watchdog = command.spawn().expect("run sh to start a binary");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("the watchdog's stdout"))
            .read_line(&mut line)
            .expect("read the pid from the watchdog");
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the watchdog printed {line:?}, not a pid"));
        Supervised {
            pid,
            log: log.to_path_buf(),
            watchdog,
        }
    }

    /// The binary's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        is_running(self.pid)
    }

    /// Sends `signal` and waits (up to `timeout`) until the process is dead.
    ///
    /// # Panics
    /// When it is still running after `timeout`.
    pub fn signal_and_wait(&self, signal: &str, timeout: Duration) {
        send_signal(self.pid, signal);
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            assert!(
                Instant::now() < deadline,
                "pid {} still runs {timeout:?} after SIG{signal}; its log:\n{}",
                self.pid,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Catches the process in a state only `condition` can see from outside
    /// (a batch claimed and not yet marked, say): stops it (`SIGSTOP`, and
    /// waits until it is stopped), checks `condition`, and if that does not
    /// hold lets it go on (`SIGCONT`) for a couple of milliseconds and tries
    /// again. Returns `true` with the process left stopped, ready for a
    /// `SIGKILL` that lands exactly there; `false` (the process running)
    /// once it exits or `timeout` passes. A process held still while the
    /// condition is read cannot leave the state between the read and the
    /// kill, which a poll of a running process could not promise.
    pub fn stop_when(&self, timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() && Instant::now() < deadline {
            send_signal(self.pid, "STOP");
            while state(self.pid).is_some_and(|state| state != "T" && state != "Z") {
                std::thread::sleep(Duration::from_micros(200));
            }
            if self.is_running() && condition() {
                return true;
            }
            if self.is_running() {
                send_signal(self.pid, "CONT");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// What it wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog kill the binary.
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// An `election-ingest serve` on a fixed port: killed and restarted there,
/// so clients keep one URL, as behind a load balancer.
#[derive(Debug)]
pub struct Ingest {
    port: u16,
    env: Vec<(&'static str, String)>,
    log_dir: PathBuf,
    process: Option<Supervised>,
    /// Starts so far (the log file of each is `ingest-<port>-<n>.log`).
    starts: usize,
}

impl Ingest {
    /// Starts ingest on a free port over `database_url` and `redis_url` and
    /// waits until it listens.
    pub fn start(database_url: &str, redis_url: &str) -> Ingest {
        let mut ingest = Ingest {
            port: free_port(),
            env: vec![
                ("DATABASE_URL", database_url.to_owned()),
                ("REDIS_URL", redis_url.to_owned()),
                ("RUST_LOG", "warn".to_owned()),
                // A dead Redis costs a report this long before it is
                // answered 202.
                ("INGEST_REDIS_TIMEOUT", "300ms".to_owned()),
            ],
            log_dir: log_dir(),
            process: None,
            starts: 0,
        };
        ingest.restart();
        ingest
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash: whatever it was doing stops mid-way.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal_and_wait("KILL", Duration::from_secs(10));
        }
    }

    /// SIGTERM, and waits for the graceful exit.
    pub fn terminate(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal_and_wait("TERM", Duration::from_secs(30));
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Supervised::is_running)
    }

    /// Starts it again on the same port (after [`Self::kill`]) and waits
    /// until it listens.
    ///
    /// # Panics
    /// When it exits or does not listen within 30 s, with its log.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "ingest is still running");
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("ingest-{}-{}.log", self.port, self.starts));
        let args = ["serve", "--listen", &format!("127.0.0.1:{}", self.port)].map(str::to_owned);
        let process = Supervised::start(&binaries().ingest, &args, &self.env, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                process.is_running() && Instant::now() < deadline,
                "election-ingest did not listen on {}; its log:\n{}",
                self.port,
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.process = Some(process);
    }

    /// Everything its runs wrote, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let log = self.log_dir.join(format!("ingest-{}-{n}.log", self.port));
                format!(
                    "--- ingest run {n}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Before stopping it: a `[watchdog]` line here is a death the
            // scenario did not cause, or one of its kills.
            eprintln!(
                "election-ingest on port {} (running: {}), logs kept in {}:\n{}",
                self.port,
                self.is_running(),
                self.log_dir.display(),
                self.logs()
            );
        }
        drop(self.process.take());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// `election-reprocessor run` as a service (until killed or terminated).
#[derive(Debug)]
pub struct Reprocessor {
    process: Supervised,
    log_dir: PathBuf,
}

impl Reprocessor {
    /// Starts `election-reprocessor run <args>` with its metrics on a free
    /// port.
    pub fn start(database_url: &str, redis_url: &str, args: &[&str]) -> Reprocessor {
        let log_dir = log_dir();
        let mut all = vec![
            "run".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        let env = [
            ("DATABASE_URL", database_url.to_owned()),
            ("REDIS_URL", redis_url.to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let process = Supervised::start(
            &binaries().reprocessor,
            &all,
            &env,
            &log_dir.join("reprocessor.log"),
        );
        Reprocessor { process, log_dir }
    }

    /// The running process.
    pub fn process(&self) -> &Supervised {
        &self.process
    }
}

impl Drop for Reprocessor {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        } else {
            eprintln!(
                "election-reprocessor log kept in {}",
                self.log_dir.display()
            );
        }
    }
}

/// Runs `election-reprocessor <args>` to its end.
pub fn reprocessor(database_url: &str, redis_url: &str, args: &[&str]) -> Output {
    Command::new(&binaries().reprocessor)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run election-reprocessor")
}

/// Runs `election-ingest <args>` to its end.
pub fn ingest(database_url: &str, args: &[&str]) -> Output {
    Command::new(&binaries().ingest)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run election-ingest")
}

/// Status, standard output and error, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
