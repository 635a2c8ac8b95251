//! Connections that say which program holds them.
//!
//! An operator looking at `pg_stat_activity` on election night (which
//! backend is busy, which holds a lock, which waits) sees each connection's
//! `application_name`, and without one every service's connections look
//! alike. libpq takes a `fallback_application_name` meant for exactly this:
//! a program's own name, used only when neither the connection string nor
//! `PGAPPNAME` gives one, so an operator's choice there always wins (a
//! role's or database's `SET application_name` does not: a name sent at
//! connection overrides those). [`with_fallback_application_name`] adds it
//! to the URL the services connect with; the URL is never re-serialised
//! (the parameter is appended to the text as given, as `crate::loopback`
//! does), so whatever else it carries reaches libpq byte for byte.

use std::borrow::Cow;

/// `database_url` with `fallback_application_name=<name>` added, unless it
/// sets one already. A `postgres://` or `postgresql://` URL gets it as a
/// query parameter, libpq's `key=value` form as one more pair. `name` is a
/// program's name (letters, digits, `-`, `_`): nothing in it needs quoting.
pub fn with_fallback_application_name<'a>(database_url: &'a str, name: &str) -> Cow<'a, str> {
    if database_url.contains("fallback_application_name") {
        return Cow::Borrowed(database_url);
    }
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Cow::Owned(with_query_parameter(
            database_url,
            &format!("fallback_application_name={name}"),
        ))
    } else if database_url.trim().is_empty() {
        Cow::Owned(format!("fallback_application_name={name}"))
    } else {
        Cow::Owned(format!("{database_url} fallback_application_name={name}"))
    }
}

/// `url` with `parameter` (`key=value`, already encoded) appended to its
/// query: after `?` when it has none, after `&` otherwise.
pub(crate) fn with_query_parameter(url: &str, parameter: &str) -> String {
    let separator = if !url.contains('?') {
        "?"
    } else if url.ends_with(['?', '&']) {
        ""
    } else {
        "&"
    };
    format!("{url}{separator}{parameter}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_name_as_a_parameter_and_key_value_strings_as_a_pair() {
        let named = |url| with_fallback_application_name(url, "election-ingest").into_owned();
        assert_eq!(
            named("postgres://app@db/x"),
            "postgres://app@db/x?fallback_application_name=election-ingest"
        );
        assert_eq!(
            named("postgresql://app@db/x?sslmode=require"),
            "postgresql://app@db/x?sslmode=require&fallback_application_name=election-ingest"
        );
        assert_eq!(
            named("postgres://app@db/x?"),
            "postgres://app@db/x?fallback_application_name=election-ingest"
        );
        assert_eq!(
            named("host=db dbname=x"),
            "host=db dbname=x fallback_application_name=election-ingest"
        );
        assert_eq!(named(""), "fallback_application_name=election-ingest");
    }

    #[test]
    fn a_url_that_names_a_fallback_already_keeps_it() {
        for url in [
            "postgres://app@db/x?fallback_application_name=mine",
            "host=db fallback_application_name=mine",
        ] {
            assert_eq!(with_fallback_application_name(url, "election-ingest"), url);
        }
    }
}
