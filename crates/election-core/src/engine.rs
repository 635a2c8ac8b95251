//! The processing engine: record durably, then count exactly once.
//!
//! Every path that counts goes through [`Engine::count`]: ingest right after
//! recording, the reprocessor after claiming. The order of the three steps is
//! what makes crashes harmless:
//!
//! 1. [`ReportLog::record`] commits the report (I1). A crash before the commit
//!    leaves nothing; a crash after leaves a pending revision.
//! 2. [`Tally::apply`] moves the counters with their markers. A crash here
//!    leaves some or all markers set and the revision still pending.
//! 3. [`ReportLog::mark_counted`]. A crash before it leaves the revision
//!    pending with all markers set.
//!
//! A pending revision is claimed again later and re-applied; the markers turn
//! whatever part had already been applied into a no-op. So a revision is never
//! lost (I3) and never counted twice (I2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::ids::ElectionId;
use crate::report::Report;
use crate::rules::Conflict;
use crate::store::{Claim, Counting, Recorded, ReportId, ReportLog, Tally, Totals};

/// What happened to one submitted report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and counted (HTTP 201).
    Counted(ReportId),
    /// Recorded durably; counting failed and is left to the reprocessor
    /// (HTTP 202).
    Pending(ReportId),
    /// An identical copy of a recorded revision (HTTP 200).
    Replay {
        /// The recorded revision.
        report_id: ReportId,
        /// Whether it has been counted.
        counted: bool,
    },
    /// Refused (HTTP 409).
    Conflict(Conflict),
    /// Not recorded: its batch failed, and so did it when recorded alone
    /// (a corrupt stored row of its ballot box, a statement error for it).
    /// Its batch-mates were recorded and answered normally.
    Failed {
        /// Whether the store was unreachable (HTTP 503) rather than failing
        /// on this report (HTTP 500).
        unavailable: bool,
        /// Why, with its causes, for the operator's log.
        error: String,
    },
}

/// How long each step of a submitted batch took ([`Engine::submit_timed`]),
/// so an operator can tell which store holds a slow batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Recording in the log ([`ReportLog::record`], with the report-by-report
    /// retry of a batch the log refused).
    pub record: Duration,
    /// Applying the fresh revisions to the tally ([`Tally::apply`]).
    pub apply: Duration,
    /// Marking them counted in the log ([`ReportLog::mark_counted`]).
    pub mark: Duration,
}

/// The result of counting a batch of recorded revisions.
#[derive(Debug, Default)]
pub struct CountResult {
    /// Counted and marked so in the log.
    pub counted: Vec<ReportId>,
    /// Applied to the tally but not yet marked counted in the log (the mark
    /// failed); they stay pending and a later attempt marks them.
    pub unmarked: Vec<ReportId>,
    /// Not (entirely) applied, with why; they stay pending.
    pub failed: Vec<(ReportId, StoreError)>,
    /// Why marking `unmarked` counted failed.
    pub mark_error: Option<StoreError>,
    /// How long applying and marking took (`record` is zero here).
    pub phases: Phases,
}

/// What one [`Engine::count_pending`] round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Revisions claimed.
    pub claimed: usize,
    /// Of those, counted.
    pub counted: usize,
    /// Of those, still pending.
    pub failed: usize,
    /// Why the first of them failed (the error and its causes, `: `-joined),
    /// for operators.
    pub error: Option<String>,
}

/// An error with its chain of causes, `: `-joined, as one line for logs.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Records and counts reports through a [`ReportLog`] and a [`Tally`].
#[derive(Clone)]
pub struct Engine {
    log: Arc<dyn ReportLog>,
    tally: Arc<dyn Tally>,
}

impl Engine {
    /// An engine over the given stores.
    pub fn new(log: Arc<dyn ReportLog>, tally: Arc<dyn Tally>) -> Engine {
        Engine { log, tally }
    }

    /// The report log.
    pub fn log(&self) -> &Arc<dyn ReportLog> {
        &self.log
    }

    /// The tally.
    pub fn tally(&self) -> &Arc<dyn Tally> {
        &self.tally
    }

    /// Records a batch of reports durably, then counts the fresh ones.
    ///
    /// `Err` means nothing was recorded: the log was unavailable (HTTP 503),
    /// or [`StoreError::DefinitionChanged`] (check the reports against the
    /// election's current definition and submit them again). A batch the log refused otherwise is recorded again report by
    /// report, so one bad report answers [`Outcome::Failed`] alone (as a
    /// lone report the log refuses does) and its batch-mates are recorded. Tally failures do not fail the call: those
    /// reports answer [`Outcome::Pending`].
    pub fn submit(&self, reports: &[Report]) -> Result<Vec<Outcome>, StoreError> {
        self.submit_explained(reports).map(|(outcomes, _)| outcomes)
    }

    /// [`Engine::submit`], plus why counting failed when some reports answer
    /// [`Outcome::Pending`]: the first tally (or mark) error with its causes,
    /// for the operator's log (an out-of-memory or refused Redis looks like
    /// an unreachable one from the outcomes alone).
    pub fn submit_explained(
        &self,
        reports: &[Report],
    ) -> Result<(Vec<Outcome>, Option<String>), StoreError> {
        self.submit_timed(reports)
            .map(|(outcomes, why, _)| (outcomes, why))
    }

    /// [`Engine::submit_explained`], plus how long each step took.
    pub fn submit_timed(
        &self,
        reports: &[Report],
    ) -> Result<(Vec<Outcome>, Option<String>, Phases), StoreError> {
        self.submit_timed_then(reports, || {})
    }

