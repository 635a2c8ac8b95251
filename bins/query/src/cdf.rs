//! `GET /v1/elections/{e}/results.cdf.json`: the live totals as a NIST SP
//! 1500-100 version 2 Election Results Reporting document (the Common Data
//! Format, JSON binding), so that results leave in a format other systems
//! already read, not only in our own JSON and CSV.
//!
//! # The mapping
//!
//! - One `ElectionReport` with one `Election` (`ElectionScopeId`: the
//!   nation).
//! - A `ReportingUnit` (`GpUnit`) for the nation (`Type: country`, composed of
//!   the cities) and one per city (`Type: city`), each with its `CountStatus`
//!   and, as `SubUnitsReported`/`TotalSubUnits`, its ballot boxes reported
//!   and expected (the latter only for a defined election). Our ids travel
//!   as `ExternalIdentifier`s (`Type: other`, `OtherType: election-id`).
//! - One `Party` per party, with its name and colour when defined.
//! - One **`PartyContest`**, with a `PartySelection` per party and, in each,
//!   one `VoteCounts` (`Type: total`) per reporting unit: the nation and
//!   every city, zeros included. A `PartyContest` is what the schema and
//!   Google's elections-data reference give for contests in which voters
//!   choose a party rather than a person (party-list votes): its selections
//!   are `PartySelection`s naming `PartyIds`, and it needs no `Candidate`s,
//!   no `Office` and no `VotesAllowed`, none of which this system knows. A
//!   `CandidateContest` would have to invent one candidate per party.
//! - Statuses (`crate::render`'s, from `election_core::Status`) map to
//!   `CountStatus.Status` as `not_reporting` → `not-processed`, `partial` →
//!   `in-process`, `complete` and `certified` → `completed`; the report's
//!   `Status` is `certified` when the whole election is, `unofficial-complete`
//!   when every expected box has reported, else `unofficial-partial`.
//! - `GeneratedDate` is when the counters were read (the totals' `as_of`).
//!   A definition carries no election date, so `StartDate` and `EndDate`
//!   (required) are that day too.
//!
//! The document is rendered from the same snapshot as the totals answers,
//! once per snapshot version (`Rendered::cdf`), so its counts always equal
//! the live totals of the same version.

use chrono::{DateTime, SecondsFormat, Utc};
use election_core::{PartyId, Status};
use serde_json::{Value, json};

use crate::render::{Counts, ScopeRow};

/// The id of the nation's reporting unit.
const NATION: &str = "gpu-nation";

fn city_unit(city: &str) -> String {
    format!("gpu-city-{city}")
}

fn party_object(party: &PartyId) -> String {
    format!("party-{}", party.as_str())
}

/// Text in the CDF's internationalised form (English: names are given in
/// one language only).
fn text(content: &str) -> Value {
    json!({
        "@type": "ElectionResults.InternationalizedText",
        "Text": [{
            "@type": "ElectionResults.LanguageString",
            "Content": content,
            "Language": "en",
        }],
    })
}

fn external(value: &str) -> Value {
    json!([{
        "@type": "ElectionResults.ExternalIdentifier",
        "Type": "other",
        "OtherType": "election-id",
        "Value": value,
    }])
}

/// `CountStatus.Status` for a status; see the module docs.
pub fn count_item_status(status: Status) -> &'static str {
    match status {
        Status::NotReporting => "not-processed",
        Status::Partial => "in-process",
        Status::Complete | Status::Certified => "completed",
    }
}

/// `ElectionReport.Status` for the national status.
pub fn results_status(status: Status) -> &'static str {
    match status {
        Status::Certified => "certified",
        Status::Complete => "unofficial-complete",
        Status::NotReporting | Status::Partial => "unofficial-partial",
    }
}

fn count_status(status: Status) -> Value {
    json!([{
        "@type": "ElectionResults.CountStatus",
        "Status": count_item_status(status),
        "Type": "total",
    }])
}

fn unit(id: &str, kind: &str, name: &str, row: &ScopeRow, composing: Option<Vec<String>>) -> Value {
    let mut unit = json!({
        "@id": id,
        "@type": "ElectionResults.ReportingUnit",
        "Type": kind,
        "Name": text(name),
        "CountStatus": count_status(row.status),
        "SubUnitsReported": row.reported,
    });
    if let Some(expected) = row.expected {
        unit["TotalSubUnits"] = json!(expected);
    }
    if let Some(composing) = composing {
        unit["ComposingGpUnitIds"] = json!(composing);
    }
    if let Some(city) = &row.id {
        unit["ExternalIdentifier"] = external(city.as_str());
    }
    unit
}

