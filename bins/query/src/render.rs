//! The JSON bodies of the live endpoints, rendered once per snapshot.
//!
//! A snapshot is read every refresh interval and shared by every reader, so
//! its bodies are serialised here once and then handed out as reference-counted
//! bytes: a request costs a map lookup and a pointer copy, never a
//! serialisation, however many readers there are. The stream's snapshot
//! events are built from the same pieces, the first time a subscriber needs
//! one of this version, and then shared too (see [`crate::stream`]).
//!
//! # Leader, margin and ties
//!
//! In every scope (national, one city) the leader is the party with the most
//! votes and the margin is its lead over the runner-up (its whole count when
//! it is the only party). When no party has a vote, `leader` is `null` and
//! `tied` is empty. When two or more parties share the top count, there is no
//! leader: `leader` is `null` and `tied` lists those parties in alphabetical
//! (byte) order. Otherwise `tied` is empty. So a client never has to guess how
//! a tie was broken.
//!
//! # Reporting progress
//!
//! For a defined election (SPEC §7) every scope carries
//! `ballot_boxes_expected` (the definition's count: a city's, or the sum over
//! cities) and `percent_reporting` (`100 × reported / expected`, rounded to
//! one decimal, at most 100), and cities carry their display `name`; every
//! defined city is listed, also before its first report. For an undefined
//! election these fields are `null`. `ballot_boxes_reported` counts ballot
//! boxes, not reports: revisions and replays of a box do not count it twice.
//!
//! # Status and turnout
//!
//! Every scope carries its `status` (`election_core::Status`) and, where the
//! definition gives the electorate (a city's `electorate = N`; the nation's
//! when every city has one), `electorate` and `turnout` (`100 × votes /
//! electorate`, one decimal, not capped: more votes than voters shows);
//! otherwise both are `null`. Cities carry `certified` (who and when, or
//! `null`).
//!
//! # Counters that cannot be read
//!
//! A counter key holding something that is not an integer (typed by hand)
//! is left out of the snapshot rather than failing it
//! (`Snapshot::unreadable`), so every other total is still served. While
//! there is such a key, every body (national, each city, the city list and
//! the stream event) carries `unreadable_counters`, the key names in order;
//! the totals it would have moved are short by what it should hold. The
//! field is absent when every counter could be read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use election_core::{CityId, Counter, Definition, ElectionId, PartyId, Snapshot, Status};
use serde::Serialize;

use crate::stream::{self, Delta, Variant};

/// The leading party of a scope.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Leader<'a> {
    /// The party.
    pub party: &'a PartyId,
    /// Its votes.
    pub votes: i64,
    /// Its lead over the runner-up.
    pub margin: i64,
}

/// The totals of one scope (the nation or one city).
#[derive(Serialize, Debug)]
struct ScopeTotals<'a> {
    parties: &'a BTreeMap<PartyId, i64>,
    total_votes: i64,
    leader: Option<Leader<'a>>,
    tied: Vec<&'a PartyId>,
    ballot_boxes_reported: u64,
    ballot_boxes_expected: Option<u64>,
    percent_reporting: Option<f64>,
    status: Status,
    electorate: Option<u64>,
    turnout: Option<f64>,
}

/// `GET /v1/elections/{e}/totals`.
#[derive(Serialize)]
struct NationalBody<'a> {
    election: &'a ElectionId,
    scope: &'static str,
    parties: &'a BTreeMap<PartyId, i64>,
    total_votes: i64,
    leader: Option<Leader<'a>>,
    tied: Vec<&'a PartyId>,
    ballot_boxes_reported: u64,
    ballot_boxes_expected: Option<u64>,
    percent_reporting: Option<f64>,
    status: Status,
    electorate: Option<u64>,
    turnout: Option<f64>,
    as_of: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unreadable_counters: &'a [String],
}

/// `GET /v1/elections/{e}/cities/{city}/totals`.
#[derive(Serialize)]
struct CityBody<'a> {
    election: &'a ElectionId,
    scope: &'static str,
    city: &'a CityId,
    name: Option<&'a str>,
    parties: &'a BTreeMap<PartyId, i64>,
    total_votes: i64,
    leader: Option<Leader<'a>>,
    tied: Vec<&'a PartyId>,
    ballot_boxes_reported: u64,
    ballot_boxes_expected: Option<u64>,
    percent_reporting: Option<f64>,
    status: Status,
    certified: Option<Certified<'a>>,
    electorate: Option<u64>,
    turnout: Option<f64>,
    as_of: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unreadable_counters: &'a [String],
}

