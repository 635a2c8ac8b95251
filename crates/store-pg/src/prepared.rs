//! Raw SQL that diesel keeps prepared on each connection.
//!
//! `diesel::sql_query` marks its statement unsafe to cache, so diesel sends
//! it as an unnamed statement that PostgreSQL parses, analyses and plans
//! again on every call: for the group-commit path that was ~0.3–0.9 ms per
//! statement, a third of a 32-report batch's server time. [`Prepared`] is the
//! same raw SQL with binds, but cacheable: diesel's per-connection statement
//! cache (keyed by the SQL text and the bind types) prepares it as a named
//! statement on its first use on a connection and executes it by name from
//! then on. A new connection (after a reconnect, say) starts with an empty
//! cache and prepares again; PostgreSQL re-analyses a prepared statement by
//! itself when a table it reads changes (a migration).
//!
//! Only for statements with a constant SQL text and a constant number of
//! binds (every statement of `crate::record` and `crate::log` binds whole
//! columns as arrays): each distinct text is one prepared statement per
//! connection, kept as long as the connection.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::RunQueryDsl;
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A raw SQL statement with its binds, loaded like `sql_query` (rows by
/// name) but prepared once per connection.
#[must_use = "queries are only executed when calling `load`, `execute` or similar"]
pub(crate) struct Prepared<'a> {
    sql: &'static str,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'a>>,
}

/// Starts a prepared statement of `sql`; add its binds in order with
/// [`Prepared::bind`].
pub(crate) fn prepared<'a>(sql: &'static str) -> Prepared<'a> {
    Prepared {
        sql,
        binds: Vec::new(),
    }
}

impl<'a> Prepared<'a> {
    /// Binds the next parameter (`$1`, then `$2`, ...) as SQL type `ST`.
    pub(crate) fn bind<ST, T>(self, value: T) -> Prepared<'a>
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + Send + 'a,
        ST: Send + 'a,
    {
        let Prepared { sql, mut binds } = self;
        binds.push(Box::new(Bind {
            value,
            sql_type: PhantomData::<ST>,
        }));
        Prepared { sql, binds }
    }
}

/// One bind parameter.
struct Bind<ST, T> {
    value: T,
    sql_type: PhantomData<ST>,
}

impl<ST, T> QueryFragment<Pg> for Bind<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        pass.push_bind_param::<ST, T>(&self.value)
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    // Unlike `SqlQuery`, this never calls `unsafe_to_cache_prepared`: that
    // is the whole point. diesel's public API numbers placeholders itself, in
    // the order binds are pushed, so the text is cut at each `$n` and bind
    // `n` pushed in its place: `$3 ... $1` works, and a parameter written
    // twice is sent twice. (No statement here has a dollar-quoted string.)
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        while let Some((text, number, after)) = next_placeholder(rest) {
            pass.push_sql(text);
            let bind = number
                .checked_sub(1)
                .and_then(|index| self.binds.get(index))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("${number} has no bind ({} given)", self.binds.len()).into(),
                    )
                })?;
            bind.walk_ast(pass.reborrow())?;
            rest = after;
        }
        pass.push_sql(rest);
        Ok(())
    }
}

/// Splits `sql` at its first placeholder `$n`: the text before it, `n`, and
/// the text after it.
fn next_placeholder(sql: &str) -> Option<(&str, usize, &str)> {
    let bytes = sql.as_bytes();
    let mut from = 0;
    while let Some(offset) = sql[from..].find('$') {
        let start = from + offset;
        let digits = bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            let end = start + 1 + digits;
            let number = sql[start + 1..end].parse().ok()?;
            return Some((&sql[..start], number, &sql[end..]));
        }
        from = start + 1;
    }
    None
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    // Not one type per statement: the cache key is the SQL text and the bind
    // types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Prepared<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_in_order() {
        let sql = "SELECT $2::int4[], $10 FROM t WHERE a = $1";
        let (text, n, rest) = next_placeholder(sql).unwrap();
        assert_eq!((text, n), ("SELECT ", 2));
        let (text, n, rest) = next_placeholder(rest).unwrap();
        assert_eq!((text, n), ("::int4[], ", 10));
        let (text, n, rest) = next_placeholder(rest).unwrap();
        assert_eq!((text, n, rest), (" FROM t WHERE a = ", 1, ""));
        assert!(next_placeholder("SELECT 1 AS \"$x\"").is_none());
    }

    #[test]
    fn the_sql_keeps_its_text_and_numbers_placeholders_in_order() {
        let query = prepared("SELECT $2::int4, $1::text, $2::int4")
            .bind::<diesel::sql_types::Text, _>("a")
            .bind::<diesel::sql_types::Int4, _>(7);
        let sql = diesel::debug_query::<Pg, _>(&query).to_string();
        assert!(
            sql.starts_with("SELECT $1::int4, $2::text, $3::int4"),
            "{sql}"
        );
    }
}
