//! The history endpoints, answered from the history port
//! (`election_core::History`: PostgreSQL in the service): cities by votes in a
//! window, ballot boxes in reporting order, the timeline, and the CSV audit
//! export.
//!
//! Query parameters are checked strictly: an unknown, repeated or malformed
//! parameter is a 400 naming it, so a typo (`?form=`) is never silently read
//! as "no window". Then the election must exist (404 `unknown_election`).
//!
//! # The CSV export
//!
//! Safe to open in a spreadsheet: a text cell that starts with `=`, `+`, `-`,
//! `@`, a tab or a carriage return would be read as a formula (OWASP "CSV
//! injection"; a correction's free-text `reason` such as
//! `=HYPERLINK("http://evil", "recount")`), so it is written with a `'`
//! before it, which spreadsheets show as text. Only free text is touched:
//! ids cannot start with those characters, and numbers (a negative
//! `difference`) stay numbers. Text that starts with a `'` gets one more
//! (a spreadsheet shows the stored text): so the rule can be undone
//! exactly, by removing one leading `'` from a `reason` that has one, which
//! is what the sealed log's verifier does (docs/audit.md).
//!
//! The last three columns serve that verifier: `omitted` (the revision
//! left the party out: a NULL vote, shown as 0 in `votes`), and the
//! SHA-256 of the stored body and the stored `payload_hash`, in hex.
//!
//! Incremental: `?after=<report id>` exports only revisions with a larger
//! report id (the log's primary key, which grows in recording order), so a
//! newsroom that remembers the last `report_id` it has pulls only what is
//! new.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use election_core::ElectionId;
use election_core::history::{AuditCursor, AuditPage, AuditRow, Window};
use election_http::ApiError;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::AppState;
use crate::answer::{
    bad_parameter, bytes_response, hex, instant, json_response, parameters, parse_election,
    store_error,
};
use crate::timeline::Bucket;

/// Default of `limit` for first reports.
pub const DEFAULT_FIRST_REPORTS: u32 = 100;
/// Largest `limit` for first reports.
pub const MAX_FIRST_REPORTS: u32 = 10_000;
/// Revisions per page of the CSV export (each with its party rows).
const EXPORT_PAGE: u32 = 1000;
/// Pages rendered ahead of a slow reader: memory per export stays bounded.
const EXPORT_AHEAD: usize = 2;

/// The CSV export's columns, in order.
pub const CSV_HEADER: &str = "report_id,ballot_box_id,city,revision,reason,party,votes,difference,received_at,status,\
     omitted,payload_sha256,payload_hash\r\n";

fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Serialize)]
struct CitiesBody {
    election: ElectionId,
    from: Option<String>,
    to: Option<String>,
    cities: Vec<CityBody>,
}

#[derive(Serialize)]
struct CityBody {
    city: election_core::CityId,
    votes: i64,
    reports: i64,
}

/// `GET /v1/elections/{e}/analytics/cities?from=&to=`.
pub async fn cities(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let parameters = parameters(query, &["from", "to"])?;
    let from = parameters
        .get("from")
        .map(|v| instant("from", v))
        .transpose()?;
    let to = parameters.get("to").map(|v| instant("to", v)).transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(bad_parameter(format!(
            "from ({}) is later than to ({}); the window is [from, to)",
            rfc3339(from),
            rfc3339(to)
        )));
    }
    state.elections.check(&election).await?;
    let history = Arc::clone(&state.history);
    let target = election.clone();
    let rows =
        election_http::blocking(move || history.cities_by_votes(&target, Window { from, to }))
            .await?
            .map_err(store_error)?;
    Ok(json_response(
        &CitiesBody {
            election,
            from: from.map(rfc3339),
            to: to.map(rfc3339),
            cities: rows
                .into_iter()
                .map(|row| CityBody {
                    city: row.city,
                    votes: row.votes,
                    reports: row.reports,
                })
                .collect(),
        },
        state.cache.history.clone(),
    ))
}

#[derive(Serialize)]
struct FirstReportsBody {
    election: ElectionId,
    limit: u32,
    ballot_boxes: Vec<FirstReportBody>,
}

