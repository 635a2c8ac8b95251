//! The tables and views of `migrations/` in diesel's `table!` form, so queries
//! built with diesel's DSL are checked against the schema at compile time.
//!
//! Written by hand to match `migrations/*/up.sql` (the diesel CLI is not part
//! of the toolchain here); `diesel print-schema` with the workspace's
//! `diesel.toml` regenerates this file. What keeps it true is the integration
//! test `schema::schema_rs_matches_the_migrations` (`just test`): it migrates
//! a fresh schema and compares every table and view, column by column (name,
//! type, nullability), with the definitions here.
//! `vote_log` and `pending_reports` are views (see the write-path migration),
//! and `ballot_boxes` (the box-chain migration);
//! diesel reads a view like a table. They have no `joinable!`: join them
//! explicitly.

// @generated automatically by Diesel CLI.

diesel::table! {
    /// Reporting-client tokens; only their SHA-256 is stored.
    api_tokens (id) {
        id -> Int8,
        token_sha256 -> Bytea,
        election_id -> Text,
        ballot_box_id -> Nullable<Text>,
        label -> Nullable<Text>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// A view: one row per ballot box that reported, its city, first report
    /// and latest revision, read from its reports (see the box-chain
    /// migration).
    ballot_boxes (election_id, ballot_box_id) {
        election_id -> Text,
        ballot_box_id -> Text,
        city -> Text,
        latest_revision -> Int4,
        latest_report_id -> Int8,
        first_reported_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// One row per recorded revision, with the body as posted.
    reports (id) {
        id -> Int8,
        election_id -> Text,
        ballot_box_id -> Text,
        city -> Text,
        revision -> Int4,
        reason -> Nullable<Text>,
        payload -> Json,
        payload_hash -> Bytea,
        received_at -> Timestamptz,
        parties -> Array<Text>,
        votes -> Array<Nullable<Int4>>,
        differences -> Array<Int8>,
        replaces -> Int4,
    }
}

diesel::table! {
    /// Recorded batches whose revisions are not all counted yet.
    pending_batches (first_report_id) {
        first_report_id -> Int8,
        report_ids -> Array<Int8>,
        recorded_at -> Timestamptz,
        attempts -> Int4,
        leased_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    /// Checkpoints of each election's sealed log (`crate::seal`).
    seals (election_id, sealed_through_report_id) {
        election_id -> Text,
        sealed_through_report_id -> Int8,
        sealed_count -> Int8,
        head -> Bytea,
        sealed_at -> Timestamptz,
        report_ids -> Array<Int8>,
        leaves -> Bytea,
    }
}

diesel::table! {
    /// A view: one row per party per recorded revision, the seed article's
    /// log, unnested from `reports`.
    vote_log (report_id, party) {
        report_id -> Int8,
        election_id -> Text,
        ballot_box_id -> Text,
        city -> Text,
        party -> Text,
        revision -> Int4,
        votes -> Int4,
        difference -> Int8,
        reported_at -> Timestamptz,
    }
}

diesel::table! {
    /// A view: every pending revision with its batch's claim state, for
    /// operators and tests.
    pending_reports (report_id) {
        report_id -> Int8,
        election_id -> Text,
        ballot_box_id -> Text,
        city -> Text,
        revision -> Int4,
        recorded_at -> Timestamptz,
        attempts -> Int4,
        leased_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        batch -> Int8,
    }
}

diesel::table! {
    /// Defined elections (docs/contract.md §7).
    election_definitions (election_id) {
        election_id -> Text,
        name -> Text,
        loaded_at -> Timestamptz,
    }
}

diesel::table! {
    /// The parties of defined elections.
    election_parties (election_id, party) {
        election_id -> Text,
        party -> Text,
        name -> Text,
        colour -> Text,
        position -> Int4,
    }
}

diesel::table! {
    /// The cities of defined elections, with their expected ballot boxes.
    election_cities (election_id, city) {
        election_id -> Text,
        city -> Text,
        name -> Text,
        expected_ballot_boxes -> Int4,
        position -> Int4,
        electorate -> Nullable<Int4>,
    }
}

diesel::table! {
    /// Voters registered per ballot box of defined elections.
    election_box_electorates (election_id, ballot_box_id) {
        election_id -> Text,
        ballot_box_id -> Text,
        electorate -> Int4,
    }
}

diesel::table! {
    /// The optional registry of ballot boxes of defined elections.
    election_ballot_boxes (election_id, ballot_box_id) {
        election_id -> Text,
        ballot_box_id -> Text,
        city -> Text,
    }
}

diesel::table! {
    /// Certified cities: who certified each, and when (docs/contract.md §9).
    certified_cities (election_id, city) {
        election_id -> Text,
        city -> Text,
        certified_by -> Text,
        certified_at -> Timestamptz,
    }
}

diesel::joinable!(election_parties -> election_definitions (election_id));
diesel::joinable!(election_cities -> election_definitions (election_id));

diesel::allow_tables_to_appear_in_same_query!(
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
