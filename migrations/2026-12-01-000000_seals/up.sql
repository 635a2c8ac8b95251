-- The sealed log (docs/audit.md): checkpoints of a hash chain over every
-- recorded revision of an election, in report-id order.
--
-- The sealer (`election-reprocessor run`, store-pg's `seal`) appends a row
-- here a few seconds after reports are recorded, never inside the recording
-- transaction, so sealing costs ingest no lock and no statement. Each row
-- closes a segment of the chain: the reports with an id above the previous
-- row's `sealed_through_report_id` and at most its own, listed with the
-- SHA-256 of each one's canonical form (`leaves`, 32 bytes per report, in
-- the order of `report_ids`), and the chain's head after the last of them.
-- Keeping the leaves is what lets `verify` name the one report that was
-- altered, removed or inserted, instead of only saying that a segment
-- differs; heads alone are what outsiders note and compare.
--
-- Rows are appended and never updated: one per election per sealing round
-- that found new reports.
CREATE TABLE seals (
    election_id              text        NOT NULL,
    sealed_through_report_id bigint      NOT NULL,
    -- Reports in the chain up to and including this checkpoint.
    sealed_count             bigint      NOT NULL CHECK (sealed_count >= 1),
    head                     bytea       NOT NULL CHECK (octet_length(head) = 32),
    sealed_at                timestamptz NOT NULL DEFAULT now(),
    -- This segment's reports, in id order, and their leaf hashes.
    report_ids               bigint[]    NOT NULL CHECK (cardinality(report_ids) >= 1),
    leaves                   bytea       NOT NULL
        CHECK (octet_length(leaves) = 32 * cardinality(report_ids)),
    PRIMARY KEY (election_id, sealed_through_report_id)
);
