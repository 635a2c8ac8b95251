//! Reporting-client tokens in `api_tokens`: only a SHA-256 of each token is
//! stored, so a copy of the table does not let anyone report. Generating and
//! hashing tokens is ingest's business; this module only keeps the rows.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz};

use crate::error::PgError;
use crate::pool::PgPool;

/// One token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct TokenRecord {
    /// Its id, for `token revoke`.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The election it may report to.
    #[diesel(sql_type = Text)]
    pub election_id: String,
    /// The only ballot box it may report for, if bound to one.
    #[diesel(sql_type = Nullable<Text>)]
    pub ballot_box_id: Option<String>,
    /// A label for operators.
    #[diesel(sql_type = Nullable<Text>)]
    pub label: Option<String>,
    /// When it was issued.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

const COLUMNS: &str = "id, election_id, ballot_box_id, label, created_at, revoked_at";

fn connection(
    pool: &PgPool,
    doing: &str,
) -> Result<r2d2::PooledConnection<diesel::r2d2::ConnectionManager<PgConnection>>, PgError> {
    pool.get().map_err(|source| PgError::Pool {
        doing: doing.to_owned(),
        source,
    })
}

fn query(doing: &str) -> impl FnOnce(diesel::result::Error) -> PgError + '_ {
    move |source| PgError::Query {
        doing: doing.to_owned(),
        source,
    }
}

/// Stores a new token's hash; returns its id.
pub fn insert(
    pool: &PgPool,
    sha256: &[u8; 32],
    election_id: &str,
    ballot_box_id: Option<&str>,
    label: Option<&str>,
) -> Result<i64, PgError> {
    let doing = "storing a token";
    let mut conn = connection(pool, doing)?;
    let row: Id = diesel::sql_query(
        "INSERT INTO api_tokens (token_sha256, election_id, ballot_box_id, label) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind::<Bytea, _>(sha256.as_slice())
    .bind::<Text, _>(election_id)
    .bind::<Nullable<Text>, _>(ballot_box_id)
    .bind::<Nullable<Text>, _>(label)
    .get_result(&mut conn)
    .map_err(query(doing))?;
    Ok(row.id)
}

/// Revokes token `id`; false when there is no such active token.
pub fn revoke(pool: &PgPool, id: i64) -> Result<bool, PgError> {
    let doing = "revoking a token";
    let mut conn = connection(pool, doing)?;
    let changed = diesel::sql_query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind::<BigInt, _>(id)
    .execute(&mut conn)
    .map_err(query(doing))?;
    Ok(changed == 1)
}

/// Every token, or one election's, oldest first.
pub fn list(pool: &PgPool, election_id: Option<&str>) -> Result<Vec<TokenRecord>, PgError> {
    let doing = "listing tokens";
    let mut conn = connection(pool, doing)?;
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE $1::text IS NULL OR election_id = $1 ORDER BY id"
    ))
    .bind::<Nullable<Text>, _>(election_id)
    .load(&mut conn)
    .map_err(query(doing))
}

/// The token whose hash is `sha256`, revoked or not.
pub fn find(pool: &PgPool, sha256: &[u8; 32]) -> Result<Option<TokenRecord>, PgError> {
    let doing = "looking a token up";
    let mut conn = connection(pool, doing)?;
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE token_sha256 = $1"
    ))
    .bind::<Bytea, _>(sha256.as_slice())
    .get_result(&mut conn)
    .optional()
    .map_err(query(doing))
}
