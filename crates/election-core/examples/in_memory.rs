//! An embedder's smallest setup: the engine over the in-memory stores, which
//! keep everything in the process (for tests, and for trying the engine
//! out; a service uses PostgreSQL and Redis, see `postgres_redis.rs`).
//!
//! ```text
//! cargo run -p election-core --example in_memory
//! ```
//!
//! The in-memory stores are behind the `test-support` feature, which
//! election-core's own dev-dependency enables for its examples and tests.

mod common;

use std::sync::Arc;

use election_core::memory::{MemoryLog, MemoryTally};
use election_core::{ElectionId, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(Arc::new(MemoryLog::new()), Arc::new(MemoryTally::new()));
    let election = ElectionId::parse("2025")?;
    common::election_night(&engine, &election)
}
