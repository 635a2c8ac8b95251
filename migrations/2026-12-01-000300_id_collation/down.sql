-- Back to the database's default collation for every id column.

DROP VIEW pending_reports;
DROP VIEW vote_log;

ALTER TABLE election_definitions
    ALTER COLUMN election_id TYPE text COLLATE "default";
ALTER TABLE election_parties
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN party TYPE text COLLATE "default";
ALTER TABLE election_cities
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN city TYPE text COLLATE "default";
ALTER TABLE election_ballot_boxes
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "default",
    ALTER COLUMN city TYPE text COLLATE "default";
ALTER TABLE election_box_electorates
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "default";
ALTER TABLE certified_cities
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN city TYPE text COLLATE "default";
ALTER TABLE api_tokens
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "default";
ALTER TABLE ballot_boxes
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "default",
    ALTER COLUMN city TYPE text COLLATE "default";
ALTER TABLE reports
    ALTER COLUMN election_id TYPE text COLLATE "default",
    ALTER COLUMN ballot_box_id TYPE text COLLATE "default",
    ALTER COLUMN city TYPE text COLLATE "default",
    ALTER COLUMN parties TYPE text[] COLLATE "default";
ALTER TABLE seals
    ALTER COLUMN election_id TYPE text COLLATE "default";

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
