//! Reading an election's counters as a [`Grid`], and its [`Fingerprint`],
//! for the query service's live feeds (`Tally::grid`, `Tally::fingerprint`).
//!
//! Why apart from `snapshot`: a feed reads the same election every 200 ms.
//! At 10,000 cities × 20 parties, listing the 10,000 cities (`SMEMBERS`),
//! naming 200,000 keys as `String`s and keeping the values in a map keyed by
//! id strings cost far more than Redis's own work. So:
//!
//! - With a grid read before (`known`), its parties and cities are trusted
//!   while `SCARD` of their sets still says as many: one pipelined round
//!   (the `SCARD`s, each city's ballot boxes, the counters in `MGET`s of
//!   [`MGET_CHUNK`]). If a count moved, the sets are listed again and the
//!   read starts over. A set that lost as many members as it gained would go
//!   unnoticed, so callers pass `None` now and then (the feed: on its
//!   periodic full read).
//! - Key names are written into the command buffers, never kept: no
//!   allocation per counter.
//! - The fingerprint is one small pipeline: the two `SCARD`s and the
//!   national counters. The nation's ballot boxes are the sum of the
//!   cities' (there is no election-wide set of boxes: `crate`'s "Indexes"),
//!   so a new box that moves no counter, in a city already seen (a box that
//!   reports 0 votes everywhere), leaves the fingerprint as it was and shows
//!   at the next full read; with the change journal, which names its city,
//!   at the next refresh.
//! - With the cities the change journal named (`journal`), only their rows
//!   are read, with the national counters and the set sizes, in one round,
//!   and written over a copy of the grid read before.

use election_core::{CityId, ElectionId, Fingerprint, Grid, PartyId};
use redis::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::nodes::{Reply, Request};
use crate::{
    MGET_CHUNK, RedisStoreError, RedisTally, count, keys, next_reply, optional_integer, parse_ids,
};

/// The cell `index` of a grid's read order: the national counters of every
/// party, then each city's row. Plain appends, not `format!`: this runs for
/// every counter of every read.
fn cell_key(
    into: &mut String,
    election: &ElectionId,
    parties: &[PartyId],
    cities: &[CityId],
    index: usize,
) {
    into.clear();
    into.push_str("election:");
    into.push_str(election.as_str());
    let width = parties.len();
    let party = if index < width {
        index
    } else {
        let cell = index - width;
        into.push_str(":city:");
        into.push_str(cities[cell / width].as_str());
        cell % width
    };
    into.push_str(":party:");
    into.push_str(parties[party].as_str());
}

fn simple(name: &'static str, key: &str) -> Request {
    let mut command = redis::cmd(name);
    command.arg(key);
    Request {
        command,
        name,
        slot: keys::slot(key.as_bytes()),
    }
}

impl RedisTally {
    /// `Tally::grid`: see the module docs.
    pub(crate) fn read_grid(
        &self,
        election: &ElectionId,
        known: Option<&Grid>,
    ) -> Result<Grid, RedisStoreError> {
        if let Some(known) = known {
            let (grid, current) =
                self.read_cells(election, &known.parties, &known.cities, known.cities.len())?;
            if current {
                return Ok(grid);
            }
        }
        // List the sets, then read. A set that grows between the two rounds
        // is read as listed: the next read sees its new size.
        let requests = [
            simple("SMEMBERS", &keys::parties(election)),
            simple("SMEMBERS", &keys::cities(election)),
        ];
        let mut replies = self.nodes.run(&requests).into_iter();
        let mut parties: Vec<PartyId> =
            parse_ids(next_reply(&mut replies)?, "SMEMBERS", PartyId::parse)?;
        let mut cities: Vec<CityId> =
            parse_ids(next_reply(&mut replies)?, "SMEMBERS", CityId::parse)?;
        parties.sort();
        cities.sort();
        let cities: Arc<[CityId]> = cities.into();
        let (grid, _) = self.read_cells(election, &parties.into(), &cities, cities.len())?;
        Ok(grid)
    }

