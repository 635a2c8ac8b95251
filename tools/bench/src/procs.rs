//! The servers and services a benchmark run owns: a recreated database, a
//! private `redis-server` (or a private 3-master Redis Cluster), and the
//! release binaries as child processes. Each is stopped when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
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

/// A private `redis-server` without persistence, in a directory of its own
/// (a Cluster node writes its `nodes.conf` there), removed when dropped.
pub struct RedisProc {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl RedisProc {
    /// Starts one on a free port and waits for it.
    pub fn start() -> anyhow::Result<RedisProc> {
        RedisProc::start_with(&[])
    }

    /// Starts one with `extra` arguments on a free port and waits for it.
    fn start_with(extra: &[String]) -> anyhow::Result<RedisProc> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "election-bench-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let proc = RedisProc { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(&proc.url()).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proc)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(url: &str) -> redis::RedisResult<()> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(1))?;
    redis::cmd("PING").query::<String>(&mut conn)?;
    Ok(())
}

/// A private Redis Cluster of 3 masters and no replicas: what the services
/// do against a Cluster, and how much memory its masters hold, without the
/// copies replicas would add.
pub struct RedisCluster {
    masters: Vec<RedisProc>,
}

impl RedisCluster {
    /// Starts 3 `redis-server --cluster-enabled yes` on free ports, joins
    /// them with `redis-cli --cluster create`, and waits until every node
    /// says the cluster is ok.
    pub fn start() -> anyhow::Result<RedisCluster> {
        let masters = (0..3)
            .map(|_| {
                RedisProc::start_with(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    // The bus port is explicit: port + 10000 may not exist.
                    "--cluster-port".into(),
                    free_port()?.to_string(),
                ])
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nodes: Vec<String> = masters
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        let cluster = RedisCluster { masters };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in self.node_urls() {
            loop {
                let info: redis::RedisResult<String> = redis::Client::open(url.as_str())
                    .and_then(|client| client.get_connection())
                    .and_then(|mut conn| redis::cmd("CLUSTER").arg("INFO").query(&mut conn));
                if info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the bench's Redis Cluster did not become ok ({url})");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// `REDIS_URL` for the services: `redis+cluster://h1:p1,h2:p2,h3:p3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .masters
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The URL of each master.
    pub fn node_urls(&self) -> Vec<String> {
        self.masters.iter().map(RedisProc::url).collect()
    }
}

/// Empties every node (`FLUSHALL`): a fresh database goes with empty
/// counters.
pub fn flush_redis(node_urls: &[String]) -> anyhow::Result<()> {
    for url in node_urls {
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        redis::cmd("FLUSHALL").exec(&mut conn)?;
    }
    Ok(())
}

/// `used_memory` of `INFO memory`, summed over the nodes, in bytes.
pub fn used_memory(node_urls: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for url in node_urls {
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn)?;
        let used = info
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .with_context(|| format!("no used_memory in INFO memory of {url}"))?;
        total += used;
    }
    Ok(total)
}

/// How a service under measurement logs.
#[derive(Clone, Debug)]
pub enum Logging {
    /// `RUST_LOG=warn`: only warnings and errors, to the bench's standard
    /// error (what every measurement uses unless it says otherwise).
    Quiet,
    /// What docs/systemd/common.env.example ships: `RUST_LOG=info` and
    /// `LOG_FORMAT=json`, so an access-log line per request, written to this
    /// file (under systemd they go to journald, whose own CPU is not counted).
    Shipped(PathBuf),
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
        Service::start_logging(
            bin_dir,
            binary,
            args,
            database_url,
            redis_url,
            &Logging::Quiet,
        )
        .await
    }

    /// [`Service::start`] logging as `logging` says.
    pub async fn start_logging(
        bin_dir: &str,
        binary: &str,
        args: &[&str],
        database_url: &str,
        redis_url: &str,
        logging: &Logging,
    ) -> anyhow::Result<Service> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let path = format!("{bin_dir}/{binary}");
        let mut command = Command::new(&path);
        command
            .args(args)
            .args(["--listen", &listen])
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .stdout(Stdio::null());
        match logging {
            Logging::Quiet => {
                command.env("RUST_LOG", "warn");
            }
            Logging::Shipped(file) => {
                let log = std::fs::File::create(file)
                    .with_context(|| format!("creating {}", file.display()))?;
                command
                    .env("RUST_LOG", "info")
                    .env("LOG_FORMAT", "json")
                    .stderr(log);
            }
        }
        let child = command
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

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
