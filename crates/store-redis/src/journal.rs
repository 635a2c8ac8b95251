//! The change journal: which cities `apply` moved, so the query service's
//! live feeds read only those rows (`Tally::moved_since`,
//! `Tally::grid_moved`) instead of every counter of the election.
//!
//! Why: at 10,000 cities × 20 parties a whole read is 210,000 counters and
//! 10,000 ballot-box counts (~430 ms of Redis and client time on our
//! machine, docs/benchmarks.md), while at 1,000 reports/s a refresh every
//! 200 ms sees at most a few hundred cities move.
//!
//! The journal of an election is one sorted set, `election:<e>:meta:moved`
//! ([`keys::moved`]): each city's score is the journal position at which it
//! last moved, and the member `""` (no city id is empty) holds the current
//! position. After a batch's script calls, `apply` runs [`JOURNAL_SCRIPT`]
//! once per election with the batch's cities (which, below): it adds one to
//! the position and scores those cities with it, in one atomic step on one
//! key (so on a Cluster it needs no shared slot). A reader keeps the
//! position it last saw and asks for the members scored above it: one
//! pipelined round of `ZSCORE` and `ZRANGEBYSCORE` on that key.
//!
//! When it is written: on a standalone Redis in the batch's own pipeline,
//! after the script calls, naming every city of the batch (no round trip
//! more; Redis runs a pipeline in order). On a Cluster the journal's slot is
//! usually on another master than the counters', and pipelines to several
//! masters run side by side, so it is a round of its own once the script
//! calls have answered, naming the cities of the revisions that moved or
//! failed (a failure may have moved some groups); none when nothing moved.
//! One case lets the journal land first: a script call answered `NOSCRIPT`
//! (a restarted Redis) is sent again after the rest of its pipeline ran.
//! The query service therefore also reads again, once, the cities its
//! previous refresh read, which covers a move that lands within a refresh
//! interval of its journal entry.
//!
//! Its size is one entry per city, whatever the number of reports, so it
//! needs no trimming, and a reader however far behind can always be told
//! what moved. A position lower than the reader's means the journal was lost
//! (a Redis restarted empty, a flush): the reader is told to read
//! everything.
//!
//! # A new journal starts below every older one
//!
//! A journal lost and begun again must read as lost however many steps it
//! took before a reader looked: counted from 1 again, a new journal soon
//! passes a small election's old position, and its reader would then read
//! only the cities named since, showing the others as they were until its
//! next full read. So the step that creates the journal starts it at
//! [`ORIGIN_CEILING`] minus the Redis server's clock in microseconds
//! (`TIME`) rather than at 1: each journal begins lower than any journal
//! begun before it, by the microseconds between their first steps, far more
//! than the steps a reader lets pass (one a batch, read every fraction of a
//! second). Positions stay whole numbers under 2^53, exact as scores. Only
//! a server clock set back between the two, or a journal begun by an
//! earlier version of this script (counted from 1), leaves the old gap,
//! bounded by the next full read. A reader never looks inside a position
//! ([`JournalCursor`]): it compares it with the last one it saw.
//!
//! `guarded_add` (`reconcile --repair`) journals too: the city of a city
//! counter, or no city for a national one, which still raises the position,
//! so a reader reads the national counters again.
//!
//! What it does not see, by design: a move whose journal write failed or
//! never happened (ingest killed between the counters and the journal; the
//! write's error is logged, never the revision's), and counters changed by
//! hand (a typed `INCRBY`). Readers still read everything now and then (the
//! query service: every `FULL_READ_INTERVAL`), which bounds how long such a
//! change stays unseen. The journal is written after the counters it names, so a
//! reader that reads the journal and then the rows it names never misses a
//! move the journal holds.

use std::collections::{BTreeMap, BTreeSet};

use election_core::{CityId, Counting, ElectionId, JournalCursor, Moved};
use redis::Value;

use crate::nodes::{Replied, Request};
use crate::{RedisStoreError, RedisTally, keys, next_reply, parse_ids};

/// One step of the journal: `KEYS[1]` the journal, `ARGV` the cities moved.
/// The position is the score of the member `""`. The cities are scored by
/// one `ZADD` per thousand, the thousand keeping `unpack` far within Lua's
/// stack. With a `ZADD` per city the step was about a tenth of Redis's
/// instructions per report (callgrind, batches of 16 reports from ~15
/// cities); one `ZADD` saves the calls' own cost, a change within the
/// spread of repeated runs (docs/benchmarks.md, "Each counter once per
/// call").
///
/// The first step of a journal moves its position to its origin (the
/// module docs). The origin is written with `%.0f`: Redis turns a Lua
/// number into an argument with 14 significant digits, which would round a
/// 16-digit position.
pub(crate) const JOURNAL_SCRIPT: &str = r"
local position = redis.call('ZINCRBY', KEYS[1], 1, '')
if tonumber(position) == 1 then
  local now = redis.call('TIME')
  local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
  position = string.format('%.0f', 4503599627370496 - micros)
  redis.call('ZADD', KEYS[1], position, '')
