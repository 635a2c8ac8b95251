//! The JSON bodies of the live endpoints, rendered once per change.
//!
//! A version is read every refresh interval and shared by every reader, so
//! its bodies are serialised here once and then handed out as
//! reference-counted bytes: a request costs a lookup and a copy of at most
//! one city's entry, never a serialisation of the totals, however many
//! readers there are. [`Renderer`] keeps each city's entry with the values
//! it was rendered from and serialises again only the cities that moved; the
//! bodies that hold every city or `as_of` (the city list, a city's totals)
//! are put together from the entries when first asked for. The stream's
//! snapshot events are built from the same pieces, the first time a
//! subscriber needs one of a version, and then shared too (see
//! [`crate::stream`]).
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
//! For a defined election (docs/contract.md §7) every scope carries
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
//! `null`). A city's status and certification come from its ballot boxes and
//! the definition (certifications are part of it and move its version): a
//! new definition renders every city again, so a certified city's cached
//! entry is never served stale.
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
use election_core::{CityId, Definition, ElectionId, Grid, PartyId, Status};
use election_http::conditional::Validators;
use serde::Serialize;

use crate::precompressed::Copies;
use crate::stream::{self, Delta, Event, Variant};

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

/// Who certified a city, and when.
#[derive(Serialize, Clone, Copy)]
struct Certified<'a> {
    by: &'a str,
    at: &'a str,
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

/// The figures of a version, structured.
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

/// One version of an election with its bodies: rendered by a [`Renderer`],
/// shared by every reader and stream subscriber of that version.
///
/// The bodies that carry every city and `as_of` (the city list, each city's
/// totals) are put together when first asked for, from the cities' entries:
/// a refresh renders only what moved, however many cities there are.
#[derive(Debug)]
pub struct Rendered {
    /// Increases whenever the totals change (milliseconds since the Unix
    /// epoch of the refresh that saw the change, or one more than the
    /// previous version): the stream's event id.
    pub version: u64,
    /// When the counters were read.
    pub as_of: DateTime<Utc>,
    /// The live answers' `ETag` (the version) and `Last-Modified` (the time
    /// the version is named after), made once for every answer of it.
    pub validators: Validators,
    /// `GET .../totals`.
    pub national: Bytes,
    /// `GET /v1/elections/{e}`: shared by every version of one definition.
    pub definition: Bytes,
    /// [`Rendered::definition`] compressed, shared like it.
    pub(crate) definition_copies: Arc<Copies>,
    /// [`Rendered::cities`] compressed.
    pub(crate) cities_copies: Copies,
    /// [`Rendered::cdf`] compressed.
    pub(crate) cdf_copies: Copies,
    /// The definition the bodies were rendered with (as-of answers render
    /// with it too).
    pub(crate) source: Option<Arc<Definition>>,
    /// The election.
    pub(crate) election: ElectionId,
    /// The counters the bodies were rendered from: what the NIST document
    /// is built from, when first asked for.
    grid: Arc<Grid>,
    /// The national status.
    national_status: Status,
    /// The NIST document of this version, rendered when first asked for.
    cdf: OnceLock<Bytes>,
    /// `GET .../cities`, put together when first asked for.
    cities: OnceLock<Bytes>,
    /// Every city's entry of the city list and of stream events, in city
    /// order: what a delta compares with the previous version's. An entry
    /// that did not move is the same `Arc` as in the previous version.
    pub(crate) items: Vec<(Arc<str>, Arc<str>)>,
    /// The national scope of stream events (`ScopeTotals`).
    pub(crate) national_item: Arc<str>,
    /// The election id, as JSON.
    pub(crate) election_json: Arc<str>,
    /// `as_of`, as JSON.
    pub(crate) as_of_json: Arc<str>,
    /// `Grid::unreadable`.
    pub(crate) unreadable: Vec<String>,
    /// The stream's recent deltas, oldest first, the last one leading to
    /// this version (empty when none is kept): set by the feed.
    pub(crate) recent: Arc<[Arc<Delta>]>,
    /// The stream's snapshot events of this version, rendered when first
    /// asked for.
    snapshot_all: OnceLock<Event>,
    snapshot_national: OnceLock<Event>,
    snapshot_city: Mutex<HashMap<Box<str>, Event>>,
}

