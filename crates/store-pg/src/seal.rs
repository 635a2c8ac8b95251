//! The sealed log: a hash chain over every recorded revision of an election,
//! checkpointed in `seals` a few seconds after the reports are recorded, so
//! that a row changed, removed or slipped in later by hand is detectable
//! (docs/audit.md).
//!
//! `reports` proves the counters (`reconcile`), but nothing proved
//! `reports` itself: anyone with write access to PostgreSQL could change a
//! vote and leave no trace. Here each report's stored row is put in a
//! [canonical] byte form, hashed into a *leaf*, and chained per election in
//! report-id order:
//!
//! ```text
//! head_0 = 32 zero bytes
//! head_n = SHA-256(head_{n-1} || leaf_n),  leaf_n = SHA-256(canonical(report_n))
//! ```
//!
//! The heads are published (`GET /v1/elections/{e}/audit`); whoever noted
//! one can later recompute it from the rows (`election-reprocessor verify`,
//! or `scripts/verify_audit.py` from `reports.csv` alone) and show that
//! nothing under it changed.
//!
//! # Why a sealer, and not the recording transaction
//!
//! A chain is a sequence: computing head_n inside the transaction that
//! records report n would make every recording transaction of an election
//! wait for the previous one, serialising ingest. So [`Sealer`] works
//! afterwards, from committed rows, in `election-reprocessor run`, and
//! ingest does not know it exists.
//!
//! # The horizon: never seal past a report still being recorded
//!
//! Report ids come from a sequence inside the recording transaction, so a
//! transaction holding id 41 can commit after one holding id 42. Sealing 42
//! before 41 is visible would leave 41 out of the chain for ever (and
//! `verify` would later call it inserted). Reports older than a few seconds
//! would usually be safe, but "usually" is a guess about transaction
//! lengths; instead the sealer proves the horizon:
//!
//! 1. it reads the sequence's last value `L` (every id up to `L` has been
//!    handed out), then the virtual transaction ids holding each election's
//!    definition lock. Every recording transaction takes that lock (shared)
//!    in its `BEGIN` message, before it draws ids, and keeps it until it
//!    ends (`crate::record`). So a transaction holding an id `<= L` of
//!    election E has either ended by then or is among E's holders;
//! 2. a round later, when none of those holders still holds E's lock (a
//!    virtual transaction id is never reused), every id `<= L` of E is
//!    committed (PostgreSQL makes a commit visible before it releases the
//!    locks) or never will be, and the sealer seals E's reports up to `L`.
//!
//! It never waits on a lock and never blocks ingest; a report is sealed
//! within two intervals plus one recording transaction (2 s and a few
//! milliseconds with the default 1 s). `pg_locks` is readable by every role.
//! A hash collision between two elections' lock keys only makes the sealer
//! wait for more transactions.
//!
//! Several reprocessors may run: each seals an election under a transaction
//! advisory lock of its own (`pg_try_advisory_xact_lock`, skipped when
//! taken), reading the last checkpoint inside it, so the chain has one
//! writer at a time.
//!
//! # SQL
//!
//! Checkpoints are read and written through diesel's DSL (`crate::schema`'s
//! `seals`). Raw SQL, with typed binds and rows loaded by name, remains
//! where the DSL cannot say it: the report rows with their payload's
//! stored text (`payload::text`, whose SHA-256, taken here, is part of the
//! canonical form) and the count of unsealed reports, both shaped and
//! planned to read only the id range asked for (`READ_PLAN_SETTINGS`), the
//! sequence's last value, `pg_locks`, and the advisory lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use diesel::Connection as _;
use diesel::connection::SimpleConnection as _;
use diesel::deserialize::FromSql;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Int4, Nullable, Text, Timestamptz};
use election_core::ElectionId;
use sha2::{Digest, Sha256};

use crate::error::{PgError, connection, query_error};
use crate::pool::PgPool;
use crate::schema::seals;

/// The head of an empty chain.
pub const ZERO_HEAD: Head = Head([0; 32]);

/// Reports put in one checkpoint at most; a round with more writes several.
const SEGMENT: i64 = 5_000;

/// Reports read per page by [`verify`].
const VERIFY_PAGE: i64 = 5_000;

/// The prefix of the sealer's own advisory lock per election.
const SEAL_LOCK_PREFIX: &str = "election-seal:";

/// A SHA-256 digest: a chain head or a leaf.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Head(pub [u8; 32]);

