//! Bulk reporting: `POST /v1/elections/{election}/report-batches`, many
//! reports in one request, for counting centres, tabulators and gateways
//! that hold many ballot boxes' results at once.
//!
//! Each item means exactly what the same report posted alone would: it is
//! parsed, validated, checked against the election's definition and the
//! token's ballot box like a single report (the same functions of
//! [`crate::service`]), and answered in its own `results` entry with the
//! status the single endpoint would have given (201, 202, 200, 409, 400,
//! 422, 403, 500, 503) and the same body (its `status` field, counted or
//! pending, called `state` there), plus how many items were counted,
//! pending, replayed and refused. One bad item never fails the others.
//!
//! The items that pass their checks go to the [`Batcher`](crate::batcher)
//! as **one job**, kept whole and in array order inside one group-commit
//! transaction: revisions 1 and 2 of a box in one request are decided in
//! that order, and the whole request is recorded (I1) before it is answered,
//! through the same transaction and Redis scripts as single reports (I2).
//! So a request fails as a whole only before any item is looked at (400,
//! 401, 403, 413, 415, 429) or when PostgreSQL fails its transaction (503:
//! nothing of it was recorded).
//!
//! Items are kept as the raw JSON they were posted as ([`RawValue`]), so the
//! audit payload of each report is its item exactly as sent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use election_core::{Report, StoreError};
use election_http::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::batcher::NotRecorded;
use crate::service::{
    Accepted, AppState, DEFINITION_ATTEMPTS, admit, answer_for, check_item, client, count_request,
    current_definition, definition_storm, parse_report, rate_limit, read_body, refuse,
    shutting_down, store_unavailable,
};

/// Largest bulk body accepted.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most reports in one bulk request.
pub const MAX_BATCH_REPORTS: usize = 1000;

/// The request body: `{"reports": [<report>, ...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    reports: Vec<&'a RawValue>,
}

/// The answer to a bulk request: one result per item, in item order, and
/// how many items ended each way.
#[derive(Serialize, Debug)]
pub struct BatchAnswer {
    /// One entry per item of `reports`, in the same order.
    pub results: Vec<ItemAnswer>,
    /// Items recorded and counted (201).
    pub counted: usize,
    /// Items recorded, counting deferred (202).
    pub pending: usize,
    /// Items that were replays of recorded revisions (200).
    pub replayed: usize,
    /// Items refused or failed (every other status); nothing recorded for them.
    pub refused: usize,
}

/// One item's answer: the status the single endpoint would give, and its
/// body.
#[derive(Serialize, Debug)]
pub struct ItemAnswer {
    /// The item's position in `reports` (from 0).
    pub index: usize,
    /// The HTTP status the report would have been answered alone.
    pub status: u16,
    /// The single endpoint's body for that status.
    #[serde(flatten)]
    pub body: ItemBody,
}

/// The body of one item's answer.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum ItemBody {
    /// 200, 201, 202: the single endpoint's body, its `status` called
    /// `state` here (the item's `status` is the HTTP one).
    Accepted {
        /// The log's id of the revision.
        report_id: election_core::ReportId,
        /// The ballot box.
        ballot_box_id: String,
        /// The revision.
        revision: u32,
        /// `counted` or `pending`.
        state: &'static str,
    },
    /// Every other status: `error` and `message`, as in an error answer.
    Refused {
        /// The error code.
        error: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
}

impl ItemAnswer {
    fn of(index: usize, answer: Result<(StatusCode, Accepted), ApiError>) -> ItemAnswer {
        match answer {
            Ok((status, accepted)) => ItemAnswer {
                index,
                status: status.as_u16(),
                body: ItemBody::Accepted {
                    report_id: accepted.report_id,
                    ballot_box_id: accepted.ballot_box_id,
                    revision: accepted.revision,
                    state: accepted.status,
                },
            },
            Err(error) => ItemAnswer {
                index,
                status: error.status().as_u16(),
                body: ItemBody::Refused {
                    error: error.code(),
                    message: error.message().to_owned(),
                },
            },
        }
    }
}

impl BatchAnswer {
    fn of(results: Vec<ItemAnswer>) -> BatchAnswer {
        let count = |status: u16| results.iter().filter(|item| item.status == status).count();
        let (counted, pending, replayed) = (count(201), count(202), count(200));
        BatchAnswer {
            refused: results.len() - counted - pending - replayed,
            counted,
            pending,
            replayed,
            results,
        }
    }
}