/// A city's entry as last rendered, with what it was rendered from.
#[derive(Debug)]
struct CityEntry {
    city: Arc<str>,
    /// Its counters in the renderer's party order (`None`: absent).
    values: Box<[Option<i64>]>,
    boxes: u64,
    /// Its status when rendered (it follows `boxes` and the definition,
    /// whose changes render every city again).
    status: Status,
    item: Arc<str>,
}

/// Renders the versions of one election, keeping each city's entry with the
/// values it was rendered from so that the next version renders again only
/// the cities whose values moved (and every city when the parties or the
/// definition change, which is rare).
///
/// Why: at 10,000 cities × 20 parties, serialising every city on every
/// refresh was most of a refresh's cost, while a refresh at 1,000 reports/s
/// finds at most a few hundred cities moved.
#[derive(Debug)]
pub struct Renderer {
    election: ElectionId,
    election_json: Arc<str>,
    definition: Option<Arc<Definition>>,
    /// The defined cities' ids, in order.
    defined: Vec<CityId>,
    definition_body: Bytes,
    /// `definition_body` compressed: made again with it
    /// ([`Renderer::render_definition_body`]).
    definition_copies: Arc<Copies>,
    /// The parties the cached entries' values are in the order of.
    parties: Arc<[PartyId]>,
    /// The entries of the last version, in city order.
    entries: Vec<CityEntry>,
    /// How many entries the last [`Renderer::render`] serialised.
    last_rendered: usize,
}

impl Renderer {
    /// A renderer of `election`, without a definition.
    pub fn new(election: ElectionId) -> Renderer {
        let mut renderer = Renderer {
            election_json: Arc::from(json(&election)),
            election,
            definition: None,
            defined: Vec::new(),
            definition_body: Bytes::new(),
            definition_copies: Arc::default(),
            parties: Arc::from(Vec::new()),
            entries: Vec::new(),
            last_rendered: 0,
        };
        renderer.render_definition_body();
        renderer
    }

    /// Renders `GET /v1/elections/{e}` again, with no compressed copies yet:
    /// the body and its copies are only ever replaced together.
    fn render_definition_body(&mut self) {
        self.definition_body = self.render_definition();
        self.definition_copies = Arc::default();
    }

