//! Raw SQL that diesel keeps prepared on each connection.
//!
//! `diesel::sql_query` marks its statement unsafe to cache, so diesel sends
//! it as an unnamed statement that PostgreSQL parses, analyses and plans
//! again on every call: for the group-commit path that was ~0.3–0.9 ms per
//! statement, a third of a 32-report batch's server time. [`prepared`] takes
//! the same `sql_query`, with the same typed binds (`.bind::<ST, _>(value)`,
//! sent as `$1`, `$2`, ... exactly as written), and only overrules that one
//! decision: diesel's per-connection statement cache (keyed by the SQL text
//! and the bind types) prepares it as a named statement on its first use on a
//! connection and executes it by name from then on. A new connection (after a
//! reconnect, say) starts with an empty cache and prepares again; PostgreSQL
//! re-analyses a prepared statement by itself when a table it reads changes
//! (a migration).
//!
//! diesel's stable API has no cacheable raw SQL (`sql_query` and `dsl::sql`
//! both opt out), so the override uses `QueryFragment::is_safe_to_cache_prepared`,
//! public under diesel's `i-implement-a-third-party-backend-and-opt-into-breaking-changes`
//! feature: the hook diesel itself asks. `Cargo.lock` pins diesel, and the
//! integration test `statements_stay_prepared_and_a_new_connection_prepares_them_again`
//! fails if an upgrade stops caching.
//!
//! Only for statements with a constant SQL text and a constant number of
//! binds (the statements of `crate::record` and `crate::pending`'s hot path,
//! and the claim's read in `crate::log`, bind whole columns as arrays): each distinct text is one prepared statement per
//! connection, kept as long as the connection. [`prepared`] takes the text as
//! a `&'static str` so that nothing built at run time can grow the cache.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId, SqlQuery};
use diesel::query_dsl::RunQueryDsl;

/// A `sql_query` with its typed binds, loaded like `sql_query` (rows by name,
/// into a `QueryableByName` struct) but prepared once per connection.
#[must_use = "queries are only executed when calling `load`, `execute` or similar"]
pub(crate) struct Prepared<Q>(Q);

/// `sql_query(sql)` with the typed binds `binds` adds (for example
/// `|q| q.bind::<Array<Int8>, _>(ids)`), marked safe to prepare once per
/// connection.
pub(crate) fn prepared<Q>(sql: &'static str, binds: impl FnOnce(SqlQuery) -> Q) -> Prepared<Q>
where
    Q: QueryFragment<Pg>,
{
    Prepared(binds(diesel::sql_query(sql)))
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // `SqlQuery` says no because its text may be built at run time; ours is
    // a `&'static str`, and the cache key is the text and the bind types.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // Not one type per statement: the cache key is the SQL text and the bind
    // types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, Conn> RunQueryDsl<Conn> for Prepared<Q> {}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Int4, Text};

    use super::*;

    #[test]
    fn the_sql_is_sent_as_written_with_its_typed_binds() {
        let query = prepared("SELECT $2::int4, $1::text, $2::int4", |q| {
            q.bind::<Text, _>("a").bind::<Int4, _>(7)
        });
        let sql = diesel::debug_query::<Pg, _>(&query).to_string();
        assert_eq!(
            sql,
            r#"SELECT $2::int4, $1::text, $2::int4 -- binds: ["a", 7]"#
        );
        assert!(
            query.is_safe_to_cache_prepared(&Pg).unwrap(),
            "must be cacheable"
        );
        assert!(
            !diesel::sql_query("SELECT 1")
                .is_safe_to_cache_prepared(&Pg)
                .unwrap(),
            "diesel's own sql_query is not cacheable: if it is now, this module can go"
        );
    }
}