impl Head {
    /// Lower-case hex, as published.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 hex digits (either case).
    pub fn parse(text: &str) -> Result<Head, String> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| format!("{text:?} is not a SHA-256 in hex (64 hex digits)"))?;
        Ok(Head(bytes))
    }

    fn from_slice(bytes: &[u8]) -> Option<Head> {
        <[u8; 32]>::try_from(bytes).ok().map(Head)
    }

    /// The next head: `SHA-256(self || leaf)`.
    pub fn then(&self, leaf: &Head) -> Head {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update(leaf.0);
        Head(hasher.finalize().into())
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Head({})", self.to_hex())
    }
}

/// A report's stored row, as much of it as is sealed.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct SealedRow {
    /// `reports.id`.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// `reports.election_id`.
    #[diesel(sql_type = Text)]
    pub election_id: String,
    /// `reports.ballot_box_id`.
    #[diesel(sql_type = Text)]
    pub ballot_box_id: String,
    /// `reports.city`.
    #[diesel(sql_type = Text)]
    pub city: String,
    /// `reports.revision`.
    #[diesel(sql_type = Int4)]
    pub revision: i32,
    /// `reports.reason`.
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    /// `reports.received_at` (PostgreSQL keeps microseconds).
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
    /// SHA-256 of `reports.payload` as stored (the body as posted, UTF-8),
    /// taken by the sealer from the text as the row is decoded.
    #[diesel(sql_type = Text, deserialize_as = PayloadSha256)]
    pub payload_sha256: Vec<u8>,
    /// `reports.payload_hash` (the report's canonical hash, for replays).
    #[diesel(sql_type = Bytea)]
    pub payload_hash: Vec<u8>,
    /// `reports.parties`.
    #[diesel(sql_type = Array<Text>)]
    pub parties: Vec<String>,
    /// `reports.votes` (NULL: the revision omitted the party).
    #[diesel(sql_type = Array<Nullable<Int4>>)]
    pub votes: Vec<Option<i32>>,
    /// `reports.differences`.
    #[diesel(sql_type = Array<BigInt>)]
    pub differences: Vec<i64>,
}

/// The SHA-256 of a payload's stored text, taken from the bytes PostgreSQL
/// sent, as the row is decoded.
///
/// The digest is taken here rather than by PostgreSQL's `sha256()`: that
/// function sets up an OpenSSL digest context for every row (locks and
/// error-queue clearing included) on a copy of the text, and taking it here
/// cut the sealer's PostgreSQL CPU per report by ~30 % (3.3 to 2.3 µs),
/// while the text costs ~150 bytes more per row on the wire
/// (docs/benchmarks.md, "What sealing costs, and two parts of it made
/// cheaper"). The bytes hashed are the same: the connection's client
/// encoding is UTF-8 (diesel sets it), so the text arrives as
/// `convert_to(payload::text, 'UTF8')` would give it.
struct PayloadSha256(Vec<u8>);

impl FromSql<Text, Pg> for PayloadSha256 {
    fn from_sql(value: PgValue<'_>) -> diesel::deserialize::Result<PayloadSha256> {
        Ok(PayloadSha256(Sha256::digest(value.as_bytes()).to_vec()))
    }
}

impl From<PayloadSha256> for Vec<u8> {
    fn from(digest: PayloadSha256) -> Vec<u8> {
        digest.0
    }
}

/// An election's reports after one id and up to another, in id order, as
/// [`SealedRow`]s: `$1` the election, `$2` after, `$3` up to, `$4` at most
/// so many. Sealing reads each new report once this way, and `verify` reads
/// the whole log page by page. The column `payload_sha256` carries the
/// payload's text, which [`PayloadSha256`] hashes as the row is decoded.
pub(crate) const READ_ROWS: &str = "\
SELECT id, election_id, ballot_box_id, city, revision, reason, received_at,
       payload::text AS payload_sha256, payload_hash, parties, votes, differences
FROM reports
WHERE election_id = $1 AND id > $2 AND id <= $3
ORDER BY id
LIMIT $4";

/// [`READ_ROWS`]: at most `limit` of `election`'s reports with an id after
/// `after` and up to `through`, in id order.
fn read_rows(
    conn: &mut PgConnection,
    election: &ElectionId,
    after: i64,
    through: i64,
    limit: i64,
) -> QueryResult<Vec<SealedRow>> {
    diesel::sql_query(READ_ROWS)
        .bind::<Text, _>(election.as_str())
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(through)
        .bind::<BigInt, _>(limit)
        .load(conn)
}

