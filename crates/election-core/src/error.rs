//! The errors of the core: bad input, and stores that failed.
//!
//! Input errors come in two kinds because HTTP answers them differently: a body
//! that is not the expected JSON shape ([`ReportError::Malformed`], 400) and a
//! well-formed body that breaks a rule of the domain ([`ReportError::Invalid`],
//! 422). Both say which field and which rule, for a person to fix.
//!
//! Store errors keep the adapter's error as their source, and say whether the
//! store was unreachable (retry later; ingest answers 202 or 503) or failed in
//! some other way.

use std::fmt;

/// One broken rule: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    field: String,
    message: String,
}

impl Problem {
    /// A problem with `field` (a JSON path such as `votes.labour`).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field at fault, as a JSON path (`votes.labour`, `revision`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it, in lowercase prose.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Problem {}

/// Why a report was refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not the expected JSON document: invalid JSON, a wrong type, an unknown
    /// or duplicated field, a duplicated party.
    #[error("malformed report: {0}")]
    Malformed(String),
    /// Well-formed, but some fields break the rules of docs/contract.md §2. Every broken
    /// rule is listed, not only the first.
    #[error("invalid report: {}", join(.0))]
    Invalid(Vec<Problem>),
}

impl ReportError {
    /// The problems of an invalid report; empty for a malformed one.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ReportError::Invalid(problems) => problems,
            ReportError::Malformed(_) => &[],
        }
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The error type adapters wrap theirs in.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store (the report log or the tally) did not do what was asked.
///
/// Whatever the variant, the contract of the store traits guarantees that the
/// operation either happened entirely or not at all (per report), so the caller
/// may retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time. Retrying later
    /// is the remedy.
    #[error("{store} is unavailable while {doing}")]
    Unavailable {
        /// Which store: `postgresql`, `redis`, `memory`.
        store: &'static str,
        /// What was being done, e.g. `recording 12 reports`.
        doing: String,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
    /// The store answered with an error that retrying will not fix by itself
    /// (a bug, a schema mismatch, a full disk).
    #[error("{store} failed while {doing}")]
    Failed {
        /// Which store.
        store: &'static str,
        /// What was being done.
        doing: String,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
    /// The election's definition is not the one a report was checked
    /// against (it was loaded or changed since, or the report was checked
    /// against a definition this log does not hold). Nothing of the batch
    /// was recorded: check the reports against the current definition and
    /// record them again.
    #[error(
        "the definition of election {election} changed since its reports were checked; nothing was recorded"
    )]
    DefinitionChanged {
        /// The election whose definition changed.
        election: crate::ElectionId,
    },
}

impl StoreError {
    /// True when the remedy is to retry later (the store was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Which store failed (`postgresql`, `redis`, `memory`), when the error
    /// names one.
    pub fn store(&self) -> Option<&'static str> {
        match self {
            StoreError::Unavailable { store, .. } | StoreError::Failed { store, .. } => Some(store),
            StoreError::DefinitionChanged { .. } => None,
        }
    }
}
