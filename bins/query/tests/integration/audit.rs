//! `GET /v1/elections/{e}/audit` and the outsider's check: reports posted
//! through the real ingest (a correction that drops a party, a reason that
//! looks like a formula, one that starts with a quote), sealed, then
//! `reports.csv` from the real query service recomputed by
//! `scripts/verify_audit.py` (Python, standard library only) into exactly
//! the head `/audit` publishes; and after a vote is changed by hand in
//! PostgreSQL, the script says the published head no longer holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use store_pg::seal::{Sealer, ZERO_HEAD};

use crate::harness::Stack;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/verify_audit.py");

/// Rounds until every recorded report of the stack's election is sealed.
fn seal_everything(stack: &Stack, sealer: &mut Sealer) {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    for _ in 0..10 {
        sealer.round().unwrap();
        let recorded =
            diesel::sql_query("SELECT count(*) AS n FROM reports WHERE election_id = $1")
                .bind::<diesel::sql_types::Text, _>(stack.election.as_str())
                .get_result::<Count>(&mut stack.pool.get().unwrap())
                .unwrap()
                .n;
        let heads = store_pg::seal::audit_heads(&stack.pool, &stack.election, None, 1).unwrap();
        if heads.latest.map(|c| c.sealed_count) == Some(recorded) {
            return;
        }
    }
    panic!("not everything was sealed in 10 rounds");
}

async fn download(stack: &Stack, dir: &Path) -> PathBuf {
    let response = stack
        .client
        .get(stack.url("/reports.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let path = dir.join(format!("election-{}-reports.csv", stack.election));
    std::fs::write(&path, response.bytes().await.unwrap()).unwrap();
    path
}

fn verifier(args: &[&Path]) -> (Option<i32>, String) {
    let output = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("python3 runs (the verifier needs Python 3 and nothing else)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_head_is_recomputed_from_reports_csv_by_an_independent_script() {
    let stack = Stack::start().await;
    let dir = std::env::temp_dir().join(format!("verify-audit-{}", stack.election));
    std::fs::create_dir_all(&dir).unwrap();

    for body in [
        r#"{"ballot_box_id": "BB-1", "city": "london", "votes": {"labour": 200, "tories": 120, "greens": 0}}"#,
        r#"{"ballot_box_id": "BB-2", "city": "leeds", "votes": {"labour": 90, "reform": 30}}"#,
        r#"{"ballot_box_id": "BB-3", "city": "york", "votes": {"tories": 70}}"#,
    ] {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    // Recorded, nothing sealed yet: the empty chain's head.
    let (status, audit) = stack.get("/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["head"], ZERO_HEAD.to_hex());
    assert_eq!(audit["sealed_reports"], 0);

    let mut sealer = Sealer::new(stack.pool.clone());
    seal_everything(&stack, &mut sealer);
    // Corrections: one drops a party (stored as an omitted vote), one has
    // a reason the CSV neutralises, one a reason starting with a quote.
    for body in [
        r#"{"ballot_box_id": "BB-1", "city": "london", "revision": 2, "reason": "=HYPERLINK(\"x\",\"recount\")", "votes": {"labour": 201, "tories": 119}}"#,
        r#"{"ballot_box_id": "BB-2", "city": "leeds", "revision": 2, "reason": "'quoted', recount", "votes": {"labour": 91, "reform": 30}}"#,
        r#"{"ballot_box_id": "BB-4", "city": "york", "votes": {"labour": 5}}"#,
    ] {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    seal_everything(&stack, &mut sealer);

    let (status, audit) = stack.get("/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["sealed_reports"], 6, "{audit}");
    let earlier = audit["heads"].as_array().unwrap();
    assert_eq!(earlier[0]["sealed_reports"], 3, "{audit}");
    let head = audit["head"].as_str().unwrap().to_owned();
    let audit_path = dir.join("audit.json");
    std::fs::write(&audit_path, audit.to_string()).unwrap();

    let csv = download(&stack, &dir).await;
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.contains(",\"'=HYPERLINK("), "neutralised: {text}");
    assert!(
        text.contains(",\"''quoted', recount\","),
        "quote doubled: {text}"
    );
    assert!(text.contains(",greens,0,0,"), "a posted 0: {text}");
    assert!(text.contains(",counted,true,"), "an omitted party: {text}");
    let (status, out) = verifier(&[&csv, Path::new("--audit"), &audit_path]);
    assert_eq!(status, Some(0), "{out}");
    assert!(
        out.contains("6 reports in the file") && out.contains(&head),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|line| line.ends_with(": ok")).count(),
        2,
        "both checkpoints recomputed: {out}"
    );
    // The earlier head, as someone noted it at the time, is found as the
    // head after its reports.
    let noted = earlier[0]["head"].as_str().unwrap();
    let (status, out) = verifier(&[&csv, Path::new("--head"), Path::new(noted)]);
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("the head after 3 reports"), "{out}");

    // A vote changed by hand in PostgreSQL: the export recomputes to
    // another head, and the published ones no longer hold.
    stack.execute(&format!(
        "UPDATE reports SET votes[1] = votes[1] + 1 WHERE election_id = '{}' AND ballot_box_id = 'BB-3'",
        stack.election
    ));
    let tampered = download(&stack, &dir).await;
    let (status, out) = verifier(&[&tampered, Path::new("--audit"), &audit_path]);
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("MISMATCH"), "{out}");
    let (status, out) = verifier(&[&tampered, Path::new("--head"), Path::new(noted)]);
    assert_eq!(status, Some(1), "{out}");

    // A file that is not an export is an error, not a verdict.
    let bad = dir.join("election-x-reports.csv");
    std::fs::write(&bad, "report_id,city\r\n1,york\r\n").unwrap();
    let (status, out) = verifier(&[&bad]);
    assert_eq!(status, Some(2), "{out}");
    assert!(out.contains("missing columns"), "{out}");

    std::fs::remove_dir_all(&dir).ok();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_parameters_are_checked() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    for (path, fragment) in [
        (
            "/audit?limit=0",
            "limit: \"0\" must be a whole number from 1 to 1000",
        ),
        ("/audit?limit=1001", "limit: \"1001\""),
        ("/audit?before=0", "before: \"0\" must be a report id"),
        ("/audit?before=x", "before: \"x\""),
        ("/audit?after=1", "unknown query parameter \"after\""),
    ] {
        let (status, body) = stack.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{path}: {message}");
    }
    let (status, body): (u16, Value) = stack.get("/audit?limit=1&before=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["heads"], serde_json::json!([]));
    assert_eq!(body["next_before"], Value::Null);
    stack.stop().await;
}
