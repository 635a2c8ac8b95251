//! The shared contract suite, run on the in-memory stores (standalone-like and
//! Cluster-like tallies).

use std::sync::Arc;

use election_core::contract;
use election_core::memory::{Faults, MemoryLog, MemoryTally};
use election_core::{ReportLog, Tally};

#[test]
fn memory_log_keeps_the_report_log_contract() {
    contract::report_log(&|| Arc::new(MemoryLog::new()));
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
