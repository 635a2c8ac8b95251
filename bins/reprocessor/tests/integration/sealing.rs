//! The sealed log through the real binary: `run` seals every recorded report
//! within the 5 s bound while reports keep arriving, and `verify` exits 0 on
//! the intact log, 1 naming the report changed by hand, and 2 when it
//! cannot check.

use std::process::Child;
use std::time::{Duration, Instant};

use election_core::contract::unique_election;
use store_pg::seal;

use crate::harness::{Db, both, corrections, record, reports, send_signal, spawn, text};

/// Sealing must follow recording within this long (the specification's
/// bound, with the test's short seal interval).
const BOUND: Duration = Duration::from_secs(5);

fn stop(child: Child) {
    send_signal(child.id(), "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
}

fn verify(db: &Db, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::harness::BIN)
        .arg("verify")
        .args(args)
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap()
}

#[test]
fn run_seals_every_report_within_the_bound_and_verify_names_a_changed_vote() {
    let db = Db::new();
    let redis_url = election_test_support::redis::redis_url();
    let e = unique_election("sealed");
    let child = spawn(
        &db,
        &redis_url,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--seal-interval",
            "200ms",
            "--heal-interval",
            "0",
        ],
    );

    // Reports keep arriving while the sealer runs: first reports, then
    // corrections of some of them.
    let mut recorded = 0_i64;
    for round in 0..5 {
        record(&*db.log, &reports(&e, round * 40, 40));
        recorded += 40;
        std::thread::sleep(Duration::from_millis(150));
    }
    record(&*db.log, &corrections(&e, 0, 30));
    recorded += 30;
    let last_recorded = Instant::now();
    let sealed_at = loop {
        let heads = seal::audit_heads(&db.pool, &e, None, 1000).unwrap();
        if heads.latest.as_ref().map(|c| c.sealed_count) == Some(recorded) {
            break Instant::now();
        }
        assert!(
            last_recorded.elapsed() < BOUND,
            "{recorded} reports recorded, {:?} sealed after {:?}",
            heads.latest.map(|c| c.sealed_count),
            last_recorded.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(sealed_at - last_recorded < BOUND);
    let heads = seal::audit_heads(&db.pool, &e, None, 1000).unwrap();
    assert!(
        !heads.earlier.is_empty(),
        "sealed in several rounds while reports arrived"
    );
    stop(child);

    let latest = heads.latest.unwrap();
    let intact = verify(&db, &["--election", e.as_str()]);
    assert_eq!(intact.status.code(), Some(0), "{}", both(&intact));
    let stdout = text(&intact.stdout);
    assert!(
        stdout.contains(&format!(
            "intact: {recorded} reports sealed through report {}",
            latest.sealed_through_report_id
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&latest.head.to_hex()), "{stdout}");
    let earlier = heads.earlier.last().unwrap().head.to_hex();
    let noted = verify(&db, &["--election", e.as_str(), "--head", &earlier]);
    assert_eq!(noted.status.code(), Some(0), "{}", both(&noted));

    // A vote of a correction changed by hand in PostgreSQL.
    let target = db.number(&format!(
        "SELECT max(id) AS n FROM reports WHERE election_id = '{e}' AND revision = 2"
    ));
    db.number(&format!(
        "WITH u AS (UPDATE reports SET votes[1] = votes[1] + 100 WHERE id = {target} RETURNING id) \
         SELECT count(*) AS n FROM u"
    ));
    let tampered = verify(&db, &["--election", e.as_str(), "--head", &earlier]);
    assert_eq!(tampered.status.code(), Some(1), "{}", both(&tampered));
    let stdout = text(&tampered.stdout);
    assert!(
        stdout.lines().next().unwrap_or("").contains(&format!(
            "TAMPERED: report {target} was altered after it was sealed"
        )),
        "{stdout}"
    );

    // A report deleted.
    let removed = db.number(&format!(
        "SELECT min(id) AS n FROM reports WHERE election_id = '{e}'"
    ));
    db.number(&format!(
        "WITH d AS (DELETE FROM reports WHERE id = {removed} RETURNING id) SELECT count(*) AS n FROM d"
    ));
    let output = verify(&db, &["--election", e.as_str()]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!("TAMPERED: report {removed} was removed")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("report {target} was altered")),
        "{stdout}"
    );
}

#[test]
fn verify_exits_2_when_it_cannot_check() {
    let db = Db::new();
    for (args, fragment) in [
        (&["--election", "Not An Id"][..], "--election"),
        (
            &["--election", "2025", "--head", "abc"][..],
            "is not a SHA-256 in hex",
        ),
    ] {
        let output = verify(&db, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", both(&output));
        assert!(text(&output.stderr).contains(fragment), "{}", both(&output));
    }
    let down = std::process::Command::new(crate::harness::BIN)
        .args(["verify", "--election", "2025"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(2), "{}", both(&down));
    // Nothing sealed yet is not tampering: an empty chain is intact.
    let empty = verify(&db, &["--election", "nothing-yet"]);
    assert_eq!(empty.status.code(), Some(0), "{}", both(&empty));
    assert!(
        text(&empty.stdout).contains("intact: 0 reports sealed"),
        "{}",
        both(&empty)
    );
}
