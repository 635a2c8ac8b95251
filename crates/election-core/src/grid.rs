//! An election's counters as a table, for readers that read them again and
//! again (the query service's live feeds, every refresh interval).
//!
//! Why not [`Snapshot`]: its `Totals` is a map keyed by [`Counter`], so every
//! read of a 10,000-city × 20-party election allocates 400,000 id strings,
//! inserts 200,000 map entries by string comparison, and comparing two reads
//! compares them all again. A [`Grid`] keeps the ids once (sorted, shared
//! between reads of the same election with [`Arc`]) and the values in plain
//! vectors, one row per city in party order: comparing a city with the same
//! city of the previous read is a slice comparison, and a reader can tell
//! which cities moved without looking anything up.
//!
//! [`Fingerprint`] is the cheap half: a few numbers (the sizes of the sets of
//! parties, cities and ballot boxes seen, and the national counters) that
//! change with almost every report. A reader may skip a whole read while the
//! fingerprint stays the same, but only for a while: two revisions whose
//! differences cancel out nationally, or a city counter restored by healing
//! (no report), leave it unchanged, so such a reader must still read the
//! whole grid at a bounded interval.
//!
//! [`Moved`] is the change journal's answer: which cities a tally's
//! `apply` moved since a reader's [`JournalCursor`]. With it a reader reads
//! only those rows (`Tally::grid_moved`) instead of every counter: at
//! 10,000 cities × 20 parties and 1,000 reports/s, a few hundred rows per
//! refresh instead of 200,000 counters. The journal is written after the
//! counters it names, so a city it names has already moved; a move it
//! misses (a crash between the counters and the journal, a counter set by
//! hand) shows at the reader's next full read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ids::{CityId, PartyId};
use crate::store::{Counter, Snapshot};

/// An election's counters, parties and cities, as a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grid {
    /// Parties seen, in order: the columns.
    pub parties: Arc<[PartyId]>,
    /// Cities seen, in order: the rows.
    pub cities: Arc<[CityId]>,
    /// The national counter of each party (`None`: absent).
    pub national: Vec<Option<i64>>,
    /// The counters of each city, row after row, each row in party order
    /// (`None`: absent): `cities.len() × parties.len()` cells.
    pub cells: Vec<Option<i64>>,
    /// Ballot boxes counted in each city.
    pub boxes: Vec<u64>,
    /// Ballot boxes counted in the whole election.
    pub ballot_boxes_reported: u64,
    /// Counter keys that hold something that is not an integer, in order
    /// (see [`Snapshot::unreadable`]); their cells are `None`.
    pub unreadable: Vec<String>,
}

impl Grid {
    /// The counters of the city in row `index`, in party order (empty when
    /// there is no such row).
    pub fn row(&self, index: usize) -> &[Option<i64>] {
        let width = self.parties.len();
        self.cells
            .get(index * width..(index + 1) * width)
            .unwrap_or(&[])
    }

    /// Whether `self` has the same parties and cities as `other` (cheap when
    /// they share their lists).
    pub fn same_layout(&self, other: &Grid) -> bool {
        (Arc::ptr_eq(&self.parties, &other.parties) || self.parties == other.parties)
            && (Arc::ptr_eq(&self.cities, &other.cities) || self.cities == other.cities)
    }