/// How many of an election's reports come after an id (`verify`'s count
/// of the unsealed). Counted over the rows in id order, so that the
/// primary key's range is the only plan [`READ_PLAN_SETTINGS`] leave:
/// a plain count went through the election's prefix of the revision key.
pub(crate) const COUNT_AFTER: &str = "\
SELECT count(*) AS n
FROM (SELECT id FROM reports WHERE election_id = $1 AND id > $2 ORDER BY id) AS after";

/// Planner settings for the transactions that read [`READ_ROWS`] and
/// [`COUNT_AFTER`]: reports reach them through the primary key's id range
/// only, whatever the statistics say. On a database never analysed (every
/// election night) PostgreSQL read the rows by a `BitmapAnd` of that range
/// with the unique key on (election, box, ...) scanned by its election
/// prefix (`reports_revision_key` then, `reports_chain_key` now), which reads
/// every index entry of the election: each sealing round, once a second,
/// cost more the more reports were recorded (measured: the sealer's
/// backend was a third of PostgreSQL's CPU 15 s into a run at 512
/// connections, docs/benchmarks.md, "Sealing reads only the new reports").
/// Other elections' rows in the range are read and filtered out: the range
/// of one round is what was recorded in about a second.
pub(crate) const READ_PLAN_SETTINGS: &str = "SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off";

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded far below 4 GiB (a row is at most 1 GB).
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical byte form of a report (docs/audit.md, "The canonical
/// form"): every field in a fixed order, integers as 8-byte big-endian
/// two's complement, text and byte strings as a 4-byte big-endian length
/// and the bytes, the per-party rows sorted by party (byte order). An
/// absent reason is the empty text (ingest never stores an empty one).
///
/// Errors when the three per-party arrays differ in length, which the
/// table's CHECK forbids: such a row cannot be sealed, only reported.
pub fn canonical(row: &SealedRow) -> Result<Vec<u8>, String> {
    if row.votes.len() != row.parties.len() || row.differences.len() != row.parties.len() {
        return Err(format!(
            "report {} has {} parties, {} votes and {} differences",
            row.id,
            row.parties.len(),
            row.votes.len(),
            row.differences.len()
        ));
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"election-seal/v1");
    out.extend_from_slice(&row.id.to_be_bytes());
    put_text(&mut out, &row.election_id);
    put_text(&mut out, &row.ballot_box_id);
    put_text(&mut out, &row.city);
    out.extend_from_slice(&i64::from(row.revision).to_be_bytes());
    put_text(&mut out, row.reason.as_deref().unwrap_or(""));
    out.extend_from_slice(&row.received_at.timestamp_micros().to_be_bytes());
    put_bytes(&mut out, &row.payload_sha256);
    put_bytes(&mut out, &row.payload_hash);
    let mut parties: Vec<usize> = (0..row.parties.len()).collect();
    parties.sort_by(|a, b| row.parties[*a].as_bytes().cmp(row.parties[*b].as_bytes()));
    out.extend_from_slice(&(parties.len() as u64).to_be_bytes());
    for index in parties {
        put_text(&mut out, &row.parties[index]);
        match row.votes[index] {
            Some(votes) => {
                out.push(1);
                out.extend_from_slice(&i64::from(votes).to_be_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&0_i64.to_be_bytes());
            }
        }
        out.extend_from_slice(&row.differences[index].to_be_bytes());
    }
    Ok(out)
}

/// `SHA-256(canonical(row))`.
pub fn leaf(row: &SealedRow) -> Result<Head, String> {
    canonical(row).map(|bytes| Head(Sha256::digest(bytes).into()))
}

/// One checkpoint of an election's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every report of the election with an id up to this one is in the
    /// chain up to here (and no other).
    pub sealed_through_report_id: i64,
    /// Reports in the chain up to here.
    pub sealed_count: i64,
    /// The chain's head after them.
    pub head: Head,
    /// When the checkpoint was written.
    pub sealed_at: DateTime<Utc>,
}

fn corrupt(doing: &str, detail: String) -> PgError {
    PgError::Corrupt {
        doing: doing.to_owned(),
        detail,
    }
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    election_id: String,
    #[diesel(sql_type = Text)]
    holder: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = seals, check_for_backend(Pg))]
struct CheckpointRow {
    sealed_through_report_id: i64,
    sealed_count: i64,
    head: Vec<u8>,
    sealed_at: DateTime<Utc>,
}

impl CheckpointRow {
    fn checkpoint(self, doing: &str) -> Result<Checkpoint, PgError> {
        let head = Head::from_slice(&self.head).ok_or_else(|| {
            corrupt(
                doing,
                format!(
                    "the seal through report {} has a head of {} bytes",
                    self.sealed_through_report_id,
                    self.head.len()
                ),
            )
        })?;
        Ok(Checkpoint {
            sealed_through_report_id: self.sealed_through_report_id,
            sealed_count: self.sealed_count,
            head,
            sealed_at: self.sealed_at,
        })
    }
}

