-- Ids compare as bytes, whatever the server's locale (docs/benchmarks.md,
-- "The ids' collation").
--
-- Every B-tree on the write path is keyed by text ids (election, ballot box,
-- city), and a column of the database's default collation compares through
-- the locale's rules unless that is exactly `C` or `POSIX`: measured, ~4 % of
-- PostgreSQL's CPU per report on a `C.UTF-8` database and 5–8 % on an ICU
-- `en-US` one. Ids are ASCII letters, digits, `-` and `_` (election-core
-- `ids`), so byte order is also the order Rust sorts them in; the listings
-- that order them by id already said `COLLATE "C"`.
--
-- Every table that joins on an id changes with it, in this one migration:
-- compared with a `C` column, a column of the default collation is compared
-- as `C`, which its own index (in the default collation) cannot serve.
-- Changing a collation rewrites no table, only the indexes on the column.
-- The two views read `reports`' columns, so they are dropped and made again
-- as they were.

DROP VIEW pending_reports;
DROP VIEW vote_log;

ALTER TABLE election_definitions
    ALTER COLUMN election_id TYPE text COLLATE "C";
ALTER TABLE election_parties
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN party TYPE text COLLATE "C";
ALTER TABLE election_cities
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN city TYPE text COLLATE "C";
ALTER TABLE election_ballot_boxes
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "C",
    ALTER COLUMN city TYPE text COLLATE "C";
ALTER TABLE election_box_electorates
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "C";
ALTER TABLE certified_cities
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN city TYPE text COLLATE "C";
ALTER TABLE api_tokens
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "C";
ALTER TABLE ballot_boxes
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "C",
    ALTER COLUMN city TYPE text COLLATE "C";
ALTER TABLE reports
    ALTER COLUMN election_id TYPE text COLLATE "C",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "C",
    ALTER COLUMN city TYPE text COLLATE "C",
    ALTER COLUMN parties TYPE text[] COLLATE "C";
ALTER TABLE seals
    ALTER COLUMN election_id TYPE text COLLATE "C";

-- The views, as the write-path migration made them.
CREATE VIEW vote_log AS
SELECT r.id AS report_id, r.election_id, r.ballot_box_id, r.city, l.party, r.revision,
       coalesce(l.votes, 0) AS votes, l.difference, r.received_at AS reported_at
FROM reports r
CROSS JOIN LATERAL unnest(r.parties, r.votes, r.differences) AS l(party, votes, difference);

CREATE VIEW pending_reports AS
SELECT r.id AS report_id, r.election_id, r.ballot_box_id, r.city, r.revision,
       p.recorded_at, p.attempts, p.leased_until, p.last_error, p.first_report_id AS batch
FROM pending_batches p
CROSS JOIN LATERAL unnest(p.report_ids) AS u(id)
JOIN reports r ON r.id = u.id;
