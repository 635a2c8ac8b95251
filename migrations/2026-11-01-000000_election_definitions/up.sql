-- Election definitions (docs/contract.md §7): an election may be defined up front with
-- its parties (display name, colour), its cities (display name, ballot boxes
-- expected) and optionally the registry of its ballot boxes. An election
-- without a row in election_definitions is undefined and accepts any valid
-- slug. Definitions only grow: `election-ingest election load` adds parties,
-- cities and boxes and may rename or recolour them, never removes them, so
-- counted data always refers to something defined. These tables are separate
-- from the report log and never touch it.

CREATE TABLE election_definitions (
    election_id text        PRIMARY KEY,
    name        text        NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);

-- `position` keeps the file's order for display.
CREATE TABLE election_parties (
    election_id text    NOT NULL REFERENCES election_definitions ON DELETE CASCADE,
    party       text    NOT NULL,
    name        text    NOT NULL,
    colour      text    NOT NULL CHECK (colour ~ '^#[0-9a-f]{6}$'),
    position    integer NOT NULL,
    PRIMARY KEY (election_id, party)
);

CREATE TABLE election_cities (
    election_id           text    NOT NULL REFERENCES election_definitions ON DELETE CASCADE,
    city                  text    NOT NULL,
    name                  text    NOT NULL,
    expected_ballot_boxes integer NOT NULL CHECK (expected_ballot_boxes >= 1),
    position              integer NOT NULL,
    PRIMARY KEY (election_id, city)
);

-- The optional registry: which city each ballot box belongs to.
CREATE TABLE election_ballot_boxes (
    election_id   text NOT NULL,
    ballot_box_id text NOT NULL,
    city          text NOT NULL,
    PRIMARY KEY (election_id, ballot_box_id),
    FOREIGN KEY (election_id, city) REFERENCES election_cities ON DELETE CASCADE
);
