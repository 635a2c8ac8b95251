//! `store_pg::schema` (diesel's `table!` definitions, written by hand) checked
//! against what the migrations really create.
//!
//! Queries built with diesel's DSL are type-checked against `schema.rs` at
//! compile time, but nothing compiles `schema.rs` against the SQL of
//! `migrations/`. This test migrates a fresh schema and compares, for every
//! table and view PostgreSQL reports in it, each column's name, type and
//! nullability with the `table!` definition, so a migration without its
//! `schema.rs` change (or a typo in `schema.rs`) fails `just test`. It is
//! `diesel print-schema --diff`-like without the diesel CLI, which `just
//! setup` would otherwise have to build on every fresh machine.
//!
//! Two things PostgreSQL does not record are not compared: whether an
//! array's elements may be NULL (`Array<Nullable<Int4>>` and
//! `Array<Int4>` are both `integer[]`), and whether a view's column may be
//! NULL (information_schema says YES for every view column).

use std::collections::BTreeMap;

use diesel::expression::Expression;
use diesel::{Column, QueryableByName, RunQueryDsl, Table, sql_types};
use store_pg::schema;

use crate::support::Migrated;

/// Tables and views of the migrations that `schema.rs` leaves out on
/// purpose, with the reason.
const NOT_IN_SCHEMA_RS: &[(&str, &str)] = &[(
    "__diesel_schema_migrations",
    "diesel_migrations' own bookkeeping (read through `store_pg::schema_status`)",
)];

/// A column as a `table!` declares it, or as PostgreSQL reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnShape {
    /// PostgreSQL's `udt_name`: `int4`, `text`, `_int8` (an array), ...
    pg_type: String,
    nullable: bool,
}

/// The columns of a `table!`'s `all_columns()` tuple.
trait Columns {
    fn shapes(into: &mut BTreeMap<&'static str, ColumnShape>);
}

macro_rules! impl_columns {
    ($($column:ident),+) => {
        impl<$($column),+> Columns for ($($column,)+)
        where
            $($column: Column + Expression,)+
        {
            fn shapes(into: &mut BTreeMap<&'static str, ColumnShape>) {
                $(
                    into.insert(
                        $column::NAME,
                        rust_shape(std::any::type_name::<<$column as Expression>::SqlType>()),
                    );
                )+
            }
        }
    };
}

impl_columns!(A);
impl_columns!(A, B);
impl_columns!(A, B, C);
impl_columns!(A, B, C, D);
impl_columns!(A, B, C, D, E);
impl_columns!(A, B, C, D, E, F);
impl_columns!(A, B, C, D, E, F, G);
impl_columns!(A, B, C, D, E, F, G, H);
impl_columns!(A, B, C, D, E, F, G, H, I);
impl_columns!(A, B, C, D, E, F, G, H, I, J);
impl_columns!(A, B, C, D, E, F, G, H, I, J, K);
impl_columns!(A, B, C, D, E, F, G, H, I, J, K, L);
impl_columns!(A, B, C, D, E, F, G, H, I, J, K, L, M);
impl_columns!(A, B, C, D, E, F, G, H, I, J, K, L, M, N);
impl_columns!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, O);
impl_columns!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P);

fn columns_of<T>() -> BTreeMap<&'static str, ColumnShape>
where
    T: Table,
    T::AllColumns: Columns,
{
    let mut columns = BTreeMap::new();
    T::AllColumns::shapes(&mut columns);
    columns
}

/// Every `table!` of `schema.rs`, by name.
macro_rules! declared {
    ($($table:ident),+ $(,)?) => {
        vec![$((stringify!($table), columns_of::<schema::$table::table>())),+]
    };
}

/// Drops the module paths of a type name:
/// `diesel::sql_types::Nullable<diesel::sql_types::Text>` becomes
/// `Nullable<Text>`.
fn short_type_name(name: &str) -> String {
    let mut short = String::new();
    let mut word = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            word.clear();
        } else if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            short.push_str(&word);
            word.clear();
            short.push(c);
        }
    }
    short.push_str(&word);
    short
}