    /// Uses `definition` from the next version on; every city is rendered
    /// again (names, expected ballot boxes, electorates and certifications
    /// may have changed: certifying a city moves the definition).
    pub fn set_definition(&mut self, definition: Option<Arc<Definition>>) {
        let mut defined: Vec<CityId> = definition
            .as_deref()
            .map(|d| d.cities().iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        defined.sort();
        self.definition = definition;
        self.defined = defined;
        self.render_definition_body();
        self.entries.clear();
    }

    /// How many city entries the last [`Renderer::render`] serialised.
    pub fn last_rendered(&self) -> usize {
        self.last_rendered
    }

    /// The version `version` of `grid`, read at `as_of`.
    pub fn render(
        &mut self,
        grid: impl Into<Arc<Grid>>,
        version: u64,
        as_of: DateTime<Utc>,
    ) -> Rendered {
        let grid: Arc<Grid> = grid.into();
        let as_of_text = as_of.to_rfc3339_opts(SecondsFormat::Millis, true);
        if !(Arc::ptr_eq(&self.parties, &grid.parties) || self.parties == grid.parties) {
            self.parties = Arc::clone(&grid.parties);
            self.entries.clear();
        }
        let definition = self.definition.clone();
        let definition = definition.as_deref();
        // The cities first: the national status is derived from theirs.
        self.render_cities(&grid, definition);
        let (national_body, national_item, national_status) =
            self.render_national(&grid, definition, &as_of_text);

        let items = self
            .entries
            .iter()
            .map(|entry| (Arc::clone(&entry.city), Arc::clone(&entry.item)))
            .collect();
        // The version is the time its change was seen, in milliseconds.
        let last_modified = i64::try_from(version)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(as_of);
        Rendered {
            version,
            as_of,
            validators: Validators::new(&version.to_string(), last_modified),
            national: Bytes::from(national_body),
            definition: self.definition_body.clone(),
            definition_copies: Arc::clone(&self.definition_copies),
            cities_copies: Copies::default(),
            cdf_copies: Copies::default(),
            source: self.definition.clone(),
            election: self.election.clone(),
            unreadable: grid.unreadable.clone(),
            grid,
            national_status,
            cdf: OnceLock::new(),
            cities: OnceLock::new(),
            as_of_json: Arc::from(json(&as_of_text)),
            items,
            national_item: Arc::from(national_item),
            election_json: Arc::clone(&self.election_json),
            recent: Arc::from(Vec::new()),
            snapshot_all: OnceLock::new(),
            snapshot_national: OnceLock::new(),
            snapshot_city: Mutex::new(HashMap::new()),
        }
    }

    /// The city entries of `grid`, into `self.entries`: the cities read
    /// merged with the defined ones, both in order, and the previous
    /// entries walked alongside, in order too (no lookups); an entry whose
    /// counters and boxes did not move is kept as it was serialised.
    fn render_cities(&mut self, grid: &Grid, definition: Option<&Definition>) {
        let width = grid.parties.len();
        let nothing: Vec<Option<i64>> = vec![None; width];
        let mut old = std::mem::take(&mut self.entries).into_iter().peekable();
        let mut entries = Vec::with_capacity(grid.cities.len().max(self.defined.len()));
        let mut rendered = 0;
        let mut read = grid.cities.iter().enumerate().peekable();
        let mut defined = self.defined.iter().peekable();
        loop {
            let (city, row) = match (read.peek(), defined.peek()) {
                (None, None) => break,
                (Some(&(index, city)), None) => {
                    read.next();
                    (city, Some(index))
                }
                (None, Some(&city)) => {
                    defined.next();
                    (city, None)
                }
                (Some(&(index, seen)), Some(&city)) => match seen.cmp(city) {
                    std::cmp::Ordering::Less => {
                        read.next();
                        (seen, Some(index))
                    }
                    std::cmp::Ordering::Greater => {
                        defined.next();
                        (city, None)
                    }
                    std::cmp::Ordering::Equal => {
                        read.next();
                        defined.next();
                        (seen, Some(index))
                    }
                },
            };
            let values = row.map_or(&nothing[..], |index| grid.row(index));
            let boxes = row
                .and_then(|index| grid.boxes.get(index))
                .copied()
                .unwrap_or(0);
            while old.next_if(|entry| *entry.city < *city.as_str()).is_some() {}
            match old.next_if(|entry| *entry.city == *city.as_str()) {
                Some(entry) if entry.boxes == boxes && *entry.values == *values => {
                    entries.push(entry);
                }
                was => {
                    rendered += 1;
                    let (item, status) =
                        render_item(city, &grid.parties, values, boxes, definition);
                    entries.push(CityEntry {
                        city: was.map_or_else(|| Arc::from(city.as_str()), |entry| entry.city),
                        values: values.into(),
                        boxes,
                        status,
                        item: Arc::from(item),
                    });
                }
            }
        }
        self.entries = entries;
        self.last_rendered = rendered;
    }

    /// The national answer (`/totals`' body), its item in the stream's
    /// snapshot, and its status (derived from the cities' entries, so
    /// rendered after them).
    fn render_national(
        &self,
        grid: &Grid,
        definition: Option<&Definition>,
        as_of_text: &str,
    ) -> (String, String, Status) {
        let national: BTreeMap<PartyId, i64> = grid
            .parties
            .iter()
            .zip(&grid.national)
            .map(|(party, n)| (party.clone(), n.unwrap_or(0)))
            .collect();
        let national_expected = definition.map(Definition::expected_ballot_boxes);
        let national_percent =
            national_expected.map(|e| percent_reporting(grid.ballot_boxes_reported, e));
        let national_status = national_status(
            definition,
            grid.ballot_boxes_reported,
            self.entries.iter().map(|entry| entry.status),
        );
        let national_electorate = definition.and_then(Definition::electorate);
        let national_turnout = national_electorate.and_then(|e| turnout(total(&national), e));
        let (lead, tied) = leader(&national);
        let national_body = json(&NationalBody {
            election: &self.election,
            scope: "national",
            parties: &national,
            total_votes: total(&national),
            leader: lead.clone(),
            tied: tied.clone(),
            ballot_boxes_reported: grid.ballot_boxes_reported,
            ballot_boxes_expected: national_expected,
            percent_reporting: national_percent,
            status: national_status,
            electorate: national_electorate,
            turnout: national_turnout,
            as_of: as_of_text,
            unreadable_counters: &grid.unreadable,
        });
        let national_item = json(&ScopeTotals {
            parties: &national,
            total_votes: total(&national),
            leader: lead,
            tied,
            ballot_boxes_reported: grid.ballot_boxes_reported,
            ballot_boxes_expected: national_expected,
            percent_reporting: national_percent,
            status: national_status,
            electorate: national_electorate,
            turnout: national_turnout,
        });
        (national_body, national_item, national_status)
    }

    fn render_definition(&self) -> Bytes {
        let definition = self.definition.as_deref();
        Bytes::from(json(&DefinitionBody {
            election: &self.election,
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
            ballot_boxes_expected: definition.map(Definition::expected_ballot_boxes),
            ballot_boxes_registered: definition.map_or(0, |d| d.ballot_boxes().len()),
        }))
    }
}

/// A defined election's status follows its cities; an undefined one only
/// knows whether anything reported.
fn national_status(
    definition: Option<&Definition>,
    reported: u64,
    cities: impl IntoIterator<Item = Status>,
) -> Status {
    match definition {
        Some(_) => Status::national(cities),
        None => Status::of(reported, None, false),
    }
}

/// A city's status from its ballot boxes and the definition.
fn city_status(city: &CityId, boxes: u64, definition: Option<&Definition>) -> Status {
    let expected = definition
        .and_then(|d| d.city(city))
        .map(|c| u64::from(c.expected_ballot_boxes));
    let certified = definition.and_then(|d| d.certification(city)).is_some();
    Status::of(boxes, expected, certified)
}

/// A city's entry (`CityItem`) from its counters in `parties` order, with
/// its status.
fn render_item(
    city: &CityId,
    parties: &[PartyId],
    values: &[Option<i64>],
    boxes: u64,
    definition: Option<&Definition>,
) -> (String, Status) {
    let counts = city_counts(parties, values);
    let defined = definition.and_then(|d| d.city(city));
    let expected = defined.map(|c| u64::from(c.expected_ballot_boxes));
    let certified = definition
        .and_then(|d| d.certification(city))
        .map(|c| Certified {
            by: &c.by,
            at: &c.at,
        });
    let status = city_status(city, boxes, definition);
    let electorate = defined.and_then(|c| c.electorate).map(u64::from);
    let (lead, tied) = leader(&counts);
    let item = json(&CityItem {
        city,
        name: defined.map(|c| c.name.as_str()),
        parties: &counts,
        total_votes: total(&counts),
        leader: lead,
        tied,
        ballot_boxes_reported: boxes,
        ballot_boxes_expected: expected,
        percent_reporting: expected.map(|e| percent_reporting(boxes, e)),
        status,
        certified,
        electorate,
        turnout: electorate.and_then(|e| turnout(total(&counts), e)),
    });
    (item, status)
}

/// A city's counters by party (absent counters left out).
fn city_counts(parties: &[PartyId], values: &[Option<i64>]) -> BTreeMap<PartyId, i64> {
    parties
        .iter()
        .zip(values)
        .filter_map(|(party, n)| n.map(|n| (party.clone(), n)))
        .collect()
}

impl Rendered {
    /// Renders every body of `snapshot` from scratch (as-of answers and
    /// tests build versions this way; the feeds keep a [`Renderer`]).
    pub fn new(
        election: &ElectionId,
        snapshot: &election_core::Snapshot,
        definition: Option<&Definition>,
        version: u64,
        as_of: DateTime<Utc>,
    ) -> Rendered {
        let mut renderer = Renderer::new(election.clone());
        renderer.set_definition(definition.cloned().map(Arc::new));
        renderer.render(Grid::from_snapshot(snapshot), version, as_of)
    }

