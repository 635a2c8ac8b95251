//! Redis for tests: the shared standalone server, private servers, and a real
//! Redis Cluster.
//!
//! - [`redis_url`]: the standalone Redis on `REDIS_URL` (default
//!   `redis://127.0.0.1:6379`), checked with `PING`; a test that needs it
//!   fails, saying how to start it, when it is not there.
//! - [`RedisServer::start`]: a private `redis-server` on a free port, for tests
//!   that must stop or stall a server without disturbing others.
//! - [`cluster`]: one Redis Cluster (3 masters, 3 replicas) per test process,
//!   started from `redis-server` and `redis-cli --cluster create` on free
//!   ports, shared by every test of the process.
//! - [`RedisCluster::start_private`]: a cluster of one test's own, with a
//!   short node timeout, for tests that kill a master and watch its replica
//!   take over (`kill_node`, `takeover`, `wait_promoted`).
//!
//! Every server started here runs under a small shell watchdog,
//! `sh -c 'redis-server ARGS & pid=$!; read _; kill -9 $pid; rm -rf DIR'`,
//! whose standard input is a pipe only this process can write to. When this
//! process ends, however it ends (even `SIGKILL`), the pipe closes, `read`
//! returns, and the watchdog kills its server and removes its directory. So
//! no server outlives the tests, although Rust never drops statics.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::process::send_signal;

/// `REDIS_URL` when the environment does not set it.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// How to start the shared standalone Redis, for failure messages.
pub const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
     --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// The standalone Redis for tests: `REDIS_URL`, or [`DEFAULT_REDIS_URL`].
