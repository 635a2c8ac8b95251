//! Schema migrations, embedded in the binary, applied only on request.
//!
//! The SQL lives in `migrations/` at the workspace root (diesel's format; see
//! `migrations/README.md`) and is compiled into every binary, so a deployed
//! service always knows exactly which schema it was built for. Migrations run
//! from an explicit `migrate` command, never as a side effect of starting a
//! service (docs/contract.md §4); services call [`schema_status`] at start-up and refuse
//! to run on a schema that is missing, behind, or newer than they are.

use std::collections::BTreeSet;
use std::fmt;

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel::{PgConnection, QueryableByName, RunQueryDsl, sql_types};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::PgError;
use crate::pool::PgPool;

/// The migrations this binary was built with (`embed_migrations!` paths are
/// relative to this crate's manifest).
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Where the schema stands relative to this binary's migrations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Every migration this binary knows is applied, and nothing else.
    UpToDate,
    /// Some migrations are applied, these (versions, oldest first) are not:
    /// run `migrate`.
    Pending(Vec<String>),
    /// These applied versions are unknown to this binary: a newer release
    /// migrated the database, and this one may misread it.
    Newer(Vec<String>),
    /// Nothing is applied: the database was never migrated.
    Unmigrated,
}

impl SchemaStatus {
    /// True when a service may run on this schema.
    pub fn is_up_to_date(&self) -> bool {
        *self == SchemaStatus::UpToDate
    }

    /// Compares the versions this binary knows with those applied.
    fn classify(known: &BTreeSet<String>, applied: &BTreeSet<String>) -> SchemaStatus {
        let unknown: Vec<String> = applied.difference(known).cloned().collect();
        if !unknown.is_empty() {
            return SchemaStatus::Newer(unknown);
        }
        if applied.is_empty() {
            return SchemaStatus::Unmigrated;
        }
        let pending: Vec<String> = known.difference(applied).cloned().collect();
        if pending.is_empty() {
            SchemaStatus::UpToDate
        } else {
            SchemaStatus::Pending(pending)
        }
    }
}

/// A message for the operator, saying what to do.
impl fmt::Display for SchemaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaStatus::UpToDate => f.write_str("the database schema is up to date"),
            SchemaStatus::Pending(versions) => write!(
                f,
                "the database schema is behind this release: migrations {} are not applied; \
                 run `election-ingest migrate`",
                versions.join(", ")
            ),
            SchemaStatus::Newer(versions) => write!(
                f,
                "the database schema is newer than this release: migrations {} are unknown \
                 to it; run the release that applied them (or a later one)",
                versions.join(", ")
            ),
            SchemaStatus::Unmigrated => {
                f.write_str("the database has no schema yet; run `election-ingest migrate` first")
            }
        }
    }
}

/// Why a service refuses to start on a database (see [`check_schema`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The schema version could not be read.
    #[error("reading the schema version")]
    Unreadable(#[source] PgError),
    /// Nothing is applied.
    #[error("the database is not migrated; run `election-ingest migrate` first")]
    Unmigrated,
    /// Some migrations of this release are not applied.
    #[error(
        "the database lacks migrations {}; run `election-ingest migrate` first",
        .0.join(", ")
    )]
    Behind(Vec<String>),
    /// The database has migrations this release does not know.
    #[error(
        "the database has migrations this binary does not know ({}); run a newer release",
        .0.join(", ")
    )]
    Newer(Vec<String>),
}

/// Refuses a schema this binary does not match, saying what to run: every
/// service calls it before it starts (docs/contract.md §4).
pub fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    match schema_status(pool).map_err(SchemaError::Unreadable)? {
        SchemaStatus::UpToDate => Ok(()),
        SchemaStatus::Unmigrated => Err(SchemaError::Unmigrated),
        SchemaStatus::Pending(versions) => Err(SchemaError::Behind(versions)),
        SchemaStatus::Newer(versions) => Err(SchemaError::Newer(versions)),
    }
}

