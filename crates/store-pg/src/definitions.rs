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
//! Each statement binds arrays (`unnest`), so its bind count does not grow
//! with the number of cities or boxes.
//!
//! Services keep definitions cached and look again every few seconds. A
//! registry of a million ballot boxes is a large read, so they ask with
//! [`find_if_changed`], which compares the stored [`DefinitionVersion`] (the
//! definition's `loaded_at` in microseconds, moved by every [`load`]) with
//! the one they hold and reads the rest only when it differs. A stale copy is
//! harmless: the log records a report only if it was checked against the
//! stored version (the `definitions` step of `crate::record`), and [`load`]
//! holds the lock that step waits for until it commits.

use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Text};
use election_core::{
    Additions, BallotBoxId, Certification, CityDefinition, CityId, Colour, Definition,
    DefinitionVersion, ElectionId, PartyDefinition, PartyId, UpdateError,
};

use crate::error::PgError;
use crate::pool::PgPool;

/// The core's names under the ones callers of [`find_if_changed`] used.
pub use election_core::{DefinitionVersion as Version, Lookup};

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

#[derive(QueryableByName)]
struct HeaderRow {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The key of an election's definition lock is `hashtext(LOCK_PREFIX ||
/// election)`: [`load`] takes it exclusively, every recording transaction
/// shared (`crate::record`).
pub(crate) const LOCK_PREFIX: &str = "election-definition:";

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version: i64,
}

#[derive(QueryableByName)]
struct PartyRow {
    #[diesel(sql_type = Text)]
    party: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    colour: String,
}

#[derive(QueryableByName)]
struct CityRow {
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Int4)]
    expected_ballot_boxes: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<Int4>)]
    electorate: Option<i32>,
}

#[derive(QueryableByName)]
struct ElectorateRow {
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Int4)]
    electorate: i32,
}

#[derive(QueryableByName)]
struct BoxRow {
    #[diesel(sql_type = Text)]
    ballot_box_id: String,
    #[diesel(sql_type = Text)]
    city: String,
}

#[derive(QueryableByName)]
struct CertifiedRow {
    #[diesel(sql_type = Text)]
    city: String,
    #[diesel(sql_type = Text)]
    certified_by: String,
    #[diesel(sql_type = Text)]
    certified_at: String,
}

/// The certifications of an election, with their time as RFC 3339 text in
/// UTC (milliseconds).
const READ_CERTIFIED: &str = "\
SELECT city, certified_by,
       to_char(certified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS certified_at
FROM certified_cities WHERE election_id = $1 ORDER BY city";

#[derive(QueryableByName)]
struct ElectionRow {
    #[diesel(sql_type = Text)]
    election_id: String,
}

fn query(doing: &str) -> impl Fn(diesel::result::Error) -> PgError + '_ {
    move |source| PgError::Query {
        doing: doing.to_owned(),
        source,
    }
}

