//! `GET /v1/elections/{e}/audit`: the sealed log's published heads
//! (docs/audit.md).
//!
//! The reprocessor seals every recorded revision into a hash chain per
//! election a few seconds after it is recorded (store-pg `seal`; read
//! here through `History::seal_heads`); this
//! answer publishes the chain's newest head and the earlier checkpoints, so
//! whoever notes a head (a newsroom at 21:00, an observer) can later prove
//! that nothing under it changed: recompute it from `reports.csv` with
//! `scripts/verify_audit.py`, or find it again among the checkpoints.
//! Checkpoints are listed newest first, a page at a time (one is written
//! per sealing round that found new reports: thousands in a night), and
//! `?before=` pages back.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::SecondsFormat;
use std::sync::Arc;

use election_core::ElectionId;
use election_core::history::SealCheckpoint;
use election_http::ApiError;
use serde::Serialize;

use crate::AppState;
use crate::answer::{bad_parameter, hex, json_response, parameters, parse_election, store_error};

/// Earlier checkpoints per answer unless `limit` says otherwise.
pub const DEFAULT_HEADS: u32 = 100;
/// Largest `limit`.
pub const MAX_HEADS: u32 = 1000;

#[derive(Serialize)]
struct AuditBody {
    election: ElectionId,
    /// The newest head, hex; the empty chain's (64 zeros) before any seal.
    head: String,
    sealed_reports: i64,
    sealed_through_report_id: i64,
    sealed_at: Option<String>,
    heads: Vec<HeadBody>,
    /// `?before=` for the next page of earlier heads, `null` at the first.
    next_before: Option<i64>,
}

#[derive(Serialize)]
struct HeadBody {
    head: String,
    sealed_reports: i64,
    sealed_through_report_id: i64,
    sealed_at: String,
}

/// The empty chain's head: 64 zeros (docs/audit.md).
const ZERO_HEAD: [u8; 32] = [0; 32];

impl From<&SealCheckpoint> for HeadBody {
    fn from(checkpoint: &SealCheckpoint) -> HeadBody {
        HeadBody {
            head: hex(&checkpoint.head),
            sealed_reports: checkpoint.sealed_count,
            sealed_through_report_id: checkpoint.sealed_through_report_id,
            sealed_at: checkpoint
                .sealed_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }
}

/// `GET /v1/elections/{e}/audit?before=&limit=`.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let election = parse_election(&election)?;
    let parameters = parameters(query, &["before", "limit"])?;
    let before =
        match parameters.get("before") {
            None => None,
            Some(text) => Some(text.parse::<i64>().ok().filter(|id| *id >= 1).ok_or_else(
                || {
                    bad_parameter(format!(
                        "before: {text:?} must be a report id (a whole number, 1 or more)"
                    ))
                },
            )?),
        };
    let limit = match parameters.get("limit") {
        None => DEFAULT_HEADS,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_HEADS).contains(n))
            .ok_or_else(|| {
                bad_parameter(format!(
                    "limit: {text:?} must be a whole number from 1 to {MAX_HEADS}"
                ))
            })?,
    };
    state.elections.check(&election).await?;
    let history = Arc::clone(&state.history);
    let target = election.clone();
    let heads = election_http::blocking(move || history.seal_heads(&target, before, limit))
        .await?
        .map_err(store_error)?;
    let earlier: Vec<HeadBody> = heads.earlier.iter().map(HeadBody::from).collect();
    let next_before = if heads.more {
        heads.earlier.last().map(|c| c.sealed_through_report_id)
    } else {
        None
    };
    let body = match &heads.latest {
        Some(latest) => AuditBody {
            election,
            head: hex(&latest.head),
            sealed_reports: latest.sealed_count,
            sealed_through_report_id: latest.sealed_through_report_id,
            sealed_at: Some(
                latest
                    .sealed_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            heads: earlier,
            next_before,
        },
        None => AuditBody {
            election,
            head: hex(&ZERO_HEAD),
            sealed_reports: 0,
            sealed_through_report_id: 0,
            sealed_at: None,
            heads: earlier,
            next_before,
        },
    };
    Ok(json_response(&body, state.cache.history.clone()))
}
