//! The live counters in Redis or Redis Cluster: [`RedisTally`], behind
//! election-core's `Tally` trait.
//!
//! # Exactly once (I2, docs/contract.md §3)
//!
//! Each counted revision moves the national and city counter of every party in
//! its difference. A counter and a marker naming the revision move in **one
//! Lua script call** ([`APPLY_SCRIPT`]): for each *group* of counters (a
//! revision's counters sharing a slot, see below), if the group's marker is
//! set it does nothing; otherwise it checks every counter it will move, then
//! sets the marker and `INCRBY`s every counter of the group. Redis runs a
//! script atomically, so a crash, a timeout or a second worker can never
//! leave a counter moved without its marker, or moved twice: re-applying is
//! always safe, and the engine re-applies whatever it is not sure about. (The
//! seed's "EXISTS, then INCRBY, then SET" in separate commands double counts
//! on a crash between them, and when two workers race.)
//!
//! One call carries many groups: every group of a batch that shares a slot
//! (on a standalone Redis every group of the batch), in batch order, up to
//! [`GROUPS_PER_CALL`]; the script runs them one after another, each seeing
//! what the ones before it wrote, so the same revision twice in a batch
//! counts once. It answers each group's outcome (moved, already marked, or
//! that group's error), and each revision is answered as if each of its
//! groups had been a call of its own. Why: a call has a cost of its own
//! (the Lua entry, a `KEYS` and `ARGV` of its own, the reply), paid once per
//! batch instead of once per revision (see "Round trips").
//!
//! # Each counter once per call
//!
//! The revisions of a batch share counters (every one moves the national
//! counters of its parties; those of one city share that city's), and in
//! [`APPLY_SCRIPT`] each group reads and moves each of its counters. So a
//! call of two or more groups goes first as [`MERGED_APPLY_SCRIPT`]: the
//! tally sums the amounts per counter, and the script reads each distinct
//! counter once, sets every group's marker (learning from the same `HSET`
//! whether it was set before) and, if nothing stands in the way, moves each
//! counter once by its sum. Anything that would make one group's outcome
//! differ from the others (a marker already set, a counter that is not a
//! plain integer, an anchor that may hold a per-key marker) makes it leave
//! nothing written (the markers it had set are taken out) and answer 0; the
//! same groups then go through [`APPLY_SCRIPT`] in a second round, each with
//! the outcome it would have alone. The answers and what Redis holds after
//! are those of the group-by-group call: the markers are the same fields,
//! and each counter ends at the same value. Measured with callgrind on the
//! bench's load (4 parties, 200 cities, ~16 reports per batch): 150,716
//! instructions of Redis per report group by group, 84,208–88,508 merged
//! (docs/benchmarks.md, "Each counter once per call"); the marker set and
//! checked by one `HSET` instead of an `HEXISTS` before it saves another
//! 4–6 % ("The marker checked by its own `HSET`").
//!
//! # All or nothing per script: counters that are not integers
//!
//! Redis does not roll back a script whose later command fails: a script that
//! set its marker and then met a counter holding `oops` would leave the
//! counters before it moved, the others not, and the marker set, so every
//! later apply would skip the revision for good. So [`APPLY_SCRIPT`] reads
//! every counter first (one `GET` each, through `pcall`, so a key of another
//! type is caught too) and, if one is not an integer `INCRBY` accepts (or
//! adding to it would leave 64 bits), answers an error naming the key and
//! what it holds, having written nothing. That revision's answer is then
//! `StoreError::Failed` (a `Refused` `EVALSHA`, from the group's own error
//! inside the call's reply; the other groups of the call, and the other
//! revisions of the batch, are answered on their own): ingest answers `202`
//! pending, the reprocessor keeps trying it and records the error, and once
//! the key is fixed or deleted the next apply counts it exactly once. The
//! unit of all or nothing is the group, not the call: on a Cluster the
//! groups of the revision without the bad key move (with their markers) and
//! the re-apply moves exactly the rest, and in a batched call the groups of
//! other revisions move whatever one group holds.
//!
//! Reads do not let one bad key hide the others: `snapshot` and `counters`
//! leave a counter that is not an integer out (as if absent) and the
//! snapshot names it (`Snapshot::unreadable`); `MGET` answers nil for a key
//! of another type, so such a key reads as absent there.
//! [`RedisTally::unreadable_counters`] (for `reconcile`) finds both kinds
//! with `TYPE` and `GET`.
//!
//! # A Redis that may evict keys
//!
//! Our keys have no TTL and losing any is wrong (an evicted marker counts its
//! revision twice on the next re-apply, an evicted counter loses votes), so
//! the tally writes nothing while the server, or any master of the Cluster,
//! has an `allkeys-*` `maxmemory-policy`: every revision of the batch gets
//! [`RedisStoreError::EvictingPolicy`] (`StoreError::Failed`, saying to set
//! `noeviction` or a `volatile-*` policy), and stays pending. The policy is
//! read with `INFO memory` on every new connection and cached per node (see
//! `nodes`), so the hot path adds no round trip. Reads still work.
//!
//! # Hash slots and markers
//!
//! On a Cluster all keys of one script call must share a hash slot. Counter
//! keys are fixed by docs/contract.md §4 (users `GET` them) and carry no hash tag, so each
//! lands in the slot of its whole name ([`keys::slot`]). The adapter therefore
//! groups a revision's counters by slot, one marker per group, and a script
//! call carries only groups of one slot.
//! A group's *anchor* is its first counter key in order; its marker is the
//! field `<box>:<revision>` of the hash `{<anchor>}:applied:<bucket>`
//! ([`keys::marker_bucket`], [`keys::marker_field`]), whose hash tag puts it
//! in the anchor's slot. The grouping depends only on key names, never on
//! which node serves a slot, so resharding and failover do not change it. On
//! standalone Redis a revision is one group: one script call and one marker
//! for all its counters, named the same way.
//!
//! A revision is answered `Applied::Now` when any of its groups moved now,
//! `Applied::Already` when every group's marker was already set, and an error
//! when any group's call failed (then some groups may have moved; re-applying
//! later moves exactly the others).
//!
//! # Marker buckets: why markers are hash fields
//!
//! Markers used to be keys of their own, `{<anchor>}:applied:<box>:<revision>`.
//! A national counter's slot then held a key per ballot box naming that
//! party, about a million in a national election, and a slot moves between
//! masters (resharding) key by key. Measured at 1 M boxes with `election-bench
//! reshard` (docs/reliability.md, "Resharding"): the move took 10.4 s and
//! 1,005,011 keys, and **every** revision moving that counter failed for its
//! whole duration. A new revision's marker does not exist yet, and Redis
//! answers `TRYAGAIN` to a multi-key command naming an absent key in a
//! migrating slot, on the source and (after `ASKING`) on the importing node
//! alike: counting of that party stalled for the whole move, its revisions
//! left pending for the reprocessor.
//!
//! Markers are now fields of a few hashes per anchor: the bucket is the
//! FNV-1a hash of the ballot box modulo [`keys::NATIONAL_BUCKETS`] (16,384)
//! for a national anchor or [`keys::CITY_BUCKETS`] (512) for a city one. So:
//! - a slot holds at most ~16 K marker keys however large the election, and
//!   moves in a fraction of a second (`MIGRATE` of a 60-field hash costs
//!   about what one key did);
//! - once an election is large every bucket exists, so a script names only
//!   keys that exist, and Redis runs it on whichever node holds them all:
//!   during a move it fails (`TRYAGAIN`, sent again within the call) only
//!   while its bucket and its counter are on different nodes;
//! - at a million boxes a national anchor's bucket holds ~61 fields (the
//!   fullest ~90), within `hash-max-listpack-entries` (128), so every bucket
//!   stays a compact listpack, where a marker costs a few bytes more than its
//!   name instead of a whole key's ~120 bytes (figures below).
//!
//! What did not change: the marker and the increments are still one script
//! (split in two, a crash between them counts twice or never), and the
//! script still checks every counter before it writes anything. All
//! revisions of a box share its bucket (the hash is of the box alone).
//!
//! # Markers of the per-key layout
//!
//! A revision counted before buckets has a per-key marker
//! ([`keys::legacy_marker`]) and no field, and must not count again. The
//! script therefore also looks for that key, by name, without declaring it
//! (a declared key that is absent would make every script wait during a
//! move again), unless the anchor carries its layout flag
//! `{<anchor>}:applied:layout` ([`keys::layout_flag`]): the script sets it on
//! every counter it creates, because no per-key marker can be anchored on a
//! counter created under buckets. Anchors counted before buckets have no
//! flag and keep looking (one `EXISTS` within the script); while their slot
//! migrates their scripts wait as before, the flag being a declared key that
//! is absent. `unapplied` (healing, `reconcile`) reads the fields, then looks
//! for the per-key markers of the revisions it did not find there.
//!
//! Per-key markers can be dropped once none of the revisions they name will
//! be applied again: with an election's keys when it is archived, or after
//! turning each into its field (`HSET` the field and `DEL` the key in one
//! script, then set the anchor's flag), which is not built yet. Upgrading:
//! stop every writer of the per-key layout before starting one with buckets
//! (an old script does not read buckets, so the two side by side could
//! count a revision twice). Deleting a counter by hand while per-key markers
//! name it would let the next script flag it and count its old revisions
//! again: delete an election's keys as a whole.
//!
//! # Markers have no TTL
//!
//! A revision may be re-applied after any delay: by the reprocessor after a
//! long Redis or network outage, or when a worker's lease expires hours after
//! it applied but before it marked the revision counted. A marker that expired
//! before that would let the revision count twice, so markers live as long as
//! the counters (deleting an election's keys deletes both).
//!
//! Memory, measured with `election-bench reshard --boxes 1000000
//! --standalone-memory` (Redis 7.0, `used_memory` before and after 1 M boxes
//! of 4 to 10 parties in 200 cities; docs/benchmarks.md): 100 bytes per box
//! standalone (156 with an election-wide set of boxes as well as the
//! cities', 245 with per-key markers); 484 bytes per box on a 3-master
//! Cluster, summed over the masters (541 with the election's set, 2,007 with
//! per-key markers: 14.0 M keys then, 1.16 M now). A marker
//! costs its field and a few bytes of listpack, where a key of its own cost
//! ~120 bytes (~140 in cluster mode, which also indexes keys by slot). The
//! saving grows with the election: at 100,000 boxes the Cluster held 1,467
//! bytes per box against 1,937, because a city anchor's ~500 boxes spread
//! over 512 buckets leave about one field per bucket. The layout flags add
//! one small key per counter.
//!
//! # Indexes
//!
//! So totals can be read without knowing the parties and cities in advance,
//! every apply also adds (idempotently, `SADD`) to `election:<e>:meta:parties`,
//! `election:<e>:meta:cities` and `election:<e>:meta:city:<c>:boxes`
//! ([`keys`]). The nation's ballot boxes reported are the sum of the cities'
//! (a box reports in one city only: `Conflict::OtherCity`), read with them.
//! An election-wide set of every box, `election:<e>:meta:boxes`, was kept
//! until 2026-12-03: it held a second copy of every box id, over a third of
//! the index sets' time in Redis and ~50 bytes a box (docs/benchmarks.md,
//! "No election-wide set of ballot boxes"). It is no longer written or read;
//! an election counted before keeps it until its keys are deleted, and may
//! drop it (`DEL`) at any time. Upgrading: start the query services of this
//! version before ingest and the reprocessor, since a query service from
//! before reads the election's set, which writers of this version no longer
//! add to.
//!
//! # Round trips
//!
//! Redis time per report is the budget (docs/benchmarks.md), and round trips
//! dominate it. A whole batch of revisions is one pipeline per node (standalone:
//! one pipeline) holding the index `SADD`s, then one `EVALSHA` per slot the
//! batch's groups fall in (standalone: one for the batch), each of at most
//! [`GROUPS_PER_CALL`] groups (merged where it can be; a merged call that
//! answers 0 costs its groups a second round), then the change journal's
//! step (`journal`: in the same pipeline on a standalone Redis, a round of
//! its own after the calls on a Cluster); pipelines are written to every
//! node before any reply is read. Scripts are sent by their SHA1; a
//! `NOSCRIPT` reply (a restarted or promoted node, a `SCRIPT FLUSH`) loads
//! all of them on every master and
//! sends the call again. A call that a slot migration keeps refusing
//! (`TRYAGAIN`: its keys are split between the two nodes) is sent again one
//! group per call, so each group whose keys moved together counts during the
//! move as it would alone.
//!
//! What the batched call saves is the call's own cost, not the groups'.
//! Counted with callgrind (instructions of a private `redis-server`, 5,000
//! revisions of 4 parties in 200 cities, batches of 64, after a warm-up;
//! docs/benchmarks.md): 146,495 instructions per revision with a call per
//! revision, 138,177 with a call per batch, 130,874 once the check also skips
//! its `EXISTS` when `MGET` found every counter (−11 %; −8 % in batches of
//! 16). Most of what is left is per group: the `redis.call`s (the marker's
//! `HSET`, the flag's `EXISTS`, the `MGET`, an `INCRBY` per counter),
//! interpreting the check, and turning each argument into a Lua string.
//! Gathering a call's `INCRBY`s per counter in Lua, tried, cost more than it
//! saved (173,466); gathering them in the tally is what the merged call does
//! (see "Each counter once per call").
//! [`RedisTally`]'s `snapshot` reads the index sets in one pipelined round,
//! then every counter with `MGET`s of keys sharing a slot, in a second round.
//!
//! # Who the servers are
//!
//! Healing sweeps at once when Redis may have lost what it held
//! (`Tally::incarnation`, watched every second by the reprocessor). Each
//! master's `run_id` changes when it restarts or another takes its place;
//! a flush keeps the server and its run id, and the change journal only
//! shows a flush of the master that holds it. So each master also holds a
//! witness key ([`keys::witness`], in a slot it serves), set to a token when
//! absent, in the same round trip as `INFO server` that reads it back: a
//! master emptied while it runs comes back with a new token, whichever of
//! the Cluster's masters it is. Like every write, the witness is not set on
//! a master that may evict keys (there counting is refused anyway). A slot
//! moved to another master may move the witness with it and change the
//! token once: a sweep for nothing.
//!
//! # Failures
//!
//! Connections have connect and response timeouts ([`RedisOptions`]), so a
//! dead or stalled Redis gives `StoreError::Unavailable` in about one timeout.
//! I/O errors, timeouts, `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`,
//! `READONLY` and unsettled redirections are `Unavailable` (retry later); other
//! errors, among them a counter that is not an integer and an evicting
//! policy, are `Failed` (an operator must act; the reprocessor keeps retrying
//! either way). `MOVED` refreshes the slot map and `ASK` follows the
//! migration, both within the same call (see `nodes`).

