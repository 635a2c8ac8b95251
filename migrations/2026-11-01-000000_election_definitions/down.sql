-- Reverts the election definitions; the report log is untouched.
DROP TABLE IF EXISTS election_ballot_boxes;
DROP TABLE IF EXISTS election_cities;
DROP TABLE IF EXISTS election_parties;
DROP TABLE IF EXISTS election_definitions;
