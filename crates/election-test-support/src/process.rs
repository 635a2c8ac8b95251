//! Processes and ports for tests that start servers or signal them: one copy
//! of the small helpers every harness of the workspace needs.

use std::process::Command;
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0")
}

/// Sends `signal` (`KILL`, `TERM`, `STOP`...) to `pid` with kill(1) (the
/// workspace forbids unsafe code, so no libc call).
///
/// # Panics
/// When kill(1) cannot run or fails (no such process, say).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits until `condition` holds, polling every 20 ms.
///
/// # Panics
/// After `timeout`, naming `what` (a guard against hanging, not a
/// performance assertion).
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
