//! The definition of an election (docs/contract.md §7): its parties with display names
//! and colours, its cities with the number of ballot boxes expected in each,
//! and optionally the registry of ballot boxes and their cities.
//!
//! A definition is written as a TOML file:
//!
//! ```toml
//! id = "2025"
//! name = "General election 2025"
//!
//! [[parties]]
//! id = "labour"
//! name = "Labour"
//! colour = "#e4003b"
//!
//! [[cities]]
//! id = "london"
//! name = "London"
//! expected_ballot_boxes = 2
//!
//! # Optional: the registry, city -> its ballot boxes.
//! [ballot_boxes]
//! london = ["BB1", "BB2"]
//!
//! # Optional: voters registered per ballot box (a city's total is its
//! # `electorate = N` key). Turnout is reported where it is known, and a
//! # report with more votes than its box's electorate is flagged.
//! [electorate]
//! BB1 = 1200
//! ```
//!
//! [`Definition::from_toml`] checks the whole file and reports **every**
//! problem with its line ([`DefinitionError`]), never only the first, and
//! never a partial definition: a file either defines the election entirely or
//! not at all. The file is walked as a spanned TOML tree rather than through
//! `#[derive(Deserialize)]`, because serde stops at the first error.
//!
//! Once defined, an election refuses reports naming a party or city it does
//! not define, and, when it has a registry, a ballot box it does not register
//! or one reported under another city than its own ([`Definition::check_report`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::Problem;
use crate::ids::{BallotBoxId, CityId, DefinitionVersion, ElectionId, PartyId};
use crate::report::Report;

/// Most ballot boxes one city may expect (docs/contract.md §1: a million in a whole
/// election).
pub const MAX_EXPECTED_BALLOT_BOXES: u32 = 1_000_000;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A colour written `#rrggbb` (lowercase once parsed).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Colour(String);

impl Colour {
    /// Validates `#rrggbb` (hex digits in either case).
    pub fn parse(value: &str) -> Result<Colour, String> {
        let bytes = value.as_bytes();
        if bytes.len() == 7 && bytes[0] == b'#' && bytes[1..].iter().all(u8::is_ascii_hexdigit) {
            Ok(Colour(value.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{} is not a colour; write it as \"#rrggbb\" (six hex digits)",
                crate::ids::describe(value)
            ))
        }
    }

    /// The colour as `#rrggbb`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A party of a defined election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyDefinition {
    /// Its id, as reports name it.
    pub id: PartyId,
    /// Its display name.
    pub name: String,
    /// Its colour on dashboards.
    pub colour: Colour,
}

/// A city of a defined election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CityDefinition {
    /// Its id, as reports name it.
    pub id: CityId,
    /// Its display name.
    pub name: String,
    /// How many ballot boxes will report from it: the denominator of its
    /// percent reporting. At least the number of boxes registered in it.
    pub expected_ballot_boxes: u32,
    /// Voters registered in the city (`electorate = N`), when known: the
    /// denominator of its turnout.
    pub electorate: Option<u32>,
}

/// Who certified a city, and when (docs/contract.md §9): its results are final from
/// then on. Kept with the definition because it changes what the election
/// accepts, as the definition does, and travels with it to every cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certification {
    /// Who certified it, as given to `election certify --by`.
    pub by: String,
    /// When, as RFC 3339 text (UTC).
    pub at: String,
}

/// What a [`DefinitionLookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// The stored definition still has the version the caller holds.
    Unchanged,
    /// The stored definition (`None`: the election is not defined) and its
    /// version.
    Current(Option<(Box<Definition>, DefinitionVersion)>),
}

/// Finds an election's stored definition (a port: PostgreSQL in the
/// services, nothing for embedders without definitions).
pub trait DefinitionLookup: Send + Sync {
    /// Looks the election up: [`Lookup::Unchanged`] when its stored version
    /// is still `known`, else the stored definition (`None`: not defined).
    fn find(
        &self,
        election: &ElectionId,
        known: Option<DefinitionVersion>,
    ) -> Result<Lookup, crate::StoreError>;
}

