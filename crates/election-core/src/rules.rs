//! The revision rules of docs/contract.md §2 as pure logic.
//!
//! A report log calls [`decide`] while it holds its ballot box exclusively
//! (a row lock in PostgreSQL, a mutex in memory), with what it has recorded
//! for that box. Keeping the rules here, free of I/O, means every store applies
//! exactly the same ones and they are tested once, exhaustively.

use std::fmt;

use crate::ids::CityId;
use crate::report::{Difference, PayloadHash, Report, Revision, Votes};
use crate::store::ReportId;

/// What a log has recorded for one ballot box: its city and its latest
/// revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoxState {
    /// The city of the box's first report; every later revision must match.
    pub city: CityId,
    /// The highest revision recorded.
    pub latest_revision: Revision,
    /// The votes of that revision.
    pub latest_votes: Votes,
}

/// A recorded revision with the same number as the incoming report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SameRevision {
    /// Its id in the log.
    pub report_id: ReportId,
    /// Its content identity.
    pub payload_hash: PayloadHash,
    /// Whether it has been counted yet.
    pub counted: bool,
}

/// Why a report was refused as conflicting (HTTP 409). Nothing is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// The revision was already recorded with different content.
    DifferentPayload {
        /// The revision both claim to be.
        revision: Revision,
    },
    /// A higher revision was already recorded.
    Stale {
        /// The revision posted.
        revision: Revision,
        /// The latest recorded.
        latest: Revision,
    },
    /// The box reported earlier under another city.
    OtherCity {
        /// The city posted.
        city: CityId,
        /// The city the box belongs to.
        recorded: CityId,
    },
    /// The box's city is certified: its results are final, and no new
    /// report or revision of its boxes is recorded (an identical replay of a
    /// recorded revision is still a replay, so retries stay safe).
    Certified {
        /// The certified city.
        city: CityId,
    },
}

impl Conflict {
    /// A short machine-readable code for the kind of conflict.
    pub fn code(&self) -> &'static str {
        match self {
            Conflict::DifferentPayload { .. } => "revision_conflict",
            Conflict::Stale { .. } => "stale_revision",
            Conflict::OtherCity { .. } => "city_conflict",
            Conflict::Certified { .. } => "certified",
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::DifferentPayload { revision } => write!(
                f,
                "revision {revision} of this ballot box was already recorded with different content; \
                 send a higher revision with a reason to correct it"
            ),
            Conflict::Stale { revision, latest } => write!(
                f,
                "revision {revision} is older than the recorded revision {latest} of this ballot box"
            ),
            Conflict::OtherCity { city, recorded } => write!(
                f,
                "this ballot box belongs to city {recorded:?}, not {city:?}"
            ),
            Conflict::Certified { city } => write!(
                f,
                "city {:?} is certified: its results are final and accept no further report or revision",
                city.as_str()
            ),
        }
    }
}

/// What to do with an incoming report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Record it; the counters move by this difference.
    Record(Difference),
    /// An identical copy of a recorded revision: answer as before, count
    /// nothing.
    Replay(SameRevision),
    /// Refuse it; record nothing.
    Conflict(Conflict),
}

