//! How far a scope (one city, or the whole election) is counted (docs/contract.md §9):
//! the status every totals answer carries and the NIST export maps to its
//! `CountStatus`.
//!
//! The status is derived, never stored: from the number of ballot boxes
//! reported, the number the definition expects, and whether the city was
//! certified (`election-ingest election certify`). It is computed in one
//! place so that the live answers, the as-of answers and the export cannot
//! disagree about what "complete" means.

use std::fmt;

/// The counting status of a city or of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// No ballot box has reported yet.
    NotReporting,
    /// Some ballot boxes have reported, but not every expected one (or the
    /// election has no definition, so nothing says how many are expected).
    Partial,
    /// Every expected ballot box has reported (needs a definition with
    /// `expected_ballot_boxes`).
    Complete,
    /// Certified: the results are final; nothing more is recorded.
    Certified,
}

impl Status {
    /// The status of one city: `certified` wins, then `complete` when the
    /// definition's expected boxes have all reported, then `partial` when any
    /// has, else `not_reporting`.
    pub fn of(reported: u64, expected: Option<u64>, certified: bool) -> Status {
        if certified {
            Status::Certified
        } else if expected.is_some_and(|expected| expected > 0 && reported >= expected) {
            Status::Complete
        } else if reported > 0 {
            Status::Partial
        } else {
            Status::NotReporting
        }
    }

    /// The national status from the cities' statuses: `certified` when every
    /// city is, `complete` when every city is complete or certified,
    /// `not_reporting` when none has reported, else `partial`. No city at
    /// all is `not_reporting`.
    pub fn national(cities: impl IntoIterator<Item = Status>) -> Status {
        let (mut any, mut all_certified, mut all_complete, mut any_reported) =
            (false, true, true, false);
        for status in cities {
            any = true;
            all_certified &= status == Status::Certified;
            all_complete &= status >= Status::Complete;
            any_reported |= status != Status::NotReporting;
        }
        if !any {
            Status::NotReporting
        } else if all_certified {
            Status::Certified
        } else if all_complete {
            Status::Complete
        } else if any_reported {
            Status::Partial
        } else {
            Status::NotReporting
        }
    }

    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotReporting => "not_reporting",
            Status::Partial => "partial",
            Status::Complete => "complete",
            Status::Certified => "certified",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_city_s_status() {
        assert_eq!(Status::of(0, Some(4), false), Status::NotReporting);
        assert_eq!(Status::of(0, None, false), Status::NotReporting);
        assert_eq!(Status::of(3, Some(4), false), Status::Partial);
        assert_eq!(Status::of(4, Some(4), false), Status::Complete);
        // Without a definition nothing says every box is in.
        assert_eq!(Status::of(9, None, false), Status::Partial);
        assert_eq!(Status::of(0, Some(4), true), Status::Certified);
        assert_eq!(Status::Certified.to_string(), "certified");
    }

    #[test]
    fn the_national_status() {
        use Status::*;
        assert_eq!(Status::national([]), NotReporting);
        assert_eq!(Status::national([NotReporting, NotReporting]), NotReporting);
        assert_eq!(Status::national([NotReporting, Complete]), Partial);
        assert_eq!(Status::national([Complete, Certified]), Complete);
        assert_eq!(Status::national([Certified, Certified]), Certified);
        assert_eq!(Status::national([Partial, Certified]), Partial);
    }
}