/// The last value handed out by the report id sequence (0 before the
/// first). Not transactional: it sees ids of transactions still running.
const SEQUENCE_HORIZON: &str =
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM reports_id_seq";

/// The virtual transaction ids holding (or awaiting) each election's
/// definition lock, `pg_advisory_xact_lock_shared(hashtext($2 || e))`: a
/// bigint key is `classid` (high 32 bits) and `objid` (low 32 bits), with
/// `objsubid` 1.
const LOCK_HOLDERS: &str = "\
SELECT e.id AS election_id, l.virtualtransaction AS holder
FROM unnest($1::text[]) AS e(id)
CROSS JOIN LATERAL (SELECT hashtext($2 || e.id)::bigint AS k) h
JOIN pg_locks l
  ON l.locktype = 'advisory' AND l.objsubid = 1
 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
 AND l.classid = ((h.k >> 32) & 4294967295)::oid
 AND l.objid = (h.k & 4294967295)::oid";

/// The newest checkpoint of `election`, if it has one.
fn latest_checkpoint(
    conn: &mut PgConnection,
    election: &ElectionId,
) -> QueryResult<Option<CheckpointRow>> {
    seals::table
        .filter(seals::election_id.eq(election.as_str()))
        .order(seals::sealed_through_report_id.desc())
        .select(CheckpointRow::as_select())
        .first(conn)
        .optional()
}

/// A horizon read at one round and proved at the next.
#[derive(Clone, Debug)]
struct Candidate {
    sequence: i64,
    holders: BTreeMap<String, BTreeSet<String>>,
    elections: BTreeSet<String>,
}

/// What one election's sealing did in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The election.
    pub election: ElectionId,
    /// Reports added to its chain.
    pub reports: i64,
    /// Its newest checkpoint.
    pub checkpoint: Checkpoint,
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Elections whose chain grew.
    pub sealed: Vec<Sealed>,
    /// Elections left for a later round: a transaction that may hold one of
    /// their ids is still running, or another sealer holds their lock.
    pub waiting: usize,
}

/// Seals every election's new reports, a round at a time (see the module
/// docs). Keeps the horizon read at the previous round; cheap to build.
#[derive(Debug)]
pub struct Sealer {
    pool: PgPool,
    candidate: Option<Candidate>,
}

impl Sealer {
    /// A sealer on `pool`.
    pub fn new(pool: PgPool) -> Sealer {
        Sealer {
            pool,
            candidate: None,
        }
    }

    /// One round: seals, for each election whose horizon from the previous
    /// round is now proved, its reports up to that horizon; then reads the
    /// next horizon. The first round only reads a horizon. On an error the
    /// horizon is forgotten and the next round starts over.
    pub fn round(&mut self) -> Result<Round, PgError> {
        let result = self.round_inner();
        if result.is_err() {
            self.candidate = None;
        }
        result
    }

    fn round_inner(&mut self) -> Result<Round, PgError> {
        const DOING: &str = "reading the sealing horizon";
        let elections: BTreeSet<String> = crate::PgLog::new(self.pool.clone())
            .elections_inner()?
            .into_iter()
            .map(|e| e.as_str().to_owned())
            .collect();
        let mut conn = connection(&self.pool, DOING)?;
        // The sequence first, then the holders: see the module docs.
        let sequence = diesel::sql_query(SEQUENCE_HORIZON)
            .get_result::<Number>(&mut conn)
            .map_err(query_error(DOING))?
            .n;
        let names: Vec<&str> = elections.iter().map(String::as_str).collect();
        let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in diesel::sql_query(LOCK_HOLDERS)
            .bind::<Array<Text>, _>(&names)
            .bind::<Text, _>(crate::definitions::LOCK_PREFIX)
            .load::<Holder>(&mut conn)
            .map_err(query_error(DOING))?
        {
            holders
                .entry(row.election_id)
                .or_default()
                .insert(row.holder);
        }
        drop(conn);

        let mut round = Round::default();
        if let Some(previous) = self.candidate.take() {
            for election in &previous.elections {
                let was = previous.holders.get(election);
                let now = holders.get(election);
                let still_running = match (was, now) {
                    (Some(was), Some(now)) => !was.is_disjoint(now),
                    _ => false,
                };
                if still_running {
                    round.waiting += 1;
                    continue;
                }
                let id = ElectionId::parse(election).map_err(|problem| {
                    corrupt(DOING, format!("election id {election:?}: {problem}"))
                })?;
                match seal_election(&self.pool, &id, previous.sequence)? {
                    Some(Some(sealed)) => round.sealed.push(sealed),
                    Some(None) => {}
                    None => round.waiting += 1,
                }
            }
        }
        self.candidate = Some(Candidate {
            sequence,
            holders,
            elections,
        });
        Ok(round)
    }
}

