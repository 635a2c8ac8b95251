//! Integration tests of election-ingest, through HTTP against real PostgreSQL
//! (a fresh schema per test) and real Redis (standalone and Cluster), and of
//! the real binary.

mod access;
mod api;
mod auth_limits;
mod bulk;
mod counting;
mod defined;
mod faults;
mod harness;
mod hostile;
mod http;
mod limits;
mod operations;
mod process;
mod redis_safety;
mod secrets;
mod slow;
mod tls;
