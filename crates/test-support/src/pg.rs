//! A fresh, empty PostgreSQL schema per test, so tests run in parallel on one
//! server without seeing each other's rows.
//!
//! [`PgSchema::new`] creates a schema with a unique name on `DATABASE_URL`
//! (default [`DEFAULT_DATABASE_URL`]) and hands out a URL that selects it for
//! every connection through libpq's `options` parameter
//! (`-c search_path=<schema>`), so code under test needs no special setup:
//! every unqualified table it creates or reads lands in that schema, diesel's
//! migration bookkeeping included. Dropping the [`PgSchema`] drops the schema
//! and everything in it.
//!
//! This crate cannot run the migrations itself (it must not depend on
//! `store-pg`, which depends on it for tests); store tests migrate the schema
//! with `store_pg::migrate`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::{Connection, PgConnection, RunQueryDsl};

/// The server `just test` and CI use when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How to start PostgreSQL here, for error messages.
const HOW_TO_START: &str = "start it with `pg_ctlcluster --skip-systemctl-redirect \
     $(ls /etc/postgresql) main start`, or set DATABASE_URL to a server that is running";

/// A schema of its own on the test server, dropped (with everything in it)
/// when this value is.
#[derive(Debug)]
pub struct PgSchema {
    /// The server's URL with `options=-c search_path=<name>` added.
    url: String,
    /// The schema's name: `t_<pid>_<nanos>_<counter>`.
    name: String,
    /// The server's URL as given, used to create and drop the schema.
    admin_url: String,
}

impl PgSchema {
    /// Creates a fresh, empty schema.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached or refuses to create the schema, with
    /// a message saying how to start it: tests need a real server and never
    /// skip silently.
    pub fn new() -> PgSchema {
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let name = unique_name();
        let mut conn = PgConnection::establish(&admin_url).unwrap_or_else(|error| {
            panic!("PostgreSQL is not reachable at {admin_url} ({error}); {HOW_TO_START}")
        });
        // The name is ours (letters, digits, underscores), safe to splice.
        diesel::sql_query(format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .unwrap_or_else(|error| panic!("creating schema {name} on {admin_url}: {error}"));
        PgSchema {
            url: with_search_path(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A URL whose connections use this schema (and only it) for unqualified
    /// names.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for PgSchema {
    fn default() -> Self {
        PgSchema::new()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Best effort: a test that failed must still report its own failure,
        // not one from cleaning up; a leftover schema is harmless and
        // obviously named.
        let dropped = PgConnection::establish(&self.admin_url)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| {
                diesel::sql_query(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                    .execute(&mut conn)
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = dropped {
            eprintln!("test-support: could not drop schema {}: {error}", self.name);
        }
    }
}

/// `t_<pid>_<nanos>_<counter>`: unique across concurrent test processes and
/// within one, and a valid unquoted identifier.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let counter = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t_{}_{nanos}_{counter}", std::process::id())
}

/// `url` with `password` as its password (replacing any): for tests that
/// check a password never reaches logs or metrics. The test server trusts
/// local connections, so it ignores the password.
///
/// # Panics
/// When `url` has no `scheme://user@` to put the password in.
pub fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{url} is not a scheme://user@host URL"));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (user_info, host) = authority
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("{url} names no user to give a password to"));
    let user = user_info.split(':').next().unwrap_or(user_info);
    format!("{scheme}://{user}:{password}@{host}{path}")
}

/// Adds `options=-c search_path=<schema>` to a libpq URL, percent-encoded,
/// after a `?` or a `&` as the URL needs.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_is_appended_to_any_url() {
        assert_eq!(
            with_search_path("postgres://u@h/db", "t_1"),
            "postgres://u@h/db?options=-c%20search_path%3Dt_1"
        );
        assert_eq!(
            with_search_path("postgres://u@h/db?sslmode=disable", "t_1"),
            "postgres://u@h/db?sslmode=disable&options=-c%20search_path%3Dt_1"
        );
    }

    #[test]
    fn a_password_is_put_in_or_replaced() {
        assert_eq!(
            with_password("postgres://postgres@127.0.0.1:5432/db?options=x", "pw"),
            "postgres://postgres:pw@127.0.0.1:5432/db?options=x"
        );
        assert_eq!(
            with_password("postgres://u:old@h/db", "new"),
            "postgres://u:new@h/db"
        );
    }

    #[derive(diesel::QueryableByName)]
    struct SearchPath {
        #[diesel(sql_type = diesel::sql_types::Text)]
        search_path: String,
    }

    fn search_path_of(url: &str) -> String {
        let mut conn = PgConnection::establish(url).unwrap();
        let rows: Vec<SearchPath> =
            diesel::sql_query("SELECT current_setting('search_path') AS search_path")
                .load(&mut conn)
                .unwrap();
        rows[0].search_path.clone()
    }

    #[test]
    fn connections_use_the_schema_and_it_is_dropped() {
        let schema = PgSchema::new();
        assert_eq!(search_path_of(schema.url()), schema.name());
        // Also when the base URL already has parameters.
        let with_query = with_search_path(
            &format!("{}?application_name=t", schema.admin_url),
            schema.name(),
        );
        assert_eq!(search_path_of(&with_query), schema.name());

        let name = schema.name().to_owned();
        let admin_url = schema.admin_url.clone();
        drop(schema);
        let mut conn = PgConnection::establish(&admin_url).unwrap();
        let left: Vec<SearchPath> = diesel::sql_query(
            "SELECT nspname::text AS search_path FROM pg_namespace WHERE nspname = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&name)
        .load(&mut conn)
        .unwrap();
        assert!(left.is_empty(), "schema {name} was not dropped");
    }
}
