//! What the tasks share: running the command-line tools they drive, finding
//! free ports, waiting for a service, reading Redis URLs, and [`Teardown`],
//! which stops what a task started however the task ends.
//!
//! The tasks call `psql`, `redis-cli`, `curl` and the rest as commands, as
//! the bash they replace did, rather than through client libraries: the
//! xtask must build before libpq is installed (`cargo xtask setup` installs
//! it), and a tool's own output is what a developer would see by hand.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};

/// Whether `name` is a program on `PATH` (bash's `command -v`).
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(name)).is_ok_and(|meta| meta.is_file()))
    })
}

/// The environment variable's value, `None` when unset or empty (bash's
/// `${NAME:-default}` treats both alike).
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Cargo: the one running this task (`CARGO`), else `cargo` from `PATH`,
/// without the variables `cargo run` set for this task (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR` and the like). Build scripts watch some of them
/// (ring's and cc's `rerun-if-env-changed`), so a build started from here
/// with xtask's values looked changed to cargo and rebuilt ring, redis and
/// every crate above them (78 s of a clean CI run), and the next plain
/// `cargo test` rebuilt them back.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            command.env_remove(&name);
        }
    }
    command
}

/// Whether `name` is one of the variables cargo sets for a program it runs
/// (the Cargo Book, "Environment variables Cargo sets for crates"), other
/// than `CARGO` itself. election-e2e's `binaries` keeps the same list for
/// the build its tests start (this crate depends on no workspace crate, so
/// that it builds before libpq is installed).
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else `target`.
pub fn target_dir() -> PathBuf {
    env("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

/// Runs `command` to its end; an error unless it succeeded.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Whether `command` ran and succeeded, its output discarded.
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `command` and returns its standard output, trimmed; its standard
/// error goes where the task's goes. An error unless it succeeded.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    captured(command.stderr(Stdio::inherit()))
}

/// [`output`], with the command's standard error discarded.
pub fn output_quietly(command: &mut Command) -> anyhow::Result<String> {
    captured(command.stderr(Stdio::null()))
}

fn captured(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A port nothing listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A random number, from the standard library's per-process hash keys (no
/// dependency for the few the tasks need: a seed, a database name).
pub fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// Whether `curl -sf http://{addr}{path}` answers within 10 s (polled every
/// 100 ms).
pub fn wait_for_http(addr: &str, path: &str) -> bool {
    let answers = || succeeds(Command::new("curl").args(["-sf", &format!("http://{addr}{path}")]));
    for _ in 0..100 {
        if answers() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    answers()
}

/// POSTs a JSON body with a bearer token and returns the HTTP status curl
/// printed (`000` when nothing answered).
pub fn post_json(url: &str, token: &str, body: &str) -> anyhow::Result<String> {
    output(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        url,
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ]))
}

/// The host and port of a `redis://[user:password@]host:port[/db]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisAddr {
    /// Host name or address.
    pub host: String,
    /// Port, as written.
    pub port: String,
}

impl RedisAddr {
    /// Reads it from a URL the way the bash did: after the scheme and any
    /// credentials, up to the first `/`; the port after the last `:`.
    pub fn parse(url: &str) -> RedisAddr {
        let rest = url.strip_prefix("redis://").unwrap_or(url);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
        let host_port = rest.split('/').next().unwrap_or(rest);
        let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, host_port));
        RedisAddr {
            host: host.to_owned(),
            port: port.to_owned(),
        }
    }

    /// `redis-cli` aimed at this server.
    pub fn cli(&self) -> Command {
        let mut command = Command::new("redis-cli");
        command.args(["-h", &self.host, "-p", &self.port]);
        command
    }

    /// Deletes every key of an election (both key forms: plain and Cluster
    /// hash-tagged), 500 at a time.
    pub fn delete_election_keys(&self, election: &str) -> anyhow::Result<()> {
        for pattern in [
            format!("election:{election}:*"),
            format!("{{election:{election}:*"),
        ] {
            let keys = output(self.cli().args(["--scan", "--pattern", &pattern]))?;
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            for chunk in keys.chunks(500) {
                output(self.cli().arg("del").args(chunk))?;
            }
        }
        Ok(())
    }
}

