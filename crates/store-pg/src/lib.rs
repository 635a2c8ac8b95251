//! The durable report log in PostgreSQL: election-core's [`ReportLog`] port
//! implemented with diesel over an r2d2 pool.
//!
//! PostgreSQL is the system of record (docs/contract.md §4): a report is committed here,
//! with synchronous commit, before ingest says yes (I1), and every revision is
//! kept forever for audit. The revision rules themselves live in
//! `election_core::rules`; this crate supplies what they need (each box's
//! latest revision, the same-numbered revision, and a unique link from each
//! revision to the one it replaces, so two batches cannot both decide a box
//! against the same latest revision) and does so for a
//! whole batch at once, because one transaction per batch is what makes
//! thousands of reports per second possible on modest hardware.
//!
//! - [`connect`] builds a lazy pool (without TLS to a server on this host
//!   unless the URL asks for it: [`without_tls_on_loopback`]), [`migrate`] /
//!   [`schema_status`] manage the embedded schema (`migrations/` at the
//!   workspace root), and [`check_schema`] is what every service calls
//!   before it starts;
//! - [`definitions`] stores election definitions (docs/contract.md §7);
//! - [`try_lock_repair`] keeps `reconcile --repair` to one per election;
//! - [`seal`] seals every election's log into a hash chain, verifies it and
//!   reads its published heads (docs/audit.md);
//! - [`PgLog`] implements [`ReportLog`] (see `record` for the batch path);
//! - [`PgHistory`] implements the core's `History` port: what the read
//!   API asks of the log (`history`);
//! - [`PgError`] says what failed and converts into the core's `StoreError`,
//!   `Unavailable` when retrying later is the remedy.
//!
//! Queries go through diesel's DSL against [`schema`] (which an integration
//! test keeps equal to the migrations), except where raw SQL is the point or
//! the DSL cannot say it (the measured hot path, analytic reads, bulk
//! `unnest` inserts, advisory locks); each module says which of its
//! statements are raw and why, and every raw statement has typed binds and
//! loads its rows into a `QueryableByName` struct.

pub mod definitions;
mod error;
pub mod history;
mod lock;
mod log;
mod loopback;
mod migrate;
mod naming;
mod pending;
#[cfg(test)]
mod plans;
mod pool;
mod prepared;
mod record;
pub mod schema;
pub mod seal;
pub mod tokens;

pub use error::{PgError, STORE};
pub use history::PgHistory;
pub use lock::{RepairLock, try_lock_repair};
pub use log::PgLog;
pub use loopback::without_tls_on_loopback;
pub use migrate::{
    MIGRATIONS, SchemaError, SchemaStatus, check_schema, migrate, revert_all, schema_status,
};
pub use naming::with_fallback_application_name;
pub use pool::{PgPool, connect, ping};

#[cfg(doc)]
use election_core::ReportLog;