/// Seals `election`'s reports with an id up to `horizon` that are not
/// sealed yet. `None` when another sealer holds the election's lock,
/// `Some(None)` when there was nothing new.
fn seal_election(
    pool: &PgPool,
    election: &ElectionId,
    horizon: i64,
) -> Result<Option<Option<Sealed>>, PgError> {
    let doing = format!("sealing the reports of election {election}");
    let mut conn = connection(pool, &doing)?;
    let result = conn.transaction(|conn| -> Result<Option<Option<Sealed>>, InTx> {
        let locked =
            diesel::sql_query("SELECT pg_try_advisory_xact_lock(hashtext($1 || $2)) AS locked")
                .bind::<Text, _>(SEAL_LOCK_PREFIX)
                .bind::<Text, _>(election.as_str())
                .get_result::<Locked>(conn)
                .map_err(query_error(&doing))?
                .locked;
        if !locked {
            return Ok(None);
        }
        conn.batch_execute(READ_PLAN_SETTINGS)
            .map_err(query_error(&doing))?;
        let latest = latest_checkpoint(conn, election)
            .map_err(query_error(&doing))?
            .map(|row| row.checkpoint(&doing))
            .transpose()?;
        let (mut through, mut count, mut head) = latest.map_or((0, 0, ZERO_HEAD), |c| {
            (c.sealed_through_report_id, c.sealed_count, c.head)
        });
        if horizon <= through {
            return Ok(Some(None));
        }
        let start_count = count;
        let mut last: Option<Checkpoint> = None;
        loop {
            let rows = read_rows(conn, election, through, horizon, SEGMENT)
                .map_err(query_error(&doing))?;
            let Some(last_row) = rows.last() else {
                break;
            };
            let full = rows.len() as i64 == SEGMENT;
            // A full segment ends at its last report (more follow); the
            // last one at the horizon, which the round proved complete.
            let segment_through = if full { last_row.id } else { horizon };
            let mut ids = Vec::with_capacity(rows.len());
            let mut leaves = Vec::with_capacity(rows.len() * 32);
            for row in &rows {
                let leaf = leaf(row).map_err(|detail| corrupt(&doing, detail))?;
                head = head.then(&leaf);
                ids.push(row.id);
                leaves.extend_from_slice(&leaf.0);
            }
            count += rows.len() as i64;
            let sealed_at: DateTime<Utc> = diesel::insert_into(seals::table)
                .values((
                    seals::election_id.eq(election.as_str()),
                    seals::sealed_through_report_id.eq(segment_through),
                    seals::sealed_count.eq(count),
                    seals::head.eq(head.0.as_slice()),
                    seals::report_ids.eq(&ids),
                    seals::leaves.eq(&leaves),
                ))
                .returning(seals::sealed_at)
                .get_result(conn)
                .map_err(query_error(&doing))?;
            through = segment_through;
            last = Some(Checkpoint {
                sealed_through_report_id: through,
                sealed_count: count,
                head,
                sealed_at,
            });
            if !full {
                break;
            }
        }
        Ok(Some(last.map(|checkpoint| Sealed {
            election: election.clone(),
            reports: count - start_count,
            checkpoint,
        })))
    });
    result.map_err(|InTx(error)| error)
}

/// An error inside a diesel transaction: ours, or diesel's own (begin,
/// commit, rollback).
struct InTx(PgError);

impl From<PgError> for InTx {
    fn from(error: PgError) -> InTx {
        InTx(error)
    }
}

impl From<diesel::result::Error> for InTx {
    fn from(source: diesel::result::Error) -> InTx {
        InTx(PgError::Query {
            doing: "beginning or committing a transaction of the sealed log".to_owned(),
            source,
        })
    }
}

/// What `/audit` publishes: the newest checkpoint and a page of earlier ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHeads {
    /// The newest checkpoint; `None` before the first.
    pub latest: Option<Checkpoint>,
    /// Earlier checkpoints, newest first.
    pub earlier: Vec<Checkpoint>,
    /// Whether older checkpoints than the last of `earlier` exist.
    pub more: bool,
}