    /// The NIST SP 1500-100 document of this version ([`crate::cdf`]),
    /// rendered once and then shared.
    pub fn cdf(&self) -> Bytes {
        self.cdf
            .get_or_init(|| Bytes::from(crate::cdf::render(&self.counts(), self.as_of)))
            .clone()
    }

    /// The figures of this version, structured (every listed city, in
    /// order, and the nation).
    pub fn counts(&self) -> Counts {
        let grid = &*self.grid;
        let definition = self.source.as_deref();
        let cities = self
            .items
            .iter()
            .filter_map(|(city, _)| CityId::parse(city).ok())
            .map(|city| {
                let row = grid.cities.binary_search(&city).ok();
                let parties = row.map_or_else(BTreeMap::new, |index| {
                    city_counts(&grid.parties, grid.row(index))
                });
                let reported = row
                    .and_then(|index| grid.boxes.get(index))
                    .copied()
                    .unwrap_or(0);
                let defined = definition.and_then(|d| d.city(&city));
                ScopeRow {
                    name: defined.map(|c| c.name.clone()),
                    expected: defined.map(|c| u64::from(c.expected_ballot_boxes)),
                    status: city_status(&city, reported, definition),
                    parties,
                    reported,
                    id: Some(city),
                }
            })
            .collect();
        let national: BTreeMap<PartyId, i64> = grid
            .parties
            .iter()
            .zip(&grid.national)
            .map(|(party, n)| (party.clone(), n.unwrap_or(0)))
            .collect();
        Counts {
            election: self.election.clone(),
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
                reported: grid.ballot_boxes_reported,
                expected: definition.map(Definition::expected_ballot_boxes),
                status: self.national_status,
                parties: national,
            },
            cities,
        }
    }