///
/// # Panics
/// When it does not answer `PING`, with a message saying how to start it.
/// Tests never skip silently.
pub fn redis_url() -> String {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let url = std::env::var("REDIS_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
        match ping(&url) {
            Ok(()) => Ok(url),
            Err(error) => Err(format!(
                "Redis is not reachable at REDIS_URL={url}: {error}.\n\
                 Start it with:\n    {START_REDIS}\n\
                 or point REDIS_URL at a running Redis."
            )),
        }
    });
    match checked {
        Ok(url) => url.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// A raw connection to `url` with short timeouts, for tests' own commands.
pub fn connection(url: &str) -> redis::Connection {
    try_connection(url).unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

fn try_connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    connection.set_read_timeout(Some(Duration::from_secs(10)))?;
    connection.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(connection)
}

fn ping(url: &str) -> redis::RedisResult<()> {
    let mut connection = try_connection(url)?;
    redis::cmd("PING").query::<String>(&mut connection)?;
    Ok(())
}

/// A `redis-server` process started by these helpers, killed when this
/// process ends (see the module docs) or when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// The watchdog shell; its standard input stays open while the server
    /// should live.
    watchdog: Mutex<Child>,
    /// The extra arguments it was started with, so [`Self::restart`]
    /// starts the same kind of server.
    extra_args: Vec<String>,
    /// Its `--requirepass`, if it was given one: [`Self::url`] carries it.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a standalone `redis-server` on a free port.
    ///
    /// # Panics
    /// When no server could be started (with its log).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a standalone `redis-server` on a free port with extra
    /// arguments (`{dir}` and `{port}` in them stand for this server's).
    /// With `--requirepass PASSWORD`, [`Self::url`] carries the password, so
    /// every helper here still reaches the server.
    ///
    /// # Panics
    /// When no server could be started (with its log).
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        let mut last_failure = String::new();
        for _ in 0..20 {
            let port = free_port_pair();
            match RedisServer::try_start(port, extra_args) {
                Ok(server) => return server,
                // Another process took the port first: try another.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("could not start redis-server on a free port: {last_failure}");
    }

    fn try_start(port: u16, extra_args: &[&str]) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(format!(
            "election-redis-{}-{port}-{:x}",
            std::process::id(),
            random()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let log = dir.join("redis.log");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
            "--logfile",
            &log.display().to_string(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        // `{dir}` and `{port}` in extra arguments stand for this server's.
        args.extend(extra_args.iter().map(|arg| {
            arg.replace("{dir}", &dir.display().to_string())
                .replace("{port}", &port.to_string())
        }));
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; read _; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$0""#)
            .arg(&dir)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh to start redis-server: {e}"))?;
        let password = extra_args
            .iter()
            .position(|arg| *arg == "--requirepass")
            .and_then(|at| extra_args.get(at + 1))
            .map(|password| (*password).to_owned());
        let server = RedisServer {
            port,
            dir,
            watchdog: Mutex::new(watchdog),
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            password,
        };
        server.wait_ready(&log)?;
        Ok(server)
    }

    /// Waits until the server's own log says it is ready (so a server of
    /// another process on the same port is never mistaken for ours).
    fn wait_ready(&self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return Ok(());
            }
            let failed = text.contains("Address already in use")
                || text.contains("Could not create server TCP listening socket")
                || text.contains("Failed listening");
            let exited = self
                .watchdog
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .try_wait()
                .ok()
                .flatten()
                .is_some();
            if failed || exited || Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} did not start; its log:\n{text}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:<port>`, or `redis://:<password>@…`
    /// when it requires a password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The server's process id (from `INFO server`).
    pub fn pid(&self) -> u32 {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut connection(&self.url()))
            .expect("INFO server");
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("INFO server has process_id")
    }

    /// Stops the server in its tracks (`SIGSTOP`): connections open and
    /// commands go unanswered, as with a stalled server.
    pub fn pause(&self) -> u32 {
        let pid = self.pid();
        send_signal(pid, "STOP");
        pid
    }

    /// Lets a paused server go on (`SIGCONT`).
    pub fn resume(&self, pid: u32) {
        send_signal(pid, "CONT");
    }

    /// Kills the server with SIGKILL (as a crash would) and waits until its
    /// port refuses connections. Everything it held is gone.
    pub fn kill(&mut self) {
        let pid = self.pid();
        send_signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis-server {pid} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts an empty server on the same port again (after [`Self::kill`]),
    /// with the same extra arguments.
    ///
    /// # Panics
    /// When the port was taken in the meantime or the server does not start.
    pub fn restart(&mut self) {
        let port = self.port;
        let extra_args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let fresh = RedisServer::try_start(port, &extra_args)
            .unwrap_or_else(|failure| panic!("cannot restart redis-server on {port}: {failure}"));
        // Dropping the old value closes its watchdog (the server is dead).
        *self = fresh;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let mut watchdog = self
            .watchdog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Closing the pipe tells the watchdog to kill the server and remove
        // its directory.
        drop(watchdog.stdin.take());
        let _ = watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of 3 masters and 3 replicas on free local ports.
#[derive(Debug)]
pub struct RedisCluster {
    servers: Vec<RedisServer>,
    /// Ports of the masters, as `redis-cli --cluster create` chose them.
    masters: Vec<u16>,
}

/// The Redis Cluster of this test process, started on first use.
///
/// # Panics
/// When the cluster cannot be started (with the reason and logs).
pub fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(5000))
}

impl RedisCluster {
    /// A Redis Cluster of this test's own (3 masters, 3 replicas), for tests
    /// that kill masters: never kill nodes of the shared [`cluster`].
    /// `node_timeout_ms` is `cluster-node-timeout`: how long a node may be
    /// unreachable before it is failed and its replica takes over (the
    /// shared cluster uses 5000; 1000-2000 makes a failover quick).
    ///
    /// # Panics
    /// When the cluster cannot be started (with the reason and logs).
    pub fn start_private(node_timeout_ms: u32) -> RedisCluster {
        let cluster = RedisCluster::start(node_timeout_ms);
        // A replica that never synchronised refuses to take over, and the
        // first full synchronisation waits `repl-diskless-sync-delay`
        // (5 s by default; 0 on these nodes): wait for every link.
        let deadline = Instant::now() + Duration::from_secs(30);
        for server in &cluster.servers {
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut connection(&server.url()))
                    .expect("INFO replication");
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} did not synchronise with its master: {info}",
                    server.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    fn start(node_timeout_ms: u32) -> RedisCluster {
        let node_timeout = node_timeout_ms.to_string();
        let servers: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "{dir}/nodes-{port}.conf",
                    "--cluster-node-timeout",
                    &node_timeout,
                    // Replicas synchronise at once instead of after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addresses: Vec<String> = servers
            .iter()
            .map(|server| format!("127.0.0.1:{}", server.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed to start a Redis Cluster");
        if !output.status.success() {
            panic!(
                "redis-cli --cluster create {} failed ({}):\n{}{}",
                addresses.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut cluster = RedisCluster {
            servers,
            masters: Vec::new(),
        };
        cluster.wait_ok();
        cluster.masters = cluster.find_masters();
        cluster
    }

    /// Waits until every node says `cluster_state:ok` with every slot served
    /// and all six nodes known.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut last = String::new();
            let all_ok = self.servers.iter().all(|server| {
                let info = try_connection(&server.url()).and_then(|mut connection| {
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut connection)
                });
                let nodes = try_connection(&server.url()).and_then(|mut connection| {
                    redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query::<String>(&mut connection)
                });
                match info.and_then(|info| Ok((info, nodes?))) {
                    Ok((info, nodes)) => {
                        let ok = info.contains("cluster_state:ok")
                            && info.contains("cluster_slots_ok:16384")
                            && info.contains("cluster_known_nodes:6")
                            && masters_in(&nodes).len() == 3
                            && nodes.lines().filter(|line| line.contains("slave")).count() == 3;
                        if !ok {
                            last = format!("port {}: {info}\n{nodes}", server.port);
                        }
                        ok
                    }
                    Err(error) => {
                        last = format!("port {}: {error}", server.port);
                        false
                    }
                }
            });
            if all_ok {
                return;
            }
            if Instant::now() > deadline {
                panic!("the Redis Cluster did not become ok within 60 s; last seen: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find_masters(&self) -> Vec<u16> {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut connection(&self.servers[0].url()))
            .expect("CLUSTER NODES");
        let masters = masters_in(&nodes);
        assert_eq!(masters.len(), 3, "expected 3 masters in:\n{nodes}");
        masters
    }

    /// `redis://` URLs of the masters.
    pub fn urls(&self) -> Vec<String> {
        self.masters
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// `redis://` URLs of every node, masters and replicas.
    pub fn all_urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }

    /// The cluster as one `REDIS_URL`: `redis+cluster://127.0.0.1:p1,...`.
    pub fn target_url(&self) -> String {
        let nodes: Vec<String> = self
            .masters
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Moves `slot` (with its keys) from its master to another master, as
    /// resharding does: `SETSLOT IMPORTING/MIGRATING`, `MIGRATE` the keys,
    /// then `SETSLOT NODE` everywhere. Clients that cached the old map get
    /// `MOVED` afterwards. Returns the (old, new) master ports.
    ///
    /// # Panics
    /// On any failure of the commands.
    pub fn move_slot(&self, slot: u16) -> (u16, u16) {
        let slot_move = self.begin_slot_move(slot);
        slot_move.migrate_keys();
        let ports = (slot_move.source_port(), slot_move.destination_port());
        slot_move.finish();
        ports
    }

    /// Starts moving `slot` from its master to the next master: the
    /// destination is `IMPORTING` it and the source `MIGRATING` it, so the
    /// source answers `ASK` for keys it no longer has. Finish with
    /// [`SlotMove::finish`].
    pub fn begin_slot_move(&self, slot: u16) -> SlotMove {
        let ids: Vec<(u16, String)> = self
            .masters
            .iter()
            .map(|&port| {
                let id: String = redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query(&mut connection(&port_url(port)))
                    .expect("CLUSTER MYID");
                (port, id)
            })
            .collect();
        let owner = self.master_of_slot(slot);
        let source = ids
            .iter()
            .position(|(port, _)| *port == owner)
            .expect("the owner of a slot is a master");
        let destination = (source + 1) % ids.len();
        let slot_move = SlotMove {
            slot,
            source: ids[source].clone(),
            destination: ids[destination].clone(),
            masters: ids,
        };
        slot_move.setslot(slot_move.destination.0, "IMPORTING", &slot_move.source.1);
        slot_move.setslot(slot_move.source.0, "MIGRATING", &slot_move.destination.1);
        slot_move
    }

    /// The port of the master serving `slot`, according to the first master.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        master_of_slot_according_to(&self.urls()[0], slot).expect("slot is served")
    }

    /// The server on `port` (to pause or resume it).
    ///
    /// # Panics
    /// When no node of this cluster has that port.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|server| server.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on {port}"))
    }

    /// The masters serving slots now, according to the first node that
    /// answers (after a failover, a promoted replica is among them and the
    /// dead master is not).
    pub fn current_masters(&self) -> Vec<u16> {
        for server in &self.servers {
            let nodes = try_connection(&server.url()).and_then(|mut connection| {
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query::<String>(&mut connection)
            });
            if let Ok(nodes) = nodes {
                return masters_in(&nodes);
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES");
    }

    /// The port of the replica of the master on `master`.
    ///
    /// # Panics
    /// When it has none.
    pub fn replica_of(&self, master: u16) -> u16 {
        let mut conn = connection(&port_url(master));
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut conn)
            .expect("CLUSTER MYID");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut conn)
            .expect("CLUSTER NODES");
        nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let is_replica = fields.get(2)?.split(',').any(|flag| flag == "slave");
                if !is_replica || *fields.get(3)? != id {
                    return None;
                }
                let address = fields.get(1)?.split('@').next()?;
                address.rsplit_once(':')?.1.parse().ok()
            })
            .unwrap_or_else(|| panic!("master {master} has no replica in:\n{nodes}"))
    }

    /// Kills the node on `port` with SIGKILL (a crash: what it did not
    /// replicate is gone).
    pub fn kill_node(&mut self, port: u16) {
        self.servers
            .iter_mut()
            .find(|server| server.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on {port}"))
            .kill();
    }

    /// `CLUSTER FAILOVER TAKEOVER` on the replica on `replica`: it becomes
    /// the master of its master's slots at once, without the agreement of
    /// the other masters and whatever it missed of its master's writes.
    pub fn takeover(&self, replica: u16) {
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .arg("TAKEOVER")
            .exec(&mut connection(&port_url(replica)))
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER TAKEOVER on {replica}: {e}"));
    }

    /// Waits until `replica` is a master serving slots according to every
    /// node still alive, and each of them says `cluster_state:ok` with all
    /// 16384 slots served.
    ///
    /// # Panics
    /// After `timeout`, with what the nodes said last.
    pub fn wait_promoted(&self, replica: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            let mut alive = 0;
            let agreed = self.servers.iter().all(|server| {
                let Ok(mut conn) = try_connection(&server.url()) else {
                    // A killed node.
                    return true;
                };
                alive += 1;
                let info = redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut conn);
                let nodes = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query::<String>(&mut conn);
                match (info, nodes) {
                    (Ok(info), Ok(nodes)) => {
                        let ok = info.contains("cluster_state:ok")
                            && info.contains("cluster_slots_ok:16384")
                            && masters_in(&nodes).contains(&replica);
                        if !ok {
                            last = format!("port {}: {info}\n{nodes}", server.port);
                        }
                        ok
                    }
                    (info, nodes) => {
                        last = format!("port {}: {info:?} {nodes:?}", server.port);
                        false
                    }
                }
            });
            if agreed && alive > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{replica} was not promoted within {timeout:?}; last seen: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A slot being moved between two masters (see
/// [`RedisCluster::begin_slot_move`]).
#[derive(Debug)]
pub struct SlotMove {
    slot: u16,
    /// Port and node id.
    source: (u16, String),
    destination: (u16, String),
    masters: Vec<(u16, String)>,
}

impl SlotMove {
    /// The master the slot leaves.
    pub fn source_port(&self) -> u16 {
        self.source.0
    }

    /// The master the slot goes to.
    pub fn destination_port(&self) -> u16 {
        self.destination.0
    }

    /// `MIGRATE`s every key of the slot still on the source.
    pub fn migrate_keys(&self) {
        let mut source = connection(&port_url(self.source.0));
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(self.slot)
                .arg(100)
                .query(&mut source)
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                return;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.destination.0)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec(&mut source)
                .expect("MIGRATE");
        }
    }

    /// Migrates what is left and gives the slot to the destination on every
    /// master, then waits until all of them agree.
    pub fn finish(self) {
        self.migrate_keys();
        let destination_id = self.destination.1.clone();
        self.setslot(self.destination.0, "NODE", &destination_id);
        self.setslot(self.source.0, "NODE", &destination_id);
        for (port, _) in &self.masters {
            if *port != self.source.0 && *port != self.destination.0 {
                self.setslot(*port, "NODE", &destination_id);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let views: Vec<Option<u16>> = self
                .masters
                .iter()
                .map(|(port, _)| master_of_slot_according_to(&port_url(*port), self.slot))
                .collect();
            if views.iter().all(|view| *view == Some(self.destination.0)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slot {} did not settle on its new master: {views:?}",
                self.slot
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn setslot(&self, port: u16, state: &str, id: &str) {
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot)
            .arg(state)
            .arg(id)
            .exec(&mut connection(&port_url(port)))
            .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {} {state} on {port}: {e}", self.slot));
    }
}

fn port_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// The ports of the masters serving slots in a `CLUSTER NODES` reply
/// (`<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>..`).
fn masters_in(nodes: &str) -> Vec<u16> {
    let mut masters: Vec<u16> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_master = fields.get(2)?.split(',').any(|flag| flag == "master");
            if !is_master || fields.len() <= 8 {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            address.rsplit_once(':')?.1.parse().ok()
        })
        .collect();
    masters.sort_unstable();
    masters
}

/// Reads `CLUSTER SLOTS` on `url` and finds the master port of `slot`.
fn master_of_slot_according_to(url: &str, slot: u16) -> Option<u16> {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut connection(url))
        .expect("CLUSTER SLOTS");
    for range in ranges {
        let redis::Value::Array(range) = range else {
            continue;
        };
        let (
            Some(redis::Value::Int(start)),
            Some(redis::Value::Int(end)),
            Some(redis::Value::Array(master)),
        ) = (range.first(), range.get(1), range.get(2))
        else {
            continue;
        };
        if (*start..=*end).contains(&i64::from(slot))
            && let Some(redis::Value::Int(port)) = master.get(1)
        {
            return u16::try_from(*port).ok();
        }
    }
    None
}

/// A port in 20000..=29999 whose cluster bus port (+10000) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..1000 {
        let port = 20000 + (random() % 10000) as u16;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free pair of ports (p, p + 10000) found in 20000..=29999");
}

fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
