-- The initial schema: the durable report log (docs/contract.md §4), the per-party audit
-- log of the seed article, one lock row per ballot box, and reporting-client
-- tokens. Every row carries its election id: several elections share these
-- tables, and "adding cities or parties needs no schema change" (docs/contract.md §7).

-- One row per recorded revision of a ballot box report, written before ingest
-- answers 2xx (I1) and kept forever for audit. `completed` says whether the
-- revision's difference has reached the Redis counters; the reprocessor claims
-- pending rows with a lease (`leased_until`) and counts them again.
CREATE TABLE reports (
    id            bigserial   PRIMARY KEY,
    election_id   text        NOT NULL,
    ballot_box_id text        NOT NULL,
    city          text        NOT NULL,
    revision      integer     NOT NULL CHECK (revision >= 1),
    -- Why a revision replaces an earlier one; required above revision 1.
    reason        text        NULL CHECK (revision = 1 OR reason IS NOT NULL),
    -- The body exactly as posted (`json`, not `jsonb`, keeps it verbatim).
    payload       json        NOT NULL,
    -- SHA-256 of the report's canonical form: equal hashes are replays.
    payload_hash  bytea       NOT NULL CHECK (octet_length(payload_hash) = 32),
    received_at   timestamptz NOT NULL DEFAULT now(),
    completed     boolean     NOT NULL DEFAULT false,
    counted_at    timestamptz NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    leased_until  timestamptz NULL,
    last_error    text        NULL,
    -- A revision is recorded at most once per ballot box; replays and
    -- conflicts are decided against this row.
    CONSTRAINT reports_revision_key UNIQUE (election_id, ballot_box_id, revision)
);

-- The reprocessor's claim scans pending rows oldest first; pending rows are a
-- small, moving fraction of the table, so the index holds only those.
CREATE INDEX reports_pending_idx ON reports (id) WHERE NOT completed;

-- History and analytics read an election's reports by time window.
CREATE INDEX reports_election_received_idx ON reports (election_id, received_at);

-- The seed article's per-party log: one row per party per recorded revision,
-- including a party that went to 0 because a later revision omitted it.
-- `votes` is the revision's count for the party, `difference` the change it
-- brought to the counters (new minus the previous latest revision).
--
-- There is deliberately NO foreign key to reports. On a freshly created,
-- freshly analysed database PostgreSQL planned the foreign-key check as a
-- sequential scan of reports and throughput collapsed from 1,815 to 307
-- transactions/s within 20 s (measured; docs/benchmarks.md). Integrity holds without
-- it: a report and its log rows are always written in the same transaction by
-- the same statement (store-pg's `record`), and neither is ever deleted.
CREATE TABLE vote_log (
    report_id     bigint      NOT NULL,
    election_id   text        NOT NULL,
    ballot_box_id text        NOT NULL,
    city          text        NOT NULL,
    party         text        NOT NULL,
    revision      integer     NOT NULL CHECK (revision >= 1),
    votes         integer     NOT NULL CHECK (votes >= 0),
    difference    bigint      NOT NULL,
    reported_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (report_id, party)
);

-- Time-window analytics ("which city reported the most votes between 6 PM and
-- 7 PM?") and the counted totals of one election.
CREATE INDEX vote_log_election_reported_idx ON vote_log (election_id, reported_at);

-- One row per ballot box that ever reported. Recording locks this row first,
-- so two concurrent reports of one box are decided one after the other; it
-- also names the box's city and latest revision. `latest_revision` and
-- `latest_report_id` are NULL only inside the transaction that creates the
-- row (it is locked before its first report has an id). Updated often, so
-- pages keep room for HOT updates.
CREATE TABLE ballot_boxes (
    election_id       text        NOT NULL,
    ballot_box_id     text        NOT NULL,
    city              text        NOT NULL,
    latest_revision   integer     NULL,
    latest_report_id  bigint      NULL,
    first_reported_at timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (election_id, ballot_box_id)
) WITH (fillfactor = 80);

-- "Ballot boxes in reporting order" (docs/contract.md §5, first-reports).
CREATE INDEX ballot_boxes_first_reported_idx ON ballot_boxes (election_id, first_reported_at);

-- Reporting-client tokens. Only a SHA-256 of each token is stored, so a leak
-- of this table does not let anyone report. A token may report for any box of
-- its election, or for one box only.
CREATE TABLE api_tokens (
    id            bigserial   PRIMARY KEY,
    token_sha256  bytea       NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    election_id   text        NOT NULL,
    ballot_box_id text        NULL,
    label         text        NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz NULL
);
