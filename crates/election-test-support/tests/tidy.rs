//! Tidy checks over the whole repository, in the spirit of rust-analyzer's
//! `tidy.rs`: what review keeps missing, checked on every `just test`.
//!
//! - no merge-conflict markers in any tracked file (one reached main in
//!   docs/ARCHITECTURE.md once, and three later edits did not notice);
//! - no reference to files outside the repository (a clone has nothing
//!   beside it): the product contract is `docs/contract.md`;
//! - every repository path a document names exists (docs that point at a
//!   moved or deleted file mislead the next reader).
//!
//! The files are the ones git tracks, read from the workspace root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every tracked text file, as (path relative to the root, contents).
fn tracked() -> Vec<(String, String)> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .expect("running git ls-files");
    assert!(output.status.success(), "git ls-files failed");
    String::from_utf8(output.stdout)
        .expect("utf-8 file names")
        .split('\0')
        .filter(|name| !name.is_empty())
        .filter_map(|name| {
            let text = std::fs::read_to_string(root().join(name)).ok()?;
            Some((name.to_owned(), text))
        })
        .collect()
}

#[test]
fn no_merge_conflict_markers() {
    let start = "<".repeat(7) + " ";
    let end = ">".repeat(7) + " ";
    let mut found = Vec::new();
    for (name, text) in tracked() {
        for (n, line) in text.lines().enumerate() {
            if line.starts_with(&start) || line.starts_with(&end) {
                found.push(format!("{name}:{}: {line}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "merge-conflict markers:\n{}",
        found.join("\n")
    );
}

#[test]
fn nothing_refers_to_files_outside_the_repository() {
    // Spelled in pieces so this file does not match itself.
    let outside = [
        format!("..{}shared", '/'),
        format!("{}{}", "SPEC", " §"),
        format!("{}{}", "LIMITS", ".md"),
        format!("{}{}", "SPEC", ".md"),
    ];
    let mut found = Vec::new();
    for (name, text) in tracked() {
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = outside.iter().find(|what| line.contains(what.as_str())) {
                found.push(format!("{name}:{}: {what}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to files outside the repository (cite docs/contract.md instead):\n{}",
        found.join("\n")
    );
}

/// Top-level folders whose paths documents name.
const ROOTS: &[&str] = &[
    "bins/",
    "tools/",
    "crates/",
    "docs/",
    "migrations/",
    "scripts/",
    "demo/",
    "fuzz/",
    ".ci/",
];

/// The repository paths a Markdown text names in backticks or links:
/// `bins/ingest/src/batcher.rs`, `[x](docs/audit.md#anchor)`. Globs, and
/// placeholders such as `<name>` or `{…}`, are not paths.
fn named_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for piece in text.split(['`', '(', ')', ' ', '\n', '"', '\'', ',', '[', ']']) {
        let piece = piece
            .trim_end_matches(['.', ':', ';'])
            .split('#')
            .next()
            .unwrap_or("");
        let piece = piece.strip_prefix("./").unwrap_or(piece);
        // `root/x.y` or `root/x/...`: "scripts/s" (per second) is prose.
        let names_a_file = ROOTS.iter().any(|root| {
            piece
                .strip_prefix(root)
                .is_some_and(|rest| rest.contains(['.', '/']))
        });
        if names_a_file && !piece.contains(['*', '<', '>', '{', '}', '$', '…']) {
            // `path:line` and `path:line-line` name a file.
            let path = piece.split(':').next().unwrap_or(piece);
            paths.push(path.to_owned());
        }
    }
    paths
}

#[test]
fn documents_name_only_paths_that_exist() {
    let mut missing = Vec::new();
    for (name, text) in tracked() {
        if !name.ends_with(".md") {
            continue;
        }
        for path in named_paths(&text) {
            if !root().join(&path).exists() {
                missing.push(format!("{name}: {path}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "documents name paths that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_path_finder_finds_paths_and_skips_placeholders() {
    let text = "See `bins/ingest/src/batcher.rs`, [audit](docs/audit.md#head) and \
                crates/store-pg/src/record.rs:40. Not `bins/*/src`, `migrations/<date>_x`, \
                3,000 scripts/s.";
    assert_eq!(
        named_paths(text),
        [
            "bins/ingest/src/batcher.rs",
            "docs/audit.md",
            "crates/store-pg/src/record.rs"
        ]
    );
}
