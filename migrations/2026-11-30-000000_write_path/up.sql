-- The election-night write path (docs/ARCHITECTURE.md, "The write path").
--
-- Written per report before this migration: 7 heap tuples and ~18 index
-- entries (a reports row, its non-HOT rewrite by the "counted" mark, 4
-- vote_log rows, a ballot box row inserted then updated). After it: one
-- reports row (2 B-tree indexes and a BRIN), one ballot box row written once, and one
-- pending_batches row per batch, deleted once the batch is counted.
--
-- 1. The per-party log moves into the report's own row, as three parallel
--    arrays written by the same statement; `vote_log` becomes a view with the
--    columns the table had, so the seed article's log stays readable as
--    `ballot_box_id | city | party | votes | timestamp`. A party the revision
--    omitted (it went to 0) has a NULL vote in `votes` and 0 in the view:
--    the row keeps what the old log could not tell apart, a party posted
--    with 0 votes from one omitted.
-- 2. "Counted" is no longer a column of every report, flipped by an UPDATE
--    per report after the Redis apply, but a row per recorded batch in
--    `pending_batches`, deleted when the whole batch is counted. What is not
--    in pending_batches is counted.

ALTER TABLE reports
    ADD COLUMN parties     text[],
    ADD COLUMN votes       integer[],
    ADD COLUMN differences bigint[];

-- Existing data moves forward: each report takes its log rows, in party
-- order; a party is marked omitted when the posted body does not name it.
UPDATE reports r
SET parties = l.parties, votes = l.votes, differences = l.differences
FROM (
    SELECT v.report_id,
           array_agg(v.party ORDER BY v.party COLLATE "C") AS parties,
           array_agg(CASE WHEN (rr.payload -> 'votes')::jsonb ? v.party THEN v.votes END
                     ORDER BY v.party COLLATE "C") AS votes,
           array_agg(v.difference ORDER BY v.party COLLATE "C") AS differences
    FROM vote_log v
    JOIN reports rr ON rr.id = v.report_id
    GROUP BY v.report_id
) l
WHERE l.report_id = r.id;

ALTER TABLE reports
    ALTER COLUMN parties SET NOT NULL,
    ALTER COLUMN votes SET NOT NULL,
    ALTER COLUMN differences SET NOT NULL,
    ADD CONSTRAINT reports_parties_check CHECK (
        cardinality(parties) >= 1
        AND cardinality(votes) = cardinality(parties)
        AND cardinality(differences) = cardinality(parties));

-- Recorded batches not yet wholly counted. `report_ids` lists the batch's
-- fresh revisions still pending; `first_report_id` is the smallest of them
-- (the key that marking a whole batch finds it by). Rows are short-lived:
-- inserted by the batch's transaction, deleted after its Redis apply.
CREATE TABLE pending_batches (
    first_report_id bigint      PRIMARY KEY,
    report_ids      bigint[]    NOT NULL CHECK (cardinality(report_ids) >= 1),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    leased_until    timestamptz NULL,
    last_error      text        NULL
);

INSERT INTO pending_batches (first_report_id, report_ids, recorded_at, attempts, leased_until, last_error)
SELECT id, ARRAY[id], received_at, attempts, leased_until, last_error
FROM reports
WHERE NOT completed;

DROP TABLE vote_log;

-- Drops reports_pending_idx with its column.
ALTER TABLE reports
    DROP COLUMN completed,
    DROP COLUMN counted_at,
    DROP COLUMN attempts,
    DROP COLUMN leased_until,
    DROP COLUMN last_error;

-- The seed article's per-party log, as before: one row per party per
-- recorded revision. `reported_at` is the report's `received_at` (they were
-- always the same transaction's now()).
CREATE VIEW vote_log AS
SELECT r.id AS report_id, r.election_id, r.ballot_box_id, r.city, l.party, r.revision,
       coalesce(l.votes, 0) AS votes, l.difference, r.received_at AS reported_at
FROM reports r
CROSS JOIN LATERAL unnest(r.parties, r.votes, r.differences) AS l(party, votes, difference);

-- Every pending revision with its batch's claim state, for operators and
-- tests: `SELECT count(*) FROM pending_reports WHERE election_id = 'e'`.
CREATE VIEW pending_reports AS
SELECT r.id AS report_id, r.election_id, r.ballot_box_id, r.city, r.revision,
       p.recorded_at, p.attempts, p.leased_until, p.last_error, p.first_report_id AS batch
FROM pending_batches p
CROSS JOIN LATERAL unnest(p.report_ids) AS u(id)
JOIN reports r ON r.id = u.id;

-- History reads reports by time window. A B-tree on (election_id,
-- received_at) cost an index insertion per report, and on empty tables the
-- planner took it for the replay lookup by (election, box, revision),
-- reading a whole election per lookup. Reports arrive in time order, the
-- case BRIN is made for: a few pages for millions of rows, no per-row work.
-- The audit export pages by report id (the primary key) instead.
DROP INDEX reports_election_received_idx;
CREATE INDEX reports_received_brin ON reports USING brin (received_at);

-- The same for ballot boxes: without statistics the planner took the
-- (election_id, first_reported_at) B-tree for the lock statement's lookup by
-- (election, box) at about a thousand rows, filtering a whole election per
-- lookup (measured: ingest fell to 2,000 reports/s). A BRIN serves the
-- "first reports" listing's time order and cannot serve a key lookup.
DROP INDEX ballot_boxes_first_reported_idx;
CREATE INDEX ballot_boxes_first_reported_brin ON ballot_boxes USING brin (first_reported_at);

-- A box row is now inserted with its first report, never empty.
ALTER TABLE ballot_boxes
    ALTER COLUMN latest_revision SET NOT NULL,
    ALTER COLUMN latest_report_id SET NOT NULL;
