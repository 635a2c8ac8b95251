//! Conditional requests (RFC 9110 §13): validators on answers that change
//! only when their data does, and `304 Not Modified` when the client already
//! has the current version.
//!
//! Why: a live body carries `as_of`, which moves with every refresh even
//! when no vote did, so caching by content would never hit. The validator is
//! the data's *version* instead: a CDN or browser revalidating with
//! `If-None-Match` gets an empty 304 until a number changes. The `ETag` is
//! weak (`W/"…"`): bodies of one version differ in `as_of` and in their
//! compression, but mean the same thing. `Last-Modified` is the time the
//! version was first seen, for clients that show it. `If-Modified-Since` is
//! deliberately not honoured: HTTP dates have whole seconds and versions
//! change several times a second, so a client holding an older version of
//! the same second would be told, wrongly and for as long as nothing else
//! changed, that it is current. Every client that got an `ETag` revalidates
//! with it.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

/// The validators of one version of a resource, with their header values
/// made once: a live version is answered thousands of times a second, and
/// formatting its `ETag` and `Last-Modified` per answer (an HTTP date through
/// `chrono`'s format string) was ~2 % of the query service's CPU
/// (docs/benchmarks.md, "The validators made once per version"). Cloning
/// one is two reference counts and a string.
#[derive(Clone, Debug)]
pub struct Validators {
    /// The opaque tag, without quotes or `W/`.
    tag: Box<str>,
    /// `W/"<tag>"`.
    etag: HeaderValue,
    /// When this version appeared, as an IMF-fixdate (HTTP dates carry whole
    /// seconds).
    last_modified: HeaderValue,
}

impl Validators {
    /// The validators of the version tagged `tag` (a tag with characters a
    /// header cannot carry is answered as `W/"0"`), which appeared at
    /// `last_modified`.
    pub fn new(tag: &str, last_modified: DateTime<Utc>) -> Self {
        let etag = HeaderValue::from_str(&format!("W/\"{tag}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("W/\"0\""));
        let last_modified = HeaderValue::from_str(&http_date(last_modified))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        Validators {
            tag: tag.into(),
            etag,
            last_modified,
        }
    }

    /// The `ETag` header value: `W/"<tag>"`.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// The `Last-Modified` header value (an IMF-fixdate).
    pub fn last_modified(&self) -> &HeaderValue {
        &self.last_modified
    }

    /// Whether the client's conditional headers say it has this version.
    pub fn not_modified(&self, request: &HeaderMap) -> bool {
        request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .any(|candidate| {
                candidate == "*" || {
                    let opaque = candidate.strip_prefix("W/").unwrap_or(candidate);
                    opaque.strip_prefix('"').and_then(|o| o.strip_suffix('"')) == Some(&*self.tag)
                }
            })
    }

    /// The answer: `fresh()` with the validators and `cache_control`, or an
    /// empty 304 with the same headers when the client has this version.
    pub fn answer(
        &self,
        request: &HeaderMap,
        cache_control: HeaderValue,
        fresh: impl FnOnce() -> Response,
    ) -> Response {
        let response = if self.not_modified(request) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            fresh()
        };
        self.stamp(response, cache_control)
    }

    /// `response`, a fresh answer of this version, with the validators and
    /// `cache_control`: [`Validators::answer`] for a caller that already
    /// knows the client does not have this version.
    ///
    /// Only a 2xx or a 304 is stamped. A body that failed to render is not
    /// this version, and a cache told `public, max-age` would serve the
    /// failure to every reader for that long: an error answer keeps its
    /// own headers (`ApiError`'s `no-store`, `crate::error`).
    pub fn stamp(&self, mut response: Response, cache_control: HeaderValue) -> Response {
        let status = response.status();
        if !(status.is_success() || status == StatusCode::NOT_MODIFIED) {
            return response;
        }
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::LAST_MODIFIED, self.last_modified.clone());
        headers.insert(header::CACHE_CONTROL, cache_control);
        response
    }
}

/// An HTTP date: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(instant: DateTime<Utc>) -> String {
    instant.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `public, max-age=<seconds>`.
pub fn public_max_age(seconds: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={seconds}"))
        .unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validators() -> Validators {
        Validators::new(
            "1757959920123",
            DateTime::from_timestamp_millis(1_757_959_920_123).unwrap(),
        )
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_star() {
        let v = validators();
        assert_eq!(v.etag(), "W/\"1757959920123\"");
        assert_eq!(v.last_modified(), "Mon, 15 Sep 2025 18:12:00 GMT");
        for matching in [
            "W/\"1757959920123\"",
            "\"1757959920123\"",
            "\"1\", W/\"1757959920123\"",
            "*",
        ] {
            assert!(
                v.not_modified(&headers(&[(header::IF_NONE_MATCH, matching)])),
                "{matching}"
            );
        }
        for other in ["W/\"1\"", "1757959920123", "", "W/\"17579599201\""] {
            assert!(
                !v.not_modified(&headers(&[(header::IF_NONE_MATCH, other)])),
                "{other}"
            );
        }
        assert!(!v.not_modified(&HeaderMap::new()));
    }

    #[test]
    fn if_modified_since_alone_is_not_enough() {
        let v = validators();
        assert_eq!(v.last_modified(), "Mon, 15 Sep 2025 18:12:00 GMT");
        let same = (header::IF_MODIFIED_SINCE, "Mon, 15 Sep 2025 18:12:00 GMT");
        assert!(!v.not_modified(&headers(&[same])));
    }

    #[test]
    fn a_body_that_failed_to_render_is_not_stamped() {
        let v = validators();
        let response = v.answer(&HeaderMap::new(), public_max_age(1), || {
            crate::ApiError::internal("rendering the export").into_response()
        });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert!(response.headers().get(header::ETAG).is_none());
        assert!(response.headers().get(header::LAST_MODIFIED).is_none());
    }

    #[test]
    fn a_304_carries_the_validators_and_no_body() {
        let v = validators();
        let request = headers(&[(header::IF_NONE_MATCH, "W/\"1757959920123\"")]);
        let response = v.answer(&request, public_max_age(1), || {
            panic!("no body is rendered for a 304")
        });
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], "W/\"1757959920123\"");
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=1"
        );
        assert_eq!(
            response.headers()[header::LAST_MODIFIED],
            "Mon, 15 Sep 2025 18:12:00 GMT"
        );
    }
}
