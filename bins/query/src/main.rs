//! `election-query`: see the README.

fn main() {}
