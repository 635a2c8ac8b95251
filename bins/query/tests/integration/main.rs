//! Integration tests of election-query, through HTTP against real PostgreSQL
//! (a fresh schema per test) and real Redis, with the real ingest service
//! feeding it; the dashboard in a real browser (headless Chromium); and the
//! real binary.

mod audit;
mod dashboard;
mod hardening;
mod harness;
mod history;
mod http;
mod live;
mod memory_history;
mod openapi;
mod process;
mod progress;
mod proxy;
mod results;
