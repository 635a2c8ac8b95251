//! With JSON logs, a panic is a JSON error event (message, location,
//! thread), not the default hook's free text. A test binary of its own: it
//! installs the global subscriber and panic hook.

use election_http::telemetry::{LogFormat, init_writing_to};

mod support;
use support::Buffer;

#[test]
fn a_panic_is_logged_as_a_json_error() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    init_writing_to(LogFormat::Json, false, move || writer.clone());
    let outcome = std::thread::Builder::new()
        .name("doomed".into())
        .spawn(|| panic!("the counter went negative: {}", -1))
        .unwrap()
        .join();
    assert!(outcome.is_err());
    let logged = buffer.text();
    let line: serde_json::Value = serde_json::from_str(logged.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {logged}"));
    assert_eq!(line["level"], "ERROR", "{logged}");
    assert_eq!(line["message"], "panicked", "{logged}");
    assert_eq!(
        line["panic.message"], "the counter went negative: -1",
        "{logged}"
    );
    assert_eq!(line["panic.thread"], "doomed", "{logged}");
    assert!(
        line["panic.location"]
            .as_str()
            .unwrap()
            .starts_with("crates/election-http/tests/panic_hook.rs:"),
        "{logged}"
    );
}
