DROP TABLE election_box_electorates;
ALTER TABLE election_cities DROP COLUMN electorate;
