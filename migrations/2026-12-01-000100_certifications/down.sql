DROP TABLE certified_cities;
