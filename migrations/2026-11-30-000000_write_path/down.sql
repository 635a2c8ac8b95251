-- Back to a vote_log table and a per-report "completed" flag.
ALTER TABLE ballot_boxes
    ALTER COLUMN latest_revision DROP NOT NULL,
    ALTER COLUMN latest_report_id DROP NOT NULL;

DROP VIEW pending_reports;
DROP INDEX reports_received_brin;
DROP INDEX ballot_boxes_first_reported_brin;
CREATE INDEX ballot_boxes_first_reported_idx ON ballot_boxes (election_id, first_reported_at);
CREATE INDEX reports_election_received_idx ON reports (election_id, received_at);
DROP VIEW vote_log;

ALTER TABLE reports
    ADD COLUMN completed    boolean     NOT NULL DEFAULT true,
    ADD COLUMN counted_at   timestamptz NULL,
    ADD COLUMN attempts     integer     NOT NULL DEFAULT 0,
    ADD COLUMN leased_until timestamptz NULL,
    ADD COLUMN last_error   text        NULL;
ALTER TABLE reports ALTER COLUMN completed SET DEFAULT false;

UPDATE reports r
SET completed = false, attempts = p.attempts, leased_until = p.leased_until, last_error = p.last_error
FROM pending_batches p
WHERE r.id = ANY(p.report_ids);
CREATE INDEX reports_pending_idx ON reports (id) WHERE NOT completed;
DROP TABLE pending_batches;

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
CREATE INDEX vote_log_election_reported_idx ON vote_log (election_id, reported_at);
INSERT INTO vote_log
SELECT r.id, r.election_id, r.ballot_box_id, r.city, l.party, r.revision,
       coalesce(l.votes, 0), l.difference, r.received_at
FROM reports r
CROSS JOIN LATERAL unnest(r.parties, r.votes, r.differences) AS l(party, votes, difference);

ALTER TABLE reports
    DROP CONSTRAINT reports_parties_check,
    DROP COLUMN parties,
    DROP COLUMN votes,
    DROP COLUMN differences;
