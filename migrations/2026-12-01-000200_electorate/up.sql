-- Electorates (docs/contract.md §7): voters registered per city (`electorate = N` in a
-- [[cities]] entry) and per ballot box (the [electorate] table), both
-- optional. They give turnout where known and let the query service flag a
-- report with more votes than its box's electorate (GET .../flags). Part of
-- the definition: written by `election load`, which may change them.

ALTER TABLE election_cities
    ADD COLUMN electorate integer NULL CHECK (electorate >= 1);

CREATE TABLE election_box_electorates (
    election_id   text    NOT NULL REFERENCES election_definitions ON DELETE CASCADE,
    ballot_box_id text    NOT NULL,
    electorate    integer NOT NULL CHECK (electorate >= 1),
    PRIMARY KEY (election_id, ballot_box_id)
);