/// A validated election definition. Built only by [`Definition::from_toml`]
/// or [`Definition::from_parts`], which check every rule, so a value of this
/// type is always consistent (unique ids, registered boxes in defined cities,
/// no city expecting fewer boxes than it registers).
#[derive(Clone, Debug)]
pub struct Definition {
    election: ElectionId,
    name: String,
    parties: Vec<PartyDefinition>,
    cities: Vec<CityDefinition>,
    ballot_boxes: BTreeMap<BallotBoxId, CityId>,
    /// Certified cities (stored apart from the file; see [`Certification`]).
    certified: BTreeMap<CityId, Certification>,
    /// Voters registered per ballot box (`[electorate]`).
    box_electorates: BTreeMap<BallotBoxId, u32>,
    // Indexes for `check_report`, which runs for every report posted.
    party_index: HashSet<PartyId>,
    city_index: HashMap<CityId, usize>,
}

impl PartialEq for Definition {
    fn eq(&self, other: &Definition) -> bool {
        self.election == other.election
            && self.name == other.name
            && self.parties == other.parties
            && self.cities == other.cities
            && self.ballot_boxes == other.ballot_boxes
            && self.certified == other.certified
            && self.box_electorates == other.box_electorates
    }
}

impl Eq for Definition {}

/// One problem of a definition file, at a line (1-based; 0 when the
/// definition did not come from a file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineProblem {
    /// The line of the file at fault.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// Why a definition was refused: every problem found, in line order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid election definition:\n{}", join_lines(.problems))]
pub struct DefinitionError {
    problems: Vec<LineProblem>,
}

impl DefinitionError {
    /// Every problem, in line order.
    pub fn problems(&self) -> &[LineProblem] {
        &self.problems
    }
}

fn join_lines(problems: &[LineProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a definition may not replace the stored one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the definition would remove or move what election {election} already defines:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct UpdateError {
    election: ElectionId,
    problems: Vec<String>,
}

impl UpdateError {
    /// Every refused change.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// What a definition adds to the stored one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Additions {
    /// New parties.
    pub parties: usize,
    /// New cities.
    pub cities: usize,
    /// Newly registered ballot boxes.
    pub ballot_boxes: usize,
}

/// Collects problems with their lines.
struct Problems<'s> {
    source: &'s str,
    list: Vec<LineProblem>,
}

impl Problems<'_> {
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.source.len());
        self.source.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn at(&mut self, offset: usize, message: impl Into<String>) {
        let line = self.line(offset);
        self.list.push(LineProblem {
            line,
            message: message.into(),
        });
    }
}

/// Reads the keys of one table, reporting unknown keys and missing required
/// ones.
struct Fields<'a, 'i> {
    found: BTreeMap<&'a str, &'a Spanned<DeValue<'i>>>,
    start: usize,
    what: String,
}

