-- Back to the default storage of both columns (out of line, compressed).
ALTER TABLE seals
    ALTER COLUMN report_ids SET STORAGE EXTENDED,
    ALTER COLUMN leaves SET STORAGE EXTENDED;
