//! The binaries under test, built once per test process.
//!
//! A test crate cannot name another package's binaries (`CARGO_BIN_EXE_*`
//! only covers its own), so the first scenario of a process runs
//! `$CARGO build --workspace --all-features --bin election-ingest --bin
//! election-reprocessor --examples` into the target
//! directory this test binary itself was built in (`--release` when the test
//! was built in release), and every scenario runs the binaries from there.
//! Cargo sets `CARGO` for `cargo test`; outside it, `cargo` from `PATH`.
//!
//! Under `cargo test --workspace` that build finds everything fresh: the
//! examples (which `cargo test` builds too) make cargo resolve features with
//! the dev-dependencies, as the tests' build did, so the services are the
//! very executables the tests' build linked. Without them cargo resolves
//! fewer features (`serde`'s `alloc`, `tokio`'s `io-util` and a few more
//! come only from dev-dependencies) and rebuilt its own copy of the services
//! and everything under them: 55–82 s of every clean CI run.

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
        // The workspace's features, as `just test` builds with, and the
        // examples, so that features are resolved with the dev-dependencies
        // as in the tests' build (see the module docs). Run alone, this
        // crate's tests build the examples too: a few seconds, not the whole
        // test build.
        .args([
            "build",
            "-q",
            "--workspace",
            "--all-features",
            "--bin",
            "election-ingest",
            "--bin",
            "election-reprocessor",
            "--examples",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    // Without the variables `cargo test` set for this test (`CARGO_PKG_NAME`,
    // `CARGO_MANIFEST_DIR`...): ring's build script watches them, so a build
    // with this test's values reran it and rebuilt ring, rustls, redis and
    // the crates above them, here and again in the next plain cargo command
    // (78 s of a clean CI run). The same list as xtask's `shell::cargo`.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| {
            name.starts_with("CARGO_PKG_")
                || matches!(
                    name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
        }) {
            command.env_remove(&name);
        }
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        status.success(),
        "{cargo} build --bin election-ingest --bin election-reprocessor --examples failed ({status})"
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
