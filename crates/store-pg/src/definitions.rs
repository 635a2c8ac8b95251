//! Election definitions (docs/contract.md §7) in `election_definitions`,
//! `election_parties`, `election_cities` and `election_ballot_boxes`.
//!
//! [`load`] stores a validated `Definition` in **one transaction**, under a
//! transaction-scoped advisory lock per election so two loads of one election
//! are decided one after the other. A definition only grows: loading a file
//! that drops a party, a city or a registered box, or moves a box to another
//! city, is refused as a whole (`Definition::additions_to` decides), because
//! reports may already be counted under them. Names, colours and expected
//! counts may change. The report log is never touched.
//!
//! Reads, certification and the small writes go through diesel's DSL
//! against `crate::schema`. Three statements stay raw SQL, each with typed
//! binds: the advisory lock (`pg_advisory_xact_lock` returns `void`, which
//! diesel's DSL has no type for), and the inserts of cities, box electorates
//! and registered boxes, which bind whole columns as arrays (`unnest`) so
//! their bind count does not grow with the file: a registry of a million
//! boxes would need three million binds as a DSL multi-row insert, far over
//! PostgreSQL's 65,535.
//!
//! Services keep definitions cached and look again every few seconds. A
//! registry of a million ballot boxes is a large read, so they ask with
//! [`find_if_changed`], which compares the stored [`DefinitionVersion`] (the
//! definition's `loaded_at` in microseconds, moved by every [`load`]) with
//! the one they hold and reads the rest only when it differs. A stale copy is
//! harmless: the log records a report only if it was checked against the
//! stored version (the `definitions` step of `crate::record`), and [`load`]
//! holds the lock that step waits for until it commits.

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::dsl::IntervalDsl;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Text, Timestamptz};
use diesel::upsert::excluded;
use election_core::{
    Additions, BallotBoxId, Certification, CityDefinition, CityId, Colour, Definition,
    DefinitionVersion, ElectionId, Lookup, PartyDefinition, PartyId, UpdateError,
};

use crate::error::{PgError, connection, query_error};
use crate::pool::PgPool;
use crate::schema::{
    certified_cities, election_ballot_boxes, election_box_electorates, election_cities,
    election_definitions, election_parties,
};

/// Why a definition was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// It would remove or move what the stored definition has.
    #[error(transparent)]
    Refused(#[from] UpdateError),
    /// PostgreSQL failed; nothing was stored.
    #[error(transparent)]
    Store(#[from] PgError),
}

/// What [`load`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// The election was not defined before.
    Created,
    /// It was, and this much was added (names, colours and expected counts
    /// are updated too).
    Updated(Additions),
}

/// The key of an election's definition lock is `hashtext(LOCK_PREFIX ||
/// election)`: [`load`] and [`certify`] take it exclusively, every recording
/// transaction shared (`crate::record`).
pub(crate) const LOCK_PREFIX: &str = "election-definition:";

#[derive(Queryable, Selectable)]
#[diesel(table_name = election_parties, check_for_backend(Pg))]
struct PartyRow {
    party: String,
    name: String,
    colour: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = election_cities, check_for_backend(Pg))]
struct CityRow {
    city: String,
    name: String,
    expected_ballot_boxes: i32,
    electorate: Option<i32>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = election_box_electorates, check_for_backend(Pg))]
struct ElectorateRow {
    ballot_box_id: String,
    electorate: i32,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = election_ballot_boxes, check_for_backend(Pg))]
struct BoxRow {
    ballot_box_id: String,
    city: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = certified_cities, check_for_backend(Pg))]
struct CertifiedRow {
    city: String,
    certified_by: String,
    certified_at: DateTime<Utc>,
}

diesel::define_sql_function! {
    /// PostgreSQL's `clock_timestamp()`: the time now, not the transaction's
    /// start.
    fn clock_timestamp() -> Timestamptz;
}