end
local i = 1
while i <= #ARGV do
  local scored = {}
  for j = i, math.min(i + 999, #ARGV) do
    scored[#scored + 1] = position
    scored[#scored + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], unpack(scored))
  i = i + 1000
end
return position
";

/// The journal's member holding the current position.
const POSITION: &str = "";

/// 2^52: a journal's origin is this minus the server's clock in
/// microseconds (the journal step's script spells it out). About 2.7 ×
/// 10^15 in 2026, positive until the year 2112, and at least 4.5 × 10^15
/// steps below 2^53, where doubles stop being exact.
pub const ORIGIN_CEILING: u64 = 1 << 52;

/// The `EVAL`s journalling the revisions of `batch` that `moved` says may
/// have moved counters: one per election, its cities each named once.
pub(crate) fn requests(batch: &[Counting], moved: impl Fn(usize) -> bool) -> Vec<Request> {
    let mut cities: BTreeMap<&ElectionId, BTreeSet<&CityId>> = BTreeMap::new();
    for (index, counting) in batch.iter().enumerate() {
        if moved(index) {
            cities
                .entry(&counting.election)
                .or_default()
                .insert(&counting.city);
        }
    }
    cities
        .into_iter()
        .map(|(election, cities)| request(election, cities.into_iter().map(CityId::as_str)))
        .collect()
}

/// One journal step naming `cities` of `election`, routed to the journal's
/// slot (`apply`'s batches, `guarded_add`'s repairs).
pub(crate) fn request<'a>(
    election: &ElectionId,
    cities: impl IntoIterator<Item = &'a str>,
) -> Request {
    let key = keys::moved(election);
    Request {
        slot: keys::slot(key.as_bytes()),
        command: command("EVALSHA", journal_sha(), &key, cities),
        name: "EVALSHA",
    }
}

/// The SHA1 of [`JOURNAL_SCRIPT`], which the tally sends by `EVALSHA` (it
/// is among the scripts loaded on `NOSCRIPT`).
fn journal_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| redis::Script::new(JOURNAL_SCRIPT).get_hash().to_owned())
}

/// The command of one journal step naming `cities` of `election`, for
/// whoever writes counters as the tally does without going through it (the
/// bench's stream writer).
pub fn step<'a>(election: &ElectionId, cities: impl IntoIterator<Item = &'a str>) -> redis::Cmd {
    // `EVAL`: such writers have no `NOSCRIPT` handling of their own.
    command("EVAL", JOURNAL_SCRIPT, &keys::moved(election), cities)
}

/// [`JOURNAL_SCRIPT`] on the journal `key`, by `EVAL` (`script` its source)
/// or `EVALSHA` (`script` its SHA1).
fn command<'a>(
    verb: &str,
    script: &str,
    key: &str,
    cities: impl IntoIterator<Item = &'a str>,
) -> redis::Cmd {
    let mut command = redis::cmd(verb);
    command.arg(script).arg(1).arg(key);
    for city in cities {
        command.arg(city);
    }
    command
}

/// A score as Redis answers it (a bulk string under RESP2, a double under
/// RESP3); an absent member is position 0.
fn position(replied: &Replied) -> Result<u64, RedisStoreError> {
    let number = match &replied.value {
        Value::Nil => return Ok(0),
        Value::Double(number) => Some(*number),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<f64>().ok()),
        _ => None,
    };
    match number {
        // Positions are whole numbers far below 2^53: exact as doubles.
        Some(number) if number >= 0.0 && number.fract() == 0.0 => Ok(number as u64),
        _ => Err(replied.unexpected("ZSCORE")),
    }
}

impl RedisTally {
    /// `Tally::moved_since`: see the module docs.
    pub(crate) fn read_moved(
        &self,
        election: &ElectionId,
        since: Option<JournalCursor>,
    ) -> Result<Moved, RedisStoreError> {
        let key = keys::moved(election);
        let slot = keys::slot(key.as_bytes());
        let mut score = redis::cmd("ZSCORE");
        score.arg(&key).arg(POSITION);
        let mut requests = vec![Request {
            command: score,
            name: "ZSCORE",
            slot,
        }];
        if let Some(JournalCursor(since)) = since {
            let mut range = redis::cmd("ZRANGEBYSCORE");
            range.arg(&key).arg(format!("({since}")).arg("+inf");
            requests.push(Request {
                command: range,
                name: "ZRANGEBYSCORE",
                slot,
            });
        }
        let mut replies = self.nodes.run(&requests).into_iter();
        // The position is read first: a step landing between the two
        // commands is read again next time, never missed.
        let now = position(&next_reply(&mut replies)?)?;
        let cities = match since {
            Some(JournalCursor(since)) if since <= now => {
                let members: Vec<Option<CityId>> =
                    parse_ids(next_reply(&mut replies)?, "ZRANGEBYSCORE", |text| {
                        if text == POSITION {
                            Ok(None)
                        } else {
                            CityId::parse(text).map(Some)
                        }
                    })?;
                let mut cities: Vec<CityId> = members.into_iter().flatten().collect();
                cities.sort();
                Some(cities)
            }
            _ => None,
        };
        Ok(Moved {
            cursor: JournalCursor(now),
            cities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_starts_a_journal_at_the_origin_the_docs_name() {
        assert!(
            JOURNAL_SCRIPT.contains(&format!("'%.0f', {ORIGIN_CEILING} - micros")),
            "{JOURNAL_SCRIPT}"
        );
    }
}