/// Replaces `//user:password@` with `//user:***@`, for printing a URL.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("//") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if !credentials.contains('/') => {
            match credentials.split_once(':') {
                Some((user, _password)) => format!("{scheme}//{user}:***@{host}"),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// What a task started and must stop, and what it must undo, whether it
/// returns, fails or is interrupted (Ctrl-C, SIGTERM): the bash's `trap
/// cleanup EXIT`. Clones share one list; the first [`Teardown::run`] does
/// the work, later ones nothing.
#[derive(Clone, Default)]
pub struct Teardown {
    inner: Arc<Mutex<Steps>>,
}

#[derive(Default)]
struct Steps {
    /// Background processes, stopped with SIGTERM and waited for.
    children: Vec<Child>,
    /// Run after the children stopped, in the order added.
    undo: Vec<Box<dyn FnOnce() + Send>>,
    /// Whether [`Teardown::run`] ran.
    done: bool,
}

impl Teardown {
    /// Starts `command` in the background, in its own process group: a
    /// Ctrl-C in the terminal reaches the task, which stops the process
    /// itself (as bash's background jobs ignore SIGINT).
    pub fn spawn(&self, command: &mut Command) -> anyhow::Result<()> {
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        self.steps().children.push(child);
        Ok(())
    }

    /// [`Teardown::spawn`], with the command's standard output and error
    /// written to the file `log` (created anew).
    pub fn spawn_logged(&self, command: &mut Command, log: &Path) -> anyhow::Result<()> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        self.spawn(command.stdout(file.try_clone()?).stderr(file))
    }

    /// Adds a step to run once the children stopped.
    pub fn later(&self, step: impl FnOnce() + Send + 'static) {
        self.steps().undo.push(Box::new(step));
    }

    /// On Ctrl-C or SIGTERM: `on_signal` (which runs this teardown), then
    /// exit with `code`.
    pub fn on_signal(
        &self,
        code: i32,
        on_signal: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("catching Ctrl-C")?;
        // A thread of its own: the task's thread may be waiting on a child.
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                on_signal();
                std::process::exit(code);
            }
        });
        Ok(())
    }

    /// Stops the children (SIGTERM, then waits) and runs the undo steps;
    /// `before` runs first, only if there is something to do. Returns
    /// whether this call did the work.
    pub fn run(&self, before: impl FnOnce()) -> bool {
        let mut steps = self.steps();
        if steps.done {
            return false;
        }
        steps.done = true;
        before();
        for child in &steps.children {
            // `Child::kill` is SIGKILL: the services get SIGTERM so they shut
            // down gracefully.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        for child in &mut steps.children {
            let _ = child.wait();
        }
        for step in std::mem::take(&mut steps.undo) {
            step();
        }
        true
    }

    fn steps(&self) -> std::sync::MutexGuard<'_, Steps> {
        // A step that panicked leaves the list as it was: keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::{RedisAddr, redact, set_by_cargo_run};

    #[test]
    fn the_variables_of_cargo_run_are_told_from_the_user_s() {
        for set in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_run(set), "{set}");
        }
        for kept in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(kept), "{kept}");
        }
    }

    #[test]
    fn redis_addresses_and_redacted_urls() {
        let addr = |url: &str| {
            let addr = RedisAddr::parse(url);
            format!("{} {}", addr.host, addr.port)
        };
        assert_eq!(addr("redis://127.0.0.1:6379"), "127.0.0.1 6379");
        assert_eq!(
            addr("redis://user:secret@cache.example:6380/2"),
            "cache.example 6380"
        );
        assert_eq!(
            redact("postgres://app:secret@db.example:5432/election"),
            "postgres://app:***@db.example:5432/election"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
    }
}