/// PostgreSQL's `udt_name` for a diesel SQL type without `Nullable`.
fn pg_type_name(diesel_type: &str) -> String {
    if let Some(element) = diesel_type
        .strip_prefix("Array<")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        let element = element
            .strip_prefix("Nullable<")
            .and_then(|rest| rest.strip_suffix('>'))
            .unwrap_or(element);
        return format!("_{}", pg_type_name(element));
    }
    match diesel_type {
        "SmallInt" => "int2",
        "Integer" => "int4",
        "BigInt" => "int8",
        "Text" => "text",
        "Binary" => "bytea",
        "Bool" => "bool",
        "Timestamptz" => "timestamptz",
        "Timestamp" => "timestamp",
        "Json" => "json",
        "Jsonb" => "jsonb",
        other => panic!("the schema test has no PostgreSQL name for diesel's {other}: add it"),
    }
    .to_owned()
}

fn rust_shape(type_name: &str) -> ColumnShape {
    let short = short_type_name(type_name);
    match short
        .strip_prefix("Nullable<")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        Some(inner) => ColumnShape {
            pg_type: pg_type_name(inner),
            nullable: true,
        },
        None => ColumnShape {
            pg_type: pg_type_name(&short),
            nullable: false,
        },
    }
}

#[derive(QueryableByName)]
struct DbColumn {
    #[diesel(sql_type = sql_types::Text)]
    table_name: String,
    #[diesel(sql_type = sql_types::Text)]
    table_type: String,
    #[diesel(sql_type = sql_types::Text)]
    column_name: String,
    #[diesel(sql_type = sql_types::Text)]
    udt_name: String,
    #[diesel(sql_type = sql_types::Bool)]
    nullable: bool,
}

/// What the migrations created in the test's schema: every table and view
/// with its kind and columns.
fn migrated_columns(db: &Migrated) -> BTreeMap<String, (String, BTreeMap<String, ColumnShape>)> {
    let mut conn = db.pool.get().expect("a connection");
    let rows: Vec<DbColumn> = diesel::sql_query(
        "SELECT c.table_name::text, t.table_type::text, c.column_name::text, c.udt_name::text, \
                c.is_nullable = 'YES' AS nullable \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .load(&mut conn)
    .expect("reading information_schema");
    let mut tables: BTreeMap<String, (String, BTreeMap<String, ColumnShape>)> = BTreeMap::new();
    for row in rows {
        tables
            .entry(row.table_name)
            .or_insert_with(|| (row.table_type, BTreeMap::new()))
            .1
            .insert(
                row.column_name,
                ColumnShape {
                    pg_type: row.udt_name,
                    nullable: row.nullable,
                },
            );
    }
    tables
}

/// Every difference between `declared` (schema.rs) and `migrated`.
fn differences(
    declared: &[(&'static str, BTreeMap<&'static str, ColumnShape>)],
    migrated: &BTreeMap<String, (String, BTreeMap<String, ColumnShape>)>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (table, (kind, _)) in migrated {
        let left_out = NOT_IN_SCHEMA_RS.iter().any(|(name, _)| name == table);
        let declared_here = declared.iter().any(|(name, _)| name == table);
        if !left_out && !declared_here {
            found.push(format!(
                "{kind} {table} is in the migrations but not in schema.rs \
                 (add it, or list it in NOT_IN_SCHEMA_RS with the reason)"
            ));
        }
    }
    for (table, columns) in declared {
        let Some((kind, migrated_columns)) = migrated.get(*table) else {
            found.push(format!(
                "table {table} is in schema.rs but the migrations do not create it"
            ));
            continue;
        };
        let is_view = kind == "VIEW";
        for (column, shape) in columns {
            let Some(actual) = migrated_columns.get(*column) else {
                found.push(format!(
                    "column {table}.{column} is in schema.rs but not in the migrations"
                ));
                continue;
            };
            if shape.pg_type != actual.pg_type {
                found.push(format!(
                    "column {table}.{column} is {} in schema.rs but {} in the migrations",
                    shape.pg_type, actual.pg_type
                ));
            }
            if !is_view && shape.nullable != actual.nullable {
                let says = |nullable: bool| if nullable { "NULL" } else { "NOT NULL" };
                found.push(format!(
                    "column {table}.{column} is {} in schema.rs but {} in the migrations",
                    says(shape.nullable),
                    says(actual.nullable)
                ));
            }
        }
        for column in migrated_columns.keys() {
            if !columns.contains_key(column.as_str()) {
                found.push(format!(
                    "column {table}.{column} is in the migrations but not in schema.rs"
                ));
            }
        }
    }
    found
}

/// The tables `schema.rs` declares, read from its text, so a `table!` added
/// there without being added to [`declared!`] below is noticed.
fn tables_in_schema_rs() -> Vec<String> {
    let text = include_str!("../../src/schema.rs");
    let mut tables = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "diesel::table! {" {
            continue;
        }
        let name = lines
            .by_ref()
            .map(str::trim)
            .find(|l| !l.starts_with("///") && !l.starts_with("#["))
            .and_then(|l| l.split_whitespace().next())
            .expect("a table! names its table");
        tables.push(name.to_owned());
    }
    tables.sort();
    tables
}

