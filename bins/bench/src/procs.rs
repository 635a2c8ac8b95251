//! The servers and services a benchmark run owns: a recreated database, a
//! private `redis-server`, and the release binaries as child processes. Each
//! is stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diesel::{Connection, PgConnection, RunQueryDsl};

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A database of the benchmark's own, recreated at start and kept after the
/// run for inspection.
pub struct Database {
    url: String,
}

impl Database {
    /// Drops and creates database `name` on the server of `admin_url`.
    pub fn recreate(admin_url: &str, name: &str) -> anyhow::Result<Database> {
        let mut admin = PgConnection::establish(admin_url).context("connecting to PostgreSQL")?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin)?;
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => bail!("cannot find the database name in DATABASE_URL"),
        };
        Ok(Database { url })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Refreshes the planner's statistics.
    pub fn analyze(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::establish(&self.url)?;
        diesel::sql_query("ANALYZE").execute(&mut conn)?;
        Ok(())
    }
}

/// A private `redis-server` without persistence.
pub struct RedisProc {
    port: u16,
    child: Child,
}

impl RedisProc {
    /// Starts one on a free port and waits for it.
    pub fn start() -> anyhow::Result<RedisProc> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let proc = RedisProc { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = redis::Client::open(proc.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ready {
                return Ok(proc);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One of our services, started from the release binaries.
pub struct Service {
    base: String,
    child: Child,
}

impl Service {
    /// Starts `binary args...` listening on a free port and waits for
    /// `/healthz`.
    pub async fn start(
        bin_dir: &str,
        binary: &str,
        args: &[&str],
        database_url: &str,
        redis_url: &str,
    ) -> anyhow::Result<Service> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let path = format!("{bin_dir}/{binary}");
        let child = Command::new(&path)
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("LISTEN_ADDR", &listen)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {path} (run `cargo build --release` first)"))?;
        let service = Service {
            base: format!("http://{listen}"),
            child,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if client
                .get(format!("{}/healthz", service.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(service);
            }
            if Instant::now() > deadline {
                bail!("{binary} did not answer /healthz");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
