-- Back to a row per ballot box, rebuilt from the reports, and the unique
-- revision key.
DROP VIEW ballot_boxes;

CREATE TABLE ballot_boxes (
    election_id       text COLLATE "C" NOT NULL,
    ballot_box_id     text COLLATE "C" NOT NULL,
    city              text COLLATE "C" NOT NULL,
    latest_revision   integer     NOT NULL,
    latest_report_id  bigint      NOT NULL,
    first_reported_at timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (election_id, ballot_box_id)
) WITH (fillfactor = 80);

INSERT INTO ballot_boxes
    (election_id, ballot_box_id, city, latest_revision, latest_report_id,
     first_reported_at, updated_at)
SELECT f.election_id, f.ballot_box_id, f.city, l.revision, l.id, f.received_at, l.received_at
FROM reports f
CROSS JOIN LATERAL (
    SELECT r.id, r.revision, r.received_at
    FROM reports r
    WHERE r.election_id = f.election_id AND r.ballot_box_id = f.ballot_box_id
    ORDER BY r.revision DESC
    LIMIT 1
) l
WHERE f.revision = (SELECT min(m.revision) FROM reports m
                    WHERE m.election_id = f.election_id AND m.ballot_box_id = f.ballot_box_id);

CREATE INDEX ballot_boxes_first_reported_brin ON ballot_boxes USING brin (first_reported_at);

ALTER TABLE reports
    ADD CONSTRAINT reports_revision_key UNIQUE (election_id, ballot_box_id, revision),
    DROP CONSTRAINT reports_chain_key,
    DROP CONSTRAINT reports_replaces_check,
    DROP COLUMN replaces;
