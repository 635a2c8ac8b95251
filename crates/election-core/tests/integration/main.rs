//! Integration tests of election-core: the shared contract suite on the
//! in-memory stores, and property tests of exactly-once counting under
//! injected crashes and racing workers, reconcile, and hostile input.

mod contract_memory;
mod exactly_once;
mod heal;
mod hostile;
mod reconcile;
