use super::*;
use crate::report::{Revision, Votes};

const GOOD: &str = r##"id = "2025"
name = "General election 2025"

[[parties]]
id = "labour"
name = "Labour"
colour = "#E4003B"

[[parties]]
id = "tories"
name = "Conservatives"
colour = "#0087dc"

[[cities]]
id = "london"
name = "London"
expected_ballot_boxes = 3

[[cities]]
id = "leeds"
name = "Leeds"
expected_ballot_boxes = 1

[ballot_boxes]
london = ["BB1", "BB2"]
leeds = ["BB3"]
"##;

/// Checks that `source` is refused with exactly these `line: message`
/// fragments (each problem's text must contain its fragment).
#[track_caller]
fn check_refused(source: &str, expected: &[(usize, &str)]) {
    let error = Definition::from_toml(source).expect_err("the definition should be refused");
    let got: Vec<(usize, String)> = error
        .problems()
        .iter()
        .map(|p| (p.line, p.message.clone()))
        .collect();
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for ((line, message), (want_line, fragment)) in got.iter().zip(expected) {
        assert_eq!(line, want_line, "{message}");
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
}

fn report(city: &str, ballot_box: &str, parties: &[&str]) -> Report {
    let votes = parties
        .iter()
        .map(|p| (PartyId::parse(p).unwrap(), 1))
        .collect();
    Report::new(
        ElectionId::parse("2025").unwrap(),
        BallotBoxId::parse(ballot_box).unwrap(),
        CityId::parse(city).unwrap(),
        Votes::new(votes).unwrap(),
        Revision::FIRST,
        None,
    )
    .unwrap()
}

#[test]
fn a_good_file_is_read_whole() {
    let definition = Definition::from_toml(GOOD).unwrap();
    assert_eq!(definition.election().as_str(), "2025");
    assert_eq!(definition.name(), "General election 2025");
    assert_eq!(definition.parties().len(), 2);
    assert_eq!(definition.parties()[0].colour.as_str(), "#e4003b");
    assert_eq!(definition.cities()[1].expected_ballot_boxes, 1);
    assert_eq!(definition.expected_ballot_boxes(), 4);
    assert_eq!(definition.ballot_boxes().len(), 3);
    assert_eq!(
        definition.ballot_boxes()[&BallotBoxId::parse("BB3").unwrap()].as_str(),
        "leeds"
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let source = r##"id = "Bad Id"
name = "x"
colour = "red"

[[parties]]
id = "labour"
name = "Labour"
colour = "#ff0000"

[[parties]]
id = "labour"
name = "Labour again"
colour = "#000000"

[[parties]]
id = "Greens"
name = ""
colour = "red"
slogan = "vote"

[[cities]]
id = "london"
name = "London"
expected_ballot_boxes = 1

[[cities]]
id = "leeds"
name = "Leeds"
expected_ballot_boxes = 2

[[cities]]
id = "london"
name = "London again"
expected_ballot_boxes = 2

[[cities]]
id = "york"
name = "York"
expected_ballot_boxes = 0

[ballot_boxes]
london = ["BB1", "BB2"]
hull = ["BB9"]
leeds = ["BB1", "bad:box"]
"##;
    check_refused(
        source,
        &[
            (1, "election id \"Bad Id\" must be 1 to 64 characters"),
            (3, "unknown key \"colour\" in the definition"),
            (11, "party \"labour\" is defined twice (first on line 6)"),
            (16, "party id \"Greens\" must be"),
            (17, "the name of party #3 is empty"),
            (18, "colour of party #3: \"red\" is not a colour"),
            (19, "unknown key \"slogan\" in party #3"),
            (22, "city \"london\" expects 1 ballot boxes but registers 2"),
            (32, "city \"london\" is defined twice (first on line 22)"),
            (
                39,
                "expected_ballot_boxes of city #4 must be an integer from 1",
            ),
            (
                43,
                "ballot box \"BB9\" is registered in city \"hull\", which is not defined",
            ),
            (44, "ballot box id \"bad:box\" must be"),
            (
                44,
                "ballot box \"BB1\" is registered twice (first on line 42)",
            ),
        ],
    );
}

#[test]
fn missing_keys_and_wrong_types_are_reported() {
    check_refused(
        "name = 3\nparties = []\n\n[[cities]]\nid = \"x\"\n",
        &[
            (1, "the definition is missing the key \"id\""),
            (
                1,
                "\"name\" in the definition must be a string, not integer",
            ),
            (2, "\"parties\" is empty"),
            (4, "city #1 is missing the key \"name\""),
            (4, "city #1 is missing the key \"expected_ballot_boxes\""),
        ],
    );
}

#[test]
fn syntax_errors_are_reported_with_their_line() {
    let error = Definition::from_toml("id = \"2025\"\nname = \"x\"\nname = \"y\"\n").unwrap_err();
    assert_eq!(error.problems()[0].line, 3, "{error}");
    let error = Definition::from_toml("id = \"2025\"\n\n[[parties]\n").unwrap_err();
    assert_eq!(error.problems()[0].line, 3, "{error}");
}

#[test]
fn reports_are_checked_against_the_definition() {
    let definition = Definition::from_toml(GOOD).unwrap();
    assert_eq!(
        definition.check_report(&report("london", "BB1", &["labour", "tories"])),
        Ok(())
    );
    let problems = |r: Report| -> Vec<String> {
        definition
            .check_report(&r)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        problems(report("york", "BB1", &["labour"])),
        [
            "city: \"york\" is not a city of election 2025",
            "city: ballot box \"BB1\" is registered in city \"london\", not \"york\""
        ]
    );
    assert_eq!(
        problems(report("london", "BB1", &["labour", "greens"])),
        ["votes.greens: \"greens\" is not a party of election 2025"]
    );
    assert_eq!(
        problems(report("london", "BB7", &["labour"])),
        ["ballot_box_id: \"BB7\" is not a registered ballot box of election 2025"]
    );
    assert_eq!(
        problems(report("leeds", "BB1", &["labour"])),
        ["city: ballot box \"BB1\" is registered in city \"london\", not \"leeds\""]
    );
}

#[test]
fn without_a_registry_any_box_of_a_defined_city_is_accepted() {
    let source = GOOD.split("[ballot_boxes]").next().unwrap();
    let definition = Definition::from_toml(source).unwrap();
    assert!(definition.ballot_boxes().is_empty());
    assert_eq!(
        definition.check_report(&report("leeds", "ANY-BOX", &["tories"])),
        Ok(())
    );
}

#[test]
fn updates_may_add_and_rename_but_not_remove_or_move() {
    let stored = Definition::from_toml(GOOD).unwrap();
    let moved = GOOD
        .replace("london = [\"BB1\", \"BB2\"]", "london = [\"BB1\"]")
        .replace("leeds = [\"BB3\"]", "leeds = [\"BB3\", \"BB2\"]")
        .replace("expected_ballot_boxes = 1", "expected_ballot_boxes = 2");
    let moved = Definition::from_toml(&moved).unwrap();
    let error = moved.additions_to(&stored).unwrap_err();
    assert_eq!(
        error.problems(),
        ["ballot box \"BB2\" is registered in city \"london\" and may not move to \"leeds\""]
    );
    let removed = GOOD
        .replace(
            "[[parties]]\nid = \"tories\"\nname = \"Conservatives\"\ncolour = \"#0087dc\"\n",
            "",
        )
        .replace("leeds = [\"BB3\"]", "");
    let removed = Definition::from_toml(&removed).unwrap();
    let error = removed.additions_to(&stored).unwrap_err();
    assert_eq!(
        error.problems(),
        [
            "party \"tories\" is defined and may not be removed",
            "ballot box \"BB3\" is registered and may not be removed"
        ]
    );
}

#[test]
fn additions_are_counted() {
    let stored = Definition::from_toml(GOOD).unwrap();
    let grown = GOOD
        .replace("leeds = [\"BB3\"]", "leeds = [\"BB3\"]\nyork = [\"BB5\"]")
        .replace(
            "[ballot_boxes]",
            "[[cities]]\nid = \"york\"\nname = \"York\"\nexpected_ballot_boxes = 5\n\n[[parties]]\nid = \"greens\"\nname = \"Greens\"\ncolour = \"#00aa00\"\n\n[ballot_boxes]",
        );
    let grown = Definition::from_toml(&grown).unwrap();
    assert_eq!(
        grown.additions_to(&stored),
        Ok(Additions {
            parties: 1,
            cities: 1,
            ballot_boxes: 1,
        })
    );
    assert_eq!(grown.expected_ballot_boxes(), 9);
}

#[test]
fn from_parts_checks_consistency() {
    let definition = Definition::from_toml(GOOD).unwrap();
    let rebuilt = Definition::from_parts(
        definition.election().clone(),
        definition.name().to_owned(),
        definition.parties().to_vec(),
        definition.cities().to_vec(),
        definition
            .ballot_boxes()
            .iter()
            .map(|(b, c)| (b.clone(), c.clone()))
            .collect(),
    )
    .unwrap();
    assert_eq!(rebuilt, definition);
    let broken = Definition::from_parts(
        definition.election().clone(),
        "x".into(),
        definition.parties().to_vec(),
        definition.cities().to_vec(),
        vec![(
            BallotBoxId::parse("B").unwrap(),
            CityId::parse("nowhere").unwrap(),
        )],
    )
    .unwrap_err();
    assert_eq!(broken.problems()[0].line, 0);
}

#[test]
fn electorates_are_read_and_checked() {
    let with =
        GOOD.replace(
            "expected_ballot_boxes = 3\n",
            "expected_ballot_boxes = 3\nelectorate = 90_000\n",
        )
        .replace(
            "expected_ballot_boxes = 1\n",
            "expected_ballot_boxes = 1\nelectorate = 5000\n",
        ) + "\n[electorate]\nBB1 = 1200\nBB3 = 800\n";
    let definition = Definition::from_toml(&with).unwrap();
    assert_eq!(definition.cities()[0].electorate, Some(90_000));
    assert_eq!(definition.electorate(), Some(95_000));
    assert_eq!(
        definition.box_electorates()[&BallotBoxId::parse("BB1").unwrap()],
        1200
    );
    // One city without: the nation's electorate is unknown.
    let partial = GOOD.replace(
        "expected_ballot_boxes = 1\n",
        "expected_ballot_boxes = 1\nelectorate = 5000\n",
    );
    assert_eq!(Definition::from_toml(&partial).unwrap().electorate(), None);

    // Zero, a string, an unregistered box: every problem with its line.
    let broken = GOOD.replace(
        "expected_ballot_boxes = 3\n",
        "expected_ballot_boxes = 3\nelectorate = 0\n",
    ) + "\n[electorate]\nBB1 = \"many\"\nBB9 = 10\n";
    check_refused(
        &broken,
        &[
            (18, "electorate of city #1 must be an integer from 1"),
            (
                30,
                "the electorate of ballot box \"BB1\" must be an integer",
            ),
            (31, "ballot box \"BB9\" in [electorate] is not registered"),
        ],
    );
}