/// Applies docs/contract.md §2 to `report`, given the box's recorded state (`None` for a
/// box never seen) and the recorded revision with the same number, if any.
pub fn decide(report: &Report, state: Option<&BoxState>, same: Option<&SameRevision>) -> Decision {
    if let Some(same) = same {
        return if same.payload_hash == report.payload_hash() {
            Decision::Replay(same.clone())
        } else {
            Decision::Conflict(Conflict::DifferentPayload {
                revision: report.revision(),
            })
        };
    }
    let Some(state) = state else {
        return Decision::Record(Difference::between(None, report.votes()));
    };
    if &state.city != report.city() {
        return Decision::Conflict(Conflict::OtherCity {
            city: report.city().clone(),
            recorded: state.city.clone(),
        });
    }
    if report.revision() < state.latest_revision {
        return Decision::Conflict(Conflict::Stale {
            revision: report.revision(),
            latest: state.latest_revision,
        });
    }
    // Equal revisions are caught by `same` above: a log that reports a latest
    // revision must also find it. Treat a missing one as a conflict rather
    // than count the box twice.
    if report.revision() == state.latest_revision {
        return Decision::Conflict(Conflict::DifferentPayload {
            revision: report.revision(),
        });
    }
    Decision::Record(Difference::between(
        Some(&state.latest_votes),
        report.votes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ElectionId;

    fn report(city: &str, revision: i64, votes: &[(&str, u32)]) -> Report {
        let body = serde_json::json!({
            "ballot_box_id": "B1",
            "city": city,
            "revision": revision,
            "reason": "recount",
            "votes": votes.iter().map(|(p, n)| (p.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        });
        Report::from_json(
            &ElectionId::parse("e").unwrap(),
            body.to_string().as_bytes(),
        )
        .unwrap()
    }

    fn state(of: &Report) -> BoxState {
        BoxState {
            city: of.city().clone(),
            latest_revision: of.revision(),
            latest_votes: of.votes().clone(),
        }
    }

    fn same(of: &Report) -> SameRevision {
        SameRevision {
            report_id: ReportId(7),
            payload_hash: of.payload_hash(),
            counted: true,
        }
    }

    #[test]
    fn first_report_records_its_votes() {
        let r1 = report("x", 1, &[("a", 3)]);
        let Decision::Record(diff) = decide(&r1, None, None) else {
            panic!()
        };
        assert_eq!(diff, Difference::between(None, r1.votes()));
    }

    #[test]
    fn identical_revision_is_a_replay() {
        let r1 = report("x", 1, &[("a", 3)]);
        assert_eq!(
            decide(&r1, Some(&state(&r1)), Some(&same(&r1))),
            Decision::Replay(same(&r1))
        );
        // An old revision replayed after a newer one is still a replay.
        let r2 = report("x", 2, &[("a", 4)]);
        assert_eq!(
            decide(&r1, Some(&state(&r2)), Some(&same(&r1))),
            Decision::Replay(same(&r1))
        );
    }

    #[test]
    fn same_revision_other_content_conflicts() {
        let r1 = report("x", 1, &[("a", 3)]);
        let r1b = report("x", 1, &[("a", 4)]);
        assert_eq!(
            decide(&r1b, Some(&state(&r1)), Some(&same(&r1))),
            Decision::Conflict(Conflict::DifferentPayload {
                revision: Revision::FIRST
            })
        );
    }

    #[test]
    fn lower_revision_is_stale_and_other_city_conflicts() {
        let r3 = report("x", 3, &[("a", 3)]);
        let r2 = report("x", 2, &[("a", 1)]);
        let Decision::Conflict(conflict) = decide(&r2, Some(&state(&r3)), None) else {
            panic!()
        };
        assert_eq!(conflict.code(), "stale_revision");
        assert_eq!(
            conflict.to_string(),
            "revision 2 is older than the recorded revision 3 of this ballot box"
        );
        let r4 = report("y", 4, &[("a", 1)]);
        let Decision::Conflict(conflict) = decide(&r4, Some(&state(&r3)), None) else {
            panic!()
        };
        assert_eq!(conflict.code(), "city_conflict");
        assert_eq!(
            conflict.to_string(),
            "this ballot box belongs to city \"x\", not \"y\""
        );
    }

    #[test]
    fn higher_revision_moves_by_the_difference() {
        let r1 = report("x", 1, &[("a", 3), ("b", 2)]);
        let r5 = report("x", 5, &[("a", 4)]);
        let Decision::Record(diff) = decide(&r5, Some(&state(&r1)), None) else {
            panic!()
        };
        let got: Vec<i64> = diff.iter().map(|(_, n)| n).collect();
        assert_eq!(got, [1, -2]);
    }

    #[test]
    fn missing_latest_row_is_refused_not_double_counted() {
        let r1 = report("x", 1, &[("a", 3)]);
        assert!(matches!(
            decide(&r1, Some(&state(&r1)), None),
            Decision::Conflict(Conflict::DifferentPayload { .. })
        ));
    }
}
