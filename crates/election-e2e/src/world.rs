//! What every scenario starts from: a migrated database, a unique election
//! and a token for it, all made with the real `election-ingest` commands
//! (`migrate`, `token issue`).

use std::sync::atomic::{AtomicU64, Ordering};

use election_test_support::pg::PgSchema;

use crate::process::{describe, ingest};

/// A migrated database with one election and its token.
#[derive(Debug)]
pub struct World {
    /// The election the scenario posts to (unique per world).
    pub election: String,
    /// A token valid for any ballot box of it.
    pub token: String,
    database_url: String,
    /// A fresh schema on the shared server, dropped with the world; `None`
    /// on a private server.
    _schema: Option<PgSchema>,
}

impl World {
    /// A fresh schema on the shared PostgreSQL (`DATABASE_URL`).
    pub fn on_shared_postgres(name: &str) -> World {
        let schema = PgSchema::new();
        let url = schema.url().to_owned();
        World::set_up(name, url, Some(schema))
    }

    /// The database at `database_url` (a private server's).
    pub fn on(database_url: &str, name: &str) -> World {
        World::set_up(name, database_url.to_owned(), None)
    }

    fn set_up(name: &str, database_url: String, schema: Option<PgSchema>) -> World {
        let migrated = ingest(&database_url, &["migrate"]);
        assert!(
            migrated.status.success(),
            "migrate: {}",
            describe(&migrated)
        );
        let election = unique_election(name);
        let issued = ingest(&database_url, &["token", "issue", "--election", &election]);
        assert!(
            issued.status.success(),
            "token issue: {}",
            describe(&issued)
        );
        let token = String::from_utf8_lossy(&issued.stdout).trim().to_owned();
        World {
            election,
            token,
            database_url,
            _schema: schema,
        }
    }

    /// The database URL the binaries use.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }
}

/// `<name>-<pid>-<n>`: unique across test processes and within one.
fn unique_election(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
