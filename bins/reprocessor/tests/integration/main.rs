//! Integration tests of election-reprocessor against real PostgreSQL (a fresh
//! schema per test) and real Redis (private servers the tests kill, pause and
//! flush; the shared standalone server; the Redis Cluster of this process),
//! mostly through the real binary.

mod counting;
mod harness;
mod operations;
mod reconcile;
mod redis_safety;
mod sealing;
mod service;