#[test]
fn schema_rs_matches_the_migrations() {
    let declared = declared!(
        api_tokens,
        ballot_boxes,
        certified_cities,
        election_ballot_boxes,
        election_box_electorates,
        election_cities,
        election_definitions,
        election_parties,
        pending_batches,
        pending_reports,
        reports,
        seals,
        vote_log,
    );
    let mut checked: Vec<String> = declared.iter().map(|(n, _)| (*n).to_owned()).collect();
    checked.sort();
    assert_eq!(
        checked,
        tables_in_schema_rs(),
        "every table! of schema.rs must be in this test's declared! list"
    );

    let db = Migrated::new(1);
    let migrated = migrated_columns(&db);
    assert!(
        migrated.contains_key("reports"),
        "the migrated schema has no reports table: {:?}",
        migrated.keys()
    );
    let found = differences(&declared, &migrated);
    assert!(
        found.is_empty(),
        "schema.rs differs from the migrations:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_comparison_finds_a_wrong_type_a_wrong_nullability_and_a_missing_column() {
    // The check of the check: schema.rs's `reports` against a migrated
    // `reports` with one column changed in each way.
    let declared = declared!(reports);
    let (kind, mut columns) = migrated_columns(&Migrated::new(1))
        .remove("reports")
        .expect("the migrations create reports");
    columns
        .get_mut("revision")
        .expect("reports.revision")
        .pg_type = "int8".to_owned();
    columns.get_mut("reason").expect("reports.reason").nullable = false;
    columns.remove("city");
    columns.insert(
        "extra".to_owned(),
        ColumnShape {
            pg_type: "text".to_owned(),
            nullable: true,
        },
    );
    let migrated = BTreeMap::from([("reports".to_owned(), (kind, columns))]);
    assert_eq!(
        differences(&declared, &migrated),
        [
            "column reports.city is in schema.rs but not in the migrations",
            "column reports.reason is NULL in schema.rs but NOT NULL in the migrations",
            "column reports.revision is int4 in schema.rs but int8 in the migrations",
            "column reports.extra is in the migrations but not in schema.rs",
        ]
    );
}

#[test]
fn diesel_type_names_map_to_postgresql_names() {
    let shape = |name: &str| rust_shape(name);
    assert_eq!(
        shape(std::any::type_name::<
            sql_types::Nullable<sql_types::Array<sql_types::Nullable<sql_types::Int4>>>,
        >()),
        ColumnShape {
            pg_type: "_int4".to_owned(),
            nullable: true
        }
    );
    assert_eq!(
        shape(std::any::type_name::<sql_types::Timestamptz>()),
        ColumnShape {
            pg_type: "timestamptz".to_owned(),
            nullable: false
        }
    );
}
