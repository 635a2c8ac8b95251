//! `?as_of=<RFC 3339>` on the totals answers: what stood at an instant,
//! from the log in PostgreSQL rather than the live counters.
//!
//! A figure published at 19:00 must be showable again after a correction at
//! 19:30. The live counters cannot do it (they hold only the present), but
//! the log holds every revision with the time it was received, so the
//! totals at T are the sums of each ballot box's latest revision received by
//! T (`History::stood_at`). The answer is rendered by the same
//! code as the live one ([`Rendered::new`]), so it has the same shape,
//! leaders, ties, percent reporting and statuses; a city counts as certified
//! only if it was certified by T. Names and expected boxes are today's
//! definition's (a definition only grows and renames).
//!
//! Such an answer is computed per request (one statement reading the
//! election's revisions once: see docs/benchmarks.md for its latency at
//! 100,000 boxes), so it is cached like the history answers, not the live
//! ones; its `ETag` is a hash of its body, since what stood at a past
//! instant does not change (a revision carries the time its transaction
//! began, so one committing just after T can still join an answer for the
//! last moments before T; the tag then changes with the body). An instant in the future is refused: its
//! answer would still change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use election_core::{Counter, Definition, ElectionId, PartyId, Snapshot, Totals};
use election_http::ApiError;

use crate::AppState;
use crate::answer::{self, store_error};
use crate::render::Rendered;

/// The `as_of` parameter of a totals request, if given (400 for any other
/// parameter, a malformed instant or one in the future).
pub fn parameter(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let parameters = answer::parameters(query, &["as_of"])?;
    let Some(text) = parameters.get("as_of") else {
        return Ok(None);
    };
    let at = answer::instant("as_of", text)?;
    if at > Utc::now() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!(
                "as_of: {text:?} is in the future; what stands then is not known yet (leave as_of out for the live totals)"
            ),
        ));
    }
    Ok(Some(at))
}

/// The totals of `election` as they stood at `at`, rendered.
pub async fn rendered(
    state: &AppState,
    election: &ElectionId,
    at: DateTime<Utc>,
) -> Result<Rendered, ApiError> {
    // The feed's copy of the definition when it has one (no registry read
    // per request), else PostgreSQL's: as-of answers need no Redis.
    let definition = match state.live.current(election).await {
        Ok(live) => live.source.clone(),
        Err(_) => {
            let pool = state.pg.clone();
            let target = election.clone();
            election_http::blocking(move || store_pg::definitions::find(&pool, &target))
                .await?
                .map_err(|error| store_error(error.into()))?
                .map(Arc::new)
        }
    };
    let history = Arc::clone(&state.history);
    let target = election.clone();
    let stood = election_http::blocking(move || history.stood_at(&target, at))
        .await?
        .map_err(store_error)?;

    let mut totals = Totals::new();
    let mut national: BTreeMap<PartyId, i64> = BTreeMap::new();
    let mut parties: BTreeSet<PartyId> = definition
        .as_deref()
        .map(|d| d.parties().iter().map(|p| p.id.clone()).collect())
        .unwrap_or_default();
    for ((city, party), votes) in stood.votes {
        *national.entry(party.clone()).or_default() += votes;
        parties.insert(party.clone());
        totals.add(Counter::City(city, party), votes);
    }
    for (party, votes) in national {
        totals.add(Counter::National(party), votes);
    }
    let snapshot = Snapshot {
        totals,
        parties,
        ballot_boxes_reported: stood.boxes.values().sum(),
        cities: stood.boxes,
        unreadable: Vec::new(),
    };
    let definition = definition.map(|d| certified_by(d, at));
    Ok(Rendered::new(
        election,
        &snapshot,
        definition.as_deref(),
        0,
        at,
    ))
}

/// `definition` with only the certifications made by `at` (itself when that
/// is all of them: a registry is not copied for nothing).
fn certified_by(definition: Arc<Definition>, at: DateTime<Utc>) -> Arc<Definition> {
    let kept: Vec<_> = definition
        .certifications()
        .iter()
        .filter(|(_, how)| {
            DateTime::parse_from_rfc3339(&how.at).is_ok_and(|when| when.with_timezone(&Utc) <= at)
        })
        .map(|(city, how)| (city.clone(), how.clone()))
        .collect();
    if kept.len() == definition.certifications().len() {
        return definition;
    }
    Arc::new((*definition).clone().with_certifications(kept))
}
