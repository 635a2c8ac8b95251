//! `cargo xtask arch-check`: the direction of the workspace's dependencies,
//! checked on what cargo resolves (docs/ARCHITECTURE.md, "The crates").
//!
//! - election-core, the domain, depends on no database, cache, HTTP or async
//!   crate: embedders take it alone, and its rules can be read and tested
//!   without a server.
//! - election-http, the HTTP conventions every service shares, depends on no
//!   store: a store change cannot reach the HTTP layer, and
//!   election-wiring is where stores and HTTP meet.
//!
//! Only normal dependencies count (`cargo tree -e normal`): tests and
//! examples may use anything.

use anyhow::{Context, bail};

use crate::shell::cargo;

/// One rule: `package` must not depend, directly or not, on any of
/// `forbidden`.
struct Rule {
    package: &'static str,
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        package: "election-core",
        forbidden: &[
            "diesel",
            "diesel_migrations",
            "redis",
            "tokio",
            "axum",
            "r2d2",
            "hyper",
            "pq-sys",
        ],
        why: "the domain depends on no database, cache, HTTP or async crate",
    },
    Rule {
        package: "election-http",
        forbidden: &["store-pg", "store-redis", "diesel", "redis", "pq-sys"],
        why: "the HTTP layer depends on no store (election-wiring joins them)",
    },
];

pub fn run() -> anyhow::Result<()> {
    for rule in RULES {
        let output = cargo()
            .args([
                "tree",
                "-p",
                rule.package,
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .arg("--no-dedupe")
            .output()
            .with_context(|| format!("cannot run cargo tree for {}", rule.package))?;
        if !output.status.success() {
            bail!(
                "cargo tree -p {} failed: {}",
                rule.package,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tree = String::from_utf8(output.stdout).context("cargo tree printed non-UTF-8")?;
        let broken = offending(&tree, rule.package, rule.forbidden)?;
        if !broken.is_empty() {
            bail!(
                "{} must not depend on {} ({}; docs/ARCHITECTURE.md)",
                rule.package,
                broken.join(", "),
                rule.why
            );
        }
        println!(
            "arch-check: {} depends on none of {}",
            rule.package,
            rule.forbidden.join(", ")
        );
    }
    Ok(())
}

/// The forbidden crates `tree` (the output of `cargo tree --prefix none`)
/// names; an error if it does not name `package` itself (an empty or
/// unexpected output must not pass).
fn offending(tree: &str, package: &str, forbidden: &[&str]) -> anyhow::Result<Vec<String>> {
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    if !names.contains(&package) {
        bail!("cargo tree printed no {package}: {tree}");
    }
    let mut found: Vec<String> = forbidden
        .iter()
        .filter(|crate_name| names.contains(crate_name))
        .map(|crate_name| (*crate_name).to_owned())
        .collect();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forbidden_crate_anywhere_in_the_tree_is_named() {
        let tree = "election-http v0.9.0 (/w/crates/election-http)\naxum v0.8.4\nstore-pg v0.9.0 (/w/crates/store-pg)\n";
        assert_eq!(
            offending(tree, "election-http", &["store-pg", "redis"]).unwrap(),
            vec!["store-pg".to_owned()]
        );
        assert!(
            offending(tree, "election-http", &["redis"])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_tree_without_the_package_fails() {
        assert!(offending("", "election-core", &["tokio"]).is_err());
    }
}
