//! Settings shared by the three binaries' command lines: one duration format
//! and the old names of renamed settings.
//!
//! Every duration is written the same way everywhere, `500ms`, `30s`, `5m`,
//! `1h30m` (humantime's format, plus a bare `0`), instead of a unit in the
//! setting's name (`_MS`, `_SECS`) that operators had to get right per
//! setting. Settings that differ per service carry the service's prefix
//! (`INGEST_LISTEN_ADDR`), so one environment file per systemd unit plus a
//! shared one cannot hand a setting to the wrong service.
//!
//! Renamed settings keep working: [`parse`] rewrites an old flag
//! (`--redis-timeout-ms 300` → `--redis-timeout 300ms`) and turns an old
//! environment variable into the default of the new setting when the new
//! variable is not set (so a flag or the new variable still wins). Each use
//! of an old name yields a warning for the service to log once its logging
//! is set up. Clap has no alias for environment variables, and rewriting the
//! command line this way keeps each setting one typed field.

use std::ffi::OsString;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

/// Reads a duration: `500ms`, `30s`, `5m`, `2h`, `1h30m`, `1h 30m`, or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("{text:?} is not a duration such as 500ms, 30s, 5m, 1h30m or 0 ({error})")
    })
}

/// How an old setting's bare number converts to the new setting's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds: `300` → `300ms`.
    Millis,
    /// Seconds: `5` → `5s`.
    Secs,
    /// Taken as is (a renamed address or count).
    Same,
}

impl Unit {
    fn convert(self, value: &str) -> String {
        match self {
            Unit::Millis => format!("{}ms", value.trim()),
            Unit::Secs => format!("{}s", value.trim()),
            Unit::Same => value.to_owned(),
        }
    }
}

/// A setting's old name and the new one it maps to (deprecated, still
/// accepted).
#[derive(Clone, Copy, Debug)]
pub struct Renamed {
    /// The subcommands whose argument it is (`serve`; `run` and `reconcile`).
    pub subcommands: &'static [&'static str],
    /// The argument's id (its field name).
    pub arg: &'static str,
    /// The old environment variable, if any.
    pub old_env: Option<&'static str>,
    /// The old flag (`--redis-timeout-ms`), if any.
    pub old_flag: Option<&'static str>,
    /// The new environment variable.
    pub new_env: &'static str,
    /// The new flag (`--redis-timeout`).
    pub new_flag: &'static str,
    /// How an old value converts.
    pub unit: Unit,
}

impl Renamed {
    /// A setting of the `serve` subcommand (ingest's and query's) whose old
    /// environment variable (and old flag, if any) is still accepted.
    #[rustfmt::skip]
    pub const fn serve(
        arg: &'static str,
        old_env: &'static str,
        old_flag: Option<&'static str>,
        new_env: &'static str,
        new_flag: &'static str,
        unit: Unit,
    ) -> Renamed {
        Renamed { subcommands: &["serve"], arg, old_env: Some(old_env), old_flag, new_env, new_flag, unit }
    }
}

/// Parses the process's command line and environment into `C`, accepting
/// the old names in `renamed`; exits with clap's message on a bad command
/// line (as `C::parse()` does). Returns the warnings to log.
pub fn parse<C: CommandFactory + FromArgMatches>(renamed: &[Renamed]) -> (C, Vec<String>) {
    parse_from(renamed, std::env::args_os(), |name| {
        std::env::var(name).ok()
    })
    .unwrap_or_else(|error| error.exit())
}

