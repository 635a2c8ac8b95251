//! Hostile input never panics: a fuzzer of `Report::from_json` and of the
//! checks a defined election adds (`Definition::check_report`).
//!
//! One broad generator mixes arbitrary bytes, arbitrary JSON documents, valid
//! reports, valid reports with one field replaced by an arbitrary value, and
//! valid report texts mutated byte by byte (flips, insertions of JSON tokens,
//! deletions, duplicated slices). For every input:
//!
//! - nothing panics;
//! - a refusal is a typed `ReportError` that names the problem: a malformed
//!   body says where (line and column), an invalid one lists every broken
//!   rule with a known field (`ballot_box_id`, `city`, `votes`, `votes.<p>`,
//!   `revision`, `reason`) and a message;
//! - an accepted report obeys every rule and validates again to the same
//!   report: from its own payload, from its typed parts (`Report::new`) and
//!   from its canonical rendering (same payload hash), and a definition's
//!   checks answer the same twice, naming a known field when they refuse.
//!
//! `just test` runs a few thousand cases. `ELECTION_FUZZ_CASES` sets how many
//! (`just fuzz` runs 1,000,000 in release mode); the test prints how many it
//! ran.

use std::sync::atomic::{AtomicU64, Ordering};

use election_core::{
    BallotBoxId, CityDefinition, CityId, Colour, Definition, ElectionId, PartyDefinition, PartyId,
    Report, ReportError,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases of the broad generator when `ELECTION_FUZZ_CASES` is not set: enough
/// to reach every arm many times, quick enough for `just test`.
const DEFAULT_CASES: u32 = 4_000;

fn fuzz_cases() -> u32 {
    match std::env::var("ELECTION_FUZZ_CASES") {
        Ok(text) => text.trim().replace('_', "").parse().unwrap_or_else(|e| {
            panic!("ELECTION_FUZZ_CASES={text:?} is not a number of cases: {e}")
        }),
        Err(_) => DEFAULT_CASES,
    }
}

fn election() -> ElectionId {
    ElectionId::parse("2025").unwrap()
}

/// Any JSON value, nested a few levels, with keys and strings that are often
/// the field names and shapes of a report.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("ballot_box_id".to_owned()),
        Just("city".to_owned()),
        Just("votes".to_owned()),
        Just("revision".to_owned()),
        Just("reason".to_owned()),
        "[a-zA-Z0-9_:{} -]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid report as a JSON value: ids near the edges of their alphabets,
/// counts near the edges of their range, revisions with and without reasons.
fn valid_report() -> impl Strategy<Value = serde_json::Value> {
    let party = prop_oneof![
        Just("labour".to_owned()),
        Just("tories".to_owned()),
        "[a-z0-9][a-z0-9_-]{0,63}",
    ];
    let count = prop_oneof![Just(0u32), Just(10_000_000), 0..=10_000_000u32];
    let votes = prop::collection::btree_map(party, count, 1..8);
    let revision = prop_oneof![Just(1i64), 1..=5i64, Just(i64::from(i32::MAX))];
    (
        prop_oneof![Just("BB1".to_owned()), "[A-Za-z0-9][A-Za-z0-9_-]{0,63}"],
        prop_oneof![Just("london".to_owned()), "[a-z0-9][a-z0-9_-]{0,63}"],
        votes,
        prop::option::of(revision),
        "[a-z][a-z ]{0,30}",
    )
        .prop_map(|(ballot_box, city, votes, revision, reason)| {
            let mut report = serde_json::json!({
                "ballot_box_id": ballot_box,
                "city": city,
                "votes": votes,
            });
            if let Some(revision) = revision {
                report["revision"] = revision.into();
                if revision > 1 {
                    report["reason"] = reason.into();
                }
            }
            report
        })
}

/// A valid report with one field replaced by an arbitrary value.
fn one_broken_field() -> impl Strategy<Value = Vec<u8>> {
    (valid_report(), 0..5usize, json_value()).prop_map(|(mut report, field, value)| {
        let name = ["ballot_box_id", "city", "votes", "revision", "reason"][field];
        report[name] = value;
        report.to_string().into_bytes()
    })
}

/// One byte-level edit of a report's text.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the byte at the position with another.
    Replace(usize, u8),
    /// Insert a JSON token (or a hostile one) at the position.
    Insert(usize, &'static str),
    /// Delete up to this many bytes at the position.
    Delete(usize, usize),
    /// Copy a slice of the text to another position (duplicated keys,
    /// doubled values, unbalanced brackets).
    Duplicate(usize, usize, usize),
}

const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "-",
    "0",
    "1e999",
    "-0",
    "1.5",
    "null",
    "true",
    "\\u0000",
    "\\ud800",
    "\u{2028}",
    "é",
    " ",
    "\"votes\":{}",
    "\"revision\":0",
    "\"reason\":\"\"",
    "\"x\":1",
    "18446744073709551616",
    "\u{0}",
    "\x7f",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<usize>(), 1..8usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1..24usize, any::<usize>())
            .prop_map(|(from, n, to)| Mutation::Duplicate(from, n, to)),
    ]
}