#[derive(Serialize)]
struct FirstReportBody {
    rank: usize,
    ballot_box_id: election_core::BallotBoxId,
    city: election_core::CityId,
    first_reported_at: String,
}

/// `GET /v1/elections/{e}/analytics/first-reports?limit=`.
pub async fn first_reports(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let parameters = parameters(query, &["limit"])?;
    let limit = match parameters.get("limit") {
        None => DEFAULT_FIRST_REPORTS,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_FIRST_REPORTS).contains(n))
            .ok_or_else(|| {
                bad_parameter(format!(
                    "limit: {text:?} must be a whole number from 1 to {MAX_FIRST_REPORTS}"
                ))
            })?,
    };
    state.elections.check(&election).await?;
    let history = Arc::clone(&state.history);
    let target = election.clone();
    let rows = election_http::blocking(move || history.first_reports(&target, limit))
        .await?
        .map_err(store_error)?;
    Ok(json_response(
        &FirstReportsBody {
            election,
            limit,
            ballot_boxes: rows
                .into_iter()
                .enumerate()
                .map(|(index, row)| FirstReportBody {
                    rank: index + 1,
                    ballot_box_id: row.ballot_box,
                    city: row.city,
                    first_reported_at: rfc3339(row.first_reported_at),
                })
                .collect(),
        },
        state.cache.history.clone(),
    ))
}

/// `GET /v1/elections/{e}/timeline?bucket=`.
pub async fn timeline(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let parameters = parameters(query, &["bucket"])?;
    let bucket = match parameters.get("bucket") {
        None => Bucket::M5,
        Some(text) => Bucket::parse(text).ok_or_else(|| {
            bad_parameter(format!(
                "bucket: {text:?} must be one of {}",
                Bucket::ALL.map(|(name, _)| name).join(", ")
            ))
        })?,
    };
    state.elections.check(&election).await?;
    let body = state
        .timelines
        .body(&state.history, &election, bucket)
        .await?;
    Ok(bytes_response(body, state.cache.history.clone()))
}

/// `GET /v1/elections/{e}/reports.csv?after=`: every revision of every
/// report (with a report id above `after`, when given), one row per party,
/// streamed page by page as the client reads.
pub async fn reports_csv(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let parameters = parameters(query, &["after"])?;
    let after = match parameters.get("after") {
        None => None,
        Some(text) => Some(AuditCursor {
            report_id: text
                .parse::<i64>()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    bad_parameter(format!(
                        "after: {text:?} must be a report id (a whole number, 0 or more)"
                    ))
                })?,
        }),
    };
    state.elections.check(&election).await?;
    // The first page is read before answering, so an unavailable database
    // is a clean 503 rather than a broken download.
    let first = read_page(&state, &election, after).await?;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_AHEAD);
    let filename = format!("election-{election}-reports.csv");
    let cache_control = state.cache.history.clone();
    tokio::spawn(export(state, election, first, sender));
    // Fused: a body may be polled again after its end (the compression
    // layer does), which a bare `unfold` answers with a panic.
    let stream = futures_util::StreamExt::fuse(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|chunk| (chunk, receiver)) },
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (
                header::CACHE_CONTROL,
                cache_control.to_str().unwrap_or("no-store").to_owned(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn read_page(
    state: &AppState,
    election: &ElectionId,
    after: Option<AuditCursor>,
) -> Result<AuditPage, ApiError> {
    let history = Arc::clone(&state.history);
    let election = election.clone();
    election_http::blocking(move || history.audit_page(&election, after, EXPORT_PAGE))
        .await?
        .map_err(store_error)
}

/// Writes the export into `sender` page by page. A full channel waits for
/// the client; a closed one (the client left) ends the export. A failure
/// half-way ends the body with an error, so the client sees a broken
/// download, never a silently truncated file.
async fn export(
    state: Arc<AppState>,
    election: ElectionId,
    first: AuditPage,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut chunk = Vec::with_capacity(CSV_HEADER.len() + first.rows.len() * 100);
    chunk.extend_from_slice(CSV_HEADER.as_bytes());
    let mut page = first;
    loop {
        for row in &page.rows {
            write_row(&mut chunk, row);
        }
        if sender.send(Ok(Bytes::from(chunk))).await.is_err() {
            return;
        }
        let Some(cursor) = page.next else {
            return;
        };
        page = match read_page(&state, &election, Some(cursor)).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(election.id = %election, error = %error, "the CSV export broke off");
                let _ = sender
                    .send(Err(std::io::Error::other("reading the audit log failed")))
                    .await;
                return;
            }
        };
        chunk = Vec::with_capacity(page.rows.len() * 100);
    }
}

