-- The sealer's checkpoints stored without compression.
--
-- A checkpoint row lists up to 5,000 report ids (`report_ids`, 40 KB) and
-- their leaf hashes (`leaves`, 160 KB), so PostgreSQL moves both out of
-- line and, by default (`EXTENDED`), tries to compress them first. The ids
-- are consecutive numbers, which pglz does compress, at a cost: its
-- compression was a tenth of the sealing processes' CPU while ingest ran at
-- 512 connections, for a few megabytes saved per million reports. The
-- leaves are hashes, which no compressor shrinks. `EXTERNAL` keeps both out
-- of line, uncompressed (docs/benchmarks.md, "What sealing costs, and two
-- parts of it made cheaper").
--
-- Only rows written from now on are stored this way; rows already written
-- keep their form, and both read the same. A change of the catalogue only:
-- no row is rewritten, and the lock is held for an instant.
ALTER TABLE seals
    ALTER COLUMN report_ids SET STORAGE EXTERNAL,
    ALTER COLUMN leaves SET STORAGE EXTERNAL;