/// The newest checkpoint of `election` and up to `limit` earlier ones,
/// newest first, those with `sealed_through_report_id < before` when given.
pub fn audit_heads(
    pool: &PgPool,
    election: &ElectionId,
    before: Option<i64>,
    limit: u32,
) -> Result<AuditHeads, PgError> {
    let doing = format!("reading the seals of election {election}");
    let mut conn = connection(pool, &doing)?;
    let latest = latest_checkpoint(&mut conn, election)
        .map_err(query_error(&doing))?
        .map(|row| row.checkpoint(&doing))
        .transpose()?;
    let Some(latest) = latest else {
        return Ok(AuditHeads {
            latest: None,
            earlier: Vec::new(),
            more: false,
        });
    };
    let bound = before.map_or(latest.sealed_through_report_id, |b| {
        b.min(latest.sealed_through_report_id)
    });
    let limit = i64::from(limit.max(1));
    let mut earlier = seals::table
        .filter(seals::election_id.eq(election.as_str()))
        .filter(seals::sealed_through_report_id.lt(bound))
        .order(seals::sealed_through_report_id.desc())
        .limit(limit + 1)
        .select(CheckpointRow::as_select())
        .load(&mut conn)
        .map_err(query_error(&doing))?
        .into_iter()
        .map(|row| row.checkpoint(&doing))
        .collect::<Result<Vec<_>, _>>()?;
    let more = earlier.len() as i64 > limit;
    earlier.truncate(limit as usize);
    Ok(AuditHeads {
        latest: Some(latest),
        earlier,
        more,
    })
}

/// Something `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A sealed report's row no longer has the content it was sealed with.
    Altered {
        /// The report.
        report_id: i64,
    },
    /// A sealed report's row is gone (deleted, or moved to another election).
    Removed {
        /// The report.
        report_id: i64,
    },
    /// A row at or below a checkpoint that the chain does not have: written
    /// (or moved into this election) after sealing.
    Inserted {
        /// The report.
        report_id: i64,
    },
    /// The `seals` rows themselves do not add up: a checkpoint's head is
    /// not the chain of its leaves, or its counts or ids are inconsistent.
    SealBroken {
        /// The checkpoint.
        sealed_through_report_id: i64,
        /// What is wrong.
        detail: String,
    },
    /// A head given to `verify` is not among the checkpoints: the seals were
    /// rewritten since it was noted.
    HeadUnknown {
        /// The head given.
        head: Head,
    },
}

