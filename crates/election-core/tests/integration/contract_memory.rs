//! The shared contract suite, run on the in-memory stores (standalone-like and
//! Cluster-like tallies), and how their injected faults look to a caller.

use std::sync::Arc;

use election_core::contract;
use election_core::memory::{
    Faults, InjectedFault, ManualClock, MemoryLog, MemoryTally, Step, When,
};
use election_core::{History, ReportLog, StoreError, Tally};

#[test]
fn memory_log_keeps_the_report_log_contract() {
    contract::report_log(&|| Arc::new(MemoryLog::new()));
    // The contract checks pages newest first where a log offers them: this
    // one does.
    let none = contract::unique_election("none");
    assert_eq!(
        MemoryLog::new()
            .counted_revisions_newest_first(&none, None, 1)
            .unwrap(),
        Some(Vec::new())
    );
}

#[test]
fn memory_tally_keeps_the_tally_contract() {
    contract::tally(&|| Arc::new(MemoryTally::new()));
    contract::tally(&|| Arc::new(MemoryTally::with(Faults::new(), 16)));
}

#[test]
fn memory_engine_keeps_the_engine_contract() {
    contract::engine(&|| {
        let log: Arc<dyn ReportLog> = Arc::new(MemoryLog::new());
        let tally: Arc<dyn Tally> = Arc::new(MemoryTally::with(Faults::new(), 16));
        (log, tally)
    });
}

#[test]
fn memory_log_keeps_the_history_contract() {
    contract::history(&|| {
        let log = Arc::new(MemoryLog::new());
        (log.clone() as Arc<dyn ReportLog>, log as Arc<dyn History>)
    });
}

/// An injected fault is an ordinary "unavailable" answer (retry later), as
/// a crash or a lost connection would be, and says which step it struck.
#[test]
fn injected_faults_are_unavailable_and_name_their_step() {
    let faults = Faults::new();
    let log = MemoryLog::with(faults.clone(), ManualClock::new());
    faults.arm(Step::Record, When::Before);
    let e = contract::unique_election("fault");
    let error = log.record(&contract::seed_reports(&e)).unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    assert!(matches!(
        error,
        StoreError::Unavailable {
            store: "memory",
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "memory is unavailable while running step Record"
    );
    let source = std::error::Error::source(&error).expect("a source");
    assert_eq!(
        source.downcast_ref::<InjectedFault>(),
        Some(&InjectedFault(Step::Record))
    );
    assert_eq!(log.pending_count(&e).unwrap(), 0, "nothing recorded");
}
