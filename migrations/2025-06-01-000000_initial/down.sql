-- Reverts the initial schema: every table, and with them their indexes and
-- the sequences of their bigserial columns.
DROP TABLE IF EXISTS api_tokens;
DROP TABLE IF EXISTS ballot_boxes;
DROP TABLE IF EXISTS vote_log;
DROP TABLE IF EXISTS reports;
