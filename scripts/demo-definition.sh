#!/usr/bin/env bash
# Writes the election definition of the demo's simulated night to standard
# output: the parties, cities and ballot boxes election-loadgen uses
# (tools/loadgen/src/lib.rs: parties party-00.., cities city-0000.., box i in
# city i % CITIES), with each city expecting exactly the boxes loadgen sends
# it, so percent reporting climbs to 100%. No registry: 20,000 box ids would
# add ~300 KB to the repository for no extra demo value.
#
#   scripts/demo-definition.sh [BOXES] [CITIES] [PARTIES] > demo/demo-night.toml
set -euo pipefail
boxes=${1:-20000}
cities=${2:-300}
parties=${3:-6}
awk -v boxes="$boxes" -v cities="$cities" -v parties="$parties" 'BEGIN {
    split("Harbour Party,Civic Alliance,Green Future,Workers League,Liberal Union,Rural Movement,Unity List,Reform Bloc,Northern Voice,Independent Slate", names, ",")
    split("#e4003b,#0087dc,#02a95b,#faa61a,#a855f7,#12b6cf,#f472b6,#84cc16,#fb923c,#94a3b8", colours, ",")
    print "# The demo'"'"'s simulated election night (just demo), written by"
    print "# scripts/demo-definition.sh " boxes " " cities " " parties "."
    print "id = \"demo-night\""
    print "name = \"Demo election night\""
    for (p = 0; p < parties; p++) {
        print ""
        print "[[parties]]"
        printf "id = \"party-%02d\"\n", p
        print "name = \"" names[p % 10 + 1] (p >= 10 ? " " int(p / 10 + 1) : "") "\""
        print "colour = \"" colours[p % 10 + 1] "\""
    }
    for (c = 0; c < cities; c++) {
        expected = int(boxes / cities) + (c < boxes % cities ? 1 : 0)
        if (expected == 0) continue
        print ""
        print "[[cities]]"
        printf "id = \"city-%04d\"\n", c
        printf "name = \"City %d\"\n", c
        print "expected_ballot_boxes = " expected
    }
}'