/// [`parse`] with the arguments and environment given (for tests).
pub fn parse_from<C: CommandFactory + FromArgMatches>(
    renamed: &[Renamed],
    args: impl IntoIterator<Item = impl Into<OsString>>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(C, Vec<String>), clap::Error> {
    let (matches, warnings) = parse_matches_from(C::command(), renamed, args, env)?;
    Ok((C::from_arg_matches(&matches)?, warnings))
}

/// [`parse_from`] with the command built by the caller, for a command line
/// whose name and description are only known at run time (the services'
/// shared `Cli`, named by each binary).
pub fn parse_matches_from(
    mut command: clap::Command,
    renamed: &[Renamed],
    args: impl IntoIterator<Item = impl Into<OsString>>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(clap::ArgMatches, Vec<String>), clap::Error> {
    let mut warnings = Vec::new();
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    for rename in renamed {
        if let Some(old_flag) = rename.old_flag {
            rewrite_flag(&mut args, old_flag, rename, &mut warnings);
        }
    }
    for rename in renamed {
        let Some(old_env) = rename.old_env else {
            continue;
        };
        let (Some(value), None) = (env(old_env), env(rename.new_env)) else {
            continue;
        };
        let value = rename.unit.convert(&value);
        warnings.push(format!(
            "{old_env} is deprecated: set {}={value} instead",
            rename.new_env
        ));
        for subcommand in rename.subcommands {
            command = command.mut_subcommand(*subcommand, |sub| {
                sub.mut_arg(rename.arg, |arg| arg.default_value(value.clone()))
            });
        }
    }
    let matches = command.try_get_matches_from(args)?;
    Ok((matches, warnings))
}

/// Replaces `--old value` and `--old=value` with the new flag and the value
/// converted.
fn rewrite_flag(
    args: &mut [OsString],
    old_flag: &str,
    rename: &Renamed,
    warnings: &mut Vec<String>,
) {
    let with_equals = format!("{old_flag}=");
    let mut i = 0;
    while i < args.len() {
        let Some(text) = args[i].to_str().map(str::to_owned) else {
            i += 1;
            continue;
        };
        if text == "--" {
            return;
        }
        if text == old_flag && i + 1 < args.len() {
            let value = args[i + 1].to_string_lossy().into_owned();
            let value = rename.unit.convert(&value);
            warnings.push(format!(
                "{old_flag} is deprecated: use {} {value} instead",
                rename.new_flag
            ));
            args[i] = rename.new_flag.into();
            args[i + 1] = value.into();
            i += 2;
            continue;
        }
        if let Some(value) = text.strip_prefix(&with_equals) {
            let value = rename.unit.convert(value);
            warnings.push(format!(
                "{old_flag} is deprecated: use {} {value} instead",
                rename.new_flag
            ));
            args[i] = format!("{}={value}", rename.new_flag).into();
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: Duration) {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }

    #[test]
    fn durations_are_humane() {
        check("0", Duration::ZERO);
        check("0s", Duration::ZERO);
        check("500ms", Duration::from_millis(500));
        check("30s", Duration::from_secs(30));
        check("5m", Duration::from_secs(300));
        check("1h30m", Duration::from_secs(5400));
        check("1h 30m", Duration::from_secs(5400));
        check(" 2h ", Duration::from_secs(7200));
        check("1.5s", Duration::from_millis(1500));
        for bad in ["", "s", "10", "-1s", "ten seconds"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(
                error.contains("is not a duration such as"),
                "{bad}: {error}"
            );
        }
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Serve {
            #[arg(long, env = "T_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
            timeout: Duration,
            #[arg(long, env = "T_LISTEN_ADDR", default_value = "127.0.0.1:1")]
            listen: String,
        },
    }

    const RENAMED: &[Renamed] = &[
        Renamed {
            subcommands: &["serve"],
            arg: "timeout",
            old_env: Some("T_TIMEOUT_MS"),
            old_flag: Some("--timeout-ms"),
            new_env: "T_TIMEOUT",
            new_flag: "--timeout",
            unit: Unit::Millis,
        },
        Renamed {
            subcommands: &["serve"],
            arg: "listen",
            old_env: Some("LISTEN_ADDR"),
            old_flag: None,
            new_env: "T_LISTEN_ADDR",
            new_flag: "--listen",
            unit: Unit::Same,
        },
    ];

    fn run(args: &[&str], env: &[(&str, &str)]) -> (Duration, String, Vec<String>) {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        let (cli, warnings) = parse_from::<Cli>(RENAMED, all, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        let Sub::Serve { timeout, listen } = cli.command;
        (timeout, listen, warnings)
    }

    #[test]
    fn old_names_still_work_and_new_ones_win() {
        let (timeout, listen, warnings) = run(&["serve"], &[]);
        assert_eq!(timeout, Duration::from_secs(1));
        assert_eq!(listen, "127.0.0.1:1");
        assert!(warnings.is_empty());

        let (timeout, listen, warnings) = run(
            &["serve"],
            &[("T_TIMEOUT_MS", "300"), ("LISTEN_ADDR", "0.0.0.0:2")],
        );
        assert_eq!(timeout, Duration::from_millis(300));
        assert_eq!(listen, "0.0.0.0:2");
        assert_eq!(
            warnings,
            [
                "T_TIMEOUT_MS is deprecated: set T_TIMEOUT=300ms instead",
                "LISTEN_ADDR is deprecated: set T_LISTEN_ADDR=0.0.0.0:2 instead"
            ]
        );

        // The new variable wins over the old one (clap reads it from the
        // process's environment: the binaries' tests check that), a flag
        // over both.
        let (_, _, warnings) = run(&["serve"], &[("T_TIMEOUT_MS", "300"), ("T_TIMEOUT", "2s")]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (timeout, _, _) = run(&["serve", "--timeout", "3s"], &[("T_TIMEOUT_MS", "300")]);
        assert_eq!(timeout, Duration::from_secs(3));

        // Old flags, both spellings.
        let (timeout, _, warnings) = run(&["serve", "--timeout-ms", "40"], &[]);
        assert_eq!(timeout, Duration::from_millis(40));
        assert_eq!(
            warnings,
            ["--timeout-ms is deprecated: use --timeout 40ms instead"]
        );
        let (timeout, _, _) = run(&["serve", "--timeout-ms=50"], &[]);
        assert_eq!(timeout, Duration::from_millis(50));
    }
}
