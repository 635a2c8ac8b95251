//! `cargo xtask bench` (`just bench`): builds the release binaries the
//! bench starts and runs `election-bench` on them, with wrk installed first
//! when it is missing (Debian's package: the bench's load generator,
//! tools/bench/src/wrk.rs). The bench raises its own open-file limit for its
//! 5,000 stream subscribers and 512 wrk connections (its children inherit
//! it), so nothing here touches the shell's limits.
//!
//! `cargo xtask deny` (`just deny`): the dependency policy of deny.toml
//! (licenses, bans, sources), with a clear word when cargo-deny is not
//! installed.

use std::process::Command;

use anyhow::bail;

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

/// `cargo deny check licenses bans sources`. Not `--offline`: cargo-deny
/// then asks `cargo metadata` not to download, and the metadata of every
/// platform's crates (`windows-sys` and the like) is not on a Linux
/// machine that only built for itself; these three checks read the
/// registry's index only. Advisories are left out: they need GitHub's
/// advisory database.
pub fn deny() -> anyhow::Result<()> {
    if !on_path("cargo-deny") {
        bail!("cargo-deny is not installed: cargo install --locked cargo-deny");
    }
    shell::run(shell::cargo().args(["deny", "check", "licenses", "bans", "sources"]))
}
