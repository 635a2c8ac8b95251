//! `election-ingest`: see the README.

fn main() {}
