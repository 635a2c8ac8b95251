#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod definition;
pub mod engine;
pub mod error;
pub mod grid;
pub mod heal;
pub mod history;
pub mod ids;
pub mod reconcile;
pub mod report;
pub mod rules;
pub mod status;
pub mod store;
pub mod token;

#[cfg(feature = "test-support")]
pub mod contract;
#[cfg(feature = "test-support")]
pub mod memory;

pub use definition::{
    Additions, Certification, CityDefinition, Colour, Definition, DefinitionError,
    DefinitionLookup, LineProblem, Lookup, PartyDefinition, UpdateError,
};
pub use engine::{CountResult, Drained, Engine, Outcome, Phases};
pub use error::{BoxError, Problem, ReportError, StoreError};
pub use grid::{Fingerprint, Grid, JournalCursor, Moved};
pub use history::History;
pub use ids::{BallotBoxId, CityId, DefinitionVersion, ElectionId, PartyId};
pub use report::{Difference, PayloadHash, Report, Revision, Votes};
pub use rules::Conflict;
pub use status::Status;
pub use store::{
    Applied, Claim, Counter, Counting, Incarnation, LogAudit, PendingStats, Recorded, ReportId,
    ReportLog, Snapshot, StuckReport, Tally, Totals,
};