/// The `Party` objects: every party of the election, with its defined name
/// and colour when it has them.
fn party_objects(counts: &Counts) -> Vec<Value> {
    counts
        .parties
        .iter()
        .map(|(party, defined)| {
            let mut object = json!({
                "@id": party_object(party),
                "@type": "ElectionResults.Party",
                "Name": text(defined.as_ref().map_or(party.as_str(), |(name, _)| name)),
                "ExternalIdentifier": external(party.as_str()),
            });
            if let Some((_, colour)) = defined {
                object["Color"] = json!(colour.as_str().trim_start_matches('#'));
            }
            object
        })
        .collect()
}

/// One `PartySelection` per party, in party order, with its votes
/// nationally and in each city of `city_ids` (a city without the party
/// counts 0).
fn party_selections(counts: &Counts, city_ids: &[(String, &ScopeRow)]) -> Vec<Value> {
    let votes = |row: &ScopeRow, party: &PartyId| row.parties.get(party).copied().unwrap_or(0);
    counts
        .parties
        .iter()
        .enumerate()
        .map(|(index, (party, _))| {
            let mut counts_of = vec![json!({
                "@type": "ElectionResults.VoteCounts",
                "Count": votes(&counts.national, party),
                "GpUnitId": NATION,
                "Type": "total",
            })];
            for (id, row) in city_ids {
                counts_of.push(json!({
                    "@type": "ElectionResults.VoteCounts",
                    "Count": votes(row, party),
                    "GpUnitId": id,
                    "Type": "total",
                }));
            }
            json!({
                "@id": format!("selection-{}", party.as_str()),
                "@type": "ElectionResults.PartySelection",
                "PartyIds": [party_object(party)],
                "SequenceOrder": index + 1,
                "VoteCounts": counts_of,
            })
        })
        .collect()
}

/// The document for `counts`, read at `as_of`.
pub fn render(counts: &Counts, as_of: DateTime<Utc>) -> String {
    let generated = as_of.to_rfc3339_opts(SecondsFormat::Secs, true);
    let day = as_of.format("%Y-%m-%d").to_string();
    let election_name = counts
        .name
        .clone()
        .unwrap_or_else(|| format!("Election {}", counts.election.as_str()));
    let city_ids: Vec<(String, &ScopeRow)> = counts
        .cities
        .iter()
        .filter_map(|row| row.id.as_ref().map(|city| (city_unit(city.as_str()), row)))
        .collect();

    let mut units = vec![unit(
        NATION,
        "country",
        &election_name,
        &counts.national,
        Some(city_ids.iter().map(|(id, _)| id.clone()).collect()),
    )];
    for (id, row) in &city_ids {
        let fallback = row.id.as_ref().map_or("", |c| c.as_str());
        let name = row.name.as_deref().unwrap_or(fallback);
        units.push(unit(id, "city", name, row, None));
    }

    let parties = party_objects(counts);
    let selections = party_selections(counts, &city_ids);

    let mut contest = json!({
        "@id": "contest-parties",
        "@type": "ElectionResults.PartyContest",
        "ElectionDistrictId": NATION,
        "Name": election_name,
        "ContestSelection": selections,
        "CountStatus": count_status(counts.national.status),
        "SubUnitsReported": counts.national.reported,
    });
    if let Some(expected) = counts.national.expected {
        contest["TotalSubUnits"] = json!(expected);
    }

    let document = json!({
        "@type": "ElectionResults.ElectionReport",
        "Format": "summary-contest",
        "GeneratedDate": generated,
        "Issuer": "election-query",
        "IssuerAbbreviation": "election-query",
        "VendorApplicationId": concat!("election-query ", env!("CARGO_PKG_VERSION")),
        "SequenceStart": 1,
        "SequenceEnd": 1,
        "Status": results_status(counts.national.status),
        "IsTest": false,
        "GpUnit": units,
        "Party": parties,
        "Election": [{
            "@type": "ElectionResults.Election",
            "ElectionScopeId": NATION,
            "Name": text(&election_name),
            "Type": "general",
            "StartDate": day,
            "EndDate": day,
            "CountStatus": count_status(counts.national.status),
            "Contest": [contest],
            "ExternalIdentifier": external(counts.election.as_str()),
        }],
    });
    document.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_cdf_enumerations() {
        assert_eq!(count_item_status(Status::NotReporting), "not-processed");
        assert_eq!(count_item_status(Status::Partial), "in-process");
        assert_eq!(count_item_status(Status::Complete), "completed");
        assert_eq!(count_item_status(Status::Certified), "completed");
        assert_eq!(results_status(Status::Certified), "certified");
        assert_eq!(results_status(Status::Complete), "unofficial-complete");
        assert_eq!(results_status(Status::Partial), "unofficial-partial");
        assert_eq!(results_status(Status::NotReporting), "unofficial-partial");
    }
}