impl<'a, 'i> Fields<'a, 'i> {
    fn new(
        table: &'a DeTable<'i>,
        start: usize,
        what: &str,
        known: &[&str],
        problems: &mut Problems<'_>,
    ) -> Self {
        let mut found = BTreeMap::new();
        for (key, value) in table.iter() {
            let key_text: &str = key.get_ref();
            if known.contains(&key_text) {
                found.insert(key_text, value);
            } else {
                problems.at(
                    key.span().start,
                    format!(
                        "unknown key {key_text:?} in {what}; expected one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        Fields {
            found,
            start,
            what: what.to_owned(),
        }
    }

    fn optional(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.found.get(key).copied()
    }

    fn required(&self, key: &str, problems: &mut Problems<'_>) -> Option<&'a Spanned<DeValue<'i>>> {
        let value = self.optional(key);
        if value.is_none() {
            problems.at(
                self.start,
                format!("{} is missing the key {key:?}", self.what),
            );
        }
        value
    }

    fn string(&self, key: &str, problems: &mut Problems<'_>) -> Option<(&'a str, usize)> {
        let value = self.required(key, problems)?;
        match value.get_ref() {
            DeValue::String(text) => Some((text.as_ref(), value.span().start)),
            other => {
                problems.at(
                    value.span().start,
                    format!(
                        "{key:?} in {} must be a string, not {}",
                        self.what,
                        other.type_str()
                    ),
                );
                None
            }
        }
    }
}

fn check_name(
    name: &str,
    offset: usize,
    what: &str,
    problems: &mut Problems<'_>,
) -> Option<String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        problems.at(offset, format!("the name of {what} is empty"));
        None
    } else if trimmed.chars().count() > MAX_NAME_CHARS {
        problems.at(
            offset,
            format!("the name of {what} is longer than {MAX_NAME_CHARS} characters"),
        );
        None
    } else if trimmed.chars().any(char::is_control) {
        problems.at(
            offset,
            format!("the name of {what} contains control characters"),
        );
        None
    } else {
        Some(trimmed.to_owned())
    }
}

/// An id with where it was written (0: not from a file).
struct At<T> {
    value: T,
    offset: usize,
}

impl Definition {
    /// Parses and validates a definition file. Every problem is reported with
    /// its line; nothing is returned unless the whole file is valid.
    pub fn from_toml(source: &str) -> Result<Definition, DefinitionError> {
        let mut problems = Problems {
            source,
            list: Vec::new(),
        };
        let (root, syntax_errors) = DeTable::parse_recoverable(source);
        for error in &syntax_errors {
            let offset = error.span().map_or(0, |span| span.start);
            problems.at(offset, error.message().trim().to_owned());
        }
        let parsed = if syntax_errors.is_empty() {
            read_document(root.get_ref(), &mut problems)
        } else {
            None
        };
        let mut list = problems.list;
        list.sort_by_key(|p| p.line);
        match parsed {
            Some(definition) if list.is_empty() => Ok(definition),
            _ => {
                if list.is_empty() {
                    // Unreachable by construction; kept so a bug cannot load
                    // a half-read file.
                    list.push(LineProblem {
                        line: 0,
                        message: "the definition could not be read".into(),
                    });
                }
                Err(DefinitionError { problems: list })
            }
        }
    }

    /// Builds a definition from typed parts (a store reading one back),
    /// checking the same consistency rules as [`Self::from_toml`].
    pub fn from_parts(
        election: ElectionId,
        name: String,
        parties: Vec<PartyDefinition>,
        cities: Vec<CityDefinition>,
        ballot_boxes: Vec<(BallotBoxId, CityId)>,
    ) -> Result<Definition, DefinitionError> {
        let mut problems = Problems {
            source: "",
            list: Vec::new(),
        };
        let definition = assemble(
            election,
            name,
            parties
                .into_iter()
                .map(|p| At {
                    value: p,
                    offset: 0,
                })
                .collect(),
            cities
                .into_iter()
                .map(|c| At {
                    value: c,
                    offset: 0,
                })
                .collect(),
            ballot_boxes
                .into_iter()
                .map(|b| At {
                    value: b,
                    offset: 0,
                })
                .collect(),
            &mut problems,
        );
        // Offsets are 0 here, so every line reads as 1; say "no line" instead.
        let list: Vec<LineProblem> = problems
            .list
            .into_iter()
            .map(|p| LineProblem {
                line: 0,
                message: p.message,
            })
            .collect();
        if list.is_empty() {
            Ok(definition)
        } else {
            Err(DefinitionError { problems: list })
        }
    }

    /// The election defined.
    pub fn election(&self) -> &ElectionId {
        &self.election
    }

    /// Its display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its parties, in the file's order.
    pub fn parties(&self) -> &[PartyDefinition] {
        &self.parties
    }

    /// Its cities, in the file's order.
    pub fn cities(&self) -> &[CityDefinition] {
        &self.cities
    }

    /// One city, if defined.
    pub fn city(&self, city: &CityId) -> Option<&CityDefinition> {
        self.city_index.get(city).map(|&i| &self.cities[i])
    }