/// Applies every pending embedded migration and returns their versions
/// (empty when the schema was up to date). Each migration runs in its own
/// transaction; concurrent callers on the same schema wait for each other.
pub fn migrate(pool: &PgPool) -> Result<Vec<String>, PgError> {
    const DOING: &str = "applying migrations";
    with_migration_lock(pool, DOING, |conn| {
        let applied =
            conn.run_pending_migrations(MIGRATIONS)
                .map_err(|source| PgError::Migration {
                    doing: DOING.to_owned(),
                    source,
                })?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
}

/// Reverts every applied migration and drops diesel's bookkeeping table,
/// leaving no table behind. For tests and for tearing a scratch database
/// down; never run it on a database whose reports matter.
pub fn revert_all(pool: &PgPool) -> Result<(), PgError> {
    const DOING: &str = "reverting migrations";
    with_migration_lock(pool, DOING, |conn| {
        conn.revert_all_migrations(MIGRATIONS)
            .map_err(|source| PgError::Migration {
                doing: DOING.to_owned(),
                source,
            })?;
        diesel::sql_query("DROP TABLE IF EXISTS __diesel_schema_migrations")
            .execute(conn)
            .map_err(|source| PgError::Query {
                doing: DOING.to_owned(),
                source,
            })?;
        Ok(())
    })
}

#[derive(QueryableByName)]
struct Present {
    #[diesel(sql_type = sql_types::Bool)]
    present: bool,
}

#[derive(QueryableByName)]
struct AppliedVersion {
    #[diesel(sql_type = sql_types::Text)]
    version: String,
}

/// Where the schema stands. Reads only: unlike diesel's own harness, it does
/// not create the bookkeeping table when it is missing.
pub fn schema_status(pool: &PgPool) -> Result<SchemaStatus, PgError> {
    const DOING: &str = "checking the schema version";
    let query_error = |source| PgError::Query {
        doing: DOING.to_owned(),
        source,
    };
    let mut conn = pool.get().map_err(|source| PgError::Pool {
        doing: DOING.to_owned(),
        source,
    })?;
    let present: Vec<Present> = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS present",
    )
    .load(&mut *conn)
    .map_err(query_error)?;
    let applied: BTreeSet<String> = if present.first().is_some_and(|p| p.present) {
        diesel::sql_query("SELECT version::text AS version FROM __diesel_schema_migrations")
            .load::<AppliedVersion>(&mut *conn)
            .map_err(query_error)?
            .into_iter()
            .map(|row| row.version)
            .collect()
    } else {
        BTreeSet::new()
    };
    Ok(SchemaStatus::classify(&known_versions()?, &applied))
}

/// The versions of the embedded migrations.
fn known_versions() -> Result<BTreeSet<String>, PgError> {
    let migrations: Vec<Box<dyn Migration<Pg>>> = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|source| PgError::Migration {
            doing: "listing the embedded migrations".to_owned(),
            source,
        })?;
    Ok(migrations
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect())
}

/// Runs `work` holding a session advisory lock named after the current
/// schema, so two `migrate` commands started together (two hosts deploying at
/// once) apply each migration once; diesel's harness does not lock.
fn with_migration_lock<T>(
    pool: &PgPool,
    doing: &str,
    work: impl FnOnce(&mut PgConnection) -> Result<T, PgError>,
) -> Result<T, PgError> {
    const KEY: &str = "hashtext('election-migrations:' || coalesce(current_schema(), ''))";
    let mut conn = pool.get().map_err(|source| PgError::Pool {
        doing: doing.to_owned(),
        source,
    })?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({KEY})"))
        .execute(&mut *conn)
        .map_err(|source| PgError::Query {
            doing: doing.to_owned(),
            source,
        })?;
    let result = work(&mut conn);
    // Unlock whatever happened; if this fails the connection is likely gone,
    // and the session's lock with it.
    let unlocked =
        diesel::sql_query(format!("SELECT pg_advisory_unlock({KEY})")).execute(&mut *conn);
    match (result, unlocked) {
        (Ok(value), Ok(_)) => Ok(value),
        (Ok(_), Err(source)) => Err(PgError::Query {
            doing: doing.to_owned(),
            source,
        }),
        (Err(error), _) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|v| (*v).to_owned()).collect()
    }

    #[track_caller]
    fn check(known: &[&str], applied: &[&str], expected: SchemaStatus) {
        assert_eq!(
            SchemaStatus::classify(&versions(known), &versions(applied)),
            expected
        );
    }

    #[test]
    fn schema_status_compares_known_and_applied_versions() {
        check(&["1", "2"], &[], SchemaStatus::Unmigrated);
        check(&["1", "2"], &["1"], SchemaStatus::Pending(vec!["2".into()]));
        check(&["1", "2"], &["1", "2"], SchemaStatus::UpToDate);
        check(
            &["1", "2"],
            &["1", "2", "3"],
            SchemaStatus::Newer(vec!["3".into()]),
        );
        // An unknown version wins over pending ones: this binary cannot
        // judge a schema another release shaped.
        check(&["1", "2"], &["3"], SchemaStatus::Newer(vec!["3".into()]));
    }

    #[test]
    fn the_initial_migration_is_embedded() {
        let known = known_versions().unwrap();
        assert!(known.contains("20250601000000"), "{known:?}");
    }

    #[test]
    fn statuses_tell_the_operator_what_to_do() {
        assert!(
            SchemaStatus::Unmigrated
                .to_string()
                .contains("election-ingest migrate")
        );
        assert!(
            SchemaStatus::Pending(vec!["20250601000000".into()])
                .to_string()
                .contains("20250601000000 are not applied")
        );
    }
}
