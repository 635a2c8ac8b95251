//! `cargo xtask deny` (`just deny`): the dependency policy of deny.toml
//! (licenses, bans, sources), with a clear word when cargo-deny is not
//! installed.

use anyhow::bail;

use crate::shell::{self, on_path};

/// `cargo deny check licenses bans sources`. Not `--offline`: cargo-deny
/// then asks `cargo metadata` not to download, and the metadata of every
/// platform's crates (`windows-sys` and the like) is not on a Linux
/// machine that only built for itself; these three checks read the
/// registry's index only. Advisories are left out: they need GitHub's
/// advisory database.
pub fn run() -> anyhow::Result<()> {
    if !on_path("cargo-deny") {
        bail!("cargo-deny is not installed: cargo install --locked cargo-deny");
    }
    shell::run(shell::cargo().args(["deny", "check", "licenses", "bans", "sources"]))
}
