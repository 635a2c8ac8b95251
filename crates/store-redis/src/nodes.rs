//! Sending pipelines to one Redis server or to the masters of a Cluster.
//!
//! [`Nodes::run`] takes a list of commands, each with the hash slot of its
//! keys, and answers each one. It writes one pipeline per node, to every node
//! before reading any reply, so a batch costs one round trip per node (the
//! nodes work in parallel), whatever its size.
//!
//! Why route by hand rather than through the `redis` crate's synchronous
//! `ClusterConnection`: its pipelines refuse `EVALSHA` and `MGET`, and a
//! pipeline there fails as a whole on the first error, while the tally needs
//! every command's own answer (one group's script may fail while the others
//! moved their counters). So this module keeps the slot map itself:
//! - the map comes from `CLUSTER SLOTS`, read lazily on first use, and again
//!   after a `MOVED` reply or an I/O error (a failover may have moved slots);
//! - `MOVED` commands are sent again after the refresh, `ASK` commands are
//!   sent to the named node preceded by `ASKING`;
//! - `NOSCRIPT` (a node restarted, promoted, or `SCRIPT FLUSH`ed) loads the
//!   script on every master and sends the command again;
//! - `TRYAGAIN` (a script whose keys a slot migration has split between two
//!   nodes) is sent again after a short pause, 10 ms times the round;
//! - these retries are bounded ([`MAX_ATTEMPTS`]); what still fails is
//!   answered with its error, which the tally turns into `Unavailable`.
//!
//! Connections are pooled per node (idle ones kept up to `pool_size`), so
//! concurrent callers never wait on one another's connection. A connection
//! that failed is closed rather than returned: its stream may be out of step.
//! Every connection has connect, read and write timeouts, so a dead or stalled
//! node costs at most about one timeout, never a hang.
//!
//! # Nodes that may evict keys
//!
//! Every new connection asks its node `INFO memory` before it is used (so at
//! the first use of a node, and again after every reconnect: a restart, a
//! failover, a connection that failed) and keeps the node's
//! `maxmemory-policy` ([`crate::policy`]). [`Nodes::run_writes`] writes
//! nothing while any master's last check found an `allkeys-*` policy, and a
//! pipeline of writes is never sent on a connection to such a node (a node
//! reached anew in the middle of a batch, after a failover, is checked
//! before anything is written to it). The verdict is cached per node, so the
//! hot path adds no round trip: it is read again only on a new connection,
//! when it is older than [`POLICY_RECHECK`] (a `CONFIG SET` at run time), or,
//! while it refuses writes, when it is older than [`EVICTING_RECHECK`] (so a
//! fixed policy is seen within about a second).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::{
    Cmd, Connection, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    ServerErrorKind, Value,
};

use crate::error::RedisStoreError;
use crate::keys::{self, SLOTS};
use crate::policy;
use crate::target::{RedisOptions, RedisTarget, redact};

/// How many times one command is sent at most (the first time included),
/// following redirections and reloading the script in between.
pub(crate) const MAX_ATTEMPTS: usize = 4;

/// The pause before sending a `TRYAGAIN` command again, times the round
/// (so at most 10 + 20 + 30 ms within one call).
const TRY_AGAIN_PAUSE: Duration = Duration::from_millis(10);

/// How long a node's `maxmemory-policy` verdict is trusted without a new
/// connection: a policy changed at run time (`CONFIG SET`) is seen within it.
pub(crate) const POLICY_RECHECK: Duration = Duration::from_secs(60);

/// How soon an evicting verdict, which refuses every write, is checked again:
/// a fixed policy is seen within it.
pub(crate) const EVICTING_RECHECK: Duration = Duration::from_secs(1);

/// One command to run, with where it must run.
pub(crate) struct Request {
    /// The command.
    pub command: Cmd,
    /// Its name, for errors (`EVALSHA`, `SADD`...).
    pub name: &'static str,
    /// The hash slot of its keys (all in one slot). Standalone ignores it.
    pub slot: u16,
}

/// A Redis server to connect to.
#[derive(Clone, Debug)]
struct Node {
    /// `host:port`, the pool's key and the name errors carry.
    label: String,
    /// How to connect (address, credentials, database).
    info: ConnectionInfo,
}

/// Where each slot is served.
#[derive(Debug)]
struct Topology {
    /// The masters (standalone: the one server).
    nodes: Vec<Node>,
    /// For a Cluster, the index in `nodes` of each slot's master
    /// ([`UNSERVED`] where none); `None` for standalone, where every slot is
    /// `nodes[0]`.
    slots: Option<Vec<u16>>,
}

/// A slot no master serves.
const UNSERVED: u16 = u16::MAX;

impl Topology {
    fn node_for(&self, slot: u16) -> Option<&Node> {
        match &self.slots {
            None => self.nodes.first(),
            Some(slots) => match slots.get(usize::from(slot)) {
                Some(&UNSERVED) | None => None,
                Some(&index) => self.nodes.get(usize::from(index)),
            },
        }
    }

    fn unserved_slot(&self) -> Option<u16> {
        let slots = self.slots.as_ref()?;
        let slot = slots.iter().position(|&index| index == UNSERVED)?;
        u16::try_from(slot).ok()
    }
}