    /// The grid of `snapshot`. Parties and cities that only its counters name
    /// (not its sets of those seen) get a column or a row too, with 0 ballot
    /// boxes.
    pub fn from_snapshot(snapshot: &Snapshot) -> Grid {
        let mut parties: BTreeSet<&PartyId> = snapshot.parties.iter().collect();
        let mut cities: BTreeSet<&CityId> = snapshot.cities.keys().collect();
        for (counter, _) in snapshot.totals.iter() {
            match counter {
                Counter::National(party) => {
                    parties.insert(party);
                }
                Counter::City(city, party) => {
                    parties.insert(party);
                    cities.insert(city);
                }
            }
        }
        let column: BTreeMap<&PartyId, usize> =
            parties.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let row: BTreeMap<&CityId, usize> =
            cities.iter().enumerate().map(|(i, c)| (*c, i)).collect();
        let width = parties.len();
        let mut national = vec![None; width];
        let mut cells = vec![None; width * cities.len()];
        for (counter, n) in snapshot.totals.iter() {
            match counter {
                Counter::National(party) => national[column[party]] = Some(n),
                Counter::City(city, party) => cells[row[city] * width + column[party]] = Some(n),
            }
        }
        Grid {
            boxes: cities
                .iter()
                .map(|city| snapshot.cities.get(*city).copied().unwrap_or(0))
                .collect(),
            parties: parties.into_iter().cloned().collect(),
            cities: cities.into_iter().cloned().collect(),
            national,
            cells,
            ballot_boxes_reported: snapshot.ballot_boxes_reported,
            unreadable: snapshot.unreadable.clone(),
        }
    }
}

/// A few numbers that change with almost every report to an election (see
/// the module docs for what they miss): compare two, never look inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<i64>>);

impl Fingerprint {
    /// A fingerprint of these numbers (`None`: a value that could not be read).
    pub fn new(numbers: Vec<Option<i64>>) -> Fingerprint {
        Fingerprint(numbers)
    }
}

/// A position in an election's change journal (see [`Moved`]): compare,
/// keep and hand back; the number means nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct JournalCursor(pub u64);

/// What the change journal says moved since a cursor (`Tally::moved_since`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Where the journal stands now: hand it to the next call.
    pub cursor: JournalCursor,
    /// The cities whose counters or ballot boxes moved after the cursor
    /// asked about, in order; `None` when the journal cannot tell (no cursor
    /// was given, or the journal was lost or started again since, as when
    /// Redis restarts empty): then read everything.
    pub cities: Option<Vec<CityId>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Totals;

    fn id<T>(parse: fn(&str) -> Result<T, crate::Problem>, text: &str) -> T {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    #[test]
    fn a_snapshot_becomes_rows_of_cities_in_party_order() {
        let labour = id(PartyId::parse, "labour");
        let tories = id(PartyId::parse, "tories");
        let leeds = id(CityId::parse, "leeds");
        let york = id(CityId::parse, "york");
        let mut totals = Totals::new();
        totals.add(Counter::National(labour.clone()), 9);
        totals.add(Counter::National(tories.clone()), 4);
        totals.add(Counter::City(york.clone(), tories.clone()), 4);
        totals.add(Counter::City(york.clone(), labour.clone()), 6);
        totals.add(Counter::City(leeds.clone(), labour.clone()), 3);
        let snapshot = Snapshot {
            totals,
            parties: [labour.clone(), tories.clone()].into_iter().collect(),
            // York only through its counters (its index entry was lost).
            cities: [(leeds.clone(), 2)].into_iter().collect(),
            ballot_boxes_reported: 2,
            unreadable: vec!["k".to_owned()],
        };
        let grid = Grid::from_snapshot(&snapshot);
        assert_eq!(&grid.parties[..], [labour, tories]);
        assert_eq!(&grid.cities[..], [leeds, york]);
        assert_eq!(grid.national, [Some(9), Some(4)]);
        assert_eq!(grid.row(0), [Some(3), None]);
        assert_eq!(grid.row(1), [Some(6), Some(4)]);
        assert!(grid.row(2).is_empty());
        assert_eq!(grid.boxes, [2, 0]);
        assert_eq!(grid.ballot_boxes_reported, 2);
        assert_eq!(grid.unreadable, ["k"]);

        let again = Grid {
            cities: grid.cities.iter().cloned().collect(),
            ..grid.clone()
        };
        assert!(grid.same_layout(&again));
        let fewer = Grid {
            cities: grid.cities[..1].iter().cloned().collect(),
            ..grid.clone()
        };
        assert!(!grid.same_layout(&fewer));
    }
}
