//! Reporting-client tokens in `api_tokens`: only a SHA-256 of each token is
//! stored, so a copy of the table does not let anyone report. Generating and
//! hashing tokens is ingest's business; this module only keeps the rows,
//! through diesel's DSL against `crate::schema`.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;

use crate::error::{PgError, connection, query_error};
use crate::pool::PgPool;
use crate::schema::api_tokens;

/// One token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_tokens, check_for_backend(Pg))]
pub struct TokenRecord {
    /// Its id, for `token revoke`.
    pub id: i64,
    /// The election it may report to.
    pub election_id: String,
    /// The only ballot box it may report for, if bound to one.
    pub ballot_box_id: Option<String>,
    /// A label for operators.
    pub label: Option<String>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
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
    diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::token_sha256.eq(sha256.as_slice()),
            api_tokens::election_id.eq(election_id),
            api_tokens::ballot_box_id.eq(ballot_box_id),
            api_tokens::label.eq(label),
        ))
        .returning(api_tokens::id)
        .get_result(&mut conn)
        .map_err(query_error(doing))
}

/// Revokes token `id`; false when there is no such active token.
pub fn revoke(pool: &PgPool, id: i64) -> Result<bool, PgError> {
    let doing = "revoking a token";
    let mut conn = connection(pool, doing)?;
    let changed = diesel::update(
        api_tokens::table
            .filter(api_tokens::id.eq(id))
            .filter(api_tokens::revoked_at.is_null()),
    )
    .set(api_tokens::revoked_at.eq(diesel::dsl::now))
    .execute(&mut conn)
    .map_err(query_error(doing))?;
    Ok(changed == 1)
}

/// Every token, or one election's, oldest first.
pub fn list(pool: &PgPool, election_id: Option<&str>) -> Result<Vec<TokenRecord>, PgError> {
    let doing = "listing tokens";
    let mut conn = connection(pool, doing)?;
    let mut tokens = api_tokens::table
        .select(TokenRecord::as_select())
        .order(api_tokens::id)
        .into_boxed();
    if let Some(election_id) = election_id {
        tokens = tokens.filter(api_tokens::election_id.eq(election_id));
    }
    tokens.load(&mut conn).map_err(query_error(doing))
}

/// The token whose hash is `sha256`, revoked or not.
pub fn find(pool: &PgPool, sha256: &[u8; 32]) -> Result<Option<TokenRecord>, PgError> {
    let doing = "looking a token up";
    let mut conn = connection(pool, doing)?;
    api_tokens::table
        .filter(api_tokens::token_sha256.eq(sha256.as_slice()))
        .select(TokenRecord::as_select())
        .get_result(&mut conn)
        .optional()
        .map_err(query_error(doing))
}