    /// The registered ballot boxes and their cities, by box id (empty when
    /// the election has no registry).
    pub fn ballot_boxes(&self) -> &BTreeMap<BallotBoxId, CityId> {
        &self.ballot_boxes
    }

    /// The certified cities, by city.
    pub fn certifications(&self) -> &BTreeMap<CityId, Certification> {
        &self.certified
    }

    /// Whether (and by whom) `city` is certified.
    pub fn certification(&self, city: &CityId) -> Option<&Certification> {
        self.certified.get(city)
    }

    /// The definition with these certifications (a store reading them back).
    /// Certifications of cities the definition does not define are dropped:
    /// a city is never removed from a definition, so there are none.
    pub fn with_certifications(
        mut self,
        certified: impl IntoIterator<Item = (CityId, Certification)>,
    ) -> Definition {
        self.certified = certified
            .into_iter()
            .filter(|(city, _)| self.city_index.contains_key(city))
            .collect();
        self
    }

    /// Voters registered per ballot box, where the definition gives them.
    pub fn box_electorates(&self) -> &BTreeMap<BallotBoxId, u32> {
        &self.box_electorates
    }

    /// The definition with these box electorates (a store reading them back;
    /// zeros are dropped, as the file cannot give them).
    pub fn with_box_electorates(
        mut self,
        electorates: impl IntoIterator<Item = (BallotBoxId, u32)>,
    ) -> Definition {
        self.box_electorates = electorates.into_iter().filter(|(_, n)| *n > 0).collect();
        self
    }

    /// Voters registered in the whole election: the sum over cities when
    /// every city gives its electorate, else `None`.
    pub fn electorate(&self) -> Option<u64> {
        self.cities
            .iter()
            .map(|c| c.electorate.map(u64::from))
            .sum()
    }

    /// Ballot boxes expected in the whole election (the sum over cities).
    pub fn expected_ballot_boxes(&self) -> u64 {
        self.cities
            .iter()
            .map(|c| u64::from(c.expected_ballot_boxes))
            .sum()
    }

