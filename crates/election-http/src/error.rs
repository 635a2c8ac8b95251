//! One error type for every handler of every service.
//!
//! 4xx answers explain the problem to the person or program that sent the
//! request; 5xx answers stay short and the cause is logged here, once.
//!
//! Every error answer carries `Cache-Control: no-store`: a cache in front of
//! the service (a CDN, often set to keep errors for a while when the origin
//! says nothing) must not keep one. A 429 is one client's, a 503 ends when
//! the service recovers, a 404 of an election ends when it is defined. An
//! answer that sets its own `Cache-Control` (a versioned live answer) keeps
//! it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer: status, machine-readable code, and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// The same error, answered with `Retry-After: <seconds>`.
    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_secs = Some(seconds);
        self
    }

    /// 500; `detail` is logged, not sent.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        let detail = detail.into();
        tracing::error!(error.detail = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    /// 503 with a message saying what to do.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Retry-After` seconds, if any.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(http.status = self.status.as_u16(), error.code = self.code, error.message = %self.message, "request failed");
        }
        let body = Body {
            error: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_not_stored_by_caches() {
        for error in [
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such election"),
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
                .with_retry_after(1),
            ApiError::unavailable("redis_unavailable", "try again"),
        ] {
            let response = error.clone().into_response();
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                "no-store",
                "{error}"
            );
        }
    }
}
