//! With JSON logs, a panic is a JSON error event (message, location,
//! thread), not the default hook's free text. A test binary of its own: it
//! installs the global subscriber and panic hook.

use std::io::Write;
use std::sync::{Arc, Mutex};

use election_http::telemetry::{LogFormat, init_writing_to};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
    let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
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