diesel::define_sql_function! {
    /// PostgreSQL's `greatest(a, b)` of two times.
    fn greatest(a: Timestamptz, b: Timestamptz) -> Timestamptz;
}

/// The version of a definition stored at `loaded_at`: its microseconds
/// since the epoch, as `crate::record` computes it in SQL.
fn version_of(loaded_at: DateTime<Utc>) -> DefinitionVersion {
    DefinitionVersion(loaded_at.timestamp_micros())
}

/// Takes `election`'s definition lock exclusively until the transaction
/// ends (raw SQL: the function returns `void`).
fn lock_definition(conn: &mut PgConnection, election: &str, doing: &str) -> Result<(), PgError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1 || $2))")
        .bind::<Text, _>(LOCK_PREFIX)
        .bind::<Text, _>(election)
        .execute(conn)
        .map_err(query_error(doing))?;
    Ok(())
}

fn corrupt(doing: &str, detail: impl std::fmt::Display) -> PgError {
    PgError::Corrupt {
        doing: doing.to_owned(),
        detail: detail.to_string(),
    }
}

fn read(
    conn: &mut PgConnection,
    election: &ElectionId,
    doing: &str,
) -> Result<Option<Definition>, PgError> {
    let name: Option<String> = election_definitions::table
        .find(election.as_str())
        .select(election_definitions::name)
        .get_result(conn)
        .optional()
        .map_err(query_error(doing))?;
    let Some(name) = name else {
        return Ok(None);
    };
    let parties: Vec<PartyRow> = election_parties::table
        .filter(election_parties::election_id.eq(election.as_str()))
        .order((election_parties::position, election_parties::party))
        .select(PartyRow::as_select())
        .load(conn)
        .map_err(query_error(doing))?;
    let cities: Vec<CityRow> = election_cities::table
        .filter(election_cities::election_id.eq(election.as_str()))
        .order((election_cities::position, election_cities::city))
        .select(CityRow::as_select())
        .load(conn)
        .map_err(query_error(doing))?;
    let boxes: Vec<BoxRow> = election_ballot_boxes::table
        .filter(election_ballot_boxes::election_id.eq(election.as_str()))
        .select(BoxRow::as_select())
        .load(conn)
        .map_err(query_error(doing))?;
    let parties = parties
        .into_iter()
        .map(|row| {
            Ok(PartyDefinition {
                id: PartyId::parse(&row.party).map_err(|p| corrupt(doing, p))?,
                name: row.name,
                colour: Colour::parse(&row.colour).map_err(|m| corrupt(doing, m))?,
            })
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    let cities = cities
        .into_iter()
        .map(|row| {
            Ok(CityDefinition {
                id: CityId::parse(&row.city).map_err(|p| corrupt(doing, p))?,
                name: row.name,
                expected_ballot_boxes: u32::try_from(row.expected_ballot_boxes)
                    .map_err(|e| corrupt(doing, e))?,
                electorate: row
                    .electorate
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|e| corrupt(doing, e))?,
            })
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    let boxes = boxes
        .into_iter()
        .map(|row| {
            Ok((
                BallotBoxId::parse(&row.ballot_box_id).map_err(|p| corrupt(doing, p))?,
                CityId::parse(&row.city).map_err(|p| corrupt(doing, p))?,
            ))
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    let certified = read_certified(conn, election, doing)?;
    let electorates: Vec<ElectorateRow> = election_box_electorates::table
        .filter(election_box_electorates::election_id.eq(election.as_str()))
        .select(ElectorateRow::as_select())
        .load(conn)
        .map_err(query_error(doing))?;
    let electorates = electorates
        .into_iter()
        .map(|row| {
            Ok((
                BallotBoxId::parse(&row.ballot_box_id).map_err(|p| corrupt(doing, p))?,
                u32::try_from(row.electorate).map_err(|e| corrupt(doing, e))?,
            ))
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    Definition::from_parts(election.clone(), name, parties, cities, boxes)
        .map(|definition| {
            Some(
                definition
                    .with_certifications(certified)
                    .with_box_electorates(electorates),
            )
        })
        .map_err(|e| corrupt(doing, e))
}

fn read_certified(
    conn: &mut PgConnection,
    election: &ElectionId,
    doing: &str,
) -> Result<Vec<(CityId, Certification)>, PgError> {
    let rows: Vec<CertifiedRow> = certified_cities::table
        .filter(certified_cities::election_id.eq(election.as_str()))
        .order(certified_cities::city)
        .select(CertifiedRow::as_select())
        .load(conn)
        .map_err(query_error(doing))?;
    rows.into_iter()
        .map(|row| {
            Ok((
                CityId::parse(&row.city).map_err(|p| corrupt(doing, p))?,
                Certification {
                    by: row.certified_by,
                    // RFC 3339 in UTC, to the millisecond.
                    at: row
                        .certified_at
                        .to_rfc3339_opts(SecondsFormat::Millis, true),
                },
            ))
        })
        .collect()
}

/// Why cities were not certified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertifyError {
    /// Only a defined election's cities can be certified: "complete" and
    /// "every city" need the definition.
    #[error("election {0} is not defined; load its definition (`election load`) before certifying")]
    NotDefined(ElectionId),
    /// A city the definition does not define.
    #[error("{0:?} is not a city of election {1}")]
    UnknownCity(String, ElectionId),
    /// PostgreSQL failed; nothing was certified.
    #[error(transparent)]
    Store(#[from] PgError),
}

/// What [`certify`] did, city by city.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certified {
    /// Cities certified now.
    pub now: Vec<(CityId, Certification)>,
    /// Cities that were certified already (the first certification stands).
    pub before: Vec<(CityId, Certification)>,
}

/// Certifies `cities` of `election` (`None`: every defined city) as `by`.
///
/// Runs under the election's definition lock held exclusively, as [`load`]
/// does, so a recording transaction (which holds it shared and reads the
/// certified cities after taking it) either committed before the
/// certification or sees it, and refuses the city's reports. It also moves
/// the definition's version, so every cached copy (ingest's checks, the
/// query service's statuses) reads the certification within its refresh
/// interval.
pub fn certify(
    pool: &PgPool,
    election: &ElectionId,
    cities: Option<&[CityId]>,
    by: &str,
) -> Result<Certified, CertifyError> {
    let doing = "certifying cities";
    let mut conn = connection(pool, doing)?;
    conn.transaction(|conn| {
        lock_definition(conn, election.as_str(), doing)?;
        let Some(definition) = read(conn, election, doing)? else {
            return Err(CertifyError::NotDefined(election.clone()));
        };
        let wanted: Vec<CityId> = match cities {
            None => definition.cities().iter().map(|c| c.id.clone()).collect(),
            Some(cities) => {
                if let Some(unknown) = cities.iter().find(|c| definition.city(c).is_none()) {
                    return Err(CertifyError::UnknownCity(
                        unknown.as_str().to_owned(),
                        election.clone(),
                    ));
                }
                cities.to_vec()
            }
        };
        let fresh: Vec<&CityId> = wanted
            .iter()
            .filter(|c| definition.certification(c).is_none())
            .collect();
        if !fresh.is_empty() {
            diesel::insert_into(certified_cities::table)
                .values(
                    fresh
                        .iter()
                        .map(|city| {
                            (
                                certified_cities::election_id.eq(election.as_str()),
                                certified_cities::city.eq(city.as_str()),
                                certified_cities::certified_by.eq(by),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
                .on_conflict_do_nothing()
                .execute(conn)
                .map_err(query_error(doing))?;
            // A new version, strictly later than the stored one.
            diesel::update(election_definitions::table.find(election.as_str()))
                .set(election_definitions::loaded_at.eq(greatest(
                    clock_timestamp(),
                    election_definitions::loaded_at + 1.microseconds(),
                )))
                .execute(conn)
                .map_err(query_error(doing))?;
        }
        let now: std::collections::BTreeMap<CityId, Certification> =
            read_certified(conn, election, doing)?.into_iter().collect();
        let mut certified = Certified {
            now: Vec::new(),
            before: Vec::new(),
        };
        for city in wanted {
            if let Some(earlier) = definition.certification(&city) {
                certified.before.push((city.clone(), earlier.clone()));
            } else if let Some(made) = now.get(&city) {
                certified.now.push((city.clone(), made.clone()));
            }
        }
        Ok(certified)
    })
}

impl From<diesel::result::Error> for CertifyError {
    fn from(source: diesel::result::Error) -> Self {
        CertifyError::Store(PgError::Query {
            doing: "certifying cities".into(),
            source,
        })
    }
}

/// The stored definition of `election`, if it is defined.
pub fn find(pool: &PgPool, election: &ElectionId) -> Result<Option<Definition>, PgError> {
    let doing = "reading an election definition";
    let mut conn = connection(pool, doing)?;
    // One snapshot for the four reads, so a concurrent load is seen whole
    // or not at all.
    let result: Result<_, LoadError> = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run(|conn| Ok(read(conn, election, doing)?));
    result.map_err(|error| match error {
        LoadError::Store(error) => error,
        LoadError::Refused(refused) => corrupt(doing, refused),
    })
}

/// Like [`find`], but reads the definition only when its version differs
/// from `known`, the one the caller holds (`None`: it holds none).
pub fn find_if_changed(
    pool: &PgPool,
    election: &ElectionId,
    known: Option<DefinitionVersion>,
) -> Result<Lookup, PgError> {
    let doing = "reading an election definition";
    let mut conn = connection(pool, doing)?;
    // One snapshot: the version read is the version of what is read after it.
    let result: Result<_, LoadError> =
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run(|conn| {
                let version = election_definitions::table
                    .find(election.as_str())
                    .select(election_definitions::loaded_at)
                    .get_result(conn)
                    .optional()
                    .map_err(query_error(doing))?
                    .map(version_of);
                if version.is_some() && version == known {
                    return Ok(Lookup::Unchanged);
                }
                let Some(version) = version else {
                    return Ok(Lookup::Current(None));
                };
                Ok(Lookup::Current(
                    read(conn, election, doing)?.map(|definition| (Box::new(definition), version)),
                ))
            });
    result.map_err(|error| match error {
        LoadError::Store(error) => error,
        LoadError::Refused(refused) => corrupt(doing, refused),
    })
}

/// Every defined election, in id order.
pub fn defined_elections(pool: &PgPool) -> Result<Vec<ElectionId>, PgError> {
    let doing = "listing election definitions";
    let mut conn = connection(pool, doing)?;
    let rows: Vec<String> = election_definitions::table
        .select(election_definitions::election_id)
        .order(election_definitions::election_id)
        .load(&mut conn)
        .map_err(query_error(doing))?;
    rows.into_iter()
        .map(|election| ElectionId::parse(&election).map_err(|p| corrupt(doing, p)))
        .collect()
}

/// Stores `definition`, or grows the stored one to it, in one transaction;
/// see the module docs for what an update may change.
pub fn load(pool: &PgPool, definition: &Definition) -> Result<Loaded, LoadError> {
    let doing = "storing an election definition";
    let mut conn = connection(pool, doing)?;
    let election = definition.election().as_str();
    conn.transaction(|conn| {
        lock_definition(conn, election, doing)?;
        let loaded = match read(conn, definition.election(), doing)? {
            None => Loaded::Created,
            Some(stored) => Loaded::Updated(definition.additions_to(&stored)?),
        };
        diesel::insert_into(election_definitions::table)
            .values((
                election_definitions::election_id.eq(election),
                election_definitions::name.eq(definition.name()),
            ))
            .on_conflict(election_definitions::election_id)
            .do_update()
            .set((
                election_definitions::name.eq(excluded(election_definitions::name)),
                election_definitions::loaded_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .map_err(query_error(doing))?;
        // A few parties per election: one row each.
        let parties = definition.parties();
        diesel::insert_into(election_parties::table)
            .values(
                parties
                    .iter()
                    .zip(0..)
                    .map(|(party, position): (_, i32)| {
                        (
                            election_parties::election_id.eq(election),
                            election_parties::party.eq(party.id.as_str()),
                            election_parties::name.eq(party.name.as_str()),
                            election_parties::colour.eq(party.colour.as_str()),
                            election_parties::position.eq(position),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .on_conflict((election_parties::election_id, election_parties::party))
            .do_update()
            .set((
                election_parties::name.eq(excluded(election_parties::name)),
                election_parties::colour.eq(excluded(election_parties::colour)),
                election_parties::position.eq(excluded(election_parties::position)),
            ))
            .execute(conn)
            .map_err(query_error(doing))?;
        let cities = definition.cities();
        diesel::sql_query(
            "INSERT INTO election_cities (election_id, city, name, expected_ballot_boxes, position, electorate) \
             SELECT $1, c.city, c.name, c.expected, c.position, c.electorate \
             FROM unnest($2::text[], $3::text[], $4::int4[], $5::int4[], $6::int4[]) \
                  AS c(city, name, expected, position, electorate) \
             ON CONFLICT (election_id, city) DO UPDATE \
             SET name = EXCLUDED.name, expected_ballot_boxes = EXCLUDED.expected_ballot_boxes, \
                 position = EXCLUDED.position, electorate = EXCLUDED.electorate",
        )
        .bind::<Text, _>(election)
        .bind::<Array<Text>, _>(cities.iter().map(|c| c.id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(cities.iter().map(|c| c.name.as_str()).collect::<Vec<_>>())
        .bind::<Array<Int4>, _>(
            cities
                .iter()
                .map(|c| c.expected_ballot_boxes as i32)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Int4>, _>((0..cities.len() as i32).collect::<Vec<_>>())
        .bind::<Array<diesel::sql_types::Nullable<Int4>>, _>(
            cities
                .iter()
                .map(|c| c.electorate.and_then(|n| i32::try_from(n).ok()))
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .map_err(query_error(doing))?;
        // Box electorates are the file's: replaced whole.
        diesel::delete(
            election_box_electorates::table
                .filter(election_box_electorates::election_id.eq(election)),
        )
        .execute(conn)
        .map_err(query_error(doing))?;
        let electorates = definition.box_electorates();
        diesel::sql_query(
            "INSERT INTO election_box_electorates (election_id, ballot_box_id, electorate) \
             SELECT $1, e.b, e.n FROM unnest($2::text[], $3::int4[]) AS e(b, n)",
        )
        .bind::<Text, _>(election)
        .bind::<Array<Text>, _>(electorates.keys().map(BallotBoxId::as_str).collect::<Vec<_>>())
        .bind::<Array<Int4>, _>(
            electorates
                .values()
                .map(|n| i32::try_from(*n).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .map_err(query_error(doing))?;
        // Boxes never move (checked above), so existing rows stay as they are.
        let boxes = definition.ballot_boxes();
        diesel::sql_query(
            "INSERT INTO election_ballot_boxes (election_id, ballot_box_id, city) \
             SELECT $1, b.id, b.city FROM unnest($2::text[], $3::text[]) AS b(id, city) \
             ON CONFLICT (election_id, ballot_box_id) DO NOTHING",
        )
        .bind::<Text, _>(election)
        .bind::<Array<Text>, _>(boxes.keys().map(BallotBoxId::as_str).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(boxes.values().map(CityId::as_str).collect::<Vec<_>>())
        .execute(conn)
        .map_err(query_error(doing))?;
        Ok(loaded)
    })
}

impl From<diesel::result::Error> for LoadError {
    fn from(source: diesel::result::Error) -> Self {
        LoadError::Store(PgError::Query {
            doing: "storing an election definition".into(),
            source,
        })
    }
}
