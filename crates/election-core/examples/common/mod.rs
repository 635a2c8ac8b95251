//! The election night both examples run, whatever stores the engine has:
//! the seed's three ballot boxes, one posted twice, one corrected, then the
//! totals read back from the tally and checked against the log.

use election_core::{CityId, ElectionId, Engine, Outcome, Report};

/// The seed article's three ballot boxes, then London's box again (a replay:
/// counted once) and its correction (revision 2: only the difference moves
/// the counters).
const REPORTS: [&str; 5] = [
    r#"{"ballot_box_id": "BB-LON-1", "city": "london",
        "votes": {"tories": 120, "labour": 200, "libdems": 45, "reform": 20}}"#,
    r#"{"ballot_box_id": "BB-MAN-1", "city": "manchester",
        "votes": {"tories": 90, "labour": 150, "libdems": 30, "reform": 10}}"#,
    r#"{"ballot_box_id": "BB-EDI-1", "city": "edinburgh",
        "votes": {"tories": 50, "labour": 80, "libdems": 40, "reform": 5}}"#,
    r#"{"ballot_box_id": "BB-LON-1", "city": "london",
        "votes": {"tories": 120, "labour": 200, "libdems": 45, "reform": 20}}"#,
    r#"{"ballot_box_id": "BB-LON-1", "city": "london", "revision": 2, "reason": "recount",
        "votes": {"tories": 121, "labour": 200, "libdems": 45, "reform": 20}}"#,
];

/// Records and counts [`REPORTS`] one by one through `engine`, prints what
/// happened to each and the totals, and checks that the tally holds what the
/// log says it should.
pub fn election_night(
    engine: &Engine,
    election: &ElectionId,
) -> Result<(), Box<dyn std::error::Error>> {
    for body in REPORTS {
        // Parsing validates: a wrong shape or a broken rule is an error here,
        // before anything is recorded.
        let report = Report::from_json(election, body.as_bytes())?;
        let what = format!(
            "{} revision {}",
            report.ballot_box(),
            report.revision().get()
        );
        let outcomes = engine.submit(&[report])?;
        let outcome = match &outcomes[..] {
            [Outcome::Counted(id)] => format!("recorded and counted (report {})", id.0),
            [Outcome::Pending(id)] => {
                format!("recorded, counting left for later (report {})", id.0)
            }
            [Outcome::Replay { counted, .. }] => {
                format!("a copy of a recorded revision (counted: {counted}); nothing moves")
            }
            [Outcome::Conflict(conflict)] => format!("refused: {conflict}"),
            other => format!("{other:?}"),
        };
        println!("{what:<22} {outcome}");
    }

    let snapshot = engine.tally().snapshot(election)?;
    println!("\nnational totals:");
    for (party, votes) in snapshot.totals.national() {
        println!("  {:<8} {votes:>5}", party.as_str());
    }
    for city in ["london", "manchester", "edinburgh"] {
        let city = CityId::parse(city)?;
        let totals: Vec<String> = snapshot
            .totals
            .city(&city)
            .iter()
            .map(|(party, votes)| format!("{party} {votes}"))
            .collect();
        println!("{:<11} {}", city.as_str(), totals.join(", "));
    }

    // What the latest revision of every box adds up to, from the log alone:
    // the tally must hold exactly that (reconcile compares the same).
    let expected = engine.expected_totals(election)?;
    let drift = expected.drift(&snapshot.totals);
    if !drift.is_empty() {
        return Err(format!("the tally differs from the log: {drift:?}").into());
    }
    println!("\nthe tally holds exactly what the log's latest revisions add up to");
    Ok(())
}