fn connection(
    pool: &PgPool,
    doing: &str,
) -> Result<r2d2::PooledConnection<diesel::r2d2::ConnectionManager<PgConnection>>, PgError> {
    pool.get().map_err(|source| PgError::Pool {
        doing: doing.to_owned(),
        source,
    })
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
    let header: Option<HeaderRow> =
        diesel::sql_query("SELECT name FROM election_definitions WHERE election_id = $1")
            .bind::<Text, _>(election.as_str())
            .get_result(conn)
            .optional()
            .map_err(query(doing))?;
    let Some(header) = header else {
        return Ok(None);
    };
    let parties: Vec<PartyRow> = diesel::sql_query(
        "SELECT party, name, colour FROM election_parties WHERE election_id = $1 ORDER BY position, party",
    )
    .bind::<Text, _>(election.as_str())
    .load(conn)
    .map_err(query(doing))?;
    let cities: Vec<CityRow> = diesel::sql_query(
        "SELECT city, name, expected_ballot_boxes, electorate FROM election_cities WHERE election_id = $1 ORDER BY position, city",
    )
    .bind::<Text, _>(election.as_str())
    .load(conn)
    .map_err(query(doing))?;
    let boxes: Vec<BoxRow> = diesel::sql_query(
        "SELECT ballot_box_id, city FROM election_ballot_boxes WHERE election_id = $1",
    )
    .bind::<Text, _>(election.as_str())
    .load(conn)
    .map_err(query(doing))?;
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
    let electorates: Vec<ElectorateRow> = diesel::sql_query(
        "SELECT ballot_box_id, electorate FROM election_box_electorates WHERE election_id = $1",
    )
    .bind::<Text, _>(election.as_str())
    .load(conn)
    .map_err(query(doing))?;
    let electorates = electorates
        .into_iter()
        .map(|row| {
            Ok((
                BallotBoxId::parse(&row.ballot_box_id).map_err(|p| corrupt(doing, p))?,
                u32::try_from(row.electorate).map_err(|e| corrupt(doing, e))?,
            ))
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    Definition::from_parts(election.clone(), header.name, parties, cities, boxes)
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
    let rows: Vec<CertifiedRow> = diesel::sql_query(READ_CERTIFIED)
        .bind::<Text, _>(election.as_str())
        .load(conn)
        .map_err(query(doing))?;
    rows.into_iter()
        .map(|row| {
            Ok((
                CityId::parse(&row.city).map_err(|p| corrupt(doing, p))?,
                Certification {
                    by: row.certified_by,
                    at: row.certified_at,
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
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1 || $2))")
            .bind::<Text, _>(LOCK_PREFIX)
            .bind::<Text, _>(election.as_str())
            .execute(conn)
            .map_err(query(doing))?;
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
            diesel::sql_query(
                "INSERT INTO certified_cities (election_id, city, certified_by) \
                 SELECT $1, c, $3 FROM unnest($2::text[]) AS c ON CONFLICT DO NOTHING",
            )
            .bind::<Text, _>(election.as_str())
            .bind::<Array<Text>, _>(fresh.iter().map(|c| c.as_str()).collect::<Vec<_>>())
            .bind::<Text, _>(by)
            .execute(conn)
            .map_err(query(doing))?;
            // A new version, strictly later than the stored one.
            diesel::sql_query(
                "UPDATE election_definitions \
                 SET loaded_at = greatest(clock_timestamp(), loaded_at + interval '1 microsecond') \
                 WHERE election_id = $1",
            )
            .bind::<Text, _>(election.as_str())
            .execute(conn)
            .map_err(query(doing))?;
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
                let version: Option<VersionRow> = diesel::sql_query(
                    "SELECT (extract(epoch FROM loaded_at) * 1000000)::bigint AS version \
                 FROM election_definitions WHERE election_id = $1",
                )
                .bind::<Text, _>(election.as_str())
                .get_result(conn)
                .optional()
                .map_err(query(doing))?;
                let version = version.map(|row| DefinitionVersion(row.version));
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
    let rows: Vec<ElectionRow> =
        diesel::sql_query("SELECT election_id FROM election_definitions ORDER BY election_id")
            .load(&mut conn)
            .map_err(query(doing))?;
    rows.into_iter()
        .map(|row| ElectionId::parse(&row.election_id).map_err(|p| corrupt(doing, p)))
        .collect()
}

/// Stores `definition`, or grows the stored one to it, in one transaction;
/// see the module docs for what an update may change.
pub fn load(pool: &PgPool, definition: &Definition) -> Result<Loaded, LoadError> {
    let doing = "storing an election definition";
    let mut conn = connection(pool, doing)?;
    let election = definition.election().as_str();
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1 || $2))")
            .bind::<Text, _>(LOCK_PREFIX)
            .bind::<Text, _>(election)
            .execute(conn)
            .map_err(query(doing))?;
        let loaded = match read(conn, definition.election(), doing)? {
            None => Loaded::Created,
            Some(stored) => Loaded::Updated(definition.additions_to(&stored)?),
        };
        diesel::sql_query(
            "INSERT INTO election_definitions (election_id, name) VALUES ($1, $2) \
             ON CONFLICT (election_id) DO UPDATE SET name = EXCLUDED.name, loaded_at = now()",
        )
        .bind::<Text, _>(election)
        .bind::<Text, _>(definition.name())
        .execute(conn)
        .map_err(query(doing))?;
        let parties = definition.parties();
        diesel::sql_query(
            "INSERT INTO election_parties (election_id, party, name, colour, position) \
             SELECT $1, p.party, p.name, p.colour, p.position \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::int4[]) AS p(party, name, colour, position) \
             ON CONFLICT (election_id, party) DO UPDATE \
             SET name = EXCLUDED.name, colour = EXCLUDED.colour, position = EXCLUDED.position",
        )
        .bind::<Text, _>(election)
        .bind::<Array<Text>, _>(parties.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(parties.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(parties.iter().map(|p| p.colour.as_str()).collect::<Vec<_>>())
        .bind::<Array<Int4>, _>((0..parties.len() as i32).collect::<Vec<_>>())
        .execute(conn)
        .map_err(query(doing))?;
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
        .map_err(query(doing))?;
        // Box electorates are the file's: replaced whole.
        diesel::sql_query("DELETE FROM election_box_electorates WHERE election_id = $1")
            .bind::<Text, _>(election)
            .execute(conn)
            .map_err(query(doing))?;
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
        .map_err(query(doing))?;
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
        .map_err(query(doing))?;
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
