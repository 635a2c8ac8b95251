//! The connection pool: built lazily, bounded in how long it waits, and with
//! every connection checked for synchronous commit.
//!
//! diesel is blocking, so services hold a small r2d2 pool and call the store
//! through `spawn_blocking`. The pool is built without waiting for a first
//! connection ([`r2d2::Builder::build_unchecked`], no idle minimum): a service
//! starts even while PostgreSQL is down and answers 503 until it is back, and
//! an unreachable server makes each call fail after `connect_timeout` with a
//! clear error instead of hanging.

use std::time::Duration;

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection};
use diesel::{QueryableByName, RunQueryDsl, sql_types};

use crate::error::PgError;
use crate::loopback::without_tls_on_loopback;

/// A pool of PostgreSQL connections, shared by every store call of a process.
pub type PgPool = r2d2::Pool<ConnectionManager<PgConnection>>;

/// Builds a pool of at most `pool_size` connections to `database_url`.
///
/// No connection is opened here: the first call that needs one opens it, and
/// waits at most `connect_timeout` for it (or for a busy connection to come
/// back). The URL is a libpq connection string (`postgres://user@host/db`,
/// with `?options=-c%20search_path%3D...` and the like); one that names only
/// this host and no TLS mode connects without TLS
/// ([`without_tls_on_loopback`]).
pub fn connect(
    database_url: &str,
    pool_size: u32,
    connect_timeout: Duration,
) -> Result<PgPool, PgError> {
    // r2d2 panics on these; a configuration mistake deserves an error.
    if pool_size == 0 {
        return Err(PgError::Config(
            "the pool size must be at least 1".to_owned(),
        ));
    }
    if connect_timeout.is_zero() {
        return Err(PgError::Config(
            "the connection timeout must be longer than 0".to_owned(),
        ));
    }
    let effective = without_tls_on_loopback(database_url);
    if effective != database_url {
        tracing::debug!(
            "postgresql is on this host and the URL chooses no sslmode: connecting without TLS"
        );
    }
    let manager = ConnectionManager::<PgConnection>::new(effective);
    Ok(r2d2::Pool::builder()
        .max_size(pool_size)
        // Connections open on demand: nothing is attempted while nobody asks,
        // and a down server costs no background reconnection storm.
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        // No `SELECT 1` round trip before every use: a broken connection
        // fails its statement instead, the error says "unavailable", and the
        // caller retries (r2d2 then drops the broken connection).
        .test_on_check_out(false)
        .error_handler(Box::new(TracingErrorHandler))
        .connection_customizer(Box::new(DurableCommits))
        .build_unchecked(manager))
}

/// Logs connection failures through `tracing` (r2d2's default handler writes
/// to the `log` crate, which our services do not collect).
#[derive(Debug, Clone, Copy)]
struct TracingErrorHandler;

impl r2d2::HandleError<diesel::r2d2::Error> for TracingErrorHandler {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::warn!(error = %error, "postgresql connection attempt failed");
    }
}

/// Makes sure every new connection commits synchronously (I1: a 2xx answer
/// means the report is on disk). A server, database or role configured with
/// `synchronous_commit = off` would otherwise acknowledge reports it could
/// lose in a crash; stricter settings (`remote_apply`, ...) are left alone.
/// (A reload to `off` after the connection opened is caught by the recording
/// transaction itself: `record`'s `DURABLE_COMMIT`.) `fsync = off` cannot be
/// overridden by a client: it is named in a warning, as is turning
/// `synchronous_commit` on. One statement per new connection, not per
/// transaction.
#[derive(Debug, Clone, Copy)]
struct DurableCommits;

/// What [`DurableCommits`] reads as it sets the connection up.
#[derive(QueryableByName)]
struct Settings {
    #[diesel(sql_type = sql_types::Text)]
    fsync: String,
    /// Not NULL when `synchronous_commit` was `off` and is now `on`.
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    raised: Option<String>,
}

/// The set-up of a new connection, one statement: `synchronous_commit`
/// raised from `off`, and no parallel plans (our statements touch a few rows
/// per report through indexes; a parallel plan only adds worker start-up,
/// measured ~4 ms of a 128-report batch's read).
const SET_UP: &str = "\
SELECT current_setting('fsync') AS fsync,
       CASE WHEN current_setting('synchronous_commit') = 'off'
            THEN set_config('synchronous_commit', 'on', false) END AS raised,
       set_config('max_parallel_workers_per_gather', '0', false) AS parallel";

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for DurableCommits {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        let settings: Settings = diesel::sql_query(SET_UP)
            .get_result(conn)
            .map_err(diesel::r2d2::Error::QueryError)?;
        if settings.raised.is_some() {
            tracing::warn!(
                pg.synchronous_commit = "off",
                "postgresql had synchronous_commit off; turned it on for this connection"
            );
        }
        if settings.fsync != "on" {
            tracing::warn!(
                pg.fsync = %settings.fsync,
                "postgresql runs with fsync off: a crash of its machine can lose or corrupt \
                 reports already answered as recorded (I1); turn fsync on"
            );
        }
        Ok(())
    }
}

/// Checks that PostgreSQL answers a trivial query (for `/readyz`).
pub fn ping(pool: &PgPool) -> Result<(), PgError> {
    let doing = "checking the connection";
    let mut conn = pool.get().map_err(|source| PgError::Pool {
        doing: doing.to_owned(),
        source,
    })?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .map_err(|source| PgError::Query {
            doing: doing.to_owned(),
            source,
        })?;
    Ok(())
}
