//! `election-reprocessor`: see the README.

fn main() {}
