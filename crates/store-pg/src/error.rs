//! The adapter's error type, and how it reaches the core as a
//! [`StoreError`].
//!
//! Callers act on one distinction only: is PostgreSQL unavailable (retry
//! later; ingest answers 503) or did something else fail (a bug, a schema
//! mismatch, a full disk)? [`PgError::is_unavailable`] makes that call in one
//! place. Every variant says what was being done, so a log line reads
//! `postgresql is unavailable while recording 12 reports: <cause>`.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use election_core::{BoxError, ElectionId, StoreError};

/// The store name carried by every [`StoreError`] of this adapter.
pub const STORE: &str = "postgresql";

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The pool settings cannot work (a pool of 0 connections, a zero
    /// timeout).
    #[error("invalid postgresql pool settings: {0}")]
    Config(String),
    /// No connection could be had from the pool in time: the server is down,
    /// unreachable, refusing connections, or every connection is busy.
    #[error("no postgresql connection while {doing}")]
    Pool {
        /// What was being done.
        doing: String,
        /// r2d2's error, which carries the last connection error.
        #[source]
        source: r2d2::Error,
    },
    /// A statement failed.
    #[error("postgresql query failed while {doing}")]
    Query {
        /// What was being done.
        doing: String,
        /// diesel's error, with the server's message.
        #[source]
        source: DieselError,
    },
    /// Applying, reverting or listing migrations failed.
    #[error("postgresql migrations failed while {doing}")]
    Migration {
        /// What was being done.
        doing: String,
        /// diesel_migrations' error.
        #[source]
        source: BoxError,
    },
    /// A report was checked against another definition of its election
    /// than the stored one; nothing was recorded (see `crate::record`).
    #[error("the definition of election {election} changed since its reports were checked")]
    DefinitionChanged {
        /// The election.
        election: ElectionId,
    },
    /// The database held something this code never writes (an invalid id, a
    /// hash of the wrong length): a bug or a hand edit.
    #[error("unexpected data in postgresql while {doing}: {detail}")]
    Corrupt {
        /// What was being done.
        doing: String,
        /// What was found.
        detail: String,
    },
}

impl PgError {
    /// True when retrying later is the remedy: the server could not be
    /// reached, closed the connection, is shutting down or starting up, is a
    /// read-only standby, or cancelled the statement on a timeout.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Pool { .. } => true,
            PgError::Query { source, .. } => is_unavailable(source),
            PgError::Config(_)
            | PgError::Migration { .. }
            | PgError::Corrupt { .. }
            | PgError::DefinitionChanged { .. } => false,
        }
    }

    /// What was being done when it failed.
    pub fn doing(&self) -> &str {
        match self {
            PgError::Config(_) => "configuring the connection pool",
            PgError::DefinitionChanged { .. } => "recording reports",
            PgError::Pool { doing, .. }
            | PgError::Query { doing, .. }
            | PgError::Migration { doing, .. }
            | PgError::Corrupt { doing, .. } => doing,
        }
    }
}

/// Messages of SQLSTATE classes 57 (operator intervention: `57P01`
/// admin_shutdown, `57P02` crash_shutdown, `57P03` cannot_connect_now,
/// `57014` query_canceled) and of lock timeouts (`55P03`). diesel does not
/// expose the SQLSTATE of these, only the message, so they are recognised by
/// the server's English text; with a non-English `lc_messages` they count as
/// failures, which is the safe side (the caller does not retry blindly).
const UNAVAILABLE_MESSAGES: &[&str] = &[
    "terminating connection due to administrator command",
    "terminating connection because of crash of another server process",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "canceling statement due to statement timeout",
    "canceling statement due to lock timeout",
    "canceling statement due to conflict with recovery",
    "could not obtain lock",
    "server closed the connection unexpectedly",
    "no connection to the server",
];

/// Whether a diesel error means the server is (for now) out of reach.
pub(crate) fn is_unavailable(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(kind, info) => {
            matches!(
                kind,
                DatabaseErrorKind::ClosedConnection
                    | DatabaseErrorKind::UnableToSendCommand
                    // A failover left us on a read-only standby.
                    | DatabaseErrorKind::ReadOnlyTransaction
            ) || UNAVAILABLE_MESSAGES
                .iter()
                .any(|known| info.message().contains(known))
        }
        _ => false,
    }
}

/// Whether retrying the whole transaction may succeed: a deadlock (`40P01`,
/// recognised by its message since diesel does not name it) or a
/// serialization failure (`40001`).
pub(crate) fn is_retryable(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        DieselError::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}

