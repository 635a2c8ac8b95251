//! libFuzzer target for `Report::from_json`: whatever the bytes, no panic; a
//! refusal names its problem; an accepted report obeys every rule and
//! validates again, from its payload and from its typed parts, to the same
//! report. The same properties as the proptest fuzzer in
//! crates/election-core/tests/integration/hostile.rs, driven by coverage
//! instead of by a generator.

#![no_main]

use election_core::{ElectionId, Report, ReportError};
use libfuzzer_sys::fuzz_target;

fn is_known_field(field: &str) -> bool {
    matches!(
        field,
        "ballot_box_id" | "city" | "votes" | "revision" | "reason"
    ) || field.starts_with("votes.")
}

fuzz_target!(|body: &[u8]| {
    let election = ElectionId::parse("2025").expect("a valid election id");
    match Report::from_json(&election, body) {
        Ok(report) => {
            let votes = report.votes();
            assert!(!votes.is_empty() && votes.len() <= 100);
            assert!(votes.iter().all(|(_, n)| n <= 10_000_000));
            assert!(report.revision().get() == 1 || report.reason().is_some());
            let again = Report::from_json(&election, report.payload().as_bytes());
            assert_eq!(again.as_ref(), Ok(&report));
            let rebuilt = Report::new(
                report.election().clone(),
                report.ballot_box().clone(),
                report.city().clone(),
                report.votes().clone(),
                report.revision(),
                report.reason().map(str::to_owned),
            )
            .expect("the parts of an accepted report are accepted");
            assert_eq!(rebuilt.payload_hash(), report.payload_hash());
        }
        Err(ReportError::Malformed(message)) => {
            assert!(
                message.contains(" line ") && message.contains(" column "),
                "{message:?}"
            );
        }
        Err(ReportError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            for problem in &problems {
                assert!(is_known_field(problem.field()), "{problem:?}");
                assert!(!problem.message().trim().is_empty(), "{problem:?}");
            }
        }
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
});
