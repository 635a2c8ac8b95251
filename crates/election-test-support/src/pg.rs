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
//! [`PgServer`] is a private PostgreSQL server (initdb + pg_ctl on a free
//! port), for tests that stop and restart PostgreSQL under load.
//!
//! This crate cannot run the migrations itself (it must not depend on
//! `store-pg`, which depends on it for tests); store tests migrate the schema
//! with `store_pg::migrate`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::{Connection, PgConnection, RunQueryDsl};

use crate::process::free_port;

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
            eprintln!(
                "election-test-support: could not drop schema {}: {error}",
                self.name
            );
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

/// A private PostgreSQL server on a free port, for tests that must stop and
/// restart PostgreSQL under load (never the shared server, which other tests
/// use).
///
/// It runs `initdb` and `pg_ctl` from the newest `/usr/lib/postgresql/*/bin`
/// with its data in a temporary directory. PostgreSQL refuses to run as
/// root, and the tests here do, so every command runs as the `postgres` user
/// (`runuser -u postgres --`) in a directory owned by it. Authentication is
/// `trust` on 127.0.0.1 only.
///
/// Like `RedisServer`, it is tied to this process by a watchdog shell,
/// `sh -c 'read _; pg_ctl stop -m immediate; rm -rf DIR'`, whose standard
/// input is a pipe only this process writes to: when this process ends,
/// however it ends, the pipe closes and the watchdog stops the server and
/// removes its data. Dropping the value does the same.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    /// The temporary directory: `data/` (the cluster), the socket, `log`.
    dir: PathBuf,
    /// Where `pg_ctl` and friends are.
    bin: PathBuf,
    /// The watchdog shell; its standard input stays open while the server
    /// should live.
    watchdog: Mutex<Child>,
    /// Server options beyond the port and socket (`-c ssl=on ...`).
    options: String,
}

impl PgServer {
    /// Creates a cluster with `initdb` and starts it on a free port.
    ///
    /// # Panics
    /// When PostgreSQL's programs are missing or the server does not start
    /// (with its log).
    pub fn start() -> PgServer {
        PgServer::start_inner(None, "")
    }

    /// [`PgServer::start`] with server `options` (`-c fsync=off ...`), as an
    /// operator's configuration would set them.
    ///
    /// # Panics
    /// As [`PgServer::start`].
    pub fn start_with_options(options: &str) -> PgServer {
        PgServer::start_inner(None, options)
    }

    /// [`PgServer::start`] with TLS on (`ssl=on`), presenting `cert_pem`
    /// (with `key_pem`): clients choose with libpq's `sslmode`.
    ///
    /// # Panics
    /// As [`PgServer::start`].
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> PgServer {
        PgServer::start_inner(Some((cert_pem, key_pem)), "")
    }

    fn start_inner(tls: Option<(&str, &str)>, extra: &str) -> PgServer {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "election-pg-{}-{}",
            std::process::id(),
            unique_name()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        as_postgres_owner(&dir);
        // The watchdog first, so a failure below still cleans up.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"read _; runuser -u postgres -- "$1/pg_ctl" -D "$0/data" stop -m immediate >/dev/null 2>&1; rm -rf "$0""#,
            )
            .arg(&dir)
            .arg(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run sh for the PostgreSQL watchdog");
        let mut options = String::new();
        if let Some((cert_pem, key_pem)) = tls {
            // The server runs as `postgres`, which must own its key (0600).
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert, cert_pem).expect("write the server certificate");
            std::fs::write(&key, key_pem).expect("write the server key");
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the server key");
            }
            as_postgres_owner(&cert);
            as_postgres_owner(&key);
            options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        if !extra.is_empty() {
            options.push(' ');
            options.push_str(extra);
        }
        let mut server = PgServer {
            port: 0,
            dir,
            bin,
            watchdog: Mutex::new(watchdog),
            options,
        };
        server.run_as_postgres(
            "initdb",
            &[
                "-D",
                &server.data_dir(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        let mut last_failure = String::new();
        for _ in 0..10 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return server,
                // Another process took the port first: try another.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("could not start a private PostgreSQL: {last_failure}");
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: every backend
    /// quits without a checkpoint, as in a crash; the next start recovers
    /// from the WAL). Returns when the port refuses connections.
    pub fn stop(&self) {
        self.run_as_postgres(
            "pg_ctl",
            &["-D", &self.data_dir(), "stop", "-m", "immediate", "-w"],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on {} did not stop",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped server again on the same port and waits until it
    /// accepts connections (after crash recovery).
    ///
    /// # Panics
    /// When it does not start (the port was taken, for instance), with its log.
    pub fn restart(&self) {
        if let Err(failure) = self.try_start() {
            panic!("cannot restart PostgreSQL on {}: {failure}", self.port);
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            self.port,
            self.dir.display(),
            self.options
        );
        let log = self.dir.join("log");
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data_dir(), "-l"])
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run runuser: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pg_ctl start on port {} failed ({}):\n{}{}\n--- log\n{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match PgConnection::establish(&self.url()) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(format!(
                        "PostgreSQL on {} does not answer: {error}",
                        self.port
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs as the `postgres` user.
    ///
    /// # Panics
    /// When it fails, with its output.
    fn run_as_postgres(&self, program: &str, args: &[&str]) {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run runuser -u postgres -- {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut watchdog = self
            .watchdog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Closing the pipe tells the watchdog to stop the server and remove
        // its directory.
        drop(watchdog.stdin.take());
        let _ = watchdog.wait();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` in it.
fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no /usr/lib/postgresql/*/bin/initdb: install PostgreSQL's server package \
             (apt-get install postgresql) to run the PostgreSQL restart tests"
        )
    })
}

/// Hands `dir` to the `postgres` user (initdb refuses to run as root).
fn as_postgres_owner(dir: &std::path::Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown postgres {} failed: is there a `postgres` user?",
        dir.display()
    );
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

    #[test]
    fn a_private_server_stops_and_restarts_with_its_data() {
        use diesel::connection::SimpleConnection;
        let server = PgServer::start();
        let mut conn = PgConnection::establish(&server.url()).unwrap();
        conn.batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
            .unwrap();
        server.stop();
        assert!(PgConnection::establish(&server.url()).is_err());
        assert!(
            diesel::sql_query("SELECT 1").execute(&mut conn).is_err(),
            "an open connection fails once the server is stopped"
        );
        server.restart();
        #[derive(diesel::QueryableByName)]
        struct Kept {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            n: i32,
        }
        let rows: Vec<Kept> = diesel::sql_query("SELECT n FROM kept")
            .load(&mut PgConnection::establish(&server.url()).unwrap())
            .unwrap();
        assert_eq!(rows.iter().map(|row| row.n).collect::<Vec<_>>(), [7]);
        let dir = server.dir.clone();
        drop(server);
        assert!(!dir.exists(), "the watchdog removes the data");
    }
}