/// One CSV line (RFC 4180: CRLF, fields with a comma, quote or line break
/// quoted, quotes doubled).
pub fn write_row(out: &mut Vec<u8>, row: &AuditRow) {
    let fields: [&str; 13] = [
        &row.report_id.to_string(),
        row.ballot_box.as_str(),
        row.city.as_str(),
        &row.revision.to_string(),
        &neutralise(row.reason.as_deref().unwrap_or("")),
        row.party.as_str(),
        &row.votes.to_string(),
        &row.difference.to_string(),
        &rfc3339_micros(row.received_at),
        if row.counted { "counted" } else { "pending" },
        if row.omitted { "true" } else { "false" },
        &hex(&row.payload_sha256),
        &hex(&row.payload_hash),
    ];
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_field(out, field);
    }
    out.extend_from_slice(b"\r\n");
}

/// Free text as a spreadsheet will show it, never run it: a leading `'`
/// when it starts like a formula, or with a `'` itself (see the module
/// docs), so that removing one leading `'` always gives the stored text.
pub fn neutralise(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn write_field(out: &mut Vec<u8>, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        for part in field.split('"').enumerate() {
            if part.0 > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(part.1.as_bytes());
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

fn rfc3339_micros(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str) -> String {
        let mut out = Vec::new();
        write_field(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        assert_eq!(field("recount"), "recount");
        assert_eq!(field(""), "");
        assert_eq!(field("recount, ward 3"), "\"recount, ward 3\"");
        assert_eq!(field("the \"late\" box"), "\"the \"\"late\"\" box\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("\""), "\"\"\"\"");
    }

    #[test]
    fn formula_like_text_is_neutralised() {
        for formula in [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(neutralise(formula), format!("'{formula}"));
        }
        for text in ["recount", "", "a=b", " =x"] {
            assert_eq!(neutralise(text), text);
        }
        // A leading quote is doubled, so one quote removed gives the text back.
        assert_eq!(neutralise("'already"), "''already");
        for text in ["'already", "=1", "''", "x"] {
            let shown = neutralise(text);
            assert_eq!(shown.strip_prefix('\'').unwrap_or(&shown), text);
        }
    }
}

#[derive(Serialize)]
struct FlagsBody {
    election: ElectionId,
    correction_share: f64,
    flags: Vec<FlagBody>,
}

#[derive(Serialize)]
struct FlagBody {
    report_id: i64,
    ballot_box_id: election_core::BallotBoxId,
    city: election_core::CityId,
    revision: i32,
    reason: &'static str,
    total_votes: i64,
    previous_total: Option<i64>,
    electorate: Option<i64>,
    received_at: String,
}

/// `GET /v1/elections/{e}/flags`: revisions counted but worth a second
/// look (`History::flags`): more votes than their box's
/// electorate, or corrections moving a box's total by more than
/// `FLAG_CORRECTION_SHARE` of its previous total.
pub async fn flags(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    parameters(query, &[])?;
    state.elections.check(&election).await?;
    let history = Arc::clone(&state.history);
    let target = election.clone();
    let share = state.flag_correction_share;
    let rows = election_http::blocking(move || history.flags(&target, share))
        .await?
        .map_err(store_error)?;
    Ok(json_response(
        &FlagsBody {
            election,
            correction_share: share,
            flags: rows
                .into_iter()
                .map(|flag| FlagBody {
                    report_id: flag.report_id,
                    ballot_box_id: flag.ballot_box,
                    city: flag.city,
                    revision: flag.revision,
                    reason: flag.reason.as_str(),
                    total_votes: flag.total_votes,
                    previous_total: flag.previous_total,
                    electorate: flag.electorate,
                    received_at: rfc3339_micros(flag.received_at),
                })
                .collect(),
        },
        state.cache.history.clone(),
    ))
}
