//! What the services print and answer, read the way an operator's and a
//! client's tools read it: every stderr line as JSON (`LOG_FORMAT=json`), the
//! fatal last line, the `build_info` metric, a JSON error answer. The three binaries promise the same conventions, so
//! their tests check them with one copy of these readers.

use serde_json::Value;

/// Every line of `stderr`, parsed as JSON.
///
/// # Panics
/// Naming the first line that is not JSON.
pub fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Checks that the last of `lines` is `program`'s fatal error: level
/// `ERROR`, the program's name, exit code 1, a message containing `says`.
///
/// # Panics
/// When it is not, with the whole of `stderr`.
#[track_caller]
pub fn assert_fatal(lines: &[Value], stderr: &str, program: &str, says: &str) {
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no log line: {stderr}"));
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert_eq!(last["program"], program, "{stderr}");
    assert_eq!(last["exit_code"], 1, "{stderr}");
    assert!(
        last["message"].as_str().is_some_and(|m| m.contains(says)),
        "the last line does not say {says:?}: {stderr}"
    );
}

/// Checks an error answer, `(status, body)`: the status, the body's `error`
/// code, and a `message` for a person that contains `fragment` (every 4xx
/// and 5xx of both services has this shape).
///
/// # Panics
/// When it does not, with the answer.
#[track_caller]
pub fn check_error(answer: &(u16, Value), status: u16, code: &str, fragment: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["error"], code, "{answer:?}");
    let message = answer.1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "message {message:?} should contain {fragment:?}"
    );
}

/// Checks that the `/metrics` text carries `build_info` with `version` and
/// `revision`, set to 1.
///
/// # Panics
/// When it does not, with the whole text.
#[track_caller]
pub fn assert_build_info(metrics: &str, version: &str, revision: &str) {
    let expected = format!("build_info{{version=\"{version}\",revision=\"{revision}\"}} 1");
    assert!(
        metrics.lines().any(|line| line == expected),
        "no `{expected}` in: {metrics}"
    );
}