impl Finding {
    /// The report named, when one is.
    pub fn report_id(&self) -> Option<i64> {
        match self {
            Finding::Altered { report_id }
            | Finding::Removed { report_id }
            | Finding::Inserted { report_id } => Some(*report_id),
            Finding::SealBroken { .. } | Finding::HeadUnknown { .. } => None,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Altered { report_id } => {
                write!(f, "report {report_id} was altered after it was sealed")
            }
            Finding::Removed { report_id } => {
                write!(f, "report {report_id} was removed after it was sealed")
            }
            Finding::Inserted { report_id } => write!(
                f,
                "report {report_id} was inserted after its id range was sealed"
            ),
            Finding::SealBroken {
                sealed_through_report_id,
                detail,
            } => write!(
                f,
                "the seal through report {sealed_through_report_id} was altered: {detail}"
            ),
            Finding::HeadUnknown { head } => write!(
                f,
                "head {head} is not among the checkpoints: the seals were rewritten since it was noted"
            ),
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// The newest checkpoint, `None` when nothing is sealed yet.
    pub latest: Option<Checkpoint>,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// Reports recorded after the newest checkpoint (not sealed yet).
    pub unsealed: i64,
    /// Everything found, in report-id order after any broken seals; empty
    /// when the log is intact. At most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
}

/// Findings kept by [`verify`]; the first is what matters.
pub const MAX_FINDINGS: usize = 100;

#[derive(Queryable, Selectable)]
#[diesel(table_name = seals, check_for_backend(Pg))]
struct SegmentRow {
    sealed_through_report_id: i64,
    sealed_count: i64,
    head: Vec<u8>,
    sealed_at: DateTime<Utc>,
    report_ids: Vec<i64>,
    leaves: Vec<u8>,
}

/// Recomputes `election`'s chain from the stored rows and compares it with
/// every checkpoint: first the checkpoints themselves (each head is the
/// chain of its leaves, counts and ids add up), then every report row up to
/// the newest checkpoint against its sealed leaf. `noted`, a head someone
/// noted earlier, must be one of the checkpoints.
pub fn verify(
    pool: &PgPool,
    election: &ElectionId,
    noted: Option<Head>,
) -> Result<Verification, PgError> {
    let doing = format!("verifying the sealed log of election {election}");
    let mut conn = connection(pool, &doing)?;
    // One snapshot for the seals and the rows: a checkpoint written while we
    // read must not make its fresh reports look inserted.
    conn.build_transaction()
        .read_only()
        .repeatable_read()
        .run(|conn| verify_in(conn, election, noted, &doing).map_err(InTx))
        .map_err(|InTx(error)| error)
}

fn verify_in(
    conn: &mut PgConnection,
    election: &ElectionId,
    noted: Option<Head>,
    doing: &str,
) -> Result<Verification, PgError> {
    conn.batch_execute(READ_PLAN_SETTINGS)
        .map_err(query_error(doing))?;
    let segments: Vec<SegmentRow> = seals::table
        .filter(seals::election_id.eq(election.as_str()))
        .order(seals::sealed_through_report_id)
        .select(SegmentRow::as_select())
        .load(conn)
        .map_err(query_error(doing))?;

    let mut findings = Vec::new();
    // The sealed reports in id order with their leaves, from the seals.
    let mut sealed: Vec<(i64, Head)> = Vec::new();
    let mut head = ZERO_HEAD;
    let mut previous_through = 0;
    let mut heads = BTreeSet::new();
    let mut latest = None;
    for segment in &segments {
        let broken = |detail: String| Finding::SealBroken {
            sealed_through_report_id: segment.sealed_through_report_id,
            detail,
        };
        if segment.leaves.len() != 32 * segment.report_ids.len() {
            findings.push(broken(format!(
                "{} leaf bytes for {} reports",
                segment.leaves.len(),
                segment.report_ids.len()
            )));
            continue;
        }
        let mut last_id = previous_through;
        for (id, leaf) in segment.report_ids.iter().zip(segment.leaves.chunks(32)) {
            if *id <= last_id || *id > segment.sealed_through_report_id {
                findings.push(broken(format!(
                    "report id {id} is out of order or outside ({previous_through}, {}]",
                    segment.sealed_through_report_id
                )));
            }
            last_id = *id;
            let leaf = Head::from_slice(leaf).unwrap_or(ZERO_HEAD);
            head = head.then(&leaf);
            sealed.push((*id, leaf));
        }
        if Head::from_slice(&segment.head) != Some(head) {
            findings.push(broken(
                "its head is not the chain of the leaves before it".to_owned(),
            ));
        }
        if segment.sealed_count != sealed.len() as i64 {
            findings.push(broken(format!(
                "it counts {} reports, the leaves up to it are {}",
                segment.sealed_count,
                sealed.len()
            )));
        }
        previous_through = segment.sealed_through_report_id;
        heads.extend(Head::from_slice(&segment.head));
        latest = Some(Checkpoint {
            sealed_through_report_id: segment.sealed_through_report_id,
            sealed_count: segment.sealed_count,
            head: Head::from_slice(&segment.head).unwrap_or(head),
            sealed_at: segment.sealed_at,
        });
    }
    if let Some(noted) = noted
        && noted != ZERO_HEAD
        && !heads.contains(&noted)
    {
        findings.push(Finding::HeadUnknown { head: noted });
    }

    // Every row up to the newest checkpoint, merged with the sealed list.
    let through = previous_through;
    let mut expected = sealed.iter().peekable();
    let mut after = 0_i64;
    let push = |findings: &mut Vec<Finding>, finding: Finding| {
        if findings.len() < MAX_FINDINGS {
            findings.push(finding);
        }
    };
    loop {
        let rows =
            read_rows(conn, election, after, through, VERIFY_PAGE).map_err(query_error(doing))?;
        for row in &rows {
            while let Some((id, _)) = expected.next_if(|(id, _)| *id < row.id) {
                push(&mut findings, Finding::Removed { report_id: *id });
            }
            match expected.next_if(|(id, _)| *id == row.id) {
                Some((_, sealed_leaf)) => {
                    if leaf(row).ok() != Some(*sealed_leaf) {
                        push(&mut findings, Finding::Altered { report_id: row.id });
                    }
                }
                None => push(&mut findings, Finding::Inserted { report_id: row.id }),
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == VERIFY_PAGE => after = last.id,
            _ => break,
        }
    }
    for (id, _) in expected {
        push(&mut findings, Finding::Removed { report_id: *id });
    }
    let unsealed = diesel::sql_query(COUNT_AFTER)
        .bind::<Text, _>(election.as_str())
        .bind::<BigInt, _>(through)
        .get_result::<Count>(conn)
        .map_err(query_error(doing))?
        .n;
    Ok(Verification {
        latest,
        checkpoints: segments.len(),
        unsealed,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> SealedRow {
        SealedRow {
            id: 7,
            election_id: "e".to_owned(),
            ballot_box_id: "B1".to_owned(),
            city: "c".to_owned(),
            revision: 2,
            reason: Some("recount".to_owned()),
            received_at: DateTime::from_timestamp_micros(1_757_955_600_123_456).unwrap(),
            payload_sha256: vec![0xab; 32],
            payload_hash: vec![0xcd; 32],
            parties: vec!["b".to_owned(), "a".to_owned()],
            votes: vec![None, Some(5)],
            differences: vec![-3, 5],
        }
    }

    #[test]
    fn the_canonical_form_is_as_documented() {
        let mut expected = b"election-seal/v1".to_vec();
        expected.extend_from_slice(&7_i64.to_be_bytes());
        for text in ["e", "B1", "c"] {
            expected.extend_from_slice(&(text.len() as u32).to_be_bytes());
            expected.extend_from_slice(text.as_bytes());
        }
        expected.extend_from_slice(&2_i64.to_be_bytes());
        expected.extend_from_slice(&7_u32.to_be_bytes());
        expected.extend_from_slice(b"recount");
        expected.extend_from_slice(&1_757_955_600_123_456_i64.to_be_bytes());
        expected.extend_from_slice(&32_u32.to_be_bytes());
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&32_u32.to_be_bytes());
        expected.extend_from_slice(&[0xcd; 32]);
        expected.extend_from_slice(&2_u64.to_be_bytes());
        // Sorted by party: a (posted 5, +5), then b (omitted, -3).
        expected.extend_from_slice(&1_u32.to_be_bytes());
        expected.extend_from_slice(b"a");
        expected.push(1);
        expected.extend_from_slice(&5_i64.to_be_bytes());
        expected.extend_from_slice(&5_i64.to_be_bytes());
        expected.extend_from_slice(&1_u32.to_be_bytes());
        expected.extend_from_slice(b"b");
        expected.push(0);
        expected.extend_from_slice(&0_i64.to_be_bytes());
        expected.extend_from_slice(&(-3_i64).to_be_bytes());
        assert_eq!(canonical(&row()).unwrap(), expected);
    }

    #[test]
    fn every_sealed_field_changes_the_leaf() {
        let base = leaf(&row()).unwrap();
        type Change = Box<dyn Fn(&mut SealedRow)>;
        let changes: Vec<Change> = vec![
            Box::new(|r| r.id = 8),
            Box::new(|r| r.election_id = "f".to_owned()),
            Box::new(|r| r.ballot_box_id = "B2".to_owned()),
            Box::new(|r| r.city = "d".to_owned()),
            Box::new(|r| r.revision = 3),
            Box::new(|r| r.reason = None),
            Box::new(|r| r.received_at += chrono::Duration::microseconds(1)),
            Box::new(|r| r.payload_sha256[0] = 0),
            Box::new(|r| r.payload_hash[31] = 0),
            Box::new(|r| r.votes[1] = Some(6)),
            Box::new(|r| r.votes[0] = Some(0)),
            Box::new(|r| r.differences[0] = -2),
            Box::new(|r| r.parties[0] = "z".to_owned()),
        ];
        for (index, change) in changes.iter().enumerate() {
            let mut changed = row();
            change(&mut changed);
            assert_ne!(leaf(&changed).unwrap(), base, "change {index}");
        }
        // The order the arrays are stored in is not content.
        let mut reordered = row();
        reordered.parties.reverse();
        reordered.votes.reverse();
        reordered.differences.reverse();
        assert_eq!(leaf(&reordered).unwrap(), base);
    }

    #[test]
    fn ragged_arrays_cannot_be_sealed() {
        let mut ragged = row();
        ragged.votes.pop();
        let error = leaf(&ragged).unwrap_err();
        assert!(error.contains("report 7 has 2 parties, 1 votes"), "{error}");
    }

    #[test]
    fn heads_chain_and_read_back() {
        let a = Head([1; 32]);
        let next = ZERO_HEAD.then(&a);
        let mut bytes = vec![0; 32];
        bytes.extend_from_slice(&[1; 32]);
        assert_eq!(next.0, <[u8; 32]>::from(Sha256::digest(&bytes)));
        assert_eq!(Head::parse(&next.to_hex()).unwrap(), next);
        assert_eq!(Head::parse(&next.to_hex().to_uppercase()).unwrap(), next);
        assert!(Head::parse("abc").unwrap_err().contains("64 hex digits"));
    }
}
