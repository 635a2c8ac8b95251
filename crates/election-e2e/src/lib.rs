//! The harness of the end-to-end fault scenarios (issue #7): the real
//! `election-ingest` and `election-reprocessor` binaries, real PostgreSQL and
//! Redis servers, faults injected from outside (SIGKILL, servers stopped and
//! restarted, a Redis Cluster master killed), and at the end one check of
//! I1-I4 (docs/contract.md §3) against the database and the counters.
//!
//! Why a crate of its own: the scenarios drive several processes and servers
//! at once and belong to no single binary; they test the system as an
//! operator runs it.
//!
//! - [`binaries`]: builds the two binaries once per test process and finds
//!   them in the target directory, so `cargo test -p election-e2e` works on
//!   its own.
//! - [`process`]: the binaries as supervised child processes that die with
//!   the test process; ingest on a fixed port, killed and restarted there.
//! - [`world`]: a migrated database (a fresh schema on the shared server, or
//!   a private server's database), a unique election and its token.
//! - [`load`]: N concurrent clients posting a deterministic night
//!   (`election_loadgen::night`: duplicates and corrections included),
//!   retrying every post that got no answer until it is answered, and
//!   recording every acknowledged post.
//! - [`check`]: drain, reconcile (and repair where the scenario says so),
//!   then every acknowledged report in PostgreSQL at its revision, every
//!   counter (plain `GET` under the contract's key names (docs/contract.md §4)) equal to the log and to
//!   the acknowledged posts, nothing pending, nothing half-recorded; a
//!   [`check::Summary`] per scenario.
//!
//! Size: `ELECTION_CHAOS=full` selects the full size (`just chaos`); the
//! default small size keeps each scenario to seconds inside `just test`.

pub mod binaries;
pub mod check;
pub mod load;
pub mod process;
pub mod world;

pub use election_loadgen::Plan;

/// Whether `ELECTION_CHAOS=full` asks for the full size.
pub fn full_size() -> bool {
    std::env::var("ELECTION_CHAOS").is_ok_and(|value| value == "full")
}

/// `small` by default, `full` under `ELECTION_CHAOS=full`.
pub fn sized<T>(small: T, full: T) -> T {
    if full_size() { full } else { small }
}

/// A night of `boxes` ballot boxes (10% posted twice, 10% corrected at
/// revision 2), spread over `boxes / 50` cities (at least 5), 5 parties.
pub fn plan(boxes: usize, seed: u64) -> Plan {
    Plan {
        boxes,
        cities: (boxes / 50).max(5),
        parties: 5,
        duplicates: 0.1,
        revisions: 0.1,
        seed,
    }
}

pub use election_test_support::process::wait_until;
