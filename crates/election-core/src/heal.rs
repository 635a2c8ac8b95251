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
//! [`sweep`] reads an election's counted revisions a page at a time in id
//! order and asks the tally which lack a marker (on Redis, one `HMGET` per
//! marker bucket, pipelined), then applies those again. At a million ballot boxes that is a
//! million log rows and about a million marker lookups per sweep (~16 s
//! here, extrapolated from ~1.9 s for 119,000 revisions, itself estimated
//! from a reconcile's timing); the reprocessor
//! sweeps every `--heal-interval`, so a loss is repaired within one interval
//! plus one sweep.

use std::collections::HashSet;

use crate::error::StoreError;
use crate::ids::ElectionId;
use crate::store::{Applied, ReportId, ReportLog, Tally};

/// How many missing revisions a [`Sweep`] names.
pub const EXAMPLES: usize = 10;

/// What one sweep of an election found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Counted revisions whose markers were checked.
    pub checked: u64,
    /// How many of them lacked a marker.
    pub missing: u64,
    /// The first few of those, by id.
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
    let mut found = Sweep::default();
    let mut after: Option<ReportId> = None;
    loop {
        let page = log.counted_revisions(election, after, page_size.max(1))?;
        let Some(last) = page.last() else {
            return Ok(found);
        };
        after = Some(last.report_id);
        found.checked += page.len() as u64;
        let missing = tally.unapplied(&page)?;
        if missing.is_empty() {
            continue;
        }
        found.missing += missing.len() as u64;
        let room = EXAMPLES.saturating_sub(found.examples.len());
        found.examples.extend(missing.iter().take(room));
        if restore {
            let missing: HashSet<ReportId> = missing.into_iter().collect();
            let lost: Vec<_> = page
                .into_iter()
                .filter(|c| missing.contains(&c.report_id))
                .collect();
            for answer in tally.apply(&lost) {
                if answer? == Applied::Now {
                    found.restored += 1;
                }
            }
        }
    }
}