/// Whether a recording transaction lost a race for a ballot box: a
/// concurrent batch recorded a revision replacing the same latest revision
/// (the same first revision, for a new box) first. The transaction decided
/// that box without seeing it, so it is retried whole and then reads the
/// new latest revision (see `crate::record`, "A box's revisions are a
/// chain").
pub(crate) fn is_chain_race(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            info.constraint_name() == Some("reports_chain_key")
        }
        _ => false,
    }
}

impl From<PgError> for StoreError {
    fn from(error: PgError) -> StoreError {
        let unavailable = error.is_unavailable();
        let (doing, source): (String, BoxError) = match error {
            PgError::DefinitionChanged { election } => {
                return StoreError::DefinitionChanged { election };
            }
            PgError::Config(detail) => (
                "configuring the connection pool".to_owned(),
                Box::<dyn std::error::Error + Send + Sync>::from(detail),
            ),
            PgError::Pool { doing, source } => (doing, Box::new(source)),
            PgError::Query { doing, source } => (doing, Box::new(source)),
            PgError::Migration { doing, source } => (doing, source),
            PgError::Corrupt { doing, detail } => (
                doing,
                Box::<dyn std::error::Error + Send + Sync>::from(format!(
                    "unexpected data: {detail}"
                )),
            ),
        };
        if unavailable {
            StoreError::Unavailable {
                store: STORE,
                doing,
                source,
            }
        } else {
            StoreError::Failed {
                store: STORE,
                doing,
                source,
            }
        }
    }
}

/// A pooled connection, or [`PgError::Pool`] saying what it was for.
pub(crate) fn connection(
    pool: &crate::pool::PgPool,
    doing: &str,
) -> Result<
    diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<diesel::PgConnection>>,
    PgError,
> {
    pool.get().map_err(|source| PgError::Pool {
        doing: doing.to_owned(),
        source,
    })
}

/// Wraps a statement's error as [`PgError::Query`] saying what was being done.
pub(crate) fn query_error(doing: &str) -> impl FnOnce(DieselError) -> PgError + '_ {
    move |source| PgError::Query {
        doing: doing.to_owned(),
        source,
    }
}

/// An error inside a transaction, before the context is added: diesel's own,
/// or data that failed validation when read back. diesel's transaction helper
/// needs an error type it can build from its own errors.
#[derive(Debug)]
pub(crate) enum TxError {
    Diesel(DieselError),
    Corrupt(String),
    DefinitionChanged(ElectionId),
}

impl From<DieselError> for TxError {
    fn from(error: DieselError) -> TxError {
        TxError::Diesel(error)
    }
}

impl TxError {
    /// Adds what was being done.
    pub(crate) fn context(self, doing: impl Into<String>) -> PgError {
        match self {
            TxError::Diesel(source) => PgError::Query {
                doing: doing.into(),
                source,
            },
            TxError::Corrupt(detail) => PgError::Corrupt {
                doing: doing.into(),
                detail,
            },
            TxError::DefinitionChanged(election) => PgError::DefinitionChanged { election },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn unavailable_errors_become_store_unavailable() {
        for error in [
            database_error(DatabaseErrorKind::ClosedConnection, "server closed"),
            database_error(
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            database_error(
                DatabaseErrorKind::Unknown,
                "FATAL:  the database system is shutting down",
            ),
        ] {
            let store: StoreError = PgError::Query {
                doing: "recording 2 reports".into(),
                source: error,
            }
            .into();
            assert!(store.is_unavailable(), "{store:?}");
            assert_eq!(
                store.to_string(),
                "postgresql is unavailable while recording 2 reports"
            );
        }
    }

    #[test]
    fn other_errors_become_store_failed() {
        let store: StoreError = PgError::Query {
            doing: "claiming pending reports".into(),
            source: database_error(
                DatabaseErrorKind::Unknown,
                "relation \"reports\" does not exist",
            ),
        }
        .into();
        assert!(!store.is_unavailable());
        assert_eq!(
            store.to_string(),
            "postgresql failed while claiming pending reports"
        );
        let source = std::error::Error::source(&store).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("relation \"reports\" does not exist")
        );
    }

    #[test]
    fn deadlocks_and_serialization_failures_are_retried() {
        assert!(is_retryable(&database_error(
            DatabaseErrorKind::SerializationFailure,
            "could not serialize access"
        )));
        assert!(is_retryable(&database_error(
            DatabaseErrorKind::Unknown,
            "deadlock detected"
        )));
        assert!(!is_retryable(&database_error(
            DatabaseErrorKind::UniqueViolation,
            "duplicate key"
        )));
    }
}