    /// Checks a report against the definition: its city and every party must
    /// be defined and, when the election registers its ballot boxes, the box
    /// must be registered, in the city reported. Every problem is listed.
    pub fn check_report(&self, report: &Report) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let election = &self.election;
        if !self.city_index.contains_key(report.city()) {
            problems.push(Problem::new(
                "city",
                format!(
                    "{:?} is not a city of election {election}",
                    report.city().as_str()
                ),
            ));
        }
        for (party, _) in report.votes().iter() {
            if !self.party_index.contains(party) {
                problems.push(Problem::new(
                    format!("votes.{party}"),
                    format!("{:?} is not a party of election {election}", party.as_str()),
                ));
            }
        }
        if !self.ballot_boxes.is_empty() {
            match self.ballot_boxes.get(report.ballot_box()) {
                None => problems.push(Problem::new(
                    "ballot_box_id",
                    format!(
                        "{:?} is not a registered ballot box of election {election}",
                        report.ballot_box().as_str()
                    ),
                )),
                Some(city) if city != report.city() => problems.push(Problem::new(
                    "city",
                    format!(
                        "ballot box {:?} is registered in city {:?}, not {:?}",
                        report.ballot_box().as_str(),
                        city.as_str(),
                        report.city().as_str()
                    ),
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Checks that this definition may replace `stored`: it may add parties,
    /// cities and ballot boxes and change names, colours and expected counts,
    /// but not remove a party, a city or a registered box, nor move a box to
    /// another city (reports may already have been counted under them).
    pub fn additions_to(&self, stored: &Definition) -> Result<Additions, UpdateError> {
        let mut problems = Vec::new();
        for party in &stored.parties {
            if !self.party_index.contains(&party.id) {
                problems.push(format!(
                    "party {:?} is defined and may not be removed",
                    party.id.as_str()
                ));
            }
        }
        for city in &stored.cities {
            if !self.city_index.contains_key(&city.id) {
                problems.push(format!(
                    "city {:?} is defined and may not be removed",
                    city.id.as_str()
                ));
            }
        }
        let mut removed_boxes = 0usize;
        for (ballot_box, city) in &stored.ballot_boxes {
            match self.ballot_boxes.get(ballot_box) {
                None => {
                    removed_boxes += 1;
                    if removed_boxes <= 20 {
                        problems.push(format!(
                            "ballot box {:?} is registered and may not be removed",
                            ballot_box.as_str()
                        ));
                    }
                }
                Some(new_city) if new_city != city => problems.push(format!(
                    "ballot box {:?} is registered in city {:?} and may not move to {:?}",
                    ballot_box.as_str(),
                    city.as_str(),
                    new_city.as_str()
                )),
                Some(_) => {}
            }
        }
        if removed_boxes > 20 {
            problems.push(format!(
                "… {} registered ballot boxes removed in all",
                removed_boxes
            ));
        }
        if !problems.is_empty() {
            return Err(UpdateError {
                election: self.election.clone(),
                problems,
            });
        }
        Ok(Additions {
            parties: self
                .parties
                .iter()
                .filter(|p| !stored.party_index.contains(&p.id))
                .count(),
            cities: self
                .cities
                .iter()
                .filter(|c| !stored.city_index.contains_key(&c.id))
                .count(),
            ballot_boxes: self
                .ballot_boxes
                .keys()
                .filter(|b| !stored.ballot_boxes.contains_key(*b))
                .count(),
        })
    }
}

const ROOT_KEYS: &[&str] = &[
    "id",
    "name",
    "parties",
    "cities",
    "ballot_boxes",
    "electorate",
];
const PARTY_KEYS: &[&str] = &["id", "name", "colour"];
const CITY_KEYS: &[&str] = &["id", "name", "expected_ballot_boxes", "electorate"];

/// Most voters one city or ballot box may register.
pub const MAX_ELECTORATE: u32 = 100_000_000;

/// An integer from 1 to `max`, or a problem naming `what`.
fn positive(
    value: &Spanned<DeValue<'_>>,
    max: u32,
    what: &str,
    problems: &mut Problems<'_>,
) -> Option<u32> {
    let number = match value.get_ref() {
        DeValue::Integer(integer) => {
            i64::from_str_radix(&integer.as_str().replace('_', ""), integer.radix()).ok()
        }
        _ => None,
    };
    match number {
        Some(n) if (1..=i64::from(max)).contains(&n) => u32::try_from(n).ok(),
        _ => {
            problems.at(
                value.span().start,
                format!("{what} must be an integer from 1 to {max}"),
            );
            None
        }
    }
}

fn read_document(root: &DeTable<'_>, problems: &mut Problems<'_>) -> Option<Definition> {
    let fields = Fields::new(root, 0, "the definition", ROOT_KEYS, problems);
    let election = fields.string("id", problems).and_then(|(text, offset)| {
        ElectionId::parse(text)
            .map_err(|p| problems.at(offset, format!("election id {}", p.message())))
            .ok()
    });
    let name = fields
        .string("name", problems)
        .and_then(|(text, offset)| check_name(text, offset, "the election", problems));
    let parties = array_of_tables(&fields, "parties", problems)
        .into_iter()
        .enumerate()
        .filter_map(|(n, (table, offset))| read_party(table, offset, n + 1, problems))
        .collect::<Vec<_>>();
    let cities = array_of_tables(&fields, "cities", problems)
        .into_iter()
        .enumerate()
        .filter_map(|(n, (table, offset))| read_city(table, offset, n + 1, problems))
        .collect::<Vec<_>>();
    let ballot_boxes = read_registry(&fields, problems);
    let box_electorates = read_box_electorates(&fields, problems);
    // The rules across entries are checked even when the election's own id
    // or name is wrong, so that one run reports every problem; the caller
    // returns nothing when any problem was found.
    let complete = election.is_some() && name.is_some();
    let election = election.unwrap_or_else(|| ElectionId::parse("unnamed").expect("valid id"));
    let definition = assemble(
        election,
        name.unwrap_or_default(),
        parties,
        cities,
        ballot_boxes,
        problems,
    );
    // A box given an electorate must be registered when there is a registry
    // (a typo would otherwise silently never flag).
    let mut electorates = BTreeMap::new();
    for At { value, offset } in box_electorates {
        let (ballot_box, n) = value;
        if !definition.ballot_boxes.is_empty() && !definition.ballot_boxes.contains_key(&ballot_box)
        {
            problems.at(
                offset,
                format!(
                    "ballot box {:?} in [electorate] is not registered in [ballot_boxes]",
                    ballot_box.as_str()
                ),
            );
            continue;
        }
        electorates.insert(ballot_box, n);
    }
    complete.then(|| definition.with_box_electorates(electorates))
}

fn array_of_tables<'a, 'i>(
    fields: &Fields<'a, 'i>,
    key: &str,
    problems: &mut Problems<'_>,
) -> Vec<(&'a DeTable<'i>, usize)> {
    let Some(value) = fields.required(key, problems) else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        problems.at(
            value.span().start,
            format!("{key:?} must be an array of tables, written [[{key}]]"),
        );
        return Vec::new();
    };
    if items.is_empty() {
        problems.at(
            value.span().start,
            format!("{key:?} is empty; define at least one"),
        );
    }
    items
        .iter()
        .filter_map(|item| match item.get_ref() {
            DeValue::Table(table) => Some((table, item.span().start)),
            other => {
                problems.at(
                    item.span().start,
                    format!("each of {key:?} must be a table, not {}", other.type_str()),
                );
                None
            }
        })
        .collect()
}

fn read_party(
    table: &DeTable<'_>,
    offset: usize,
    n: usize,
    problems: &mut Problems<'_>,
) -> Option<At<PartyDefinition>> {
    let what = format!("party #{n}");
    let fields = Fields::new(table, offset, &what, PARTY_KEYS, problems);
    let id = fields.string("id", problems).and_then(|(text, offset)| {
        PartyId::parse(text)
            .map_err(|p| problems.at(offset, format!("party id {}", p.message())))
            .ok()
            .map(|id| (id, offset))
    });
    let name = fields
        .string("name", problems)
        .and_then(|(text, offset)| check_name(text, offset, &what, problems));
    let colour = fields
        .string("colour", problems)
        .and_then(|(text, offset)| {
            Colour::parse(text)
                .map_err(|message| problems.at(offset, format!("colour of {what}: {message}")))
                .ok()
        });
    let ((id, offset), name, colour) = (id?, name?, colour?);
    Some(At {
        value: PartyDefinition { id, name, colour },
        offset,
    })
}

fn read_city(
    table: &DeTable<'_>,
    offset: usize,
    n: usize,
    problems: &mut Problems<'_>,
) -> Option<At<CityDefinition>> {
    let what = format!("city #{n}");
    let fields = Fields::new(table, offset, &what, CITY_KEYS, problems);
    let id = fields.string("id", problems).and_then(|(text, offset)| {
        CityId::parse(text)
            .map_err(|p| problems.at(offset, format!("city id {}", p.message())))
            .ok()
            .map(|id| (id, offset))
    });
    let name = fields
        .string("name", problems)
        .and_then(|(text, offset)| check_name(text, offset, &what, problems));
    let expected = fields
        .required("expected_ballot_boxes", problems)
        .and_then(|value| {
            let number = match value.get_ref() {
                DeValue::Integer(integer) => {
                    i64::from_str_radix(&integer.as_str().replace('_', ""), integer.radix()).ok()
                }
                _ => None,
            };
            match number {
                Some(n) if (1..=i64::from(MAX_EXPECTED_BALLOT_BOXES)).contains(&n) => Some(n as u32),
                _ => {
                    problems.at(
                        value.span().start,
                        format!(
                            "expected_ballot_boxes of {what} must be an integer from 1 to {MAX_EXPECTED_BALLOT_BOXES}"
                        ),
                    );
                    None
                }
            }
        });
    // A bad electorate is reported, but keeps the city (its boxes would
    // otherwise each be reported as in an undefined city).
    let electorate = fields.optional("electorate").and_then(|value| {
        positive(
            value,
            MAX_ELECTORATE,
            &format!("electorate of {what}"),
            problems,
        )
    });
    let ((id, offset), name, expected_ballot_boxes) = (id?, name?, expected?);
    Some(At {
        value: CityDefinition {
            id,
            name,
            expected_ballot_boxes,
            electorate,
        },
        offset,
    })
}

fn read_registry(
    fields: &Fields<'_, '_>,
    problems: &mut Problems<'_>,
) -> Vec<At<(BallotBoxId, CityId)>> {
    let Some(value) = fields.optional("ballot_boxes") else {
        return Vec::new();
    };
    let DeValue::Table(table) = value.get_ref() else {
        problems.at(
            value.span().start,
            "\"ballot_boxes\" must be a table of city = [ballot box ids], written [ballot_boxes]",
        );
        return Vec::new();
    };
    let mut registry = Vec::new();
    for (key, boxes) in table.iter() {
        let city = match CityId::parse(key.get_ref()) {
            Ok(city) => Some(city),
            Err(p) => {
                problems.at(
                    key.span().start,
                    format!("city id in [ballot_boxes] {}", p.message()),
                );
                None
            }
        };
        let DeValue::Array(items) = boxes.get_ref() else {
            problems.at(
                boxes.span().start,
                format!(
                    "the ballot boxes of city {:?} must be an array of ids",
                    key.get_ref()
                ),
            );
            continue;
        };
        for item in items {
            let offset = item.span().start;
            match item.get_ref() {
                DeValue::String(text) => match BallotBoxId::parse(text) {
                    Ok(ballot_box) => {
                        if let Some(city) = &city {
                            registry.push(At {
                                value: (ballot_box, city.clone()),
                                offset,
                            });
                        }
                    }
                    Err(p) => problems.at(offset, format!("ballot box id {}", p.message())),
                },
                other => problems.at(
                    offset,
                    format!("a ballot box id must be a string, not {}", other.type_str()),
                ),
            }
        }
    }
    // The table's keys come back sorted; check them in the file's order so
    // "first on line N" names the first one written.
    registry.sort_by_key(|entry| entry.offset);
    registry
}

fn read_box_electorates(
    fields: &Fields<'_, '_>,
    problems: &mut Problems<'_>,
) -> Vec<At<(BallotBoxId, u32)>> {
    let Some(value) = fields.optional("electorate") else {
        return Vec::new();
    };
    let DeValue::Table(table) = value.get_ref() else {
        problems.at(
            value.span().start,
            "\"electorate\" must be a table of ballot box = voters, written [electorate]",
        );
        return Vec::new();
    };
    let mut found = Vec::new();
    for (key, n) in table.iter() {
        let ballot_box = match BallotBoxId::parse(key.get_ref()) {
            Ok(ballot_box) => ballot_box,
            Err(p) => {
                problems.at(
                    key.span().start,
                    format!("ballot box id in [electorate] {}", p.message()),
                );
                continue;
            }
        };
        let what = format!("the electorate of ballot box {:?}", ballot_box.as_str());
        if let Some(n) = positive(n, MAX_ELECTORATE, &what, problems) {
            found.push(At {
                value: (ballot_box, n),
                offset: key.span().start,
            });
        }
    }
    found.sort_by_key(|entry| entry.offset);
    found
}

/// The rules across entries: unique ids, registered boxes in defined cities,
/// no city expecting fewer boxes than it registers.
fn assemble(
    election: ElectionId,
    name: String,
    parties: Vec<At<PartyDefinition>>,
    cities: Vec<At<CityDefinition>>,
    ballot_boxes: Vec<At<(BallotBoxId, CityId)>>,
    problems: &mut Problems<'_>,
) -> Definition {
    let (kept_parties, _) = first_of_each(
        parties,
        |party| &party.id,
        |id| format!("party {:?}", id.as_str()),
        problems,
    );
    let (kept_cities, city_seen) = first_of_each(
        cities,
        |city| &city.id,
        |id| format!("city {:?}", id.as_str()),
        problems,
    );
    let city_index: HashMap<CityId, usize> = kept_cities
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let (registry, registered_per_city) = register(ballot_boxes, &city_index, problems);
    for city in &kept_cities {
        if let Some(&(registered, offset)) = registered_per_city.get(&city.id)
            && registered > city.expected_ballot_boxes
        {
            let line = city_seen.get(&city.id).copied().unwrap_or(offset);
            problems.at(
                line,
                format!(
                    "city {:?} expects {} ballot boxes but registers {registered}; expected_ballot_boxes must be at least the number registered",
                    city.id.as_str(),
                    city.expected_ballot_boxes
                ),
            );
        }
    }
    Definition {
        election,
        name,
        party_index: kept_parties.iter().map(|p| p.id.clone()).collect(),
        parties: kept_parties,
        cities: kept_cities,
        city_index,
        ballot_boxes: registry,
        certified: BTreeMap::new(),
        box_electorates: BTreeMap::new(),
    }
}

/// The entries whose id was not defined by an earlier one, in order, and
/// where each kept id was defined; a repeat is a problem naming the first
/// definition's line (`what` names the id: `party "x"`).
fn first_of_each<T, K: Clone + Eq + std::hash::Hash>(
    entries: Vec<At<T>>,
    id: impl Fn(&T) -> &K,
    what: impl Fn(&K) -> String,
    problems: &mut Problems<'_>,
) -> (Vec<T>, HashMap<K, usize>) {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut kept = Vec::with_capacity(entries.len());
    for entry in entries {
        if let Some(&first) = seen.get(id(&entry.value)) {
            let first_line = problems.line(first);
            problems.at(
                entry.offset,
                format!(
                    "{} is defined twice (first on line {first_line})",
                    what(id(&entry.value))
                ),
            );
        } else {
            seen.insert(id(&entry.value).clone(), entry.offset);
            kept.push(entry.value);
        }
    }
    (kept, seen)
}

/// The registry of ballot boxes in defined cities, each box once, and per
/// city how many it registers (with where its first box is); a box in an
/// undefined city (reported once per city) or registered twice is a
/// problem.
fn register(
    ballot_boxes: Vec<At<(BallotBoxId, CityId)>>,
    city_index: &HashMap<CityId, usize>,
    problems: &mut Problems<'_>,
) -> (BTreeMap<BallotBoxId, CityId>, HashMap<CityId, (u32, usize)>) {
    let mut registry: BTreeMap<BallotBoxId, CityId> = BTreeMap::new();
    let mut box_seen: HashMap<BallotBoxId, usize> = HashMap::new();
    let mut registered_per_city: HashMap<CityId, (u32, usize)> = HashMap::new();
    let mut undefined_cities: HashSet<CityId> = HashSet::new();
    for entry in ballot_boxes {
        let (ballot_box, city) = entry.value;
        if !city_index.contains_key(&city) {
            if undefined_cities.insert(city.clone()) {
                problems.at(
                    entry.offset,
                    format!(
                        "ballot box {:?} is registered in city {:?}, which is not defined in [[cities]]",
                        ballot_box.as_str(),
                        city.as_str()
                    ),
                );
            }
            continue;
        }
        if let Some(&first) = box_seen.get(&ballot_box) {
            let first_line = problems.line(first);
            problems.at(
                entry.offset,
                format!(
                    "ballot box {:?} is registered twice (first on line {first_line})",
                    ballot_box.as_str()
                ),
            );
            continue;
        }
        box_seen.insert(ballot_box.clone(), entry.offset);
        let count = registered_per_city
            .entry(city.clone())
            .or_insert((0, entry.offset));
        count.0 += 1;
        registry.insert(ballot_box, city);
    }
    (registry, registered_per_city)
}

#[cfg(test)]
mod tests;