mod error;
mod grid;
mod journal;
pub mod keys;
mod nodes;
mod policy;
mod target;

use std::collections::{BTreeMap, BTreeSet};

use election_core::{
    Applied, CityId, Counter, Counting, ElectionId, Fingerprint, Grid, Incarnation, JournalCursor,
    Moved, PartyId, ReportId, Snapshot, StoreError, Tally, Totals,
};
use redis::Value;

pub use error::RedisStoreError;
pub use journal::{ORIGIN_CEILING as JOURNAL_ORIGIN_CEILING, step as journal_step};
pub use target::{RedisOptions, RedisTarget, parse_target};

/// A tally on the Redis or Redis Cluster that `redis_url` names (any form
/// [`parse_target`] takes), with one `timeout` for connecting and for each
/// answer: what every service does with its `REDIS_URL` and
/// `REDIS_TIMEOUT_MS`. Like [`RedisTally::connect`], it does not connect yet.
pub fn open(
    redis_url: &str,
    timeout: std::time::Duration,
    pool_size: usize,
) -> Result<RedisTally, StoreError> {
    let target = parse_target(redis_url)
        .map_err(|error| error.into_store_error("reading the Redis URL".to_owned()))?;
    let options = RedisOptions {
        connect_timeout: timeout,
        response_timeout: timeout,
        pool_size,
    };
    RedisTally::connect(&target, &options)
}

use nodes::{Nodes, Replied, Reply, Request};

/// The script that applies groups of counters, each for one revision and all
/// or nothing: one group per call, or many (the tally sends every group of a
/// batch that shares a slot in one call, up to [`GROUPS_PER_CALL`]).
///
/// A group is laid out in `KEYS` and `ARGV` side by side, `ARGV[i]` going
/// with `KEYS[i]`: first the group's marker bucket with the marker's field
/// in it, then its anchor's layout flag with the name of the revision's
/// per-key marker of the layout before buckets, then its counters (the
/// anchor first) with their amounts. All keys of a call share one slot
/// ([`keys`]).
///
/// - **One group**: `#ARGV == #KEYS`, so `KEYS[1]` is the bucket, `KEYS[2]`
///   the flag, `KEYS[3..]` the counters, `ARGV[1]` the field, `ARGV[2]` the
///   per-key marker's name, `ARGV[i]` the amount for `KEYS[i]` (`i >= 3`).
///   The reply is the group's outcome: 1, 0 or an error.
/// - **Several groups**: the groups one after another in `KEYS` and
///   `ARGV[1..#KEYS]`, then `ARGV[#KEYS + g]` the number of keys of group
///   `g` (2 + its counters). The reply is an array holding each group's
///   outcome in order, an error being an error reply inside the array, so a
///   bad group does not stop its call-mates.
///
/// A group's outcome is 0 when its revision is already marked, changing and
/// checking nothing else: its field is in the bucket (set before the call or
/// by an earlier group of the same call: the same revision twice counts
/// once), or, for an anchor counted before buckets (its counter exists and
/// it has no layout flag), its per-key marker exists. That key is read
/// without being declared, so a slot migration never waits on it; if it
/// cannot be read here (the slot is migrating and the key is not on this
/// node), the whole call answers `TRYAGAIN` having written nothing (every
/// group's marker is looked up before any group writes), and it is sent
/// again.
///
/// Otherwise the group first reads every counter it will move: each must be
/// absent or hold an integer `INCRBY` accepts (`0` or `-?[1-9][0-9]*`
/// within 64 bits), and adding its amount must stay within 64 bits. The
/// common case costs one `MGET`, and one multi-key `EXISTS` when a counter
/// reads as nil there (a key of another type reads as nil in the first and
/// counts in the second); a value that is long, odd or of another type
/// sends it to a careful check, one `GET` per counter through `pcall`. If one does not, the group's outcome is an
/// error naming the key and what it holds (a value abridged to 40 bytes),
/// e.g. `ERR counter election:e:city:c:party:a holds "oops", not an
/// integer`, having written nothing for that group: no marker, no counter.
/// Only then does it set the marker's field and `INCRBY` every counter, and
/// its outcome is 1; a counter that did not exist gets its layout flag
/// `{<counter>}:applied:layout` too (no per-key marker can be anchored on a
/// counter created under buckets). Groups run in order, each seeing what
/// the ones before it wrote, exactly as if each were a call of its own.
///
/// Redis does not roll back a script whose later command fails, so checking
/// before the group's first write is what makes a bad key leave the
/// revision pending and untouched instead of half applied behind its
/// marker. The marker and the increments are one script for the same
/// reason: split in two, a crash between them counts twice or never.
pub const APPLY_SCRIPT: &str = r#"
-- Each group's first key: one group, or the sizes after KEYS' arguments.
local starts = {}
local next_key = 1
if #ARGV == #KEYS then
  starts[1] = 1
  next_key = #KEYS + 1
