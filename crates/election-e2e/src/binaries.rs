//! The binaries under test, built once per test process.
//!
//! A test crate cannot name another package's binaries (`CARGO_BIN_EXE_*`
//! only covers its own), so the first scenario of a process runs
//! `$CARGO build --workspace --all-features --bin election-ingest --bin
//! election-reprocessor` (the feature set `just test` builds with) into the target
//! directory this test binary itself was built in (`--release` when the test
//! was built in release), and every scenario runs the binaries from there.
//! Cargo sets `CARGO` for `cargo test`; outside it, `cargo` from `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the two binaries are.
#[derive(Debug)]
pub struct Binaries {
    /// `election-ingest`.
    pub ingest: PathBuf,
    /// `election-reprocessor`.
    pub reprocessor: PathBuf,
}

/// Builds the binaries (once per process) and returns their paths.
///
/// # Panics
/// When the build fails (cargo's output is shown above the panic).
pub fn binaries() -> &'static Binaries {
    static BUILT: OnceLock<Binaries> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn build() -> Binaries {
    // This test binary is `<target>/<profile>/deps/<name>-<hash>`.
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()))
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", profile_dir.display()));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        // The feature set of `cargo test --workspace --all-features` (what
        // `just test` runs), so the binaries and their dependencies the tests
        // built are reused rather than built again with other features.
        .args([
            "build",
            "-q",
            "--workspace",
            "--all-features",
            "--bin",
            "election-ingest",
            "--bin",
            "election-reprocessor",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        status.success(),
        "{cargo} build --bin election-ingest --bin election-reprocessor failed ({status})"
    );
    let binaries = Binaries {
        ingest: profile_dir.join("election-ingest"),
        reprocessor: profile_dir.join("election-reprocessor"),
    };
    for binary in [&binaries.ingest, &binaries.reprocessor] {
        assert!(binary.exists(), "{} was not built", binary.display());
    }
    binaries
}
