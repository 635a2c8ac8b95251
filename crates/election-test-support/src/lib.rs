//! Test helpers shared by the workspace's integration tests (a dev-dependency
//! only; nothing here ships).
//!
//! - [`pg`]: a fresh, empty PostgreSQL schema per test on `DATABASE_URL`
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped when the
//!   test ends.
//! - [`redis`]: the Redis on `REDIS_URL` (default `redis://127.0.0.1:6379`),
//!   and a real Redis Cluster (3 masters + 3 replicas) started from
//!   `redis-server` on free ports, once per test process.
//! - [`logs`]: the services' JSON log lines and `build_info` metric.
//! - [`process`]: free ports, signals, waiting for a condition.
//! - [`tls`]: a CA and a server certificate made per test (rcgen), for
//!   Redis and PostgreSQL servers started with TLS.
//!
//! A missing service fails the test with a message saying how to start it:
//! tests never skip silently.

pub mod logs;
pub mod pg;
pub mod process;
pub mod redis;
pub mod tls;
