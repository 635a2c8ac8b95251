-- A ballot box's state is read from its own reports: no row per box.
--
-- Until now each box had a `ballot_boxes` row, inserted with its first
-- report and updated with every later one, and recording a batch locked the
-- rows of its existing boxes (`FOR UPDATE`) so that two batches could not
-- both decide a new revision of one box against the same latest one. That
-- row was a sixth to a fifth of PostgreSQL's CPU per report on election
-- night, when nearly every report is a new box's first: its heap tuple, its
-- primary key entry, a BRIN summary and their WAL (docs/benchmarks.md, "The
-- box row replaced by the revision chain").
--
-- Each report now names the revision it replaces (`replaces`: the box's
-- latest recorded revision when it was decided, 0 for a box's first), and
-- `reports_chain_key` makes that unique per box. Two transactions that
-- decide against the same latest revision insert the same key: the second
-- waits for the first and fails, and is retried whole, now reading the new
-- latest revision (the new box's race of before, for every box). So a box's
-- revisions form one chain, each above the one it replaces, and the chain's
-- last link (the highest `replaces`) is the box's latest revision. The
-- chain key also keeps the old guarantee of `reports_revision_key`, which
-- it replaces (one B-tree entry per report, as before): a revision can be
-- recorded only above the latest one, so no revision is recorded twice.
--
-- `ballot_boxes` stays, as a view with the table's columns, for readers.
--
-- Not expand-then-contract: apply it with every service of the old release
-- stopped (migrations/README.md).

ALTER TABLE reports ADD COLUMN replaces integer;

UPDATE reports r
SET replaces = c.previous
FROM (
    SELECT id, coalesce(lag(revision) OVER (PARTITION BY election_id, ballot_box_id
                                            ORDER BY revision), 0) AS previous
    FROM reports
) c
WHERE c.id = r.id;

ALTER TABLE reports
    ALTER COLUMN replaces SET NOT NULL,
    ADD CONSTRAINT reports_replaces_check CHECK (replaces >= 0 AND replaces < revision),
    ADD CONSTRAINT reports_chain_key UNIQUE (election_id, ballot_box_id, replaces),
    DROP CONSTRAINT reports_revision_key;

DROP TABLE ballot_boxes;

-- One row per ballot box that reported: its first report gives its city and
-- when it first reported, the last link of its chain its latest revision.
CREATE VIEW ballot_boxes AS
SELECT f.election_id, f.ballot_box_id, f.city,
       l.revision AS latest_revision, l.id AS latest_report_id,
       f.received_at AS first_reported_at, l.received_at AS updated_at
FROM reports f
CROSS JOIN LATERAL (
    SELECT r.id, r.revision, r.received_at
    FROM reports r
    WHERE r.election_id = f.election_id AND r.ballot_box_id = f.ballot_box_id
    ORDER BY r.replaces DESC
    LIMIT 1
) l
WHERE f.replaces = 0;
