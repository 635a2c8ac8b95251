-- Certification (docs/contract.md §9): a city's results declared final. Who certified
-- it and when is kept here; from then on the recording transaction refuses
-- every new report or revision of the city's ballot boxes (409 `certified`,
-- store-pg `record`), reading this table under the election's definition
-- lock, which `election-ingest election certify` holds exclusively while it
-- inserts. A certification is never withdrawn by the tools (a row deleted by
-- hand re-opens the city). Only defined cities can be certified: the
-- foreign key ties a row to its city, and a definition never drops a city.

CREATE TABLE certified_cities (
    election_id  text        NOT NULL,
    city         text        NOT NULL,
    certified_by text        NOT NULL CHECK (certified_by <> ''),
    certified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (election_id, city),
    FOREIGN KEY (election_id, city) REFERENCES election_cities ON DELETE CASCADE
);