    /// `GET .../cities`: every city's entry, put together the first time it
    /// is asked for in this version.
    pub fn cities(&self) -> Bytes {
        self.cities
            .get_or_init(|| {
                Bytes::from(format!(
                    "{{\"election\":{},\"as_of\":{},\"cities\":[{}]{}}}",
                    self.election_json,
                    self.as_of_json,
                    join(&self.items),
                    unreadable_field(&self.unreadable)
                ))
            })
            .clone()
    }

    /// The body of one city's totals, if the city is listed (it has been
    /// counted in, or is defined): its entry with the election, the scope,
    /// `as_of` and `unreadable_counters` around it, in `CityBody`'s order.
    pub fn city(&self, city: &str) -> Option<Bytes> {
        let item = self.item(city)?;
        // An entry is a JSON object: `{` fields `}`.
        let fields = item.strip_prefix('{')?.strip_suffix('}')?;
        Some(Bytes::from(format!(
            "{{\"election\":{},\"scope\":\"city\",{fields},\"as_of\":{}{}}}",
            self.election_json,
            self.as_of_json,
            unreadable_field(&self.unreadable)
        )))
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
    pub fn snapshot_event(&self, variant: &Variant) -> Event {
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
fn join(items: &[(Arc<str>, Arc<str>)]) -> String {
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
    use election_core::{Counter, Snapshot, Totals};

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
    fn a_version_carries_its_validators() {
        let election = ElectionId::parse("2025").unwrap();
        let snapshot = Snapshot {
            totals: Totals::new(),
            parties: Default::default(),
            cities: Default::default(),
            ballot_boxes_reported: 0,
            unreadable: Vec::new(),
        };
        let as_of = DateTime::parse_from_rfc3339("2025-09-15T18:12:09.500Z")
            .unwrap()
            .with_timezone(&Utc);
        // A version is named after the millisecond its change was seen:
        // `Last-Modified` is that instant, in whole seconds.
        let rendered = Rendered::new(&election, &snapshot, None, 1_757_959_920_123, as_of);
        assert_eq!(rendered.validators.etag(), "W/\"1757959920123\"");
        assert_eq!(
            rendered.validators.last_modified(),
            "Mon, 15 Sep 2025 18:12:00 GMT"
        );
        // A version too large to name an instant falls back to when the
        // version was read.
        let rendered = Rendered::new(&election, &snapshot, None, u64::MAX, as_of);
        assert_eq!(rendered.validators.etag(), "W/\"18446744073709551615\"");
        assert_eq!(
            rendered.validators.last_modified(),
            "Mon, 15 Sep 2025 18:12:09 GMT"
        );
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
        let cities: serde_json::Value = serde_json::from_slice(&rendered.cities()).unwrap();
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
            &rendered.cities()[..],
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

    /// A grid of `(city, [votes per party a, b])` rows.
    fn grid(rows: &[(&str, [Option<i64>; 2])], boxes: u64) -> Grid {
        let parties: Vec<PartyId> = ["a", "b"]
            .iter()
            .map(|p| PartyId::parse(p).unwrap())
            .collect();
        let mut national = [0, 0];
        for (_, row) in rows {
            for (sum, n) in national.iter_mut().zip(row) {
                *sum += n.unwrap_or(0);
            }
        }
        Grid {
            parties: parties.into(),
            cities: rows
                .iter()
                .map(|(c, _)| CityId::parse(c).unwrap())
                .collect(),
            national: national.iter().map(|n| Some(*n)).collect(),
            cells: rows
                .iter()
                .flat_map(|(_, row)| row.iter().copied())
                .collect(),
            boxes: vec![boxes; rows.len()],
            ballot_boxes_reported: boxes * rows.len() as u64,
            unreadable: Vec::new(),
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_757_959_920_000 + ms).unwrap()
    }

    #[test]
    fn a_city_is_rendered_again_only_when_its_values_move() {
        let mut renderer = Renderer::new(ElectionId::parse("2025").unwrap());
        let first = renderer.render(
            grid(
                &[("leeds", [Some(1), None]), ("york", [Some(2), Some(3)])],
                1,
            ),
            1,
            at(0),
        );
        assert_eq!(renderer.last_rendered(), 2);

        // York moves; Leeds is the very same entry.
        let second = renderer.render(
            grid(
                &[("leeds", [Some(1), None]), ("york", [Some(2), Some(4)])],
                1,
            ),
            2,
            at(200),
        );
        assert_eq!(renderer.last_rendered(), 1);
        assert!(Arc::ptr_eq(&first.items[0].1, &second.items[0].1));
        assert!(!Arc::ptr_eq(&first.items[1].1, &second.items[1].1));
        let york = serde_json::from_str::<serde_json::Value>(&second.items[1].1).unwrap();
        assert_eq!(york["parties"], serde_json::json!({"a": 2, "b": 4}));
        // A counter that appears with 0 is a move too (the party is listed).
        let third = renderer.render(
            grid(
                &[("leeds", [Some(1), Some(0)]), ("york", [Some(2), Some(4)])],
                1,
            ),
            3,
            at(400),
        );
        assert_eq!(renderer.last_rendered(), 1);
        assert!(third.item("leeds").unwrap().contains("\"b\":0"));
        // Boxes moving re-render too; nothing moving renders nothing, but the
        // bodies carry the new as_of.
        renderer.render(
            grid(
                &[("leeds", [Some(1), Some(0)]), ("york", [Some(2), Some(4)])],
                2,
            ),
            4,
            at(600),
        );
        assert_eq!(renderer.last_rendered(), 2);
        let same = renderer.render(
            grid(
                &[("leeds", [Some(1), Some(0)]), ("york", [Some(2), Some(4)])],
                2,
            ),
            4,
            at(800),
        );
        assert_eq!(renderer.last_rendered(), 0);
        let body: serde_json::Value = serde_json::from_slice(&same.city("york").unwrap()).unwrap();
        assert_eq!(body["as_of"], "2025-09-15T18:12:00.800Z");
        assert_eq!(body["total_votes"], 6);
        let list: serde_json::Value = serde_json::from_slice(&same.cities()).unwrap();
        assert_eq!(list["as_of"], "2025-09-15T18:12:00.800Z");
        assert_eq!(list["cities"].as_array().unwrap().len(), 2);

        // A new city renders only itself; a city gone is gone.
        let grown = renderer.render(
            grid(
                &[("bath", [None, Some(7)]), ("york", [Some(2), Some(4)])],
                2,
            ),
            5,
            at(1000),
        );
        assert_eq!(renderer.last_rendered(), 1);
        let listed: Vec<&str> = grown.items.iter().map(|(c, _)| &**c).collect();
        assert_eq!(listed, ["bath", "york"]);
        assert!(grown.city("leeds").is_none());
    }

    #[test]
    fn new_parties_or_a_new_definition_render_every_city_again() {
        let mut renderer = Renderer::new(ElectionId::parse("2025").unwrap());
        let rows = [("leeds", [Some(1), None]), ("york", [Some(2), Some(3)])];
        renderer.render(grid(&rows, 1), 1, at(0));
        renderer.render(grid(&rows, 1), 1, at(200));
        assert_eq!(renderer.last_rendered(), 0);
        let mut wider = grid(&rows, 1);
        wider.parties = ["a", "b"]
            .iter()
            .map(|p| PartyId::parse(p).unwrap())
            .collect();
        // The same parties in a new list: nothing to render again.
        renderer.render(wider, 1, at(400));
        assert_eq!(renderer.last_rendered(), 0);
        let mut other = grid(&rows, 1);
        other.parties = ["a", "c"]
            .iter()
            .map(|p| PartyId::parse(p).unwrap())
            .collect();
        let rendered = renderer.render(other.clone(), 2, at(600));
        assert_eq!(renderer.last_rendered(), 2);
        assert!(rendered.item("york").unwrap().contains("\"c\":3"));

        renderer.set_definition(None);
        renderer.render(other, 3, at(800));
        assert_eq!(renderer.last_rendered(), 2);
    }

    #[test]
    fn certifying_a_city_renders_it_again_with_its_status() {
        let definition = Definition::from_toml(
            r##"
id = "2025"
name = "General election 2025"

[[parties]]
id = "a"
name = "A"
colour = "#e4003b"

[[parties]]
id = "b"
name = "B"
colour = "#0087dc"

[[cities]]
id = "leeds"
name = "Leeds"
expected_ballot_boxes = 1
electorate = 10

[[cities]]
id = "york"
name = "York"
expected_ballot_boxes = 2
"##,
        )
        .unwrap();
        let mut renderer = Renderer::new(ElectionId::parse("2025").unwrap());
        renderer.set_definition(Some(Arc::new(definition.clone())));
        let rows = [("leeds", [Some(4), Some(1)]), ("york", [Some(2), Some(3)])];
        let first = renderer.render(grid(&rows, 1), 1, at(0));
        let leeds: serde_json::Value =
            serde_json::from_slice(&first.city("leeds").unwrap()).unwrap();
        assert_eq!(leeds["status"], "complete");
        assert_eq!(leeds["certified"], serde_json::Value::Null);
        assert_eq!(leeds["electorate"], 10);
        assert_eq!(leeds["turnout"], 50.0);
        let national: serde_json::Value = serde_json::from_slice(&first.national).unwrap();
        assert_eq!(national["status"], "partial");
        assert_eq!(national["electorate"], serde_json::Value::Null);
        renderer.render(grid(&rows, 1), 1, at(200));
        assert_eq!(renderer.last_rendered(), 0);

        // Certifying moves the definition, not the counters: every city is
        // rendered again and Leeds says so.
        let certified = definition.with_certifications([(
            CityId::parse("leeds").unwrap(),
            election_core::Certification {
                by: "returning officer".into(),
                at: "2025-09-15T22:00:00Z".into(),
            },
        )]);
        renderer.set_definition(Some(Arc::new(certified)));
        let second = renderer.render(grid(&rows, 1), 2, at(400));
        assert_eq!(renderer.last_rendered(), 2);
        let leeds: serde_json::Value =
            serde_json::from_slice(&second.city("leeds").unwrap()).unwrap();
        assert_eq!(leeds["status"], "certified");
        assert_eq!(leeds["certified"]["by"], "returning officer");
        let list: serde_json::Value = serde_json::from_slice(&second.cities()).unwrap();
        assert_eq!(list["cities"][0]["status"], "certified");
        assert_eq!(list["cities"][1]["status"], "partial");

        // The structured figures agree with the bodies.
        let counts = second.counts();
        assert_eq!(counts.name.as_deref(), Some("General election 2025"));
        assert_eq!(counts.cities.len(), 2);
        assert_eq!(counts.cities[0].status, Status::Certified);
        assert_eq!(counts.cities[1].status, Status::Partial);
        assert_eq!(counts.cities[1].expected, Some(2));
        assert_eq!(counts.national.status, Status::Partial);
        assert_eq!(counts.national.parties.values().sum::<i64>(), 10);
    }
}
