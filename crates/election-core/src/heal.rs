//! Noticing that the tally lost counted revisions, and restoring them from
//! the log while everything keeps running (invariant I5 in
//! `docs/ARCHITECTURE.md`).
//!
//! # What is watched
//!
//! Not counters: a counter that moves all night cannot be compared with the
//! log without a quiet moment. Markers can: every counted revision was
//! applied before the log marked it counted, and applying it left one marker
//! per group of counters ([`Tally::apply`]). A marker does not move once set.
//! So "every counted revision has all its markers" holds at any load, and a
//! counted revision missing one was lost by the tally after it was counted:
//! a restart without persistence, a `FLUSHALL`, a failover to a replica that
//! never received it.
//!
//! # Why re-applying restores exactly what was lost
//!
//! A marker and the counters it guards are written by one atomic step in one
//! hash slot, so a loss takes both or neither. Re-applying a revision whose
//! marker is missing therefore moves exactly the counters that lost its
//! difference, and re-applying one that still has its markers moves nothing.
//! What this cannot see: a marker deleted without its counters (only by hand,
//! or by an evicting Redis, which the tally refuses to write to): re-applying
//! would count that revision twice; `reconcile --repair` takes it back out.
//!
//! # Work per sweep
//!
//! [`sweep`] reads an election's counted revisions a page at a time, newest
//! first where the log can page that way
//! ([`ReportLog::counted_revisions_newest_first`]; in id order otherwise),
//! and asks the tally which lack a marker (on Redis, one `HMGET` per
//! marker bucket, pipelined), then applies those again. Newest first because
//! of what a failover loses: replication is asynchronous, so a replica
//! promoted in a dead master's place lacks what that master applied in its
//! last moments, the revisions counted last. They are in the sweep's first
//! pages instead of its last, and healed before the sweep has gone through
//! the rest (a restart without persistence loses everything, and there the
//! order does not matter). At a million ballot boxes that is a
//! million log rows and about a million marker lookups per sweep (~16 s
//! here, extrapolated from ~1.9 s for 119,000 revisions, itself estimated
//! from a reconcile's timing); the reprocessor
//! sweeps every `--heal-interval`, so a loss is repaired within one interval
//! plus one sweep.

use std::collections::HashSet;

use crate::error::StoreError;
use crate::ids::ElectionId;
use crate::store::{Applied, Counting, ReportId, ReportLog, Tally};

/// How many missing revisions a [`Sweep`] names.
pub const EXAMPLES: usize = 10;

/// What one sweep of an election found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Counted revisions whose markers were checked.
    pub checked: u64,
    /// How many of them lacked a marker.
    pub missing: u64,
    /// The first few of those found (newest first where the log pages that
    /// way, see [`sweep`]).
    pub examples: Vec<ReportId>,
    /// How many were applied again and moved counters (only when restoring).
    pub restored: u64,
}

/// Checks the markers of every counted revision of `election`, a page of
/// `page_size` at a time, and, when `restore`, applies again each revision
/// that lacks one. See the module docs.
pub fn sweep(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    election: &ElectionId,
    page_size: usize,
    restore: bool,
) -> Result<Sweep, StoreError> {
    sweep_telling(log, tally, election, page_size, restore, &mut |_| {})
}

/// [`sweep`], calling `restored` with the revisions of each page that were
/// applied again (and moved counters) as soon as they were: the totals are
/// right again from then on, which at a million ballot boxes is seconds
/// before the sweep ends.
pub fn sweep_telling(
    log: &dyn ReportLog,
    tally: &dyn Tally,
    election: &ElectionId,
    page_size: usize,
    restore: bool,
    restored: &mut dyn FnMut(&[ReportId]),
) -> Result<Sweep, StoreError> {
    let mut found = Sweep::default();
    let limit = page_size.max(1);
    // Newest first when the log can: its answer to the first page says so
    // for the whole sweep (a log answers `None` always or never).
    let first = log.counted_revisions_newest_first(election, None, limit)?;
    let newest_first = first.is_some();
    let next = |cursor: Option<ReportId>| -> Result<Vec<Counting>, StoreError> {
        if newest_first {
            Ok(log
                .counted_revisions_newest_first(election, cursor, limit)?
                .unwrap_or_default())
        } else {
            log.counted_revisions(election, cursor, limit)
        }
    };
    let mut page = match first {
        Some(page) => page,
        None => next(None)?,
    };
    while let Some(last) = page.last() {
        let cursor = Some(last.report_id);
        check_page(tally, page, restore, &mut found, restored)?;
        page = next(cursor)?;
    }
    Ok(found)
}

/// Checks one page's markers into `found` and, when `restore`, applies its
/// lost revisions again, telling `restored` those that moved counters (even
/// when another part of the page failed).
fn check_page(
    tally: &dyn Tally,
    page: Vec<Counting>,
    restore: bool,
    found: &mut Sweep,
    restored: &mut dyn FnMut(&[ReportId]),
) -> Result<(), StoreError> {
    found.checked += page.len() as u64;
    let missing = tally.unapplied(&page)?;
    if missing.is_empty() {
        return Ok(());
    }
    found.missing += missing.len() as u64;
    let room = EXAMPLES.saturating_sub(found.examples.len());
    found.examples.extend(missing.iter().take(room));
    if !restore {
        return Ok(());
    }
    let missing: HashSet<ReportId> = missing.into_iter().collect();
    let lost: Vec<_> = page
        .into_iter()
        .filter(|c| missing.contains(&c.report_id))
        .collect();
    let mut moved = Vec::new();
    let mut failed = None;
    for (counting, answer) in lost.iter().zip(tally.apply(&lost)) {
        match answer {
            Ok(Applied::Now) => moved.push(counting.report_id),
            Ok(Applied::Already) => {}
            Err(error) => {
                failed.get_or_insert(error);
            }
        }
    }
    found.restored += moved.len() as u64;
    if !moved.is_empty() {
        restored(&moved);
    }
    failed.map_or(Ok(()), Err)
}