    /// [`Engine::submit_timed`], calling `on_recorded` once the log's part is
    /// over and before counting starts (when the whole batch fails, it is
    /// dropped uncalled). Ingest's batcher frees there the batch's place
    /// among the recording transactions it runs at once, so the next batch
    /// is recorded while this one is counted.
    pub fn submit_timed_then(
        &self,
        reports: &[Report],
        on_recorded: impl FnOnce(),
    ) -> Result<(Vec<Outcome>, Option<String>, Phases), StoreError> {
        let started = Instant::now();
        let recorded: Vec<Result<Recorded, Outcome>> = match self.log.record(reports) {
            Ok(recorded) => recorded.into_iter().map(Ok).collect(),
            // One report may be what fails its whole batch: record each alone,
            // so only that one fails. An unreachable store fails them all.
            // Recording them again one by one would be refused the same way:
            // the caller checks them against the new definition first.
            Err(error @ StoreError::DefinitionChanged { .. }) => return Err(error),
            Err(error) if reports.len() > 1 && !error.is_unavailable() => {
                self.record_one_by_one(reports)
            }
            Err(error) if !error.is_unavailable() => vec![Err(Outcome::Failed {
                unavailable: false,
                error: explain(&error),
            })],
            Err(error) => return Err(error),
        };
        on_recorded();
        let record = started.elapsed();
        let fresh: Vec<Counting> = recorded
            .iter()
            .filter_map(|r| match r {
                Ok(Recorded::Fresh(counting)) => Some(counting.clone()),
                _ => None,
            })
            .collect();
        let result = self.count(&fresh);
        let why = result
            .failed
            .first()
            .map(|(_, error)| explain(error))
            .or_else(|| result.mark_error.as_ref().map(|error| explain(error)));
        let counted: std::collections::HashSet<ReportId> = result
            .counted
            .iter()
            .chain(&result.unmarked)
            .copied()
            .collect();
        let outcomes = recorded
            .into_iter()
            .map(|r| match r {
                Ok(Recorded::Fresh(counting)) if counted.contains(&counting.report_id) => {
                    Outcome::Counted(counting.report_id)
                }
                Ok(Recorded::Fresh(counting)) => Outcome::Pending(counting.report_id),
                Ok(Recorded::Replay { report_id, counted }) => {
                    Outcome::Replay { report_id, counted }
                }
                Ok(Recorded::Conflict(conflict)) => Outcome::Conflict(conflict),
                Err(failed) => failed,
            })
            .collect();
        let phases = Phases {
            record,
            ..result.phases
        };
        Ok((outcomes, why, phases))
    }

    /// Records each report of a batch that failed as a whole on its own, in
    /// order (so revisions of one box keep their order): one answer each.
    fn record_one_by_one(&self, reports: &[Report]) -> Vec<Result<Recorded, Outcome>> {
        reports
            .iter()
            .map(
                |report| match self.log.record(std::slice::from_ref(report)) {
                    Ok(mut answers) if answers.len() == 1 => Ok(answers.remove(0)),
                    Ok(answers) => Err(Outcome::Failed {
                        unavailable: false,
                        error: format!("the log answered {} times for one report", answers.len()),
                    }),
                    Err(error) => Err(Outcome::Failed {
                        unavailable: error.is_unavailable(),
                        error: explain(&error),
                    }),
                },
            )
            .collect()
    }

    /// Applies recorded revisions to the tally and marks the applied ones
    /// counted. Safe to call for revisions already (partly) applied.
    pub fn count(&self, batch: &[Counting]) -> CountResult {
        let mut result = CountResult::default();
        if batch.is_empty() {
            return result;
        }
        let mut applied = Vec::with_capacity(batch.len());
        let started = Instant::now();
        let answers = self.tally.apply(batch);
        result.phases.apply = started.elapsed();
        for (counting, answer) in batch.iter().zip(answers) {
            match answer {
                Ok(_) => applied.push(counting.report_id),
                Err(error) => result.failed.push((counting.report_id, error)),
            }
        }
        if !applied.is_empty() {
            let started = Instant::now();
            let marked = self.log.mark_counted(&applied);
            result.phases.mark = started.elapsed();
            match marked {
                Ok(()) => result.counted = applied,
                Err(error) => {
                    result.unmarked = applied;
                    result.mark_error = Some(error);
                }
            }
        }
        result
    }

    /// Claims pending revisions, counts them, and releases those that failed
    /// (applied but not marked ones keep their lease: marking them is all
    /// that is left, and the next claim after the lease does it).
    pub fn count_pending(&self, claim: &Claim) -> Result<Drained, StoreError> {
        let batch = self.log.claim_pending(claim)?;
        let result = self.count(&batch);
        let mut error = None;
        if let Some((_, first)) = result.failed.first() {
            let ids: Vec<ReportId> = result.failed.iter().map(|(id, _)| *id).collect();
            let text = explain(first);
            // A failed release only delays the retry until the lease runs out.
            let _ = self.log.release(&ids, &text);
            error = Some(text);
        }
        if let Some(mark_error) = &result.mark_error {
            error.get_or_insert_with(|| explain(mark_error));
        }
        Ok(Drained {
            claimed: batch.len(),
            counted: result.counted.len(),
            failed: batch.len() - result.counted.len(),
            error,
        })
    }

    /// What every counter of `election` must hold once nothing is pending,
    /// computed from the log.
    pub fn expected_totals(&self, election: &ElectionId) -> Result<Totals, StoreError> {
        self.log.counted_totals(election)
    }
}
