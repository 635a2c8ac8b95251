//! No TLS to a PostgreSQL on this host unless the URL asks for it.
//!
//! libpq's default `sslmode` is `prefer`: it negotiates TLS whenever the
//! server offers it, and Debian's PostgreSQL offers it out of the box, on
//! `127.0.0.1` too. Over loopback that protects nothing: `prefer` checks no
//! certificate, so it stops no impostor, and reading loopback traffic takes
//! the privileges that read the processes' memory anyway. It does cost
//! CPU on both ends of every statement: measured on the write path at 512
//! connections, seven pairs of runs, TLS or not in turn, TLS cost more in
//! six, a median of 6 µs of machine CPU per report (ingest and PostgreSQL
//! about two to one), 4 % of the reports per second (docs/benchmarks.md,
//! "TLS to a PostgreSQL on the same host").
//!
//! So a `postgres://` or `postgresql://` URL whose every host is a loopback
//! address (`localhost`, `127.0.0.0/8`, `::1`) and that does not choose
//! otherwise gets `sslmode=disable`. It chooses otherwise with `sslmode`
//! (any value: `require` and the `verify-*` modes keep TLS), with a
//! `service` (its file may set `sslmode`), and through libpq's environment
//! (`PGSSLMODE`, `PGREQUIRESSL`, `PGSERVICE`). Any other URL — a remote host,
//! a Unix socket (never TLS), libpq's `key=value` form, several hosts, one
//! that does not parse — is passed on exactly as written.
//!
//! The URL is read with the `url` crate but never re-serialised: the
//! parameter is appended to the text as given, so `options=-c%20...` and the
//! like reach libpq byte for byte.

use std::borrow::Cow;
use std::net::IpAddr;

/// `database_url` as the services connect with it: `sslmode=disable` added
/// when it names only this host and chooses no TLS mode (module doc).
pub fn without_tls_on_loopback(database_url: &str) -> Cow<'_, str> {
    decide(database_url, |name| std::env::var_os(name).is_some())
}

/// [`without_tls_on_loopback`] with libpq's environment as `is_set`.
fn decide(database_url: &str, is_set: impl Fn(&str) -> bool) -> Cow<'_, str> {
    if ["PGSSLMODE", "PGREQUIRESSL", "PGSERVICE"]
        .iter()
        .any(|name| is_set(name))
        || !loopback_only(database_url)
    {
        return Cow::Borrowed(database_url);
    }
    Cow::Owned(crate::naming::with_query_parameter(
        database_url,
        "sslmode=disable",
    ))
}

/// Whether the URL reaches PostgreSQL over TCP on this host only and leaves
/// the TLS mode to libpq's default.
fn loopback_only(database_url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(database_url) else {
        return false;
    };
    // The parser lowercases the scheme.
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return false;
    }
    let mut hosts: Vec<String> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" | "requiressl" | "service" => return false,
            // `host` and `hostaddr` in the query win over the URL's host.
            "host" | "hostaddr" => hosts.push(value.into_owned()),
            _ => {}
        }
    }
    if hosts.is_empty() {
        match parsed.host() {
            Some(url::Host::Ipv4(address)) => return address.is_loopback(),
            Some(url::Host::Ipv6(address)) => return address.is_loopback(),
            Some(url::Host::Domain(name)) if !name.is_empty() => hosts.push(name.to_owned()),
            // No host: libpq's default, a Unix socket or `PGHOST`.
            _ => return false,
        }
    }
    hosts.iter().all(|host| is_loopback(host))
}

/// `localhost` or a loopback address (`[::1]` with or without brackets).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effective(url: &str) -> String {
        decide(url, |_| false).into_owned()
    }

    #[test]
    fn a_loopback_host_that_chooses_nothing_goes_without_tls() {
        for (given, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
            ),
            (
                "postgresql://localhost/election",
                "postgresql://localhost/election?sslmode=disable",
            ),
            (
                "postgres://LOCALHOST:5433",
                "postgres://LOCALHOST:5433?sslmode=disable",
            ),
            (
                "postgres://u:p@[::1]:5432/db",
                "postgres://u:p@[::1]:5432/db?sslmode=disable",
            ),
            (
                "postgres://127.1.2.3/db",
                "postgres://127.1.2.3/db?sslmode=disable",
            ),
            // Other parameters are kept byte for byte (no `+` for `%20`).
            (
                "postgres://postgres@127.0.0.1/db?options=-c%20search_path%3Dt_1",
                "postgres://postgres@127.0.0.1/db?options=-c%20search_path%3Dt_1&sslmode=disable",
            ),
            (
                "postgres://localhost/db?",
                "postgres://localhost/db?sslmode=disable",
            ),
            (
                "postgres://localhost/db?application_name=x&",
                "postgres://localhost/db?application_name=x&sslmode=disable",
            ),
            // The query's host wins over the URL's.
            (
                "postgres:///db?host=localhost",
                "postgres:///db?host=localhost&sslmode=disable",
            ),
            (
                "postgres://db.example/db?hostaddr=127.0.0.1",
                "postgres://db.example/db?hostaddr=127.0.0.1&sslmode=disable",
            ),
        ] {
            assert_eq!(effective(given), expected, "{given}");
        }
    }

    #[test]
    fn anything_else_is_passed_on_exactly_as_written() {
        for given in [
            // A choice of TLS mode, in the URL or through a service file.
            "postgres://127.0.0.1/db?sslmode=require",
            "postgres://127.0.0.1/db?sslmode=prefer",
            "postgres://127.0.0.1/db?requiressl=1",
            "postgres://127.0.0.1/db?service=election",
            // Another host, or one of several hosts elsewhere.
            "postgres://db.example/election",
            "postgres://10.0.0.7:5432/election",
            "postgres://[2001:db8::1]/election",
            "postgres://localhost.example/election",
            "postgres://127.0.0.1/db?host=db.example",
            "postgres://h1:5432,h2:5432/db",
            // Unix sockets (libpq never uses TLS on them) and the default.
            "postgres:///election",
            "postgres://%2Fvar%2Frun%2Fpostgresql/election",
            "postgres:///db?host=/var/run/postgresql",
            // Not a URL libpq takes as one, or not one at all.
            "host=127.0.0.1 dbname=election",
            "mysql://127.0.0.1/db",
            "postgres://[::1/db",
            "",
        ] {
            assert_eq!(effective(given), given);
        }
    }

    #[test]
    fn libpq_s_environment_can_choose_too() {
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        for name in ["PGSSLMODE", "PGREQUIRESSL", "PGSERVICE"] {
            assert_eq!(decide(url, |set| set == name), url, "{name}");
        }
        assert_ne!(decide(url, |set| set == "PGHOST"), url);
    }
}