else
  for g = #KEYS + 1, #ARGV do
    local size = tonumber(ARGV[g])
    if not size or size < 3 then
      return redis.error_reply('ERR group ' .. (g - #KEYS) .. ' has ' .. ARGV[g]
        .. ' keys; a group has a bucket, a flag and at least one counter')
    end
    starts[#starts + 1] = next_key
    next_key = next_key + size
  end
end
if next_key ~= #KEYS + 1 then
  return redis.error_reply('ERR the groups name ' .. (next_key - 1) .. ' keys, the call '
    .. #KEYS)
end
starts[#starts + 1] = next_key

-- Every group's marker, before anything is written (so a per-key marker
-- that cannot be checked here stops the call before it wrote anything).
local marked = {}
for g = 1, #starts - 1 do
  local first = starts[g]
  if redis.call('HEXISTS', KEYS[first], ARGV[first]) == 1 then
    marked[g] = true
  -- An anchor counted before buckets may hold a per-key marker of this
  -- revision; one that carries the flag, or whose counter is new, cannot.
  -- (Groups of this call create counters, with their flags, but never flag
  -- an existing one, so what is found here holds for the whole call.)
  elseif redis.call('EXISTS', KEYS[first + 1]) == 0
      and redis.call('EXISTS', KEYS[first + 2]) == 1 then
    local legacy = redis.pcall('EXISTS', ARGV[first + 1])
    if type(legacy) == 'table' then
      return redis.error_reply('TRYAGAIN per-key marker ' .. ARGV[first + 1]
        .. ' cannot be checked here while its slot migrates')
    end
    marked[g] = legacy == 1
  end
end

local function integer(value)
  if value == '0' then
    return true
  end
  local sign, digits = string.match(value, '^(%-?)([1-9]%d*)$')
  if not digits or #digits > 19 then
    return false
  end
  if #digits < 19 then
    return true
  end
  if sign == '-' then
    return digits <= '9223372036854775808'
  end
  return digits <= '9223372036854775807'
end

local function shown(value)
  local text = string.gsub(string.sub(value, 1, 40), '[^%w%p ]', '?')
  if #value > 40 then
    text = text .. '...'
  end
  return '"' .. text .. '"'
end

-- Reads the counters KEYS[from..to]: their values (nil where absent), and
-- the error naming the first one INCRBY would refuse, if any.
local function check(from, to)
  -- Fast path: one MGET for every counter, and one EXISTS when some read as
  -- nil. Plain integers of at most 15 characters (well within 64 bits
  -- whatever is added) pass; a key of another type reads as nil in MGET but
  -- counts in EXISTS; anything else goes to the careful check below, which
  -- names the key.
  local values = redis.call('MGET', unpack(KEYS, from, to))
  local present = 0
  local careful = false
  for i = from, to do
    local value = values[i - from + 1]
    if value then
      present = present + 1
      if #value > 15 or #ARGV[i] > 15
          or not (value == '0' or string.find(value, '^%-?[1-9]%d*$')) then
        careful = true
      end
    end
  end
  if not careful and present < to - from + 1
      and redis.call('EXISTS', unpack(KEYS, from, to)) ~= present then
    careful = true
  end
  if careful then
    for i = from, to do
      local value = redis.pcall('GET', KEYS[i])
      local problem = nil
      if type(value) == 'table' then
        problem = 'holds a ' .. redis.call('TYPE', KEYS[i])['ok'] .. ', not an integer'
      elseif value then
        local amount = ARGV[i]
        if not integer(value) then
          problem = 'holds ' .. shown(value) .. ', not an integer'
        elseif (#value > 15 or #amount > 15)
            and math.abs(tonumber(value) + tonumber(amount)) >= 9.2e18 then
          problem = 'holds ' .. value .. ': adding ' .. amount .. ' would overflow 64 bits'
        end
      end
      if problem then
        return values, 'ERR counter ' .. KEYS[i] .. ' ' .. problem
      end
    end
  end
  return values, nil
end

-- Then each group in order: all or nothing, whatever the others do.
local set = {}
local outcomes = {}
for g = 1, #starts - 1 do
  local first, last = starts[g], starts[g + 1] - 1
  local bucket, field = KEYS[first], ARGV[first]
  set[bucket] = set[bucket] or {}
  if marked[g] or set[bucket][field] then
    outcomes[g] = 0
  else
    local values, problem = check(first + 2, last)
    if problem then
      outcomes[g] = redis.error_reply(problem)
    else
      redis.call('HSET', bucket, field, '1')
      set[bucket][field] = true
      for i = first + 2, last do
        if not values[i - first - 1] then
          -- A new counter: no per-key marker can be anchored on it. (Its
          -- flag is in its own slot, the group's; only the anchor's is
          -- declared, and the others are written only when a key was
          -- absent, which a slot migration never lets a multi-key script
          -- see.)
          local flag = KEYS[first + 1]
          if i > first + 2 then
            flag = '{' .. KEYS[i] .. '}:applied:layout'
          end
          redis.call('SET', flag, 'buckets')
        end
        redis.call('INCRBY', KEYS[i], ARGV[i])
      end
      outcomes[g] = 1
    end
  end
end
if #ARGV == #KEYS then
  return outcomes[1]
end
return outcomes
"#;

/// The script that applies a whole call's groups at once when nothing stands
/// in the way, or writes nothing and answers 0 so the tally sends the same
/// groups through [`APPLY_SCRIPT`], group by group.
///
/// Why a second script: in [`APPLY_SCRIPT`] every group reads and moves
/// each of its counters, so a batch of revisions in one city moves that
/// city's and the nation's counters once per revision: eight `INCRBY`s and
/// an eight-key `MGET` per revision of 4 parties, most of Redis's cost per
/// report (docs/benchmarks.md, "One script call per batch"). Here the tally
/// has already summed the call's amounts per counter (each counter once,
/// however many revisions move it), so the script reads and moves each
/// distinct counter once, and per revision only sets its marker (finding
/// whether it was set in the same command). Summing in Lua was tried and
/// cost more than it saved; summing in the tally costs Redis nothing. So was
/// writing the new values with one `MSET` instead of an `INCRBY` each: 27 %
/// more instructions, `MSET` costing as much per key and Lua's `tonumber`
/// more (docs/benchmarks.md, "The counters written by one `MSET`").
///
/// Sums are only right if every group of the call moves, so the script
/// first checks everything that could make one group behave differently
/// from the others, and answers 0, having written nothing, if anything
/// does: a marker already set, an anchor that may hold a per-key marker of
/// the layout before buckets (no layout flag on a counter that exists), or
/// a counter that is not a plain integer of at most 15 characters (or a key
/// of another type). [`APPLY_SCRIPT`] then gives each group the outcome it
/// would have alone (already marked, or the error naming the bad counter).
/// The tally merges only calls of at least two groups whose markers are all
/// different and whose sums stay below 10^15, so no sum can overflow.
///
/// `ARGV[1]` is the number of groups `G`. `KEYS[1..G]` are their marker
/// buckets, `KEYS[G+1..2G]` their anchors' layout flags, `KEYS[2G+1..]` the
/// distinct counters. `ARGV[1+g]` is group `g`'s marker field, `ARGV[1+G+g]`
/// the index of its anchor among the counters (1-based), and
/// `ARGV[1+2G+i]` the summed amount of counter `i`. All keys share a slot.
/// The reply is 1 (every group moved, with its marker) or 0 (nothing
/// written). The counters and flags are read before anything is written;
/// the markers are then set one by one, and the first found already set
/// (or failing) takes out the ones this call set before it, so a refusal
/// leaves no trace. A counter that did not exist gets its layout flag, as
/// in [`APPLY_SCRIPT`].
pub const MERGED_APPLY_SCRIPT: &str = r#"
local g = tonumber(ARGV[1])
if not g or g < 1 or #KEYS < 2 * g + 1 or #ARGV ~= #KEYS + 1 then
  return redis.error_reply('ERR a merged call names ' .. #KEYS .. ' keys and '
    .. #ARGV .. ' arguments for ' .. tostring(ARGV[1]) .. ' groups')
end
local first_counter = 2 * g + 1

-- An anchor that may hold a per-key marker sends the call group by group:
-- it exists without its layout flag. One EXISTS of every distinct flag
-- tells when all exist (an election under way); otherwise each flag missing
-- is looked at.
local flags, anchors = {}, {}
for i = 1, g do
  local flag = KEYS[g + i]
  if not anchors[flag] then
    anchors[flag] = KEYS[2 * g + tonumber(ARGV[1 + g + i])]
    flags[#flags + 1] = flag
  end
end
if redis.call('EXISTS', unpack(flags)) < #flags then
  for _, flag in ipairs(flags) do
    if redis.call('EXISTS', flag) == 0 and redis.call('EXISTS', anchors[flag]) == 1 then
      return 0
    end
  end
end

-- Counters: plain integers of at most 15 characters, or absent (a key of
-- another type reads as nil in MGET but counts in EXISTS).
local values = redis.call('MGET', unpack(KEYS, first_counter, #KEYS))
local present = 0
for i = 1, #KEYS - 2 * g do
  local value = values[i]
  if value then
    present = present + 1
    if #value > 15 or not (value == '0' or string.find(value, '^%-?[1-9]%d*$')) then
      return 0
    end
  end
end
if present < #KEYS - 2 * g
    and redis.call('EXISTS', unpack(KEYS, first_counter, #KEYS)) ~= present then
  return 0
end

-- Markers: each is set, and one that was set already (HSET adds no field)
-- sends the call group by group, having taken out again the fields this
-- call added, before any counter moved: the call leaves no trace. (The
-- tally never merges two groups with the same marker, so a field found
-- here was set before the call.) Setting and checking in one command is
-- one redis.call per group instead of an HEXISTS and an HSET. An HSET that
-- fails (a bucket of another type; out of memory, which only a script's
-- first write can meet) is undone the same way and answered as its error.
for i = 1, g do
  local added = redis.pcall('HSET', KEYS[i], ARGV[1 + i], '1')
  if added ~= 1 then
    for j = 1, i - 1 do
      redis.call('HDEL', KEYS[j], ARGV[1 + j])
    end
    if type(added) == 'table' then
      return added
    end
    return 0
  end
end

-- Nothing stands in the way: every counter once.
for i = 1, #KEYS - 2 * g do
  local key = KEYS[2 * g + i]
  if not values[i] then
    redis.call('SET', '{' .. key .. '}:applied:layout', 'buckets')
  end
  redis.call('INCRBY', key, ARGV[1 + 2 * g + i])
end
return 1
"#;

/// The script that rewrites one counter only if it holds what was observed
/// (`reconcile --repair`, Phase B; see `election_core::reconcile`).
///
/// `KEYS[1]` is the counter, `ARGV[1]` the value observed (an absent counter
/// holds 0), `ARGV[2]` the amount to add. Returns 1 when it added, 0 when the
/// counter held something else (and then it changes nothing): another
/// number, a value that is not an integer, a key of another type. Values are
/// compared as text (`ARGV[1]` is written the way Redis writes integers), so
/// the comparison is exact over all 64 bits. One key, so on a Cluster it runs
/// in that key's slot; it sets no marker. Sent with `EVAL` (it runs a handful
/// of times per repair, not per report).
pub const GUARDED_ADD_SCRIPT: &str = "\
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' then
  return 0
end
if (current or '0') == ARGV[1] then
  redis.call('INCRBY', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Keys per `MGET` when reading totals: large enough to amortise the command,
/// small enough to keep each reply modest.
const MGET_CHUNK: usize = 1000;

/// Groups per call of [`APPLY_SCRIPT`] at most: the groups of a batch that
/// share a slot (standalone: every group of the batch) go in calls of up
/// to this many, one after another in the same pipeline.
///
/// Redis runs a script atomically: while one runs, every other client of
/// that server (of that Cluster master) waits, readers included. A group of
/// a revision's 8 counters (4 parties) costs the server 15–20 µs inside a
/// call (measured with `INFO commandstats` on the project's machine), so a
/// call of 64 such groups holds it for about a millisecond, and 256 would
/// hold it for 4–5 ms, the whole p99 budget of a query. A larger batch (a
/// reprocessor's claim, a large bulk job, ingest's batches under load)
/// becomes several calls, between which other clients' commands run. What
/// a call costs on its own (~3 µs: the Lua entry, its `KEYS` and `ARGV`
/// tables, the reply) is shared out to a few hundredths of a microsecond
/// per group at 64, so a larger cap would save almost nothing.
pub const GROUPS_PER_CALL: usize = 64;

/// The name of the gauge every service exports from
/// [`RedisTally::evicting_gauge`], and its help text.
pub const EVICTING_GAUGE: &str = "redis_evicting_policy";
/// See [`EVICTING_GAUGE`].
pub const EVICTING_GAUGE_HELP: &str = "1 while a Redis node's maxmemory-policy may evict keys \
     (allkeys-*): nothing is counted until it is noeviction or volatile-*; 0 otherwise (from the \
     last check of each node, made on every new connection).";

/// The live counters in Redis or Redis Cluster. See the crate docs.
///
/// Cheap to share (`Arc<RedisTally>`): it holds a pool of connections per
/// node, and concurrent callers each use their own.
pub struct RedisTally {
    nodes: Nodes,
    /// The SHA1 of [`APPLY_SCRIPT`], for `EVALSHA`.
    script_sha: String,
    /// The SHA1 of [`MERGED_APPLY_SCRIPT`].
    merged_sha: String,
}

/// The scripts loaded on a node that answers `NOSCRIPT`.
const SCRIPTS: &[&str] = &[APPLY_SCRIPT, MERGED_APPLY_SCRIPT, journal::JOURNAL_SCRIPT];

/// Merged calls only sum amounts below this, so a sum added to a counter of
/// at most 15 characters can never leave 64 bits ([`MERGED_APPLY_SCRIPT`]).
const MERGED_SUM_LIMIT: i64 = 1_000_000_000_000_000;

impl std::fmt::Debug for RedisTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTally")
            .field("cluster", &self.nodes.is_cluster())
            .finish_non_exhaustive()
    }
}

/// One script call of a revision: a group of counters sharing a slot, with
/// the names its marker needs (see [`keys`]).
struct Group {
    /// The marker bucket, `{<anchor>}:applied:<bucket>`.
    bucket: String,
    /// The marker's field in it, `<box>:<revision>`.
    field: String,
    /// The anchor's layout flag.
    flag: String,
    /// The counters, the anchor first, with their amounts.
    counters: Vec<(String, i64)>,
}

impl Group {
    /// The group of `counters` (keys with amounts) of `counting`'s revision,
    /// anchored on its first key in order; `None` for no counters.
    fn of(counting: &Counting, mut counters: Vec<(String, i64)>) -> Option<Group> {
        counters.sort();
        let anchor = &counters.first()?.0;
        Some(Group {
            bucket: keys::marker_bucket(anchor, &counting.ballot_box),
            field: keys::marker_field(&counting.ballot_box, counting.revision),
            flag: keys::layout_flag(anchor),
            counters,
        })
    }

    /// The per-key marker of the layout before buckets, named only where
    /// it is sent (group-by-group calls; the check for counted revisions
    /// names it from the anchor only for a field found missing), not for
    /// every revision planned.
    fn legacy(&self) -> String {
        keys::legacy_marker_of_field(&self.counters[0].0, &self.field)
    }
}

/// Who is answered by one request of an apply pipeline.
enum Owner {
    /// One script call: its groups in call order, each with the index of
    /// its revision in the batch.
    Scripts(Vec<(usize, Group)>),
    /// One call of [`MERGED_APPLY_SCRIPT`] for these groups: all moved, or
    /// nothing written and the groups to be sent as [`Owner::Scripts`].
    Merged(Vec<(usize, Group)>),
    /// An index update serving these revisions.
    Index(Vec<usize>),
}

impl RedisTally {
    /// A tally on `target`. It does not connect yet, so a Redis that is down
    /// at startup does not stop a service from starting: the first
    /// [`apply`](Tally::apply) then answers `Unavailable`. Use
    /// [`ping`](RedisTally::ping) for readiness checks.
    ///
    /// Fails (`StoreError::Failed`) only on a malformed URL or options.
    pub fn connect(target: &RedisTarget, options: &RedisOptions) -> Result<RedisTally, StoreError> {
        let nodes = Nodes::new(target, *options, SCRIPTS)
            .map_err(|error| error.into_store_error("configuring the redis tally".into()))?;
        Ok(RedisTally {
            nodes,
            script_sha: redis::Script::new(APPLY_SCRIPT).get_hash().to_owned(),
            merged_sha: redis::Script::new(MERGED_APPLY_SCRIPT)
                .get_hash()
                .to_owned(),
        })
    }

    /// Checks that Redis answers: `PING` on the server, or on every master of
    /// the Cluster after checking that every slot is served.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.nodes
            .ping()
            .map_err(|error| error.into_store_error("checking that redis answers".into()))
    }

    /// Fails when the server, or any master of the Cluster, has a
    /// `maxmemory-policy` that may evict keys (`allkeys-*`): the error names
    /// the node and the policy and says what to set. Nodes whose verdict is
    /// missing or stale are asked (`INFO memory`); the others answer from
    /// the cache. [`Tally::apply`] makes the same check before it writes.
    pub fn check_policy(&self) -> Result<(), StoreError> {
        match self.nodes.evicting_master() {
            Some(error) => Err(error
                .into_store_error("checking that redis will not evict counters or markers".into())),
            None => Ok(()),
        }
    }

    /// Why this tally refuses to write, from the last checks of the masters
    /// (no round trip): `redis node <node> has maxmemory-policy <policy> ...`
    /// for the first master found with an `allkeys-*` policy, or `None`. For
    /// metrics and readiness details.
    pub fn evicting_policy(&self) -> Option<String> {
        let (node, policy) = self.nodes.evicting_nodes().into_iter().next()?;
        Some(RedisStoreError::EvictingPolicy { node, policy }.to_string())
    }

    /// What a service's `/readyz` says of Redis: `Err` when it does not
    /// answer; otherwise notes, one when a master's `maxmemory-policy` may
    /// evict keys (the service stays ready: reports are still recorded and
    /// answered, but nothing is counted until the policy is fixed). Asks the
    /// nodes whose policy verdict is stale; the others answer from the cache.
    pub fn readiness(&self) -> Result<Vec<String>, String> {
        self.ping().map_err(|e| format!("redis: {e}"))?;
        let _ = self.check_policy();
        Ok(self
            .evicting_policy()
            .map(|why| format!("redis: {why}"))
            .into_iter()
            .collect())
    }

    /// The value of [`EVICTING_GAUGE`]: 1 while a master's policy may evict
    /// keys, from the last checks (no round trip).
    pub fn evicting_gauge(&self) -> f64 {
        f64::from(u8::from(self.evicting_policy().is_some()))
    }

    /// The counter keys of `election` that hold something that is not an
    /// integer (a value `INCRBY` refuses, or a key of another type): every
    /// counter of the parties and cities the index sets name, plus `also`.
    /// Each is read with `TYPE` and `GET`, one pipelined round after the
    /// index sets (for `reconcile`, not for the hot path). Such a counter is
    /// left out of [`Tally::snapshot`] and [`Tally::counters`] (as if
    /// absent), and the apply script refuses to move it.
    pub fn unreadable_counters(
        &self,
        election: &ElectionId,
        also: &[Counter],
    ) -> Result<Vec<UnreadableCounter>, StoreError> {
        self.read_unreadable(election, also).map_err(|error| {
            error.into_store_error(format!(
                "looking for counters of election {election} that are not integers"
            ))
        })
    }

    /// How many requests this tally has written to Redis nodes so far: one
    /// per pipeline per node, plus the occasional single command (reading
    /// the Cluster's slot map, loading the script, `PING`). Connection
    /// handshakes, and the `INFO memory` each new connection asks for the
    /// node's `maxmemory-policy`, are not counted. For metrics and for tests
    /// of the cost of a batch.
    pub fn round_trips(&self) -> u64 {
        self.nodes.round_trips()
    }

    /// A revision's counters grouped as its script calls move them (by hash
    /// slot on a Cluster, all together on a standalone Redis), each group
    /// anchored on its first key in order.
    fn groups(&self, counting: &Counting) -> Vec<Group> {
        let mut counters = Vec::with_capacity(2 * counting.difference.len());
        for (party, n) in counting.difference.iter() {
            counters.push((keys::national(&counting.election, party), n));
            counters.push((keys::city(&counting.election, &counting.city, party), n));
        }
        if !self.nodes.is_cluster() {
            return Group::of(counting, counters).into_iter().collect();
        }
        let mut by_slot: BTreeMap<u16, Vec<(String, i64)>> = BTreeMap::new();
        for (key, n) in counters {
            by_slot
                .entry(keys::slot(key.as_bytes()))
                .or_default()
                .push((key, n));
        }
        by_slot
            .into_values()
            .filter_map(|counters| Group::of(counting, counters))
            .collect()
    }

    /// Plans one batch: index updates first, then the script calls.
    fn plan_apply(&self, batch: &[Counting]) -> (Vec<Request>, Vec<Owner>) {
        let mut requests = Vec::new();
        let mut owners = Vec::new();

        // Index sets, merged across the batch, each serving the revisions
        // that named something in it.
        for (key, members) in index_members(batch) {
            let mut served: Vec<usize> = members.values().flatten().copied().collect();
            served.sort_unstable();
            served.dedup();
            let mut command = redis::cmd("SADD");
            command
                .arg(&key)
                .arg(members.into_keys().collect::<Vec<_>>());
            requests.push(Request {
                command,
                name: "SADD",
                slot: keys::slot(key.as_bytes()),
            });
            owners.push(Owner::Index(served));
        }

        // One script call per slot for every group of the batch in it
        // (standalone: one call for the whole batch), in batch order, at
        // most GROUPS_PER_CALL groups per call.
        let mut by_slot: BTreeMap<u16, Vec<(usize, Group)>> = BTreeMap::new();
        for (index, counting) in batch.iter().enumerate() {
            for group in self.groups(counting) {
                let slot = if self.nodes.is_cluster() {
                    keys::slot(group.bucket.as_bytes())
                } else {
                    0
                };
                by_slot.entry(slot).or_default().push((index, group));
            }
        }
        for mut groups in by_slot.into_values() {
            while !groups.is_empty() {
                let rest = groups.split_off(groups.len().min(GROUPS_PER_CALL));
                match self.merged_call(&groups) {
                    Some(request) => {
                        requests.push(request);
                        owners.push(Owner::Merged(groups));
                    }
                    None => {
                        requests.push(self.script_call(&groups));
                        owners.push(Owner::Scripts(groups));
                    }
                }
                groups = rest;
            }
        }
        (requests, owners)
    }

    /// One call of [`MERGED_APPLY_SCRIPT`] for `groups` (sharing a slot),
    /// each counter once with the sum of its amounts; `None` when the
    /// groups must go through [`APPLY_SCRIPT`] instead: fewer than two, two
    /// naming the same marker (the same revision twice), or a sum at or
    /// beyond [`MERGED_SUM_LIMIT`].
    fn merged_call(&self, groups: &[(usize, Group)]) -> Option<Request> {
        if groups.len() < 2 {
            return None;
        }
        let mut markers = BTreeSet::new();
        let mut counters: Vec<(&str, i64)> = Vec::with_capacity(groups.len() * 4);
        let mut position: foldhash::HashMap<&str, usize> =
            foldhash::HashMapExt::with_capacity(groups.len() * 4);
        let mut anchors = Vec::with_capacity(groups.len());
        for (_, group) in groups {
            if !markers.insert((group.bucket.as_str(), group.field.as_str())) {
                return None;
            }
            for (index, (key, n)) in group.counters.iter().enumerate() {
                let at = *position.entry(key.as_str()).or_insert_with(|| {
                    counters.push((key.as_str(), 0));
                    counters.len() - 1
                });
                let sum = counters[at].1.checked_add(*n)?;
                if sum.checked_abs()? >= MERGED_SUM_LIMIT {
                    return None;
                }
                counters[at].1 = sum;
                if index == 0 {
                    anchors.push(at + 1);
                }
            }
        }
        // Sized up front: a call carries hundreds of arguments, and growing
        // its buffers as they come was ~2.5 % of ingest's instructions in bulk.
        let names: usize = groups
            .iter()
            .map(|(_, group)| group.bucket.len() + group.flag.len() + group.field.len() + 4)
            .sum::<usize>()
            + counters.iter().map(|(key, _)| key.len() + 8).sum::<usize>();
        let mut command =
            redis::Cmd::with_capacity(4 + 4 * groups.len() + 2 * counters.len(), names + 64);
        command
            .arg("EVALSHA")
            .arg(&self.merged_sha)
            .arg(2 * groups.len() + counters.len());
        for (_, group) in groups {
            command.arg(&group.bucket);
        }
        for (_, group) in groups {
            command.arg(&group.flag);
        }
        for (key, _) in &counters {
            command.arg(*key);
        }
        command.arg(groups.len());
        for (_, group) in groups {
            command.arg(&group.field);
        }
        for anchor in anchors {
            command.arg(anchor);
        }
        for (_, n) in &counters {
            command.arg(*n);
        }
        Some(Request {
            command,
            name: "EVALSHA",
            slot: keys::slot(groups[0].1.bucket.as_bytes()),
        })
    }

    /// One call of [`APPLY_SCRIPT`] applying `groups` in order, in the form
    /// for several groups (whose reply is an array even for one).
    fn script_call(&self, groups: &[(usize, Group)]) -> Request {
        let n_keys: usize = groups
            .iter()
            .map(|(_, group)| group.counters.len() + 2)
            .sum();
        let names: usize = groups
            .iter()
            .map(|(_, group)| {
                2 * group.bucket.len()
                    + group.flag.len()
                    + group.field.len()
                    + group
                        .counters
                        .iter()
                        .map(|(key, _)| key.len() + 8)
                        .sum::<usize>()
                    + 8
            })
            .sum();
        let mut command = redis::Cmd::with_capacity(3 + 2 * n_keys + groups.len(), names + 64);
        command.arg("EVALSHA").arg(&self.script_sha).arg(n_keys);
        for (_, group) in groups {
            command.arg(&group.bucket).arg(&group.flag);
            for (key, _) in &group.counters {
                command.arg(key);
            }
        }
        for (_, group) in groups {
            command.arg(&group.field).arg(group.legacy());
            for (_, n) in &group.counters {
                command.arg(*n);
            }
        }
        for (_, group) in groups {
            command.arg(group.counters.len() + 2);
        }
        Request {
            command,
            name: "EVALSHA",
            slot: groups
                .first()
                .map_or(0, |(_, group)| keys::slot(group.bucket.as_bytes())),
        }
    }
}

/// What is known so far about one revision of a batch.
#[derive(Default)]
struct Progress {
    moved: bool,
    error: Option<RedisStoreError>,
}

/// Notes in `progress` what `reply` says of the revisions `owner` serves. A
/// script call answers each group's outcome in an array: 1 moved, 0 already
/// marked, or the error of that group alone (a counter that is not an
/// integer), which its revision gets as if its group had been a call of its
/// own.
fn record(progress: &mut [Progress], owner: &Owner, reply: Reply) {
    match (owner, reply) {
        (Owner::Scripts(groups), Ok(replied)) => {
            let outcomes = match &replied.value {
                Value::Array(outcomes) if outcomes.len() == groups.len() => outcomes,
                _ => {
                    for (index, _) in groups {
                        progress[*index]
                            .error
                            .get_or_insert_with(|| replied.unexpected("EVALSHA"));
                    }
                    return;
                }
            };
            for (outcome, (index, _)) in outcomes.iter().zip(groups) {
                match outcome {
                    Value::Int(1) => progress[*index].moved = true,
                    Value::Int(0) => {}
                    Value::ServerError(error) => {
                        progress[*index]
                            .error
                            .get_or_insert_with(|| RedisStoreError::Refused {
                                node: replied.node.to_string(),
                                command: "EVALSHA".to_owned(),
                                source: redis::RedisError::from(error.clone()),
                            });
                    }
                    other => {
                        progress[*index].error.get_or_insert_with(|| {
                            nodes::unexpected_reply(&replied.node, "EVALSHA", other)
                        });
                    }
                }
            }
        }
        (Owner::Merged(groups), Ok(replied)) => {
            for (index, _) in groups {
                if replied.value == Value::Int(1) {
                    progress[*index].moved = true;
                } else {
                    progress[*index]
                        .error
                        .get_or_insert_with(|| replied.unexpected("EVALSHA"));
                }
            }
        }
        (Owner::Scripts(groups) | Owner::Merged(groups), Err(error)) => {
            for (index, _) in groups {
                progress[*index].error.get_or_insert_with(|| error.clone());
            }
        }
        (Owner::Index(_), Ok(_)) => {}
        (Owner::Index(served), Err(error)) => {
            for index in served {
                progress[*index].error.get_or_insert_with(|| error.clone());
            }
        }
    }
}

/// Whether a call of several `groups` that failed with `error` is to be sent
/// again one group per call: a slot migration split its keys between two
/// nodes (`TRYAGAIN` until the retries ran out, or redirections that did
/// not settle).
fn split_by_migration(groups: &[(usize, Group)], error: &RedisStoreError) -> bool {
    if groups.len() < 2 {
        return false;
    }
    match error {
        RedisStoreError::Unsettled { .. } => true,
        RedisStoreError::Refused { source, .. } => {
            source.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
        }
        _ => false,
    }
}

impl Tally for RedisTally {
    /// One `HMGET` per marker bucket the batch names (its fields being the
    /// batch's markers in it), pipelined per node, with one `SMISMEMBER`
    /// per index set the batch names (a failover can lose index entries
    /// whose revisions' markers live on other nodes). A marker missing from
    /// its bucket is looked for as a per-key marker of the layout before
    /// buckets (`EXISTS`, a second round only for those), so revisions
    /// counted under it still read as applied.
    fn unapplied(&self, batch: &[Counting]) -> Result<Vec<ReportId>, StoreError> {
        let doing = || format!("checking the markers of {} revisions", batch.len());
        // Per bucket, the fields asked and, for each, the revision's index
        // and its group's anchor (which names its per-key marker, should the
        // field be missing).
        let mut buckets: BTreeMap<String, Vec<(String, usize, String)>> = BTreeMap::new();
        for (index, counting) in batch.iter().enumerate() {
            for group in self.groups(counting) {
                let Group {
                    bucket,
                    field,
                    counters,
                    ..
                } = group;
                let anchor = counters.into_iter().next().map(|(key, _)| key);
                buckets
                    .entry(bucket)
                    .or_default()
                    .push((field, index, anchor.unwrap_or_default()));
            }
        }
        let mut requests: Vec<Request> = buckets
            .iter()
            .map(|(bucket, fields)| {
                let mut command = redis::cmd("HMGET");
                command.arg(bucket);
                for (field, _, _) in fields {
                    command.arg(field);
                }
                Request {
                    command,
                    name: "HMGET",
                    slot: keys::slot(bucket.as_bytes()),
                }
            })
            .collect();
        let hmget_count = requests.len();
        let (index_requests, index_owners) = index_membership_requests(batch);
        requests.extend(index_requests);
        let replies = self.nodes.run(&requests);
        let mut missing = BTreeSet::new();
        let mut suspects: Vec<(usize, String)> = Vec::new();
        let mut asked = buckets.values();
        for (position, reply) in replies.into_iter().enumerate() {
            let replied = reply.map_err(|e| e.into_store_error(doing()))?;
            if position < hmget_count {
                let fields = asked.next().map_or(&[][..], Vec::as_slice);
                let values = match &replied.value {
                    Value::Array(values) if values.len() == fields.len() => values,
                    _ => return Err(replied.unexpected("HMGET").into_store_error(doing())),
                };
                for (value, (field, index, anchor)) in values.iter().zip(fields) {
                    if matches!(value, Value::Nil) {
                        suspects.push((*index, keys::legacy_marker_of_field(anchor, field)));
                    }
                }
                continue;
            }
            let owners = &index_owners[position - hmget_count];
            let flags = match &replied.value {
                Value::Array(flags) if flags.len() == owners.len() => flags,
                _ => return Err(replied.unexpected("SMISMEMBER").into_store_error(doing())),
            };
            for (flag, served) in flags.iter().zip(owners) {
                if !matches!(flag, Value::Int(1)) {
                    missing.extend(served.iter().copied());
                }
            }
        }
        if !suspects.is_empty() {
            let requests: Vec<Request> = suspects
                .iter()
                .map(|(_, legacy)| {
                    let mut command = redis::cmd("EXISTS");
                    command.arg(legacy);
                    Request {
                        command,
                        name: "EXISTS",
                        slot: keys::slot(legacy.as_bytes()),
                    }
                })
                .collect();
            for (reply, (index, _)) in self.nodes.run(&requests).into_iter().zip(suspects) {
                let replied = reply.map_err(|e| e.into_store_error(doing()))?;
                match replied.value {
                    Value::Int(1) => {}
                    Value::Int(0) => {
                        missing.insert(index);
                    }
                    _ => return Err(replied.unexpected("EXISTS").into_store_error(doing())),
                }
            }
        }
        Ok(missing.into_iter().map(|i| batch[i].report_id).collect())
    }

    fn apply(&self, batch: &[Counting]) -> Vec<Result<Applied, StoreError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let (mut requests, owners) = self.plan_apply(batch);
        // On a standalone Redis the change journal goes in the same
        // pipeline, after the script calls, naming every city of the batch
        // (see `journal` for the order on a Cluster).
        let cluster = self.nodes.is_cluster();
        if !cluster {
            requests.extend(journal::requests(batch, |_| true));
        }
        // Nothing is written while a master may evict keys (every revision
        // then gets that error, and stays pending).
        let mut replies = self.nodes.run_writes(&requests);
        let journalled = replies.split_off(owners.len());
        let mut progress: Vec<Progress> = batch.iter().map(|_| Progress::default()).collect();
        let mut split = Vec::new();
        let mut one_by_one = Vec::new();
        for (reply, owner) in replies.into_iter().zip(owners) {
            match (owner, reply) {
                (Owner::Scripts(groups) | Owner::Merged(groups), Err(error))
                    if split_by_migration(&groups, &error) =>
                {
                    split.extend(groups);
                }
                (Owner::Merged(groups), Ok(replied)) if replied.value == Value::Int(0) => {
                    one_by_one.push(groups);
                }
                (owner, reply) => record(&mut progress, &owner, reply),
            }
        }
        if !one_by_one.is_empty() {
            // A merged call found something that makes one group differ
            // from the others (a marker already set, a counter that is not
            // a plain integer, a per-key marker to look for) and wrote
            // nothing: the same groups again, each with its own outcome.
            let requests: Vec<Request> = one_by_one
                .iter()
                .map(|groups| self.script_call(groups))
                .collect();
            let replies = self.nodes.run_writes(&requests);
            for (reply, groups) in replies.into_iter().zip(one_by_one) {
                match reply {
                    Err(error) if split_by_migration(&groups, &error) => {
                        split.extend(groups);
                    }
                    reply => record(&mut progress, &Owner::Scripts(groups), reply),
                }
            }
        }
        if !split.is_empty() {
            // A slot migration split the keys of these calls between two
            // nodes. Each group's keys alone may well be on one node: send
            // the groups again one per call, so each counts as it would
            // have alone (a group is all or nothing, and re-applying one is
            // always safe).
            let requests: Vec<Request> = split
                .iter()
                .map(|group| self.script_call(std::slice::from_ref(group)))
                .collect();
            let replies = self.nodes.run_writes(&requests);
            for (reply, group) in replies.into_iter().zip(split) {
                record(&mut progress, &Owner::Scripts(vec![group]), reply);
            }
        }
        // On a Cluster the journal is a round of its own, once the script
        // calls answered, naming the cities of what moved or may have (an
        // error); none when nothing moved (Redis down: no second timeout).
        let moved = progress.iter().any(|p| p.moved);
        let journalled = if cluster && moved {
            let requests = journal::requests(batch, |index| {
                progress[index].moved || progress[index].error.is_some()
            });
            self.nodes.run_writes(&requests)
        } else {
            journalled
        };
        // Its failure fails no revision: readers read everything now and
        // then. (When nothing moved, the batch's own errors say enough.)
        if let Some(Err(error)) = journalled.into_iter().find(|reply| moved && reply.is_err()) {
            tracing::warn!(%error, "cannot write the change journal; live readers see these moves at their next full read");
        }
        progress
            .into_iter()
            .zip(batch)
            .map(|(progress, counting)| match progress.error {
                Some(error) => Err(error.into_store_error(format!(
                    "applying revision {} of ballot box {} (election {})",
                    counting.revision, counting.ballot_box, counting.election
                ))),
                None if progress.moved => Ok(Applied::Now),
                None => Ok(Applied::Already),
            })
            .collect()
    }

    fn incarnation(&self) -> Result<Option<Incarnation>, StoreError> {
        self.nodes
            .run_ids()
            .map(|ids| Some(Incarnation(ids)))
            .map_err(|error| {
                error.into_store_error("reading the Redis masters' run ids and witnesses".into())
            })
    }

    fn snapshot(&self, election: &ElectionId) -> Result<Snapshot, StoreError> {
        self.read_snapshot(election).map_err(|error| {
            error.into_store_error(format!("reading the totals of election {election}"))
        })
    }

    /// See the `grid` module: one pipelined round while the sets of parties
    /// and cities keep their sizes, no allocation per counter.
    fn grid(&self, election: &ElectionId, known: Option<&Grid>) -> Result<Grid, StoreError> {
        self.read_grid(election, known).map_err(|error| {
            error.into_store_error(format!("reading the counters of election {election}"))
        })
    }

    fn moved_since(
        &self,
        election: &ElectionId,
        since: Option<JournalCursor>,
    ) -> Result<Option<Moved>, StoreError> {
        self.read_moved(election, since).map(Some).map_err(|error| {
            error.into_store_error(format!("reading the change journal of election {election}"))
        })
    }

    /// See the `grid` module: the rows of `cities` only, while the layout
    /// holds.
    fn grid_moved(
        &self,
        election: &ElectionId,
        known: &Grid,
        cities: &[CityId],
    ) -> Result<Grid, StoreError> {
        self.read_grid_moved(election, known, cities)
            .map_err(|error| {
                error.into_store_error(format!("reading the counters of election {election}"))
            })
    }

    /// The sizes of the sets of parties, cities and ballot boxes seen and
    /// the national counters: one small pipeline.
    fn fingerprint(
        &self,
        election: &ElectionId,
        known: &Grid,
    ) -> Result<Option<Fingerprint>, StoreError> {
        self.read_fingerprint(election, known)
            .map(Some)
            .map_err(|error| {
                error.into_store_error(format!("reading a fingerprint of election {election}"))
            })
    }

    fn guarded_add(
        &self,
        election: &ElectionId,
        counter: &Counter,
        observed: i64,
        delta: i64,
    ) -> Result<bool, StoreError> {
        let key = keys::counter(election, counter);
        let mut command = redis::cmd("EVAL");
        command
            .arg(GUARDED_ADD_SCRIPT)
            .arg(1)
            .arg(&key)
            .arg(observed)
            .arg(delta);
        let request = Request {
            command,
            name: "EVAL",
            slot: keys::slot(key.as_bytes()),
        };
        let doing = || format!("rewriting counter {key}");
        let replied = next_reply(
            &mut self
                .nodes
                .run_writes(std::slice::from_ref(&request))
                .into_iter(),
        )
        .map_err(|error| error.into_store_error(doing()))?;
        match replied.value {
            Value::Int(1) => {
                // Journalled after the counter, like `apply`'s moves: a
                // repaired city is read by the next refresh, a national
                // counter by the next refresh that sees the position move.
                let city = match counter {
                    Counter::City(city, _) => Some(city.as_str()),
                    Counter::National(_) => None,
                };
                let step = journal::request(election, city);
                if let Some(Err(error)) = self.nodes.run_writes(&[step]).into_iter().next() {
                    tracing::warn!(%error, "cannot write the change journal; live readers see this repair at their next full read");
                }
                Ok(true)
            }
            Value::Int(0) => Ok(false),
            _ => Err(replied.unexpected("EVAL").into_store_error(doing())),
        }
    }

    /// Reads the counters by name (one `MGET` per slot), so it finds them
    /// even when the index sets were lost. A counter holding something that
    /// is not an integer is left out, like an absent one;
    /// [`RedisTally::unreadable_counters`] names such keys.
    fn counters(&self, election: &ElectionId, counters: &[Counter]) -> Result<Totals, StoreError> {
        let named: Vec<(String, Counter)> = counters
            .iter()
            .map(|counter| (keys::counter(election, counter), counter.clone()))
            .collect();
        let (requests, chunks) = self.mget_requests(&named);
        let mut replies = self.nodes.run(&requests).into_iter();
        let mut totals = Totals::new();
        let mut unreadable = Vec::new();
        read_mget(&mut replies, chunks, &named, &mut totals, &mut unreadable).map_err(|error| {
            error.into_store_error(format!(
                "reading {} counters of election {election}",
                counters.len()
            ))
        })?;
        Ok(totals)
    }
}

/// A counter key that holds something that is not an integer (see
/// [`RedisTally::unreadable_counters`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableCounter {
    /// The key, e.g. `election:e:city:c:party:a`.
    pub key: String,
    /// What it holds: `"oops"` (abridged to 40 bytes) or `a list`.
    pub holds: String,
}

impl std::fmt::Display for UnreadableCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} holds {}, not an integer", self.key, self.holds)
    }
}

impl RedisTally {
    fn read_unreadable(
        &self,
        election: &ElectionId,
        also: &[Counter],
    ) -> Result<Vec<UnreadableCounter>, RedisStoreError> {
        let index_keys = [keys::parties(election), keys::cities(election)];
        let requests: Vec<Request> = index_keys
            .iter()
            .map(|key| {
                let mut command = redis::cmd("SMEMBERS");
                command.arg(key);
                Request {
                    command,
                    name: "SMEMBERS",
                    slot: keys::slot(key.as_bytes()),
                }
            })
            .collect();
        let mut replies = self.nodes.run(&requests).into_iter();
        let parties = parse_ids(next_reply(&mut replies)?, "SMEMBERS", PartyId::parse)?;
        let cities = parse_ids(next_reply(&mut replies)?, "SMEMBERS", CityId::parse)?;
        let mut names: BTreeSet<String> = also
            .iter()
            .map(|counter| keys::counter(election, counter))
            .collect();
        for party in &parties {
            names.insert(keys::national(election, party));
            for city in &cities {
                names.insert(keys::city(election, city, party));
            }
        }
        let mut requests = Vec::with_capacity(2 * names.len());
        for key in &names {
            for name in ["TYPE", "GET"] {
                let mut command = redis::cmd(name);
                command.arg(key);
                requests.push(Request {
                    command,
                    name,
                    slot: keys::slot(key.as_bytes()),
                });
            }
        }
        let mut replies = self.nodes.run(&requests).into_iter();
        let mut unreadable = Vec::new();
        for key in names {
            let kind = next_reply(&mut replies)?;
            // `GET` fails (WRONGTYPE) on a key of another type: `TYPE` says
            // which.
            let value = replies.next();
            let kind = match &kind.value {
                Value::SimpleString(kind) => kind.clone(),
                Value::BulkString(kind) => String::from_utf8_lossy(kind).into_owned(),
                _ => return Err(kind.unexpected("TYPE")),
            };
            match kind.as_str() {
                "none" => {}
                "string" => {
                    let replied = value.unwrap_or_else(|| next_reply(&mut std::iter::empty()))?;
                    match &replied.value {
                        // Deleted between the two commands.
                        Value::Nil => {}
                        Value::BulkString(bytes) if redis_integer(bytes).is_none() => {
                            unreadable.push(UnreadableCounter {
                                key,
                                holds: describe(bytes),
                            });
                        }
                        Value::BulkString(_) | Value::Int(_) => {}
                        _ => return Err(replied.unexpected("GET")),
                    }
                }
                other => unreadable.push(UnreadableCounter {
                    key,
                    holds: format!("a {other}"),
                }),
            }
        }
        Ok(unreadable)
    }

    fn read_snapshot(&self, election: &ElectionId) -> Result<Snapshot, RedisStoreError> {
        // Round one: what has been seen.
        let index_keys = [
            ("SMEMBERS", keys::parties(election)),
            ("SMEMBERS", keys::cities(election)),
        ];
        let requests: Vec<Request> = index_keys
            .iter()
            .map(|(name, key)| {
                let mut command = redis::cmd(name);
                command.arg(key);
                Request {
                    command,
                    name,
                    slot: keys::slot(key.as_bytes()),
                }
            })
            .collect();
        let mut replies = self.nodes.run(&requests).into_iter();
        let parties: Vec<PartyId> =
            parse_ids(next_reply(&mut replies)?, "SMEMBERS", PartyId::parse)?;
        let cities: Vec<CityId> = parse_ids(next_reply(&mut replies)?, "SMEMBERS", CityId::parse)?;

        // Round two: boxes per city and every counter that may exist.
        let mut requests: Vec<Request> = cities
            .iter()
            .map(|city| {
                let key = keys::city_boxes(election, city);
                let mut command = redis::cmd("SCARD");
                command.arg(&key);
                Request {
                    command,
                    name: "SCARD",
                    slot: keys::slot(key.as_bytes()),
                }
            })
            .collect();
        let mut counters: Vec<(String, Counter)> = Vec::new();
        for party in &parties {
            counters.push((
                keys::national(election, party),
                Counter::National(party.clone()),
            ));
            for city in &cities {
                counters.push((
                    keys::city(election, city, party),
                    Counter::City(city.clone(), party.clone()),
                ));
            }
        }
        let (mgets, mget_counters) = self.mget_requests(&counters);
        requests.extend(mgets);
        let mut replies = self.nodes.run(&requests).into_iter();

        let mut snapshot = Snapshot {
            parties: parties.iter().cloned().collect(),
            ..Snapshot::default()
        };
        for city in cities {
            let boxes = count(next_reply(&mut replies)?, "SCARD")?;
            snapshot.ballot_boxes_reported += boxes;
            snapshot.cities.insert(city, boxes);
        }
        read_mget(
            &mut replies,
            mget_counters,
            &counters,
            &mut snapshot.totals,
            &mut snapshot.unreadable,
        )?;
        Ok(snapshot)
    }

    /// `MGET`s reading `counters`, grouped by slot (a Cluster needs each
    /// command's keys in one slot) and chunked; with the indexes in
    /// `counters` each one reads.
    fn mget_requests(&self, counters: &[(String, Counter)]) -> (Vec<Request>, Vec<Vec<usize>>) {
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, (key, _)) in counters.iter().enumerate() {
            let group = if self.nodes.is_cluster() {
                keys::slot(key.as_bytes())
            } else {
                0
            };
            by_slot.entry(group).or_default().push(index);
        }
        let mut requests = Vec::new();
        let mut chunks = Vec::new();
        for indexes in by_slot.values() {
            for chunk in indexes.chunks(MGET_CHUNK) {
                let mut command = redis::cmd("MGET");
                for &index in chunk {
                    command.arg(&counters[index].0);
                }
                requests.push(Request {
                    command,
                    name: "MGET",
                    slot: keys::slot(counters[chunk[0]].0.as_bytes()),
                });
                chunks.push(chunk.to_vec());
            }
        }
        (requests, chunks)
    }
}

/// The index sets `batch` adds to (its parties, cities and ballot boxes,
/// per election and per city): per set key, each member with the revisions
/// (indexes in `batch`) that name it.
///
/// Sets are told apart by what they index until the end, and members are
/// borrowed from the batch: formatting a key per revision, and comparing
/// keys that share their `election:<e>:meta:` prefix in a sorted map, was
/// a few per cent of ingest's instructions (docs/benchmarks.md, "Planning
/// a batch").
fn index_members<'a>(batch: &'a [Counting]) -> Vec<(String, IndexMembers<'a>)> {
    /// Which set (the map needs an order; any order does).
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Set<'a> {
        Parties(&'a ElectionId),
        Cities(&'a ElectionId),
        CityBoxes(&'a ElectionId, &'a CityId),
    }
    let mut sets: BTreeMap<Set<'a>, IndexMembers<'a>> = BTreeMap::new();
    let mut add = |set: Set<'a>, member: &'a str, revision: usize| {
        let served: &mut Vec<usize> = sets.entry(set).or_default().entry(member).or_default();
        if served.last() != Some(&revision) {
            served.push(revision);
        }
    };
    for (index, counting) in batch.iter().enumerate() {
        let election = &counting.election;
        for (party, _) in counting.difference.iter() {
            add(Set::Parties(election), party.as_str(), index);
        }
        add(Set::Cities(election), counting.city.as_str(), index);
        add(
            Set::CityBoxes(election, &counting.city),
            counting.ballot_box.as_str(),
            index,
        );
    }
    sets.into_iter()
        .map(|(set, members)| {
            let key = match set {
                Set::Parties(election) => keys::parties(election),
                Set::Cities(election) => keys::cities(election),
                Set::CityBoxes(election, city) => keys::city_boxes(election, city),
            };
            (key, members)
        })
        .collect()
}

/// The members one index set is asked to hold, each with the revisions
/// (indexes in the batch) that name it.
type IndexMembers<'a> = foldhash::HashMap<&'a str, Vec<usize>>;

/// `SMISMEMBER` requests asking whether the index sets hold what `batch`
/// names (its parties, cities and ballot boxes), with, per member asked, the
/// revisions that named it.
fn index_membership_requests(batch: &[Counting]) -> (Vec<Request>, Vec<Vec<Vec<usize>>>) {
    let sets = index_members(batch);
    let mut requests = Vec::new();
    let mut owners = Vec::new();
    for (key, members) in sets {
        let mut command = redis::cmd("SMISMEMBER");
        command.arg(&key);
        let mut served = Vec::with_capacity(members.len());
        for (member, revisions) in members {
            command.arg(member);
            served.push(revisions);
        }
        requests.push(Request {
            command,
            name: "SMISMEMBER",
            slot: keys::slot(key.as_bytes()),
        });
        owners.push(served);
    }
    (requests, owners)
}

/// Reads the replies of [`RedisTally::mget_requests`] into `totals` (absent
/// keys are left out). A key holding something that is not an integer is
/// left out too, and its name added to `unreadable`: one bad key must not
/// hide every other counter. (`MGET` answers nil for a key of another type,
/// so such a key reads as absent here; the apply script and
/// [`RedisTally::unreadable_counters`] tell it apart.)
fn read_mget(
    replies: &mut impl Iterator<Item = Reply>,
    chunks: Vec<Vec<usize>>,
    counters: &[(String, Counter)],
    totals: &mut Totals,
    unreadable: &mut Vec<String>,
) -> Result<(), RedisStoreError> {
    for chunk in chunks {
        let replied = next_reply(replies)?;
        let values = match &replied.value {
            Value::Array(values) if values.len() == chunk.len() => values,
            _ => return Err(replied.unexpected("MGET")),
        };
        for (value, index) in values.iter().zip(chunk) {
            match optional_integer(value) {
                Some(Some(n)) => totals.add(counters[index].1.clone(), n),
                Some(None) => {}
                None => unreadable.push(counters[index].0.clone()),
            }
        }
    }
    unreadable.sort();
    Ok(())
}

fn next_reply(replies: &mut impl Iterator<Item = Reply>) -> Result<Replied, RedisStoreError> {
    replies.next().unwrap_or_else(|| {
        Err(nodes::unexpected_reply(
            "?",
            "a pipeline",
            &Value::SimpleString("fewer replies than commands".into()),
        ))
    })
}

/// A counter's value: `Some(None)` for an absent key, `None` for a value
/// that is not an integer.
fn optional_integer(value: &Value) -> Option<Option<i64>> {
    match value {
        Value::Nil => Some(None),
        Value::Int(n) => Some(Some(*n)),
        Value::BulkString(bytes) => redis_integer(bytes).map(Some),
        Value::SimpleString(text) => redis_integer(text.as_bytes()).map(Some),
        _ => None,
    }
}

/// `bytes` as the integer `INCRBY` would read, if it is one: `0` or
/// `-?[1-9][0-9]*` within 64 bits (no sign `+`, no leading zero, no spaces),
/// the rule [`APPLY_SCRIPT`] checks too.
fn redis_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = bytes == b"0"
        || (digits.first().is_some_and(|d| (b'1'..=b'9').contains(d))
            && digits.iter().all(u8::is_ascii_digit));
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// What a counter key holds that is not an integer, as the apply script
/// words it: `"oops"` (a value, abridged to 40 bytes) or `a list` (a key of
/// another type).
fn describe(value: &[u8]) -> String {
    let mut shown: String = value
        .iter()
        .take(40)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    if value.len() > 40 {
        shown.push_str("...");
    }
    format!("\"{shown}\"")
}

fn count(replied: Replied, command: &str) -> Result<u64, RedisStoreError> {
    match replied.value {
        Value::Int(n) => u64::try_from(n).map_err(|_| replied.unexpected(command)),
        _ => Err(replied.unexpected(command)),
    }
}

fn parse_ids<T, E>(
    replied: Replied,
    command: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, RedisStoreError> {
    let members = match &replied.value {
        Value::Array(members) | Value::Set(members) => members,
        _ => return Err(replied.unexpected(command)),
    };
    members
        .iter()
        .map(|member| {
            let text = match member {
                Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                Value::SimpleString(text) => Some(text.as_str()),
                _ => None,
            };
            text.and_then(|text| parse(text).ok())
                .ok_or_else(|| nodes::unexpected_reply(&replied.node, command, member))
        })
        .collect()
}