    /// `Tally::grid_moved`: `known` with the rows of `cities`, the national
    /// counters and the ballot-box counts read again, in one pipelined
    /// round; a whole read when the layout moved (a city of `cities` that
    /// `known` lacks, sets of another size) or `known` names unreadable
    /// counters (which rows they are in is not worth tracking).
    pub(crate) fn read_grid_moved(
        &self,
        election: &ElectionId,
        known: &Grid,
        cities: &[CityId],
    ) -> Result<Grid, RedisStoreError> {
        let rows: Option<Vec<usize>> = cities
            .iter()
            .map(|city| known.cities.binary_search(city).ok())
            .collect();
        let Some(rows) = rows.filter(|_| known.unreadable.is_empty()) else {
            return self.read_grid(election, None);
        };
        let (part, current) = self.read_cells(
            election,
            &known.parties,
            &cities.to_vec().into(),
            known.cities.len(),
        )?;
        if !current {
            return self.read_grid(election, None);
        }
        let width = known.parties.len();
        let mut grid = known.clone();
        for (read, &row) in rows.iter().enumerate() {
            grid.cells[row * width..(row + 1) * width].copy_from_slice(part.row(read));
            grid.boxes[row] = part.boxes[read];
        }
        grid.national = part.national;
        // The nation's boxes are the cities' (`read_cells`): the rows kept
        // from `known` with the rows read again.
        grid.ballot_boxes_reported = grid.boxes.iter().sum();
        grid.unreadable = part.unreadable;
        Ok(grid)
    }

    /// One pipelined round reading every counter of `parties` × `cities`,
    /// each city's ballot boxes and the sizes of the sets of parties and
    /// cities seen; with whether those sizes are still `parties`' and
    /// `all_cities` (`cities` may be some of them).
    fn read_cells(
        &self,
        election: &ElectionId,
        parties: &Arc<[PartyId]>,
        cities: &Arc<[CityId]>,
        all_cities: usize,
    ) -> Result<(Grid, bool), RedisStoreError> {
        let mut requests = Vec::with_capacity(cities.len() + 3);
        requests.push(simple("SCARD", &keys::parties(election)));
        requests.push(simple("SCARD", &keys::cities(election)));
        for city in cities.iter() {
            requests.push(simple("SCARD", &keys::city_boxes(election, city)));
        }
        let cells = parties.len() * (cities.len() + 1);
        let chunks = self.cell_requests(election, parties, cities, cells, &mut requests);
        let mut replies = self.nodes.run(&requests).into_iter();
        let seen_parties = count(next_reply(&mut replies)?, "SCARD")?;
        let seen_cities = count(next_reply(&mut replies)?, "SCARD")?;
        let current = seen_parties == parties.len() as u64 && seen_cities == all_cities as u64;
        let mut boxes = Vec::with_capacity(cities.len());
        for _ in cities.iter() {
            boxes.push(count(next_reply(&mut replies)?, "SCARD")?);
        }
        let mut values: Vec<Option<i64>> = vec![None; cells];
        let mut unreadable = Vec::new();
        let mut key = String::new();
        for chunk in chunks {
            let replied = next_reply(&mut replies)?;
            let answers = match &replied.value {
                Value::Array(answers) if answers.len() == chunk.len() => answers,
                _ => return Err(replied.unexpected("MGET")),
            };
            for (answer, index) in answers.iter().zip(chunk) {
                match optional_integer(answer) {
                    Some(value) => values[index] = value,
                    None => {
                        cell_key(&mut key, election, parties, cities, index);
                        unreadable.push(key.clone());
                    }
                }
            }
        }
        unreadable.sort();
        let width = parties.len();
        let national = values[..width].to_vec();
        values.drain(..width);
        // A box reports in one city only, so the cities' sets hold every box
        // once: this is the nation's count when `cities` are all of them
        // (`read_grid_moved` sums its merged rows itself).
        let ballot_boxes_reported = boxes.iter().sum();
        let grid = Grid {
            parties: Arc::clone(parties),
            cities: Arc::clone(cities),
            national,
            cells: values,
            boxes,
            ballot_boxes_reported,
            unreadable,
        };
        Ok((grid, current))
    }