/// Who certified a city, and when.
#[derive(Serialize, Clone, Copy)]
struct Certified<'a> {
    by: &'a str,
    at: &'a str,
}

/// One city in `GET /v1/elections/{e}/cities` and in stream events.
#[derive(Serialize)]
struct CityItem<'a> {
    city: &'a CityId,
    name: Option<&'a str>,
    parties: &'a BTreeMap<PartyId, i64>,
    total_votes: i64,
    leader: Option<Leader<'a>>,
    tied: Vec<&'a PartyId>,
    ballot_boxes_reported: u64,
    ballot_boxes_expected: Option<u64>,
    percent_reporting: Option<f64>,
    status: Status,
    certified: Option<Certified<'a>>,
    electorate: Option<u64>,
    turnout: Option<f64>,
}

/// One party in `GET /v1/elections/{e}`.
#[derive(Serialize)]
struct PartyItem<'a> {
    party: &'a PartyId,
    name: &'a str,
    colour: &'a str,
}

/// One city in `GET /v1/elections/{e}`.
#[derive(Serialize)]
struct DefinedCity<'a> {
    city: &'a CityId,
    name: &'a str,
    ballot_boxes_expected: u32,
}

/// `GET /v1/elections/{e}`: the definition, or `defined: false`.
#[derive(Serialize)]
struct DefinitionBody<'a> {
    election: &'a ElectionId,
    defined: bool,
    name: Option<&'a str>,
    parties: Vec<PartyItem<'a>>,
    cities: Vec<DefinedCity<'a>>,
    ballot_boxes_expected: Option<u64>,
    ballot_boxes_registered: usize,
}

/// `100 × reported / expected`, one decimal, at most 100 (an election
/// without a registry may see more boxes than it expects).
pub fn percent_reporting(reported: u64, expected: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    let percent = (reported as f64) * 100.0 / (expected as f64);
    ((percent * 10.0).round() / 10.0).min(100.0)
}

/// `100 × votes / electorate`, one decimal; not capped, so a scope that
/// reports more votes than voters shows it.
pub fn turnout(votes: i64, electorate: u64) -> Option<f64> {
    if electorate == 0 {
        return None;
    }
    let percent = (votes as f64) * 100.0 / (electorate as f64);
    Some((percent * 10.0).round() / 10.0)
}

/// The leader (or the tie) of a scope; see the module docs.
pub fn leader(parties: &BTreeMap<PartyId, i64>) -> (Option<Leader<'_>>, Vec<&PartyId>) {
    let mut ranked: Vec<(&PartyId, i64)> = parties.iter().map(|(p, n)| (p, *n)).collect();
    // Most votes first; equal counts in byte order of the party id.
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let Some(&(top_party, top_votes)) = ranked.first() else {
        return (None, Vec::new());
    };
    if top_votes <= 0 {
        return (None, Vec::new());
    }
    let runner_up = ranked.get(1).map_or(0, |&(_, n)| n);
    if runner_up == top_votes {
        let tied = ranked
            .iter()
            .take_while(|&&(_, n)| n == top_votes)
            .map(|&(p, _)| p)
            .collect();
        return (None, tied);
    }
    (
        Some(Leader {
            party: top_party,
            votes: top_votes,
            margin: top_votes - runner_up,
        }),
        Vec::new(),
    )
}

fn total(parties: &BTreeMap<PartyId, i64>) -> i64 {
    parties.values().sum()
}

/// One scope's figures, kept structured for the exports that are not
/// pre-rendered (the NIST document, [`crate::cdf`]).
#[derive(Debug, Clone)]
pub struct ScopeRow {
    /// The city (`None`: the nation).
    pub id: Option<CityId>,
    /// Its display name, when defined.
    pub name: Option<String>,
    /// Votes by party.
    pub parties: BTreeMap<PartyId, i64>,
    /// Ballot boxes reported.
    pub reported: u64,
    /// Ballot boxes expected, when defined.
    pub expected: Option<u64>,
    /// Its status.
    pub status: Status,
}

/// The figures of a snapshot, structured.
#[derive(Debug, Clone)]
pub struct Counts {
    /// The election.
    pub election: ElectionId,
    /// Its display name, when defined.
    pub name: Option<String>,
    /// Every party, in the definition's order (then any counted but not
    /// defined), with its name and colour when defined.
    pub parties: Vec<(PartyId, Option<(String, election_core::Colour)>)>,
    /// The national scope.
    pub national: ScopeRow,
    /// Every city, in id order.
    pub cities: Vec<ScopeRow>,
}

