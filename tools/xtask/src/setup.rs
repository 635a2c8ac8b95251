//! `cargo xtask setup` (`just setup`, run first by `just test` and `just
//! demo`): installs what the tests and the demo need and starts the local
//! services that are not answering, so a fresh machine of this project's
//! kind (Debian with the Rust toolchain, PostgreSQL and Redis installed)
//! needs nothing else by hand. Each step is skipped when its tool is already
//! there, so a second run costs a few checks.
//!
//! Installs (Debian packages unless noted): libpq-dev and pkg-config
//! (diesel's PostgreSQL driver); the redis-server and psql command lines,
//! chromium (the dashboard's browser tests) and systemd's `systemd-analyze`
//! (the check of the shipped units) when missing; nginx (the query's tests
//! behind a caching reverse proxy; each starts its own, and the server the
//! package may have started on port 80 is stopped); schemathesis (PyPI, the
//! API fuzzing of `just test`). Starts PostgreSQL on 127.0.0.1:5432 and
//! Redis on 127.0.0.1:6379 (nothing kept on disk) when they do not answer;
//! with `DATABASE_URL` or `REDIS_URL` set, nothing is started.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::shell::{self, env, on_path, succeeds};

/// Runs the setup.
pub fn run() -> anyhow::Result<()> {
    let mut apt = Apt::default();
    let mut changed = apt.need("libpq-dev")?;
    changed |= apt.need("pkg-config")?;
    for (program, package) in [
        ("redis-server", "redis-server"),
        ("psql", "postgresql-client"),
        ("chromium", "chromium"),
        ("systemd-analyze", "systemd"),
    ] {
        if !on_path(program) {
            changed |= apt.need(package)?;
        }
    }
    // Looked for by path: /usr/sbin is not on every user's PATH.
    if !std::path::Path::new("/usr/sbin/nginx").exists() && apt.need("nginx")? {
        changed = true;
        // Debian's package starts a server on port 80 where its policy
        // allows; the tests start their own on free ports.
        let _ = succeeds(Command::new("/usr/sbin/nginx").args(["-s", "quit"]));
    }
    if !on_path("schemathesis") {
        log("installing schemathesis (from PyPI)");
        shell::run(Command::new("pip").args(["install", "--quiet", "schemathesis"]))?;
        changed = true;
    }
    if env("DATABASE_URL").is_none() && !postgres_answers() {
        start_postgres()?;
        changed = true;
    }
    if env("REDIS_URL").is_none() && !redis_answers() {
        start_redis()?;
        changed = true;
    }
    if !changed {
        println!(
            "setup: everything is installed; PostgreSQL and Redis answer{}",
            if env("DATABASE_URL").is_some() || env("REDIS_URL").is_some() {
                " (or DATABASE_URL / REDIS_URL point elsewhere)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn log(what: &str) {
    println!("\n== setup: {what}");
}

/// Debian packages, with `apt-get update` run once, before the first install.
#[derive(Default)]
pub(crate) struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs `package` unless it is installed; whether it installed it.
    pub(crate) fn need(&mut self, package: &str) -> anyhow::Result<bool> {
        if succeeds(Command::new("dpkg").args(["-s", package])) {
            return Ok(false);
        }
        if !self.updated {
            shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
            self.updated = true;
        }
        log(&format!("installing {package}"));
        shell::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null()),
        )?;
        Ok(true)
    }
}

fn postgres_answers() -> bool {
    succeeds(Command::new("pg_isready").args(["-q", "-h", "127.0.0.1", "-p", "5432"]))
}

fn redis_answers() -> bool {
    succeeds(Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", "6379", "ping"]))
}

/// Polls `answers` once a second, 30 times at most.
fn wait_until(answers: impl Fn() -> bool) {
    for _ in 0..30 {
        if answers() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts the installed cluster (the first version under /etc/postgresql).
fn start_postgres() -> anyhow::Result<()> {
    log("starting PostgreSQL");
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("listing /etc/postgresql (is PostgreSQL installed?)")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    let version = versions
        .first()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    shell::run(Command::new("pg_ctlcluster").args([
        "--skip-systemctl-redirect",
        version,
        "main",
        "start",
    ]))?;
    wait_until(postgres_answers);
    // Not quiet: its answer says what is wrong if it still does not answer.
    shell::run(Command::new("pg_isready").args(["-h", "127.0.0.1", "-p", "5432"]))
}

/// Starts a Redis that keeps nothing on disk.
fn start_redis() -> anyhow::Result<()> {
    log("starting Redis");
    for dir in ["/var/lib/redis", "/var/log/redis"] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    shell::run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "-::1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/var/lib/redis",
        "--logfile",
        "/var/log/redis/setup.log",
    ]))?;
    wait_until(redis_answers);
    shell::run(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
            .stdout(Stdio::null()),
    )
}
