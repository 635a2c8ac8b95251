//! Records the git revision being built as `ELECTION_GIT_REVISION`, for
//! `--version` and the `build_info` metric: an operator looking at a running
//! service must be able to tell which commit it is, not only `0.9.0`.
//!
//! `ELECTION_GIT_REVISION` set in the build's environment wins (a build from
//! a source tarball, a packager's own id); without it and without git, the
//! revision is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ELECTION_GIT_REVISION");
    if let Ok(revision) = std::env::var("ELECTION_GIT_REVISION") {
        println!("cargo:rustc-env=ELECTION_GIT_REVISION={revision}");
        return;
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ELECTION_GIT_REVISION={revision}");
    // Build again when HEAD moves: a commit, a checkout (HEAD names a branch
    // whose ref file changes, or the packed refs do). Only files that exist
    // are named: cargo treats a missing one as changed on every build, and a
    // repository whose refs were never packed has no `packed-refs`, so every
    // cargo command rebuilt this crate and all above it. Packing the refs
    // later deletes the branch's ref file, which is watched.
    for path in ["HEAD", "packed-refs"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path])
            && std::path::Path::new(&file).exists()
        {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(file) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={file}");
    }
}
