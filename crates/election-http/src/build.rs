//! What was built: the workspace version and the git revision (recorded by
//! this crate's build script), for `--version` and the `build_info` metric.

/// The workspace version (`Cargo.toml`'s `workspace.package.version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision built (12 hex digits), or what `ELECTION_GIT_REVISION`
/// said at build time, or `unknown`.
pub const REVISION: &str = env!("ELECTION_GIT_REVISION");

/// `0.9.0 (0123456789ab)`: what `--version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ELECTION_GIT_REVISION"),
    ")"
);

/// The name of the gauge every service exposes with value 1 and the labels
/// `version` and `revision`.
pub const BUILD_INFO_GAUGE: &str = "build_info";

/// Its help text.
pub const BUILD_INFO_HELP: &str = "Always 1; the labels say which version and git revision runs.";
