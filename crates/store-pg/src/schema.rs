//! The tables of `migrations/` in diesel's `table!` form, so queries built with
//! diesel's DSL are checked against the schema at compile time.
//!
//! Written by hand to match `migrations/*/up.sql` (the diesel CLI is not part
//! of the toolchain here); `diesel print-schema` with the workspace's
//! `diesel.toml` regenerates this file, and its output should not differ.
//! `vote_log` has no `joinable!` on purpose: it has no foreign key to
//! `reports` (see the migration for why); join them explicitly.

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
    /// One row per ballot box that reported: its city, latest revision, and
    /// the row lock that serialises its reports.
    ballot_boxes (election_id, ballot_box_id) {
        election_id -> Text,
        ballot_box_id -> Text,
        city -> Text,
        latest_revision -> Nullable<Int4>,
        latest_report_id -> Nullable<Int8>,
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
        completed -> Bool,
        counted_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        leased_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    /// One row per party per recorded revision: the seed article's log.
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

diesel::allow_tables_to_appear_in_same_query!(api_tokens, ballot_boxes, reports, vote_log,);