pub(crate) async fn post_batch(
    State(state): State<Arc<AppState>>,
    Path(election): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let client = client(&state, &parts);
    match handle(&state, &election, client, &parts.headers, body).await {
        Ok(answer) => {
            count_request(&state, StatusCode::OK, "report_batch", started);
            for item in &answer.results {
                let code = match item.body {
                    ItemBody::Accepted { state, .. } => state,
                    ItemBody::Refused { error, .. } => error,
                };
                state.requests.batch_item(item.status, code);
            }
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(error) => refuse(&state, error, started),
    }
}

/// What one item has become while the request is worked through.
enum Slot {
    /// Refused or answered.
    Done(Result<(StatusCode, Accepted), ApiError>),
    /// Passed its checks; waits for the batcher.
    Waiting(Report),
    /// With the batcher.
    Submitted,
}

async fn handle(
    state: &AppState,
    election: &str,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<BatchAnswer, ApiError> {
    let caller = admit(state, election, client, headers).await?;
    let body = read_body(state, headers, body, MAX_BATCH_BYTES).await?;
    let wire = parse_wire(&body)?;
    // `admit` took one report's allowance; the batch costs one per item.
    if wire.reports.len() > 1 {
        rate_limit(
            state,
            &caller.token_hash,
            u32::try_from(wire.reports.len() - 1).unwrap_or(u32::MAX),
        )?;
    }
    let bound_box = caller.scope.ballot_box.as_ref();
    let current = current_definition(state, &caller.election).await?;
    let mut slots: Vec<Slot> = wire
        .reports
        .iter()
        .map(|raw| {
            match parse_report(&caller.election, raw.get().as_bytes()).and_then(|mut report| {
                check_item(&current, bound_box, &mut report)?;
                Ok(report)
            }) {
                Ok(report) => Slot::Waiting(report),
                Err(error) => Slot::Done(Err(error)),
            }
        })
        .collect();

    for attempt in 1..=DEFINITION_ATTEMPTS {
        if !submit_waiting(state, &mut slots).await? {
            break;
        }
        if attempt == DEFINITION_ATTEMPTS {
            return Err(definition_storm());
        }
        // Check every returned report again against the new definition.
        state.definitions.invalidate(&caller.election);
        let current = current_definition(state, &caller.election).await?;
        for slot in &mut slots {
            if let Slot::Waiting(report) = slot
                && let Err(error) = check_item(&current, bound_box, report)
            {
                *slot = Slot::Done(Err(error));
            }
        }
    }

    Ok(BatchAnswer::of(
        slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| match slot {
                Slot::Done(answer) => ItemAnswer::of(index, answer),
                // Every submitted item was answered above; none is left.
                Slot::Waiting(_) | Slot::Submitted => ItemAnswer::of(index, Err(shutting_down())),
            })
            .collect(),
    ))
}

/// The body's shape and size, checked before any item is: 400 for a body
/// that is not `{"reports": [...]}` or has no report, 413 past
/// [`MAX_BATCH_REPORTS`].
fn parse_wire(body: &[u8]) -> Result<Wire<'_>, ApiError> {
    let wire: Wire<'_> = serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"reports\": [<report>, ...]}}: {error}"),
        )
    })?;
    if wire.reports.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`reports` is empty: send 1 to 1000 reports",
        ));
    }
    if wire.reports.len() > MAX_BATCH_REPORTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "{} reports in one request; at most {MAX_BATCH_REPORTS}: split it",
                wire.reports.len()
            ),
        ));
    }
    Ok(wire)
}

/// Hands every waiting item to the batcher as one job, in item order, and
/// puts each answer in its slot. Returns whether any came back because the
/// election's definition changed since it was checked (those wait again);
/// an error when the job's transaction failed (nothing of it was recorded)
/// or the batcher has stopped.
async fn submit_waiting(state: &AppState, slots: &mut [Slot]) -> Result<bool, ApiError> {
    let mut positions = Vec::with_capacity(slots.len());
    let mut reports = Vec::with_capacity(slots.len());
    for (position, slot) in slots.iter_mut().enumerate() {
        if matches!(slot, Slot::Waiting(_))
            && let Slot::Waiting(report) = std::mem::replace(slot, Slot::Submitted)
        {
            positions.push(position);
            reports.push(report);
        }
    }
    if reports.is_empty() {
        return Ok(false);
    }
    let labels: Vec<(String, u32)> = reports
        .iter()
        .map(|r| (r.ballot_box().to_string(), r.revision().get()))
        .collect();
    let answers = state
        .batcher
        .submit_all(reports)
        .await
        .ok_or_else(shutting_down)?;
    let mut changed = false;
    for ((position, (ballot_box, revision)), answer) in
        positions.into_iter().zip(labels).zip(answers)
    {
        slots[position] = match answer {
            Ok(outcome) => Slot::Done(answer_for(state, ballot_box, revision, Ok(outcome))),
            // One job is one transaction: it failed whole, nothing of
            // the request was recorded.
            Err(NotRecorded::Store(error)) => return Err(whole_failure(&error)),
            Err(NotRecorded::DefinitionChanged(report)) => {
                changed = true;
                Slot::Waiting(*report)
            }
        };
    }
    Ok(changed)
}

fn whole_failure(error: &Arc<StoreError>) -> ApiError {
    tracing::warn!(error = %election_core::engine::explain(error.as_ref()), "report batch not recorded");
    store_unavailable()
}
