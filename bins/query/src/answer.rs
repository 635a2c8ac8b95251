//! What every handler of the read API shares: reading the path and the
//! query string (strictly: an unknown, repeated or malformed parameter is a
//! 400 naming it), writing JSON answers with their `Cache-Control`, and
//! turning a store's failure into an answer.
//!
//! It sits below the handler modules ([`crate::api`], [`crate::analytics`],
//! [`crate::timeline`], [`crate::asof`], [`crate::audit`],
//! [`crate::elections`]), which import it and never each other for these,
//! so no two of them depend on each other both ways.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use election_core::{ElectionId, StoreError};
use election_http::ApiError;
use serde::Serialize;

/// Reads an election id from the path: 422 naming the rule when invalid.
pub fn parse_election(text: &str) -> Result<ElectionId, ApiError> {
    ElectionId::parse(text).map_err(|problem| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            problem.to_string(),
        )
    })
}

/// A JSON answer from pre-rendered bytes, with `cache_control`.
pub fn bytes_response(body: Bytes, cache_control: HeaderValue) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, cache_control);
    response
}

/// A JSON answer rendered now, with `cache_control`.
pub fn json_response<T: Serialize>(value: &T, cache_control: HeaderValue) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => bytes_response(Bytes::from(body), cache_control),
        Err(error) => ApiError::internal(format!("rendering an answer: {error}")).into_response(),
    }
}

/// A store's failure as an answer: 503 when retrying later may work, an
/// opaque (logged) 500 otherwise.
pub fn store_error(error: StoreError) -> ApiError {
    if error.is_unavailable() {
        tracing::warn!(error = %error, "store unavailable");
        let store = match error.store() {
            Some("postgresql") | None => "PostgreSQL",
            Some(other) => other,
        };
        ApiError::unavailable(
            "unavailable",
            format!("the history store ({store}) is unavailable; retry later"),
        )
    } else {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        ApiError::internal(detail)
    }
}

/// 400 `invalid_parameter` with `message`.
pub fn bad_parameter(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

/// A parameter every endpoint that checks its parameters ignores (the
/// others ignore their whole query string): the cache-buster jQuery's
/// `cache: false` (and other clients) append, `?_=<milliseconds>`. Refusing
/// it would break those pages for nothing: the answer does not depend on it.
pub const CACHE_BUSTER: &str = "_";

/// The query string as a map, refusing parameters not in `allowed` and
/// parameters given twice; [`CACHE_BUSTER`] is left out, whatever its value
/// and however often it is given.
pub fn parameters(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) =
        query.map_err(|error| bad_parameter(format!("malformed query string: {error}")))?;
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if name == CACHE_BUSTER {
            continue;
        }
        if !allowed.contains(&name.as_str()) {
            let expected = if allowed.is_empty() {
                "this endpoint takes no parameters".to_owned()
            } else {
                format!("expected one of: {}", allowed.join(", "))
            };
            return Err(bad_parameter(format!(
                "unknown query parameter {name:?}; {expected}"
            )));
        }
        if map.contains_key(&name) {
            return Err(bad_parameter(format!(
                "query parameter {name:?} is given more than once"
            )));
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// An RFC 3339 instant. A `+` of an offset written unencoded in a URL
/// arrives as a space; it is read as the `+` it was.
pub fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let parse = |text: &str| DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc));
    parse(value)
        .or_else(|error| {
            if value.contains(' ') {
                parse(&value.replace(' ', "+"))
            } else {
                Err(error)
            }
        })
        .map_err(|error| {
            bad_parameter(format!(
                "{name}: {value:?} is not an RFC 3339 date and time ({error}); \
                 write e.g. 2025-09-15T18:00:00Z or 2025-09-15T19:00:00%2B01:00"
            ))
        })
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_accept_rfc3339_and_an_unencoded_plus() {
        let expected = instant("from", "2025-09-15T17:00:00Z").unwrap();
        assert_eq!(
            instant("from", "2025-09-15T18:00:00+01:00").unwrap(),
            expected
        );
        assert_eq!(
            instant("from", "2025-09-15T18:00:00 01:00").unwrap(),
            expected
        );
        let error = instant("to", "yesterday").unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(
            error.message().starts_with("to: \"yesterday\""),
            "{}",
            error.message()
        );
    }
}