fn apply(text: &mut Vec<u8>, mutation: &Mutation) {
    let len = text.len();
    let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *mutation {
        Mutation::Replace(i, byte) if len > 0 => text[i % len] = byte,
        Mutation::Replace(..) => {}
        Mutation::Insert(i, token) => {
            let i = at(i);
            text.splice(i..i, token.bytes());
        }
        Mutation::Delete(i, n) => {
            let i = at(i);
            text.drain(i..(i + n).min(len));
        }
        Mutation::Duplicate(from, n, to) => {
            let from = at(from);
            let slice = text[from..(from + n).min(len)].to_vec();
            let to = at(to);
            text.splice(to..to, slice);
        }
    }
}

/// A valid report's text (compact or pretty) with one to four edits.
fn mutated_report() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_report(),
        any::<bool>(),
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(report, pretty, mutations)| {
            let mut text = if pretty {
                serde_json::to_vec_pretty(&report).unwrap()
            } else {
                serde_json::to_vec(&report).unwrap()
            };
            for mutation in &mutations {
                apply(&mut text, mutation);
            }
            text
        })
}

/// Which arm made an input, so a valid report can be held to "accepted".
#[derive(Clone, Debug)]
enum Input {
    Valid(serde_json::Value),
    Hostile(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => valid_report().prop_map(Input::Valid),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Input::Hostile),
        2 => json_value().prop_map(|v| Input::Hostile(v.to_string().into_bytes())),
        2 => one_broken_field().prop_map(Input::Hostile),
        3 => mutated_report().prop_map(Input::Hostile),
    ]
}

/// A defined election: two parties, two cities, a registry of three boxes.
fn definition() -> Definition {
    let party = |id: &str| PartyDefinition {
        id: PartyId::parse(id).unwrap(),
        name: id.to_uppercase(),
        colour: Colour::parse("#123456").unwrap(),
    };
    let city = |id: &str| CityDefinition {
        id: CityId::parse(id).unwrap(),
        name: id.to_uppercase(),
        expected_ballot_boxes: 10,
        electorate: None,
    };
    let registered = |ballot_box: &str, city: &str| {
        (
            BallotBoxId::parse(ballot_box).unwrap(),
            CityId::parse(city).unwrap(),
        )
    };
    Definition::from_parts(
        election(),
        "fuzz".into(),
        vec![party("labour"), party("tories")],
        vec![city("london"), city("leeds")],
        vec![
            registered("BB1", "london"),
            registered("BB2", "london"),
            registered("BB3", "leeds"),
        ],
    )
    .unwrap()
}

/// A field a problem may name: the report's fields, or one party's votes.
fn is_known_field(field: &str) -> bool {
    matches!(
        field,
        "ballot_box_id" | "city" | "votes" | "revision" | "reason"
    ) || field.starts_with("votes.")
}

/// Every property of one input; `Err` says which broke (proptest then
/// shrinks the input and prints it).
fn check(body: &[u8], definition: &Definition) -> Result<Option<Report>, TestCaseError> {
    match Report::from_json(&election(), body) {
        Ok(report) => {
            check_accepted(&report, definition)?;
            Ok(Some(report))
        }
        Err(ReportError::Malformed(message)) => {
            prop_assert!(!message.trim().is_empty(), "empty malformed message");
            // serde_json says where the body went wrong.
            prop_assert!(
                message.contains(" line ") && message.contains(" column "),
                "malformed message without a position: {message:?}"
            );
            Ok(None)
        }
        Err(ReportError::Invalid(problems)) => {
            prop_assert!(!problems.is_empty(), "invalid with no problem listed");
            for problem in &problems {
                prop_assert!(
                    is_known_field(problem.field()),
                    "problem names no field of a report: {problem:?}"
                );
                prop_assert!(!problem.message().trim().is_empty(), "{problem:?}");
            }
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "unexpected error kind: {other:?}"
        ))),
    }
}

