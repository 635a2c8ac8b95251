//! The fault scenarios of issue #7, one file each. Every scenario starts its
//! own servers and processes and ends with `check::verify`, so they run in
//! parallel and twice in a row. `ELECTION_CHAOS=full` runs them at full size
//! (`just chaos`). Beside them, `systemd_units`: the shipped units load.

mod cluster_failover;
mod cluster_resharding;
mod ingest_killed;
mod postgres_restarted;
mod redis_restarted;
mod reprocessors;
mod systemd_units;