/// A snapshot with every body rendered.
#[derive(Debug)]
pub struct Rendered {
    /// Increases whenever the totals change (milliseconds since the Unix
    /// epoch of the refresh that saw the change, or one more than the
    /// previous version): the stream's event id.
    pub version: u64,
    /// When the counters were read.
    pub as_of: DateTime<Utc>,
    /// The figures, structured.
    pub counts: Counts,
    /// The definition the bodies were rendered with (set by the feed; as-of
    /// answers render with it too).
    pub(crate) source: Option<Arc<Definition>>,
    /// The NIST document of this version, rendered when first asked for.
    cdf: OnceLock<Bytes>,
    /// `GET .../totals`.
    pub national: Bytes,
    /// `GET .../cities`.
    pub cities: Bytes,
    /// `GET /v1/elections/{e}`.
    pub definition: Bytes,
    /// `GET .../cities/{city}/totals`, by city.
    city: HashMap<Box<str>, Bytes>,
    /// Every city's entry of the city list and of stream events, in city
    /// order: what a delta compares with the previous version's.
    pub(crate) items: Vec<(Box<str>, Arc<str>)>,
    /// The national scope of stream events (`ScopeTotals`).
    pub(crate) national_item: Arc<str>,
    /// The election id, as JSON.
    pub(crate) election_json: Arc<str>,
    /// `as_of`, as JSON.
    pub(crate) as_of_json: Arc<str>,
    /// `Snapshot::unreadable`.
    pub(crate) unreadable: Vec<String>,
    /// The stream's recent deltas, oldest first, the last one leading to
    /// this version (empty when none is kept): set by the feed.
    pub(crate) recent: Arc<[Arc<Delta>]>,
    /// The stream's snapshot events of this version, rendered when first
    /// asked for.
    snapshot_all: OnceLock<Bytes>,
    snapshot_national: OnceLock<Bytes>,
    snapshot_city: Mutex<HashMap<Box<str>, Bytes>>,
}

