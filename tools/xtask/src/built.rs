//! The executables `cargo test --workspace --all-features` builds, so tasks
//! that run a binary or an example after the tests use those very files.
//!
//! A plain `cargo build --bin election-ingest` or `cargo run --example ...`
//! resolves features for a different set of targets: without the test
//! targets, the dev-dependencies' features are not unified into the
//! workspace's dependencies, so cargo builds its own copy of most of the
//! graph (measured on a clean checkout, 2026-12-01: 105 s for the in-memory
//! example and ~40 s for the two services, after `just test-all` had built
//! both). Asking the same `cargo test` with `--no-run` answers at once after
//! the tests and names every executable it built, in its JSON messages.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};

use crate::shell::cargo;

/// One executable of the tests' build: a binary or an example.
#[derive(Debug)]
struct Executable {
    kind: String,
    name: String,
    path: PathBuf,
}

/// The binaries and examples of `cargo test --workspace --all-features`.
#[derive(Debug)]
pub struct TestBuild {
    executables: Vec<Executable>,
}

impl TestBuild {
    /// Builds (or finds fresh) everything `cargo test --workspace
    /// --all-features` runs, without running it.
    pub fn get() -> anyhow::Result<Self> {
        let mut command = cargo();
        command
            .args([
                "test",
                "--workspace",
                "--all-features",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit());
        let output = command
            .output()
            .with_context(|| format!("cannot run {command:?}"))?;
        if !output.status.success() {
            bail!("{command:?} failed ({})", output.status);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(Self {
            executables: stdout.lines().filter_map(executable).collect(),
        })
    }

    /// The executable of the binary or example (`kind`: `bin`, `example`)
    /// `name`.
    pub fn path(&self, kind: &str, name: &str) -> anyhow::Result<PathBuf> {
        self.executables
            .iter()
            .find(|built| built.kind == kind && built.name == name)
            .map(|built| built.path.clone())
            .with_context(|| {
                format!("`cargo test --workspace --all-features` built no {kind} named {name}")
            })
    }
}

/// The binary or example a cargo message names, if it is one: a
/// `compiler-artifact` with an executable, built as itself (a `bin`'s unit
/// tests are an executable of kind `bin` too, with `profile.test` set).
fn executable(line: &str) -> Option<Executable> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != false {
        return None;
    }
    let kind = message["target"]["kind"].as_array()?.first()?.as_str()?;
    if kind != "bin" && kind != "example" {
        return None;
    }
    Some(Executable {
        kind: kind.to_owned(),
        name: message["target"]["name"].as_str()?.to_owned(),
        path: PathBuf::from(message["executable"].as_str()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_and_examples_are_found_and_unit_test_harnesses_are_not() {
        let bin = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"election-ingest"},"profile":{"test":false},"executable":"/t/debug/election-ingest"}"#;
        let harness = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"election-ingest"},"profile":{"test":true},"executable":"/t/debug/deps/election_ingest-1"}"#;
        let example = r#"{"reason":"compiler-artifact","target":{"kind":["example"],"name":"in_memory"},"profile":{"test":false},"executable":"/t/debug/examples/in_memory-2"}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"election_core"},"profile":{"test":false},"executable":null}"#;
        let built = TestBuild {
            executables: [
                bin,
                harness,
                example,
                lib,
                "not json",
                r#"{"reason":"build-finished"}"#,
            ]
            .into_iter()
            .filter_map(executable)
            .collect(),
        };
        assert_eq!(built.executables.len(), 2, "{built:?}");
        assert_eq!(
            built.path("bin", "election-ingest").unwrap(),
            PathBuf::from("/t/debug/election-ingest")
        );
        assert_eq!(
            built.path("example", "in_memory").unwrap(),
            PathBuf::from("/t/debug/examples/in_memory-2")
        );
        let missing = built.path("bin", "election-query").unwrap_err().to_string();
        assert!(missing.contains("no bin named election-query"), "{missing}");
    }
}