fn check_accepted(report: &Report, definition: &Definition) -> Result<(), TestCaseError> {
    // Whatever got through obeys every rule.
    let votes = report.votes();
    prop_assert!(!votes.is_empty() && votes.len() <= 100);
    prop_assert!(votes.iter().all(|(_, n)| n <= 10_000_000));
    prop_assert!(report.revision().get() >= 1 && report.revision().get() <= i32::MAX as u32);
    prop_assert!(report.revision().get() == 1 || report.reason().is_some());
    prop_assert!(report.reason().is_none_or(|r| !r.trim().is_empty()));

    // Its own payload validates again to the same report.
    let again = Report::from_json(&election(), report.payload().as_bytes());
    prop_assert_eq!(
        again.as_ref(),
        Ok(report),
        "payload re-validated differently"
    );

    // So do its typed parts, and their canonical rendering, with the same
    // identity.
    let rebuilt = Report::new(
        report.election().clone(),
        report.ballot_box().clone(),
        report.city().clone(),
        report.votes().clone(),
        report.revision(),
        report.reason().map(str::to_owned),
    );
    let rebuilt = match rebuilt {
        Ok(rebuilt) => rebuilt,
        Err(e) => return Err(TestCaseError::fail(format!("parts refused: {e}"))),
    };
    prop_assert_eq!(rebuilt.payload_hash(), report.payload_hash());
    let canonical = Report::from_json(&election(), rebuilt.payload().as_bytes());
    prop_assert_eq!(
        canonical.as_ref().map(Report::payload_hash),
        Ok(report.payload_hash()),
        "canonical rendering re-validated differently"
    );

    // A defined election's checks answer the same every time and name what
    // they refuse.
    let first = definition.check_report(report);
    prop_assert_eq!(&first, &definition.check_report(report));
    match first {
        Ok(()) => {
            prop_assert!(definition.city(report.city()).is_some());
            prop_assert!(
                votes
                    .iter()
                    .all(|(p, _)| definition.parties().iter().any(|d| &d.id == p))
            );
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty());
            for problem in &problems {
                prop_assert!(is_known_field(problem.field()), "{problem:?}");
                prop_assert!(!problem.message().trim().is_empty(), "{problem:?}");
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_report_parsing_and_validation() {
    let cases = fuzz_cases();
    let definition = definition();
    let ran = AtomicU64::new(0);
    let accepted = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        // A failure is shrunk and printed; no regression file for a test
        // driven by hand.
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&input(), |input| {
        ran.fetch_add(1, Ordering::Relaxed);
        let report = match &input {
            Input::Valid(value) => {
                let report = check(value.to_string().as_bytes(), &definition)?;
                // The generator's valid reports must really be valid, or the
                // accepted path would go untested.
                prop_assert!(report.is_some(), "a valid report was refused: {value}");
                report
            }
            Input::Hostile(body) => check(body, &definition)?,
        };
        if report.is_some() {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let ran = ran.into_inner();
    let accepted = accepted.into_inner();
    println!(
        "fuzz_report_parsing_and_validation: {ran} inputs (ELECTION_FUZZ_CASES={cases}), \
         {accepted} accepted, {} refused",
        ran - accepted
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert!(ran >= u64::from(cases), "ran {ran} of {cases} cases");
    assert!(
        accepted > 0,
        "no input was accepted: the accepted path went untested"
    );
}

#[test]
fn deep_nesting_and_huge_numbers_are_refused() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        Report::from_json(&election(), deep.as_bytes()),
        Err(ReportError::Malformed(_))
    ));
    let deep_votes = format!(
        r#"{{"ballot_box_id":"B","city":"x","votes":{{"a":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(matches!(
        Report::from_json(&election(), deep_votes.as_bytes()),
        Err(ReportError::Malformed(_))
    ));
    let huge = format!(
        r#"{{"ballot_box_id":"B","city":"x","votes":{{"a":1{}}}}}"#,
        "0".repeat(5_000)
    );
    assert!(matches!(
        Report::from_json(&election(), huge.as_bytes()),
        Err(ReportError::Malformed(_))
    ));
    let long_id = format!(
        r#"{{"ballot_box_id":"{}","city":"x","votes":{{"a":1}}}}"#,
        "B".repeat(60_000)
    );
    let Err(ReportError::Invalid(problems)) = Report::from_json(&election(), long_id.as_bytes())
    else {
        panic!("a 60,000-character id must be invalid");
    };
    // The message quotes a shortened id, not 60,000 characters.
    assert!(
        problems[0].message().len() < 200,
        "{}",
        problems[0].message()
    );
}