impl Rendered {
    /// Renders every body of `snapshot`.
    pub fn new(
        election: &ElectionId,
        snapshot: &Snapshot,
        definition: Option<&Definition>,
        version: u64,
        as_of: DateTime<Utc>,
    ) -> Rendered {
        let as_of_text = as_of.to_rfc3339_opts(SecondsFormat::Millis, true);

        // One pass over the counters: a city's totals are not looked up per
        // city, which would be quadratic with 10,000 cities.
        let mut national: BTreeMap<PartyId, i64> = snapshot
            .parties
            .iter()
            .map(|party| (party.clone(), 0))
            .collect();
        let mut by_city: BTreeMap<&CityId, BTreeMap<PartyId, i64>> = snapshot
            .cities
            .keys()
            .map(|city| (city, BTreeMap::new()))
            .collect();
        if let Some(definition) = definition {
            for city in definition.cities() {
                by_city.entry(&city.id).or_default();
            }
        }
        for (counter, n) in snapshot.totals.iter() {
            match counter {
                Counter::National(party) => {
                    national.insert(party.clone(), n);
                }
                Counter::City(city, party) => {
                    by_city.entry(city).or_default().insert(party.clone(), n);
                }
            }
        }

        // The cities first: the national status is derived from theirs.
        let mut city_bodies = HashMap::with_capacity(by_city.len());
        let mut items = Vec::with_capacity(by_city.len());
        let mut city_rows = Vec::with_capacity(by_city.len());
        for (city, parties) in &by_city {
            let boxes = snapshot.cities.get(*city).copied().unwrap_or(0);
            let defined = definition.and_then(|d| d.city(city));
            let name = defined.map(|c| c.name.as_str());
            let expected = defined.map(|c| u64::from(c.expected_ballot_boxes));
            let percent = expected.map(|e| percent_reporting(boxes, e));
            let certification = definition.and_then(|d| d.certification(city));
            let certified = certification.map(|c| Certified {
                by: &c.by,
                at: &c.at,
            });
            let status = Status::of(boxes, expected, certification.is_some());
            let electorate = defined.and_then(|c| c.electorate).map(u64::from);
            let turnout = electorate.and_then(|e| turnout(total(parties), e));
            let (lead, tied) = leader(parties);
            items.push((
                Box::<str>::from(city.as_str()),
                Arc::<str>::from(json(&CityItem {
                    city,
                    name,
                    parties,
                    total_votes: total(parties),
                    leader: lead.clone(),
                    tied: tied.clone(),
                    ballot_boxes_reported: boxes,
                    ballot_boxes_expected: expected,
                    percent_reporting: percent,
                    status,
                    certified,
                    electorate,
                    turnout,
                })),
            ));
            city_bodies.insert(
                Box::<str>::from(city.as_str()),
                Bytes::from(json(&CityBody {
                    election,
                    scope: "city",
                    city,
                    name,
                    parties,
                    total_votes: total(parties),
                    leader: lead,
                    tied,
                    ballot_boxes_reported: boxes,
                    ballot_boxes_expected: expected,
                    percent_reporting: percent,
                    status,
                    certified,
                    electorate,
                    turnout,
                    as_of: &as_of_text,
                    unreadable_counters: &snapshot.unreadable,
                })),
            );
            city_rows.push(ScopeRow {
                id: Some((*city).clone()),
                name: name.map(str::to_owned),
                parties: parties.clone(),
                reported: boxes,
                expected,
                status,
            });
        }

        let national_expected = definition.map(Definition::expected_ballot_boxes);
        let national_percent =
            national_expected.map(|e| percent_reporting(snapshot.ballot_boxes_reported, e));
        // A defined election's status follows its cities; an undefined one
        // only knows whether anything reported.
        let national_status = match definition {
            Some(_) => Status::national(city_rows.iter().map(|row| row.status)),
            None => Status::of(snapshot.ballot_boxes_reported, None, false),
        };
        let national_electorate = definition.and_then(Definition::electorate);
        let national_turnout = national_electorate.and_then(|e| turnout(total(&national), e));
        let (lead, tied) = leader(&national);
        let national_body = json(&NationalBody {
            election,
            scope: "national",
            parties: &national,
            total_votes: total(&national),
            leader: lead.clone(),
            tied: tied.clone(),
            ballot_boxes_reported: snapshot.ballot_boxes_reported,
            ballot_boxes_expected: national_expected,
            percent_reporting: national_percent,
            status: national_status,
            electorate: national_electorate,
            turnout: national_turnout,
            as_of: &as_of_text,
            unreadable_counters: &snapshot.unreadable,
        });
        let national_item = json(&ScopeTotals {
            parties: &national,
            total_votes: total(&national),
            leader: lead,
            tied,
            ballot_boxes_reported: snapshot.ballot_boxes_reported,
            ballot_boxes_expected: national_expected,
            percent_reporting: national_percent,
            status: national_status,
            electorate: national_electorate,
            turnout: national_turnout,
        });
        let counts = Counts {
            election: election.clone(),
            name: definition.map(|d| d.name().to_owned()),
            parties: match definition {
                Some(d) => d
                    .parties()
                    .iter()
                    .map(|p| (p.id.clone(), Some((p.name.clone(), p.colour.clone()))))
                    // A party counted but no longer defined cannot happen
                    // (definitions only grow); listed anyway if it does.
                    .chain(
                        national
                            .keys()
                            .filter(|p| !d.parties().iter().any(|defined| &defined.id == *p))
                            .map(|p| (p.clone(), None)),
                    )
                    .collect(),
                None => national.keys().map(|p| (p.clone(), None)).collect(),
            },
            national: ScopeRow {
                id: None,
                name: definition.map(|d| d.name().to_owned()),
                parties: national.clone(),
                reported: snapshot.ballot_boxes_reported,
                expected: national_expected,
                status: national_status,
            },
            cities: city_rows,
        };

        let election_json = json(election);
        let as_of_json = json(&as_of_text);
        let cities = format!(
            "{{\"election\":{election_json},\"as_of\":{as_of_json},\"cities\":[{}]{}}}",
            join(&items),
            unreadable_field(&snapshot.unreadable)
        );
        let definition_body = json(&DefinitionBody {
            election,
            defined: definition.is_some(),
            name: definition.map(Definition::name),
            parties: definition
                .map(|d| {
                    d.parties()
                        .iter()
                        .map(|p| PartyItem {
                            party: &p.id,
                            name: &p.name,
                            colour: p.colour.as_str(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            cities: definition
                .map(|d| {
                    d.cities()
                        .iter()
                        .map(|c| DefinedCity {
                            city: &c.id,
                            name: &c.name,
                            ballot_boxes_expected: c.expected_ballot_boxes,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            ballot_boxes_expected: national_expected,
            ballot_boxes_registered: definition.map_or(0, |d| d.ballot_boxes().len()),
        });
        Rendered {
            version,
            as_of,
            counts,
            source: None,
            cdf: OnceLock::new(),
            national: Bytes::from(national_body),
            cities: Bytes::from(cities),
            definition: Bytes::from(definition_body),
            city: city_bodies,
            items,
            national_item: Arc::from(national_item),
            election_json: Arc::from(election_json),
            as_of_json: Arc::from(as_of_json),
            unreadable: snapshot.unreadable.clone(),
            recent: Arc::from(Vec::new()),
            snapshot_all: OnceLock::new(),
            snapshot_national: OnceLock::new(),
            snapshot_city: Mutex::new(HashMap::new()),
        }
    }

    /// The NIST SP 1500-100 document of this version ([`crate::cdf`]),
    /// rendered once and then shared.
    pub fn cdf(&self) -> Bytes {
        self.cdf
            .get_or_init(|| Bytes::from(crate::cdf::render(&self.counts, self.as_of)))
            .clone()
    }

    /// The body of one city's totals, if the city has reported.
    pub fn city(&self, city: &str) -> Option<Bytes> {
        self.city.get(city).cloned()
    }

    /// A city's entry in the city list, if it is listed.
    pub(crate) fn item(&self, city: &str) -> Option<&Arc<str>> {
        self.items
            .binary_search_by(|(listed, _)| (**listed).cmp(city))
            .ok()
            .map(|index| &self.items[index].1)
    }

    /// The stream's `snapshot` event of this version for `variant`, as sent
    /// (`event:`, `id:`, `data:` lines), rendered once and then shared.
    pub fn snapshot_event(&self, variant: &Variant) -> Bytes {
        let head = format!(
            "{{\"election\":{},\"version\":{},\"as_of\":{}",
            self.election_json, self.version, self.as_of_json
        );
        let unreadable = unreadable_field(&self.unreadable);
        match variant {
            Variant::All => self
                .snapshot_all
                .get_or_init(|| {
                    let data = format!(
                        "{head},\"national\":{},\"cities\":[{}]{unreadable}}}",
                        self.national_item,
                        join(&self.items)
                    );
                    stream::frame("snapshot", self.version, &data)
                })
                .clone(),
            Variant::National => self
                .snapshot_national
                .get_or_init(|| {
                    let data = format!("{head},\"national\":{}{unreadable}}}", self.national_item);
                    stream::frame("snapshot", self.version, &data)
                })
                .clone(),
            Variant::City(city) => {
                let mut cache = self
                    .snapshot_city
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                cache
                    .entry(Box::from(city.as_str()))
                    .or_insert_with(|| {
                        let item = self.item(city.as_str()).map_or("null", |item| &**item);
                        let data = format!("{head},\"city\":{item}{unreadable}}}");
                        stream::frame("snapshot", self.version, &data)
                    })
                    .clone()
            }
        }
    }
}

/// The city entries, comma-separated.
fn join(items: &[(Box<str>, Arc<str>)]) -> String {
    let mut joined = String::with_capacity(items.iter().map(|(_, item)| item.len() + 1).sum());
    for (index, (_, item)) in items.iter().enumerate() {
        if index > 0 {
            joined.push(',');
        }
        joined.push_str(item);
    }
    joined
}

/// `,"unreadable_counters":[...]`, or nothing when every counter was read.
pub(crate) fn unreadable_field(unreadable: &[String]) -> String {
    if unreadable.is_empty() {
        String::new()
    } else {
        format!(",\"unreadable_counters\":{}", json(unreadable))
    }
}

pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("serialising plain data cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use election_core::Totals;

    fn parties(list: &[(&str, i64)]) -> BTreeMap<PartyId, i64> {
        list.iter()
            .map(|(p, n)| (PartyId::parse(p).unwrap(), *n))
            .collect()
    }

    #[track_caller]
    fn check_leader(list: &[(&str, i64)], expected: Option<(&str, i64, i64)>, tied: &[&str]) {
        let parties = parties(list);
        let (lead, tie) = leader(&parties);
        assert_eq!(
            lead.map(|l| (l.party.as_str().to_owned(), l.votes, l.margin)),
            expected.map(|(p, v, m)| (p.to_owned(), v, m))
        );
        assert_eq!(
            tie.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            tied.to_vec()
        );
    }

    #[test]
    fn leaders_margins_and_ties() {
        check_leader(
            &[
                ("tories", 260),
                ("labour", 430),
                ("libdems", 115),
                ("reform", 35),
            ],
            Some(("labour", 430, 170)),
            &[],
        );
        check_leader(&[("labour", 5)], Some(("labour", 5, 5)), &[]);
        check_leader(&[], None, &[]);
        check_leader(&[("labour", 0), ("tories", 0)], None, &[]);
        check_leader(
            &[("tories", 7), ("labour", 7), ("green", 7), ("reform", 1)],
            None,
            &["green", "labour", "tories"],
        );
        // A tie below the top is no tie.
        check_leader(&[("a", 9), ("b", 3), ("c", 3)], Some(("a", 9, 6)), &[]);
    }

    #[test]
    fn bodies_are_rendered_once_with_every_scope() {
        let election = ElectionId::parse("2025").unwrap();
        let mut totals = Totals::new();
        let london = CityId::parse("london").unwrap();
        let labour = PartyId::parse("labour").unwrap();
        let tories = PartyId::parse("tories").unwrap();
        totals.add(Counter::National(labour.clone()), 200);
        totals.add(Counter::National(tories.clone()), 120);
        totals.add(Counter::City(london.clone(), labour.clone()), 200);
        totals.add(Counter::City(london.clone(), tories.clone()), 120);
        let snapshot = Snapshot {
            totals,
            parties: [labour, tories].into_iter().collect(),
            cities: [(london, 1)].into_iter().collect(),
            ballot_boxes_reported: 1,
            unreadable: Vec::new(),
        };
        let as_of = DateTime::parse_from_rfc3339("2025-09-15T18:12:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rendered = Rendered::new(&election, &snapshot, None, 7, as_of);
        assert_eq!(
            std::str::from_utf8(&rendered.national).unwrap(),
            r#"{"election":"2025","scope":"national","parties":{"labour":200,"tories":120},"total_votes":320,"leader":{"party":"labour","votes":200,"margin":80},"tied":[],"ballot_boxes_reported":1,"ballot_boxes_expected":null,"percent_reporting":null,"status":"partial","electorate":null,"turnout":null,"as_of":"2025-09-15T18:12:00.000Z"}"#
        );
        assert_eq!(
            std::str::from_utf8(&rendered.city("london").unwrap()).unwrap(),
            r#"{"election":"2025","scope":"city","city":"london","name":null,"parties":{"labour":200,"tories":120},"total_votes":320,"leader":{"party":"labour","votes":200,"margin":80},"tied":[],"ballot_boxes_reported":1,"ballot_boxes_expected":null,"percent_reporting":null,"status":"partial","certified":null,"electorate":null,"turnout":null,"as_of":"2025-09-15T18:12:00.000Z"}"#
        );
        assert!(rendered.city("paris").is_none());
        let cities: serde_json::Value = serde_json::from_slice(&rendered.cities).unwrap();
        assert_eq!(cities["cities"][0]["city"], "london");
        assert_eq!(cities["cities"][0]["ballot_boxes_reported"], 1);
        let frame = rendered.snapshot_event(&Variant::All);
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(
            text.starts_with("event: snapshot\nid: 7\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"), "{text}");
        let event = stream::tests::data(&frame);
        assert_eq!(event["version"], 7);
        assert_eq!(event["national"]["total_votes"], 320);
        assert_eq!(event["cities"][0]["leader"]["party"], "labour");
        assert!(event.get("unreadable_counters").is_none());

        // A key that could not be read is named in every body.
        let unreadable = vec!["election:2025:city:london:party:greens".to_owned()];
        let snapshot = Snapshot {
            unreadable: unreadable.clone(),
            ..snapshot
        };
        let rendered = Rendered::new(&election, &snapshot, None, 8, as_of);
        for body in [
            &rendered.national[..],
            &rendered.cities[..],
            &rendered.city("london").unwrap()[..],
        ] {
            let body: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(body["unreadable_counters"], serde_json::json!(unreadable));
        }
        for variant in [
            Variant::All,
            Variant::National,
            Variant::City(CityId::parse("london").unwrap()),
        ] {
            let event = stream::tests::data(&rendered.snapshot_event(&variant));
            assert_eq!(event["unreadable_counters"], serde_json::json!(unreadable));
        }
        let national: serde_json::Value = serde_json::from_slice(&rendered.national).unwrap();
        assert_eq!(national["total_votes"], 320);
    }
}