    /// Appends the `MGET`s of the first `cells` cells (in read order) to
    /// `requests`: consecutive cells in chunks on a standalone Redis, cells
    /// grouped by slot on a Cluster. Answers the cells each one reads.
    fn cell_requests(
        &self,
        election: &ElectionId,
        parties: &[PartyId],
        cities: &[CityId],
        cells: usize,
        requests: &mut Vec<Request>,
    ) -> Vec<Vec<usize>> {
        let mut key = String::with_capacity(64);
        let groups: Vec<Vec<usize>> = if self.nodes.is_cluster() {
            let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            for index in 0..cells {
                cell_key(&mut key, election, parties, cities, index);
                by_slot
                    .entry(keys::slot(key.as_bytes()))
                    .or_default()
                    .push(index);
            }
            by_slot.into_values().collect()
        } else {
            vec![(0..cells).collect()]
        };
        let mut chunks = Vec::new();
        for group in groups {
            for chunk in group.chunks(MGET_CHUNK) {
                let mut command = redis::cmd("MGET");
                let mut slot = None;
                for &index in chunk {
                    cell_key(&mut key, election, parties, cities, index);
                    // Every key of a chunk is in the slot of its first.
                    slot.get_or_insert_with(|| keys::slot(key.as_bytes()));
                    command.arg(key.as_str());
                }
                requests.push(Request {
                    command,
                    name: "MGET",
                    slot: slot.unwrap_or(0),
                });
                chunks.push(chunk.to_vec());
            }
        }
        chunks
    }

    /// `Tally::fingerprint`: the sizes of the sets of parties and cities
    /// seen, then the national counters of `known`'s parties.
    pub(crate) fn read_fingerprint(
        &self,
        election: &ElectionId,
        known: &Grid,
    ) -> Result<Fingerprint, RedisStoreError> {
        let mut requests = vec![
            simple("SCARD", &keys::parties(election)),
            simple("SCARD", &keys::cities(election)),
        ];
        let chunks = self.cell_requests(
            election,
            &known.parties,
            &[],
            known.parties.len(),
            &mut requests,
        );
        let replies: Vec<Reply> = self.nodes.run(&requests);
        let mut replies = replies.into_iter();
        let mut numbers = Vec::with_capacity(2 + known.parties.len());
        for _ in 0..2 {
            let n = count(next_reply(&mut replies)?, "SCARD")?;
            numbers.push(Some(i64::try_from(n).unwrap_or(i64::MAX)));
        }
        let mut national = vec![Some(0); known.parties.len()];
        for chunk in chunks {
            let replied = next_reply(&mut replies)?;
            let answers = match &replied.value {
                Value::Array(answers) if answers.len() == chunk.len() => answers,
                _ => return Err(replied.unexpected("MGET")),
            };
            for (answer, index) in answers.iter().zip(chunk) {
                // Absent reads as 0; a value that is not an integer as `None`.
                national[index] = optional_integer(answer).map(|n| n.unwrap_or(0));
            }
        }
        numbers.extend(national);
        Ok(Fingerprint::new(numbers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_national_counters_then_city_rows() {
        let election = ElectionId::parse("e").unwrap();
        let parties: Vec<PartyId> = ["a", "b"]
            .iter()
            .map(|p| PartyId::parse(p).unwrap())
            .collect();
        let cities: Vec<CityId> = ["x", "y"]
            .iter()
            .map(|c| CityId::parse(c).unwrap())
            .collect();
        let mut key = String::new();
        let names: Vec<String> = (0..6)
            .map(|index| {
                cell_key(&mut key, &election, &parties, &cities, index);
                key.clone()
            })
            .collect();
        assert_eq!(
            names,
            [
                "election:e:party:a",
                "election:e:party:b",
                "election:e:city:x:party:a",
                "election:e:city:x:party:b",
                "election:e:city:y:party:a",
                "election:e:city:y:party:b",
            ]
        );
    }
}
