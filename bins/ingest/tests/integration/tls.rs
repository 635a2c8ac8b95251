//! TLS to both stores, against servers with a certificate the test makes
//! (issue #15 point 4): `rediss://` to a private `redis-server --tls-port`,
//! trusting the test's CA through `SSL_CERT_FILE`; and libpq's `sslmode`
//! against a private PostgreSQL with `ssl=on`. Each is also refused when the
//! client does not trust the CA, so a success proves the certificate was
//! checked. And no TLS to a PostgreSQL on this host unless the URL asks.

use std::process::{Command, Stdio};

use diesel::{Connection, PgConnection, RunQueryDsl};
use election_test_support::pg::{PgSchema, PgServer};
use election_test_support::redis::RedisServer;
use election_test_support::tls::TestCertificates;

use crate::process::{BIN, free_port, send_signal, text, wait_ready};

/// A `redis-server` speaking only TLS, on the port it was given.
fn tls_redis(certificates: &TestCertificates) -> (RedisServer, String) {
    let (cert, key, ca) = (
        certificates.server_cert().display().to_string(),
        certificates.server_key().display().to_string(),
        certificates.ca_file().display().to_string(),
    );
    let server = RedisServer::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{}", server.port());
    (server, url)
}

/// Serves ingest over `redis_url`, posts one report and returns its status
/// and `/healthz`.
async fn post_one(
    schema: &PgSchema,
    redis_url: &str,
    ca_file: Option<&std::path::Path>,
    ballot_box: &str,
) -> (u16, String) {
    let issued = Command::new(BIN)
        .args(["token", "issue", "--election", "tls"])
        .env("DATABASE_URL", schema.url())
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let token = text(&issued.stdout).trim().to_owned();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", schema.url())
        .env("REDIS_URL", redis_url)
        .env("INGEST_REDIS_TIMEOUT", "2s")
        // Only the CA given (rustls-native-certs reads both).
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(ca_file) = ca_file {
        command.env("SSL_CERT_FILE", ca_file);
    }
    let mut child = command.spawn().unwrap();
    wait_ready(&base, &mut child);
    let client = reqwest::Client::new();
    let status = client
        .post(format!("{base}/v1/elections/tls/reports"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"ballot_box_id":"{ballot_box}","city":"york","votes":{{"a":1}}}}"#
        ))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    send_signal(child.id(), "TERM");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    (status, health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_reaches_a_tls_redis_whose_certificate_is_checked() {
    let certificates = TestCertificates::new();
    let (_redis, url) = tls_redis(&certificates);
    let schema = PgSchema::new();
    let migrated = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", schema.url())
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));

    // Trusting the test's CA: counted at once, Redis up.
    let (status, health) = post_one(&schema, &url, Some(&certificates.ca_file()), "BB1").await;
    assert_eq!(status, 201, "counted over TLS; healthz: {health}");
    assert!(health.contains("redis: ok"), "{health}");

    // Another CA: the certificate is refused, the report is recorded and
    // left pending (202), and Redis shows as unavailable.
    let stranger = TestCertificates::new();
    let (status, health) = post_one(&schema, &url, Some(&stranger.ca_file()), "BB2").await;
    assert_eq!(status, 202, "healthz: {health}");
    assert!(health.contains("redis: unavailable"), "{health}");
}

#[test]
fn sslmode_verify_full_reaches_a_tls_postgresql() {
    let certificates = TestCertificates::new();
    let server =
        PgServer::start_with_tls(&certificates.server_cert_pem, &certificates.server_key_pem);
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            server.port(),
            ca.display()
        )
    };
    let trusted = url(&certificates.ca_file());
    let migrated = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &trusted)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(text(&migrated.stdout).contains("applied migration"));

    // The connection is encrypted (PostgreSQL says so).
    assert!(encrypted(&mut PgConnection::establish(&trusted).unwrap()));

    // The same server through a URL that names this host and no sslmode:
    // libpq alone would negotiate TLS (`prefer`), the services' pool does
    // not (store_pg::without_tls_on_loopback); asking for it keeps it.
    let plain = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
    let through_the_pool = |url: &str| {
        let pool = store_pg::connect(url, 1, std::time::Duration::from_secs(10)).unwrap();
        encrypted(&mut pool.get().unwrap())
    };
    assert!(
        encrypted(&mut PgConnection::establish(&plain).unwrap()),
        "libpq's default negotiates TLS with this server"
    );
    assert!(!through_the_pool(&plain));
    assert!(through_the_pool(&format!("{plain}?sslmode=prefer")));
    assert!(through_the_pool(&format!("{plain}?sslmode=require")));

    // Another CA: refused, with libpq's reason, exit status 1.
    let stranger = TestCertificates::new();
    let refused = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", url(&stranger.ca_file()))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
}

/// Whether PostgreSQL says `connection` is encrypted.
fn encrypted(connection: &mut PgConnection) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
    }
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(connection)
        .unwrap();
    row.ssl
}
