//! `cargo xtask bench` (`just bench`): builds the release binaries the
//! bench starts and runs `election-bench` on them, with wrk installed first
//! when it is missing (Debian's package: the bench's load generator,
//! tools/bench/src/wrk.rs). The bench raises its own open-file limit for its
//! 5,000 stream subscribers and 512 wrk connections (its children inherit
//! it), so nothing here touches the shell's limits.

use std::process::Command;

use crate::setup::Apt;
use crate::shell::{self, on_path, target_dir};

/// The packages `election-bench` starts as child processes, built with it.
const BINARIES: [&str; 4] = [
    "election-ingest",
    "election-query",
    "election-reprocessor",
    "election-bench",
];

/// Builds and runs the bench with `flags` (see `election-bench --help`).
pub fn run(flags: &[String]) -> anyhow::Result<()> {
    if !on_path("wrk") {
        Apt::default().need("wrk")?;
    }
    let mut build = shell::cargo();
    build.args(["build", "--release", "-q"]);
    for package in BINARIES {
        build.args(["-p", package]);
    }
    shell::run(&mut build)?;
    let bin_dir = target_dir().join("release");
    shell::run(
        Command::new(bin_dir.join("election-bench"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(flags),
    )
}