/// Standalone or Cluster, with what each needs to find its nodes.
enum Mode {
    /// The one server's map, fixed.
    Standalone(Arc<Topology>),
    /// The nodes given in the URL, asked for the slot map when no known
    /// master answers.
    Cluster { seeds: Vec<Node> },
}

/// The connections to Redis and the routing of commands.
pub(crate) struct Nodes {
    mode: Mode,
    options: RedisOptions,
    /// The Lua sources run by `EVALSHA`, all loaded on `NOSCRIPT`.
    scripts: &'static [&'static str],
    /// The Cluster's slot map; `None` until first needed.
    topology: RwLock<Option<Arc<Topology>>>,
    /// Set when the slot map may be wrong (a `MOVED` reply, a node that
    /// failed): the next run reads it again.
    stale: AtomicBool,
    /// Idle connections per node label.
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    /// Requests written to any node (a pipeline counts once), for
    /// [`Nodes::round_trips`].
    round_trips: AtomicU64,
    /// The last `maxmemory-policy` check of each node, by label.
    policies: Mutex<HashMap<String, PolicyCheck>>,
}

/// What the last check of one node's `maxmemory-policy` found.
#[derive(Clone, Debug)]
struct PolicyCheck {
    /// The policy `INFO memory` named; `None` when the node could not be
    /// asked, refused `INFO`, or named none (then writes are not refused).
    policy: Option<String>,
    /// When it was checked (or last tried).
    at: Instant,
}

impl PolicyCheck {
    /// The policy, if it may evict our keys.
    fn evicting(&self) -> Option<&str> {
        self.policy.as_deref().filter(|p| policy::is_evicting(p))
    }

    /// Whether it must be checked again before it is trusted.
    fn is_stale(&self) -> bool {
        let trusted_for = if self.evicting().is_some() {
            EVICTING_RECHECK
        } else {
            POLICY_RECHECK
        };
        self.at.elapsed() >= trusted_for
    }
}

/// A command's answer, or why there is none.
pub(crate) type Reply = Result<Replied, RedisStoreError>;

/// A command's answer and who gave it.
#[derive(Clone, Debug)]
pub(crate) struct Replied {
    /// The node that answered, `host:port`.
    pub node: Arc<str>,
    /// Its answer (never an error reply).
    pub value: Value,
}

impl Replied {
    /// An error saying this reply was not of the expected shape.
    pub(crate) fn unexpected(&self, command: &str) -> RedisStoreError {
        unexpected_reply(&self.node, command, &self.value)
    }
}

/// A witness token: this process and the time, unique enough to tell one
/// setting of a witness key from the next.
fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// An error saying `value`, from `node`, was not what `command` should return.
pub(crate) fn unexpected_reply(node: &str, command: &str, value: &Value) -> RedisStoreError {
    let mut reply = format!("{value:?}");
    if reply.len() > 200 {
        let mut end = 200;
        while !reply.is_char_boundary(end) {
            end -= 1;
        }
        reply.truncate(end);
        reply.push_str("...");
    }
    RedisStoreError::UnexpectedReply {
        node: node.to_owned(),
        command: command.to_owned(),
        reply,
    }
}

/// One send of one command.
#[derive(Clone)]
struct Attempt {
    /// The index of the request.
    index: usize,
    /// Set after an `ASK` redirection: send to this node, after `ASKING`.
    ask: Option<Node>,
}

/// A node's pipeline, written and not read yet.
struct InFlight {
    node: Node,
    connection: Connection,
    /// Whether the connection came from the pool (a dropped one is then
    /// replaced and the pipeline sent again).
    reused: bool,
    /// The attempts in the pipeline, in order.
    attempts: Vec<Attempt>,
}

/// What reading one round's replies collects.
struct Round<'a> {
    requests: &'a [Request],
    replies: &'a mut [Option<Reply>],
    /// The attempts to send again in the next round.
    again: Vec<Attempt>,
    /// Whether a command was answered `TRYAGAIN` (the next round waits).
    try_again: bool,
    /// Whether a command was answered `NOSCRIPT` (the script is loaded
    /// before the next round).
    load_script: bool,
}

