//! One `reconcile --repair` per election at a time.
//!
//! The repair's guarded rewrites are safe against revisions being counted
//! concurrently, but not against a second repair re-applying lost revisions
//! at the same moment (see `election_core::reconcile`). A session advisory
//! lock named after the schema and the election keeps repairs of one election
//! apart, across hosts; repairs of different elections run in parallel.

use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::{Bool, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use election_core::ElectionId;

use crate::error::PgError;
use crate::pool::PgPool;

/// The lock's key: the schema and the election, hashed.
const KEY: &str = "hashtext('election-repair:' || coalesce(current_schema(), '') || ':' || $1)";

/// Held while a repair of one election runs; released when dropped (or when
/// the process ends: the lock belongs to its database session).
pub struct RepairLock {
    /// The session holding the lock.
    conn: PooledConnection<ConnectionManager<PgConnection>>,
    election: ElectionId,
}

impl std::fmt::Debug for RepairLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairLock")
            .field("election", &self.election)
            .finish_non_exhaustive()
    }
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes the repair lock of `election` if nobody holds it; `None` when
/// another repair of it is running.
pub fn try_lock_repair(
    pool: &PgPool,
    election: &ElectionId,
) -> Result<Option<RepairLock>, PgError> {
    let doing = || format!("locking the repair of election {election}");
    let mut conn = pool.get().map_err(|source| PgError::Pool {
        doing: doing(),
        source,
    })?;
    let rows: Vec<Locked> =
        diesel::sql_query(format!("SELECT pg_try_advisory_lock({KEY}) AS locked"))
            .bind::<Text, _>(election.as_str())
            .load(&mut conn)
            .map_err(|source| PgError::Query {
                doing: doing(),
                source,
            })?;
    Ok(rows
        .first()
        .is_some_and(|row| row.locked)
        .then(|| RepairLock {
            conn,
            election: election.clone(),
        }))
}

impl Drop for RepairLock {
    fn drop(&mut self) {
        let unlocked = diesel::sql_query(format!("SELECT pg_advisory_unlock({KEY}) AS locked"))
            .bind::<Text, _>(self.election.as_str())
            .load::<Locked>(&mut self.conn);
        if let Err(error) = unlocked {
            // The connection is likely gone, and its session's lock with it.
            tracing::warn!(%error, election.id = %self.election, "could not release the repair lock");
        }
    }
}
