//! Hostile input never panics: arbitrary bytes, arbitrary JSON documents and
//! near-valid reports with one field broken all come back as a clean
//! `ReportError`, never as a panic, and a refused report is never half
//! accepted. (`just test` runs a few thousand cases; the case count can be
//! raised with `PROPTEST_CASES` for a long fuzzing run.)

use election_core::{ElectionId, Report, ReportError};
use proptest::prelude::*;

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

/// A valid report with one field replaced by an arbitrary value.
fn near_valid() -> impl Strategy<Value = String> {
    (0..5usize, json_value()).prop_map(|(field, value)| {
        let mut report = serde_json::json!({
            "ballot_box_id": "BB1",
            "city": "london",
            "votes": {"labour": 1, "tories": 2},
            "revision": 2,
            "reason": "recount",
        });
        let name = ["ballot_box_id", "city", "votes", "revision", "reason"][field];
        report[name] = value;
        report.to_string()
    })
}

fn check(body: &[u8]) {
    match Report::from_json(&election(), body) {
        Ok(report) => {
            // Whatever got through obeys every rule.
            assert!(!report.votes().is_empty() && report.votes().len() <= 100);
            assert!(report.votes().iter().all(|(_, n)| n <= 10_000_000));
            assert!(report.revision().get() == 1 || report.reason().is_some());
        }
        Err(ReportError::Malformed(message)) => assert!(!message.is_empty()),
        Err(ReportError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            assert!(
                problems
                    .iter()
                    .all(|p| !p.field().is_empty() && !p.message().is_empty())
            );
        }
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_are_refused_cleanly(body in prop::collection::vec(any::<u8>(), 0..300)) {
        check(&body);
    }

    #[test]
    fn arbitrary_json_is_refused_cleanly(value in json_value()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn one_broken_field_is_named(body in near_valid()) {
        check(body.as_bytes());
    }
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