impl Nodes {
    /// Prepares to talk to `target`, without connecting yet (a Redis that is
    /// down at startup only makes the first commands fail).
    pub(crate) fn new(
        target: &RedisTarget,
        options: RedisOptions,
        scripts: &'static [&'static str],
    ) -> Result<Nodes, RedisStoreError> {
        if options.connect_timeout.is_zero() || options.response_timeout.is_zero() {
            return Err(RedisStoreError::InvalidOptions {
                reason: "connect and response timeouts must be longer than zero".into(),
            });
        }
        let mode = match target {
            RedisTarget::Standalone(url) => Mode::Standalone(Arc::new(Topology {
                nodes: vec![node_from_url(url)?],
                slots: None,
            })),
            RedisTarget::Cluster(urls) => {
                let seeds = urls
                    .iter()
                    .map(|url| node_from_url(url))
                    .collect::<Result<Vec<_>, _>>()?;
                if seeds.is_empty() {
                    return Err(RedisStoreError::InvalidOptions {
                        reason: "a cluster needs at least one node url".into(),
                    });
                }
                Mode::Cluster { seeds }
            }
        };
        Ok(Nodes {
            mode,
            options,
            scripts,
            topology: RwLock::new(None),
            stale: AtomicBool::new(false),
            idle: Mutex::new(HashMap::new()),
            round_trips: AtomicU64::new(0),
            policies: Mutex::new(HashMap::new()),
        })
    }

    /// How many requests (pipelines or single commands) were written to any
    /// node so far, connection handshakes aside.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// True for a Cluster: counters must then be grouped by slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster { .. })
    }

    /// Runs `requests` (reads), one pipeline per node, and answers each in
    /// order.
    pub(crate) fn run(&self, requests: &[Request]) -> Vec<Reply> {
        self.run_with(requests, false)
    }

    /// Runs `requests` that write, like [`Nodes::run`], unless a master may
    /// evict keys: then nothing is sent and every request is answered
    /// [`RedisStoreError::EvictingPolicy`] (see the module docs).
    pub(crate) fn run_writes(&self, requests: &[Request]) -> Vec<Reply> {
        if let Some(error) = self.evicting_master() {
            return requests.iter().map(|_| Err(error.clone())).collect();
        }
        self.run_with(requests, true)
    }

    /// The error refusing writes when some master's policy may evict keys,
    /// checking first the masters whose verdict is missing or stale. A master
    /// that cannot be reached now keeps its last verdict (the commands sent
    /// to it fail on their own), so a dead node does not stop the others.
    pub(crate) fn evicting_master(&self) -> Option<RedisStoreError> {
        // Without a slot map, the commands fail on their own.
        let topology = self.topology().ok()?;
        for node in &topology.nodes {
            let stale = self
                .policies()
                .get(&node.label)
                .is_none_or(PolicyCheck::is_stale);
            if stale && self.check_policy(node).is_err() {
                self.touch_policy(node);
            }
        }
        let policies = self.policies();
        topology.nodes.iter().find_map(|node| {
            let policy = policies.get(&node.label)?.evicting()?;
            Some(RedisStoreError::EvictingPolicy {
                node: node.label.clone(),
                policy: policy.to_owned(),
            })
        })
    }

    /// The masters known now whose last check found an evicting policy, with
    /// it: from the cache, without a round trip (for metrics and readiness).
    pub(crate) fn evicting_nodes(&self) -> Vec<(String, String)> {
        let masters = match &self.mode {
            Mode::Standalone(topology) => Arc::clone(topology),
            Mode::Cluster { .. } => {
                let current = self
                    .topology
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match current {
                    Some(topology) => topology,
                    None => return Vec::new(),
                }
            }
        };
        let policies = self.policies();
        masters
            .nodes
            .iter()
            .filter_map(|node| {
                let policy = policies.get(&node.label)?.evicting()?;
                Some((node.label.clone(), policy.to_owned()))
            })
            .collect()
    }

    /// Reads `node`'s policy now, on a pooled connection or a new one (which
    /// reads it as it connects).
    fn check_policy(&self, node: &Node) -> Result<(), RedisStoreError> {
        loop {
            let (mut connection, reused) = self.checkout(node)?;
            if !reused {
                self.give_back(node, connection);
                return Ok(());
            }
            match self.read_policy(node, &mut connection) {
                Ok(()) => {
                    self.give_back(node, connection);
                    return Ok(());
                }
                // An idle connection the server had closed: try a new one.
                Err(RedisStoreError::Connect { source, .. }) if source.is_connection_dropped() => {
                    continue;
                }
                Err(error) => {
                    self.node_failed();
                    return Err(error);
                }
            }
        }
    }

    /// Asks `node` for `INFO memory` on `connection` and keeps its policy.
    /// Fails only when the connection is broken; a refused `INFO` (an ACL)
    /// leaves the policy unknown and writes allowed, with a warning.
    fn read_policy(&self, node: &Node, connection: &mut Connection) -> Result<(), RedisStoreError> {
        let policy = match redis::cmd("INFO").arg("memory").query::<String>(connection) {
            Ok(info) => policy::maxmemory_policy(&info).map(str::to_owned),
            Err(source)
                if source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal() =>
            {
                return Err(RedisStoreError::Connect {
                    node: node.label.clone(),
                    source,
                });
            }
            Err(error) => {
                let first = self
                    .policies()
                    .get(&node.label)
                    .is_none_or(|check| check.policy.is_some());
                if first {
                    tracing::warn!(
                        redis.node = %node.label,
                        %error,
                        "cannot read the maxmemory-policy of a redis node (INFO memory was refused); \
                         whether it may evict keys is not checked"
                    );
                }
                None
            }
        };
        self.record_policy(node, policy);
        Ok(())
    }

    /// Keeps a node's policy, logging when it changes to or from one that
    /// may evict keys.
    fn record_policy(&self, node: &Node, policy: Option<String>) {
        let previous = self.policies().insert(
            node.label.clone(),
            PolicyCheck {
                policy: policy.clone(),
                at: Instant::now(),
            },
        );
        let was_evicting = previous.as_ref().and_then(PolicyCheck::evicting).is_some();
        match policy.as_deref() {
            Some(found) if policy::is_evicting(found) && !was_evicting => tracing::warn!(
                redis.node = %node.label,
                redis.maxmemory_policy = found,
                "redis node {} has {}",
                node.label,
                policy::advice(found)
            ),
            Some(found) if !policy::is_evicting(found) && was_evicting => tracing::info!(
                redis.node = %node.label,
                redis.maxmemory_policy = found,
                "redis node {} no longer evicts keys (maxmemory-policy {found}); writing to it again",
                node.label
            ),
            _ => {}
        }
    }

    /// Notes a check that could not be made now, so it is not tried again
    /// before the verdict would be stale again (a dead node would otherwise
    /// cost a connect timeout per batch).
    fn touch_policy(&self, node: &Node) {
        self.policies()
            .entry(node.label.clone())
            .and_modify(|check| check.at = Instant::now())
            .or_insert_with(|| PolicyCheck {
                policy: None,
                at: Instant::now(),
            });
    }

    /// The evicting policy of `node` found by its last check, if any.
    fn evicting_policy_of(&self, node: &Node) -> Option<String> {
        self.policies()
            .get(&node.label)
            .and_then(PolicyCheck::evicting)
            .map(str::to_owned)
    }

    fn policies(&self) -> MutexGuard<'_, HashMap<String, PolicyCheck>> {
        // Plain values: consistent even if a holder panicked.
        self.policies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run_with(&self, requests: &[Request], writes: bool) -> Vec<Reply> {
        let mut replies: Vec<Option<Reply>> = vec![None; requests.len()];
        let mut pending: Vec<Attempt> = (0..requests.len())
            .map(|index| Attempt { index, ask: None })
            .collect();
        for round in 1..=MAX_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let topology = match self.topology() {
                Ok(topology) => topology,
                Err(error) => {
                    for attempt in pending.drain(..) {
                        replies[attempt.index] = Some(Err(error.clone()));
                    }
                    break;
                }
            };
            let mut try_again = false;
            pending = self.run_round(
                requests,
                &topology,
                pending,
                &mut replies,
                writes,
                &mut try_again,
            );
            if try_again && round < MAX_ATTEMPTS {
                std::thread::sleep(TRY_AGAIN_PAUSE * round as u32);
            }
            if !pending.is_empty() && round == MAX_ATTEMPTS {
                for attempt in pending.drain(..) {
                    let request = &requests[attempt.index];
                    replies[attempt.index] = Some(Err(RedisStoreError::Unsettled {
                        command: request.name.to_owned(),
                        slot: request.slot,
                        rounds: MAX_ATTEMPTS,
                    }));
                }
            }
        }
        replies
            .into_iter()
            .zip(requests)
            .map(|(reply, request)| {
                // Every request is answered above; this only guards against a
                // slip in that bookkeeping.
                reply.unwrap_or_else(|| {
                    Err(RedisStoreError::Unsettled {
                        command: request.name.to_owned(),
                        slot: request.slot,
                        rounds: 0,
                    })
                })
            })
            .collect()
    }

    /// Sends `attempts` once (one pipeline per node, all written before any is
    /// read), records their replies, and returns those to send again.
    fn run_round(
        &self,
        requests: &[Request],
        topology: &Topology,
        attempts: Vec<Attempt>,
        replies: &mut [Option<Reply>],
        writes: bool,
        try_again: &mut bool,
    ) -> Vec<Attempt> {
        let by_node = self.group_by_node(requests, topology, attempts, replies);
        let in_flight = self.write_pipelines(requests, by_node, replies, writes);
        let mut round = Round {
            requests,
            replies,
            again: Vec::new(),
            try_again: false,
            load_script: false,
        };
        for pipeline in in_flight {
            self.read_replies(pipeline, &mut round);
        }
        *try_again |= round.try_again;
        let Round {
            replies,
            again,
            load_script,
            ..
        } = round;
        if load_script && let Err(error) = self.load_script() {
            // The commands waiting for the script fail with the reason.
            let (failed, rest): (Vec<Attempt>, Vec<Attempt>) =
                again.into_iter().partition(|attempt| {
                    matches!(
                        &replies[attempt.index],
                        Some(Err(RedisStoreError::Refused { source, .. }))
                            if source.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript)
                    )
                });
            for attempt in failed {
                replies[attempt.index] = Some(Err(error.clone()));
            }
            return rest;
        }
        again
    }

    /// Groups `attempts` by the node each goes to, keeping the callers' order
    /// within each node. An attempt whose slot no node covers is answered
    /// [`RedisStoreError::SlotUncovered`] at once (and the map marked stale).
    fn group_by_node(
        &self,
        requests: &[Request],
        topology: &Topology,
        attempts: Vec<Attempt>,
        replies: &mut [Option<Reply>],
    ) -> BTreeMap<String, (Node, Vec<Attempt>)> {
        let mut by_node: BTreeMap<String, (Node, Vec<Attempt>)> = BTreeMap::new();
        for attempt in attempts {
            let request = &requests[attempt.index];
            let node = match &attempt.ask {
                Some(node) => node,
                None => match topology.node_for(request.slot) {
                    Some(node) => node,
                    None => {
                        replies[attempt.index] =
                            Some(Err(RedisStoreError::SlotUncovered { slot: request.slot }));
                        self.stale.store(true, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            by_node
                .entry(node.label.clone())
                .or_insert_with(|| (node.clone(), Vec::new()))
                .1
                .push(attempt);
        }
        by_node
    }

    /// Writes every node's pipeline before reading any, so the nodes work in
    /// parallel. The attempts of a node that could not be written to are
    /// answered with why.
    fn write_pipelines(
        &self,
        requests: &[Request],
        by_node: BTreeMap<String, (Node, Vec<Attempt>)>,
        replies: &mut [Option<Reply>],
        writes: bool,
    ) -> Vec<InFlight> {
        let mut in_flight = Vec::with_capacity(by_node.len());
        for (node, attempts) in by_node.into_values() {
            // Sized once for the whole pipeline (an upper bound: RESP adds at
            // most a few bytes per argument), so it is not copied as it grows.
            let size: usize = attempts
                .iter()
                .map(|attempt| {
                    requests[attempt.index]
                        .command
                        .args_iter()
                        .map(|arg| match arg {
                            redis::Arg::Simple(bytes) => bytes.len() + 26,
                            _ => 46,
                        })
                        .sum::<usize>()
                        + 26
                        + if attempt.ask.is_some() { 32 } else { 0 }
                })
                .sum();
            let mut packed = Vec::with_capacity(size);
            for attempt in &attempts {
                if attempt.ask.is_some() {
                    redis::cmd("ASKING").write_packed_command(&mut packed);
                }
                requests[attempt.index]
                    .command
                    .write_packed_command(&mut packed);
            }
            let sent = self.send(&node, &packed, requests[attempts[0].index].name, writes);
            match sent {
                Ok((connection, reused)) => in_flight.push(InFlight {
                    node,
                    connection,
                    reused,
                    attempts,
                }),
                Err(error) => {
                    if !matches!(error, RedisStoreError::EvictingPolicy { .. }) {
                        self.node_failed();
                    }
                    for attempt in attempts {
                        replies[attempt.index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        in_flight
    }

    /// Reads one node's replies, in order, into `round`; then gives the
    /// connection back, or drops it when it broke.
    fn read_replies(&self, pipeline: InFlight, round: &mut Round<'_>) {
        let InFlight {
            node,
            mut connection,
            reused,
            attempts,
        } = pipeline;
        let label: Arc<str> = Arc::from(node.label.as_str());
        let mut broken: Option<RedisStoreError> = None;
        let mut n_read = 0;
        let mut unread = Vec::new();
        for attempt in attempts {
            let request = &round.requests[attempt.index];
            if let Some(error) = &broken {
                unread.push(attempt.clone());
                round.replies[attempt.index] = Some(Err(error.clone()));
                continue;
            }
            let received = if attempt.ask.is_some() {
                // The reply to `ASKING` comes first; its error, if any,
                // shows in the command's own reply.
                connection
                    .recv_response()
                    .and_then(|_| connection.recv_response())
            } else {
                connection.recv_response()
            };
            let value = match received {
                Ok(value) => value,
                Err(source) => {
                    let error = RedisStoreError::Io {
                        node: node.label.clone(),
                        command: request.name.to_owned(),
                        source,
                    };
                    round.replies[attempt.index] = Some(Err(error.clone()));
                    unread.push(attempt);
                    broken = Some(error);
                    continue;
                }
            };
            n_read += 1;
            match value {
                Value::ServerError(server_error) => {
                    self.server_error(&node, attempt, RedisError::from(server_error), round);
                }
                value => {
                    round.replies[attempt.index] = Some(Ok(Replied {
                        node: Arc::clone(&label),
                        value,
                    }));
                }
            }
        }
        match broken {
            None => self.give_back(&node, connection),
            Some(RedisStoreError::Io { source, .. })
                if reused && n_read == 0 && source.is_connection_dropped() =>
            {
                // An idle pooled connection the server had closed (a
                // restart, an idle timeout): send again on a fresh one.
                // Safe, because every command we send is idempotent
                // (markers make the scripts so). Should the server have
                // run the first send after all, the second finds the
                // markers set and answers `Already` for what moved then.
                round.again.extend(unread);
            }
            Some(_) => self.node_failed(),
        }
    }

    /// Handles an error reply from `node`: follows `MOVED` and `ASK`
    /// redirections, sends `TRYAGAIN` and `NOSCRIPT` again (after a pause,
    /// after loading the script), and answers anything else as refused.
    fn server_error(
        &self,
        node: &Node,
        attempt: Attempt,
        error: RedisError,
        round: &mut Round<'_>,
    ) {
        let request = &round.requests[attempt.index];
        let refused = |source: RedisError| {
            Some(Err(RedisStoreError::Refused {
                node: node.label.clone(),
                command: request.name.to_owned(),
                source,
            }))
        };
        match error.kind() {
            redis::ErrorKind::Server(ServerErrorKind::Moved) => {
                // The slot map is out of date: refresh it and send
                // again where it now says.
                self.stale.store(true, Ordering::Relaxed);
                round.again.push(Attempt {
                    index: attempt.index,
                    ask: None,
                });
            }
            redis::ErrorKind::Server(ServerErrorKind::Ask) => {
                // The slot is migrating and this key has left: ask the
                // importing node, once, without changing the map.
                match error
                    .redirect_node()
                    .and_then(|(address, _)| self.node_at(address))
                {
                    Some(target) => round.again.push(Attempt {
                        index: attempt.index,
                        ask: Some(target),
                    }),
                    None => round.replies[attempt.index] = refused(error),
                }
            }
            redis::ErrorKind::Server(ServerErrorKind::TryAgain) => {
                // A multi-key command whose keys are split by a slot
                // migration in progress: it succeeds once the slot's
                // keys have moved, so send it again after a pause.
                round.replies[attempt.index] = refused(error);
                round.try_again = true;
                round.again.push(attempt);
            }
            redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                round.load_script = true;
                round.replies[attempt.index] = refused(error);
                round.again.push(attempt);
            }
            kind => {
                if matches!(
                    kind,
                    redis::ErrorKind::Server(
                        ServerErrorKind::ReadOnly | ServerErrorKind::ClusterDown
                    )
                ) {
                    // A failover moved the master, or the cluster is
                    // reconfiguring: read the map again next time.
                    self.node_failed();
                }
                round.replies[attempt.index] = refused(error);
            }
        }
    }

    /// Writes a pipeline to `node`, on a pooled connection if one is idle.
    /// An idle connection the server had closed (a restart, an idle timeout)
    /// is replaced by a fresh one at once: nothing was sent on it. A pipeline
    /// that `writes` is not sent to a node whose policy may evict keys (a new
    /// connection has just checked it).
    fn send(
        &self,
        node: &Node,
        packed: &[u8],
        command: &str,
        writes: bool,
    ) -> Result<(Connection, bool), RedisStoreError> {
        loop {
            let (mut connection, reused) = self.checkout(node)?;
            if writes && let Some(policy) = self.evicting_policy_of(node) {
                self.give_back(node, connection);
                return Err(RedisStoreError::EvictingPolicy {
                    node: node.label.clone(),
                    policy,
                });
            }
            match connection.send_packed_command(packed) {
                Ok(()) => {
                    self.round_trips.fetch_add(1, Ordering::Relaxed);
                    return Ok((connection, reused));
                }
                Err(source) if reused && source.is_connection_dropped() => continue,
                Err(source) => {
                    return Err(RedisStoreError::Io {
                        node: node.label.clone(),
                        command: command.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Checks that every master answers `PING` and, on a Cluster, that every
    /// slot is served.
    pub(crate) fn ping(&self) -> Result<(), RedisStoreError> {
        let topology = self.topology()?;
        if let Some(slot) = topology.unserved_slot() {
            self.stale.store(true, Ordering::Relaxed);
            return Err(RedisStoreError::SlotUncovered { slot });
        }
        for node in &topology.nodes {
            self.query_node(node, &redis::cmd("PING"), "PING")?;
        }
        Ok(())
    }

    /// Every master's address, `run_id` (`INFO server`) and witness token,
    /// in address order: a master restarted, or another in its place,
    /// changes its run id; a master that lost its data without restarting (a
    /// flush) changes its token. The token is the value of the master's
    /// witness key ([`keys::witness`]), set when absent (`SET NX`) in the
    /// same round trip that reads it, so the first look sets it and later
    /// looks read the same value until the key is lost. A master that may
    /// evict keys gets no `SET`: its flushes are left to the journal and the
    /// interval, as its counting is refused anyway.
    pub(crate) fn run_ids(&self) -> Result<Vec<String>, RedisStoreError> {
        let topology = self.topology()?;
        let mut ids = Vec::with_capacity(topology.nodes.len());
        for (index, node) in topology.nodes.iter().enumerate() {
            let witness = match &topology.slots {
                None => keys::witness(|_| true),
                Some(slots) => keys::witness(|slot| usize::from(slots[usize::from(slot)]) == index),
            };
            // Built once the connection is checked out: a new connection has
            // just read the node's policy, and, as for every write, nothing
            // is written to a master that may evict keys (`policy`); there
            // the witness is only read.
            let value = self.on_node(node, "INFO server", |connection| {
                let mut look = redis::pipe();
                look.cmd("INFO").arg("server");
                if let Some(witness) = &witness {
                    if self.evicting_policy_of(node).is_none() {
                        look.cmd("SET")
                            .arg(witness)
                            .arg(new_token())
                            .arg("NX")
                            .ignore();
                    }
                    look.cmd("GET").arg(witness);
                }
                look.query(connection)
            })?;
            let replies = match &value {
                Value::Array(replies) => replies.as_slice(),
                _ => &[],
            };
            let run_id = match replies.first() {
                Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
                Some(Value::VerbatimString { text, .. }) => Some(text.as_str()),
                _ => None,
            }
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.trim().strip_prefix("run_id:"))
            })
            .ok_or_else(|| unexpected_reply(&node.label, "INFO server", &value))?;
            let token = match replies.get(1) {
                Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                // No witness (a master serving no slot), or it was lost
                // between the SET and the GET: the next look tells.
                _ => String::new(),
            };
            ids.push(format!("{} {run_id} {token}", node.label));
        }
        ids.sort();
        Ok(ids)
    }

    /// Loads the scripts on every master (`SCRIPT LOAD`).
    fn load_script(&self) -> Result<(), RedisStoreError> {
        let topology = self.topology()?;
        tracing::debug!(
            redis.nodes = topology.nodes.len(),
            "loading the tally scripts after NOSCRIPT"
        );
        // Every script in one round trip per node.
        let mut load = redis::pipe();
        for script in self.scripts {
            load.cmd("SCRIPT").arg("LOAD").arg(*script);
        }
        for node in &topology.nodes {
            self.on_node(node, "SCRIPT LOAD", |connection| load.query(connection))?;
        }
        Ok(())
    }

    /// Runs one command on one node.
    fn query_node(&self, node: &Node, command: &Cmd, name: &str) -> Result<Value, RedisStoreError> {
        self.on_node(node, name, |connection| command.query(connection))
    }

    /// Runs `send` (one command or pipeline, named `name`) on a connection
    /// to `node`, and gives the connection back unless it failed.
    fn on_node(
        &self,
        node: &Node,
        name: &str,
        send: impl FnOnce(&mut Connection) -> redis::RedisResult<Value>,
    ) -> Result<Value, RedisStoreError> {
        let (mut connection, _) = self.checkout(node)?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match send(&mut connection) {
            Ok(value) => {
                self.give_back(node, connection);
                Ok(value)
            }
            Err(source) if source.is_io_error() || source.is_timeout() => {
                self.node_failed();
                Err(RedisStoreError::Io {
                    node: node.label.clone(),
                    command: name.to_owned(),
                    source,
                })
            }
            Err(source) => {
                self.give_back(node, connection);
                Err(RedisStoreError::Refused {
                    node: node.label.clone(),
                    command: name.to_owned(),
                    source,
                })
            }
        }
    }

    /// The slot map, read again if it may be out of date.
    fn topology(&self) -> Result<Arc<Topology>, RedisStoreError> {
        let seeds = match &self.mode {
            Mode::Standalone(topology) => return Ok(Arc::clone(topology)),
            Mode::Cluster { seeds } => seeds,
        };
        let current = self
            .topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(current) = &current
            && !self.stale.swap(false, Ordering::Relaxed)
        {
            return Ok(Arc::clone(current));
        }
        // Ask the known masters first (they are the freshest), then the seeds.
        let mut candidates: Vec<Node> = Vec::new();
        for node in current
            .iter()
            .flat_map(|topology| topology.nodes.iter())
            .chain(seeds)
        {
            if !candidates.iter().any(|known| known.label == node.label) {
                candidates.push(node.clone());
            }
        }
        let mut last_error = None;
        for node in &candidates {
            let value =
                match self.query_node(node, redis::cmd("CLUSTER").arg("SLOTS"), "CLUSTER SLOTS") {
                    Ok(value) => value,
                    Err(error) => {
                        last_error = Some(error);
                        continue;
                    }
                };
            match self.parse_slots(node, value) {
                Ok(topology) => {
                    let topology = Arc::new(topology);
                    // Failed candidates asked before this one marked the map
                    // stale; it is fresh now.
                    self.stale.store(false, Ordering::Relaxed);
                    tracing::debug!(
                        redis.node = %node.label,
                        redis.masters = topology.nodes.len(),
                        "read the redis cluster slot map"
                    );
                    *self
                        .topology
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&topology));
                    return Ok(topology);
                }
                Err(error) => last_error = Some(error),
            }
        }
        self.stale.store(true, Ordering::Relaxed);
        Err(RedisStoreError::Topology {
            tried: candidates
                .iter()
                .map(|node| node.label.as_str())
                .collect::<Vec<_>>()
                .join(","),
            source: last_error.map(Box::new),
        })
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..],
    /// replicas..], ..]`.
    fn parse_slots(&self, asked: &Node, value: Value) -> Result<Topology, RedisStoreError> {
        let unexpected = |what: &str| RedisStoreError::UnexpectedReply {
            node: asked.label.clone(),
            command: "CLUSTER SLOTS".into(),
            reply: what.to_owned(),
        };
        let Value::Array(ranges) = value else {
            return Err(unexpected("not an array"));
        };
        let mut nodes: Vec<Node> = Vec::new();
        let mut slots = vec![UNSERVED; usize::from(SLOTS)];
        for range in ranges {
            let Value::Array(range) = range else {
                return Err(unexpected("a slot range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (range.first(), range.get(1), range.get(2))
            else {
                return Err(unexpected("a slot range lacks start, end or master"));
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => return Err(unexpected("a master has no host")),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(unexpected("a master has no port"));
            };
            let port = u16::try_from(*port).map_err(|_| unexpected("a port is out of range"))?;
            // An empty or `?` host means "the address you reached me at".
            let host = if host.is_empty() || host == "?" {
                host_of(&asked.info).unwrap_or(host)
            } else {
                host
            };
            let label = format!("{host}:{port}");
            let index = match nodes.iter().position(|node| node.label == label) {
                Some(index) => index,
                None => {
                    nodes.push(Node {
                        label,
                        info: at(&asked.info, host, port),
                    });
                    nodes.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| unexpected("too many masters"))?;
            let (start, end) = (usize::try_from(*start), usize::try_from(*end));
            let (Ok(start), Ok(end)) = (start, end) else {
                return Err(unexpected("a slot is negative"));
            };
            if start > end || end >= slots.len() {
                return Err(unexpected("a slot range is out of bounds"));
            }
            slots[start..=end].fill(index);
        }
        if nodes.is_empty() {
            return Err(unexpected("no slot is assigned"));
        }
        Ok(Topology {
            nodes,
            slots: Some(slots),
        })
    }

    /// The node at `host:port` (from an `ASK` redirection), with the seeds'
    /// credentials.
    fn node_at(&self, address: &str) -> Option<Node> {
        let Mode::Cluster { seeds } = &self.mode else {
            return None;
        };
        let (host, port) = address.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let seed = seeds.first()?;
        Some(Node {
            label: format!("{host}:{port}"),
            info: at(&seed.info, host.to_owned(), port),
        })
    }

    /// A node failed: on a Cluster its slots may be moving to a replica, so
    /// the map is read again next time.
    fn node_failed(&self) {
        if self.is_cluster() {
            self.stale.store(true, Ordering::Relaxed);
        }
    }

    /// An idle connection to `node`, or a new one; `true` when reused. A new
    /// connection reads the node's `maxmemory-policy` first (see the module
    /// docs; not counted in [`Nodes::round_trips`], like the handshake).
    fn checkout(&self, node: &Node) -> Result<(Connection, bool), RedisStoreError> {
        if let Some(connection) = self.idle().get_mut(&node.label).and_then(Vec::pop) {
            return Ok((connection, true));
        }
        let connect_error = |source| RedisStoreError::Connect {
            node: node.label.clone(),
            source,
        };
        let client = redis::Client::open(node.info.clone()).map_err(connect_error)?;
        let mut connection = client
            .get_connection_with_timeout(self.options.connect_timeout)
            .map_err(connect_error)?;
        connection
            .set_read_timeout(Some(self.options.response_timeout))
            .and_then(|()| connection.set_write_timeout(Some(self.options.response_timeout)))
            .map_err(connect_error)?;
        self.read_policy(node, &mut connection)?;
        Ok((connection, false))
    }

    /// Returns a healthy connection to the pool (or closes it if enough are
    /// idle).
    fn give_back(&self, node: &Node, connection: Connection) {
        let mut idle = self.idle();
        let connections = idle.entry(node.label.clone()).or_default();
        if connections.len() < self.options.pool_size {
            connections.push(connection);
        }
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<String, Vec<Connection>>> {
        // The map stays consistent even if a holder panicked: it only moves
        // whole connections in and out.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn node_from_url(url: &str) -> Result<Node, RedisStoreError> {
    let info = url
        .into_connection_info()
        .map_err(|error| RedisStoreError::InvalidUrl {
            url: redact(url),
            reason: error.to_string(),
        })?;
    Ok(Node {
        label: info.addr().to_string(),
        info,
    })
}

/// `info` (credentials, database, TLS) for the node at `host:port`: a node
/// a Cluster reports is reached over TLS when the seeds are.
fn at(info: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info.clone().set_addr(addr)
}

fn host_of(info: &ConnectionInfo) -> Option<String> {
    match info.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => Some(host.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_nodes_keep_the_seeds_tls() {
        let seed = "rediss://:pw@h1:7000".into_connection_info().unwrap();
        let node = at(&seed, "h2".to_owned(), 7001);
        assert!(
            matches!(node.addr(), ConnectionAddr::TcpTls { host, port: 7001, insecure: false, .. } if host == "h2"),
            "{:?}",
            node.addr()
        );
        assert_eq!(node.redis_settings().password(), Some("pw"));
        let plain = at(
            &"redis://h1:7000".into_connection_info().unwrap(),
            "h2".into(),
            7001,
        );
        assert!(matches!(plain.addr(), ConnectionAddr::Tcp(host, 7001) if host == "h2"));
    }

    fn cluster_nodes() -> Nodes {
        let target = RedisTarget::Cluster(vec!["redis://:pw@127.0.0.1:7000".into()]);
        Nodes::new(&target, RedisOptions::DEFAULT, &["return 1"]).unwrap()
    }

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    fn master(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_become_a_slot_map() {
        let nodes = cluster_nodes();
        let Mode::Cluster { seeds } = &nodes.mode else {
            unreachable!()
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                int(0),
                int(5460),
                master("127.0.0.1", 7000),
                master("127.0.0.1", 7003),
            ]),
            Value::Array(vec![int(5461), int(10922), master("", 7001)]),
            Value::Array(vec![int(10923), int(16383), master("127.0.0.1", 7002)]),
        ]);
        let topology = nodes.parse_slots(&seeds[0], reply).unwrap();
        assert_eq!(topology.nodes.len(), 3);
        assert_eq!(topology.node_for(0).unwrap().label, "127.0.0.1:7000");
        assert_eq!(topology.node_for(5461).unwrap().label, "127.0.0.1:7001");
        assert_eq!(topology.node_for(16383).unwrap().label, "127.0.0.1:7002");
        assert_eq!(topology.unserved_slot(), None);
        // Discovered nodes keep the seed's credentials.
        assert_eq!(
            topology.nodes[2].info.redis_settings().password(),
            Some("pw")
        );
    }

    #[test]
    fn unserved_slots_are_found() {
        let nodes = cluster_nodes();
        let Mode::Cluster { seeds } = &nodes.mode else {
            unreachable!()
        };
        let reply = Value::Array(vec![Value::Array(vec![
            int(0),
            int(100),
            master("127.0.0.1", 7000),
        ])]);
        let topology = nodes.parse_slots(&seeds[0], reply).unwrap();
        assert_eq!(topology.unserved_slot(), Some(101));
        assert!(topology.node_for(200).is_none());
        assert!(nodes.parse_slots(&seeds[0], Value::Nil).is_err());
    }
}
