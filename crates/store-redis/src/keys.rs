//! Every Redis key the tally reads or writes, and the Cluster hash slot of a
//! key.
//!
//! Counter keys are fixed by docs/contract.md §4 because users read them with a plain
//! `GET`: `election:<e>:party:<p>` (national) and
//! `election:<e>:city:<c>:party:<p>` (city). They carry no hash tag, so on a
//! Cluster each lands in the slot of its whole name.
//!
//! The other keys are ours:
//! - marker buckets `{<anchor>}:applied:<bucket>`: hashes whose fields
//!   `<ballot box>:<revision>` are the markers ([`marker_bucket`],
//!   [`marker_field`]). The hash tag is a whole counter key (the anchor of a
//!   group of counters), so a bucket lands in that counter's slot and one
//!   script may set a field and move the counters atomically. The bucket is
//!   a stable hash of the ballot box, modulo [`NATIONAL_BUCKETS`] or
//!   [`CITY_BUCKETS`] (see the crate docs, "Marker buckets", for why);
//! - the layout flag `{<anchor>}:applied:layout`, set when an anchor is first
//!   counted under bucket markers, saying no per-key marker names it;
//! - per-key markers `{<anchor>}:applied:<ballot box>:<revision>`
//!   ([`legacy_marker`]), the layout before buckets: never written any more,
//!   only checked so that revisions counted under it do not count again;
//! - index sets under `election:<e>:meta:`, and the change journal
//!   `election:<e>:meta:moved` ([`moved`]), which cannot collide with counter
//!   keys because no counter key has `meta` where `party` or `city` stands.
//!
//! - one witness per master, `election::witness:{w<n>}` ([`witness`]): a
//!   token the tally sets once, so that a master that lost its data (a
//!   flush) without restarting is told apart from one that kept it (see the
//!   crate docs, "Who the servers are"). No election id is empty, so
//!   `election::` is no election's prefix.
//!
//! A bucket's name ends in digits, the flag's in `layout`, a per-key marker's
//! in `<box>:<revision>` (two more `:`-separated parts), so the three never
//! collide.
//!
//! Ids never contain `:`, `{`, `}` or spaces (the core validates them), so
//! these names are unambiguous and no hash tag can appear by accident.

use election_core::{BallotBoxId, CityId, Counter, ElectionId, PartyId, Revision};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The national counter of `party`: `election:<e>:party:<p>`.
pub fn national(election: &ElectionId, party: &PartyId) -> String {
    join(&["election:", election.as_str(), ":party:", party.as_str()])
}

/// The counter of `party` in `city`: `election:<e>:city:<c>:party:<p>`.
pub fn city(election: &ElectionId, city: &CityId, party: &PartyId) -> String {
    join(&[
        "election:",
        election.as_str(),
        ":city:",
        city.as_str(),
        ":party:",
        party.as_str(),
    ])
}

/// The key of `counter`: [`national`] or [`city`].
pub fn counter(election: &ElectionId, counter: &Counter) -> String {
    match counter {
        Counter::National(party) => national(election, party),
        Counter::City(city_id, party) => city(election, city_id, party),
    }
}

/// The set of parties seen: `election:<e>:meta:parties`.
pub fn parties(election: &ElectionId) -> String {
    join(&["election:", election.as_str(), ":meta:parties"])
}

/// The set of cities seen: `election:<e>:meta:cities`.
pub fn cities(election: &ElectionId) -> String {
    join(&["election:", election.as_str(), ":meta:cities"])
}

/// The set of ballot boxes counted in `city`:
/// `election:<e>:meta:city:<c>:boxes`.
pub fn city_boxes(election: &ElectionId, city: &CityId) -> String {
    join(&[
        "election:",
        election.as_str(),
        ":meta:city:",
        city.as_str(),
        ":boxes",
    ])
}

/// The change journal (a sorted set of the cities moved, see `journal`):
/// `election:<e>:meta:moved`.
pub fn moved(election: &ElectionId) -> String {
    join(&["election:", election.as_str(), ":meta:moved"])
}

/// Marker buckets per anchor that is a national counter: such an anchor
/// holds a marker for every ballot box naming its party (about a million in
/// a national election). Redis keeps a hash of at most
/// `hash-max-listpack-entries` (128) fields as one compact listpack; 16,384
/// buckets hold ~61 fields on average at a million boxes, the fullest ~90
/// (8,192 would average 122 with the fullest at ~160, past the limit), so
/// every bucket stays a listpack up to about 1.3 M boxes per party.
pub const NATIONAL_BUCKETS: u32 = 16_384;

/// Marker buckets per anchor that is a city counter: a city's anchor holds a
/// marker per ballot box of that city naming the party, so 512 buckets stay
/// listpacks up to 65,536 boxes in one city (6.5 % of a 1 M-box country),
/// while a small city does not pay for thousands of near-empty buckets.
pub const CITY_BUCKETS: u32 = 512;

/// How many buckets the markers of `anchor` are spread over:
/// [`CITY_BUCKETS`] for a city counter, [`NATIONAL_BUCKETS`] otherwise.
pub fn buckets(anchor: &str) -> u32 {
    // Ids contain no `:`, so the third part says the counter's kind.
    if anchor.split(':').nth(2) == Some("city") {
        CITY_BUCKETS
    } else {
        NATIONAL_BUCKETS
    }
}

/// The bucket holding the markers of `ballot_box` for the group of counters
/// whose first key (in sorted order) is `anchor`:
/// `{<anchor>}:applied:<bucket>`, where bucket is the 32-bit FNV-1a hash of
/// the ballot box id modulo [`buckets`]. All revisions of a box share a
/// bucket. The hash and the bucket counts are part of the key names: a
/// change would hide every marker already set (and count revisions again).
pub fn marker_bucket(anchor: &str, ballot_box: &BallotBoxId) -> String {
    let bucket = fnv1a(ballot_box.as_str().as_bytes()) % buckets(anchor);
    join(&[
        "{",
        anchor,
        "}:applied:",
        itoa::Buffer::new().format(bucket),
    ])
}

/// The field of a marker in its bucket: `<ballot box>:<revision>`.
pub fn marker_field(ballot_box: &BallotBoxId, revision: Revision) -> String {
    join(&[
        ballot_box.as_str(),
        ":",
        itoa::Buffer::new().format(revision.get()),
    ])
}

/// The flag `{<anchor>}:applied:layout`: set (to `buckets`) by the first
/// script that counted a revision anchored on `anchor` whose counter did not
/// exist yet, so no [`legacy_marker`] can name that anchor and the script
/// need not look for one.
pub fn layout_flag(anchor: &str) -> String {
    join(&["{", anchor, "}:applied:layout"])
}

/// The per-key marker of the layout before buckets, saying that revision
/// `revision` of `ballot_box` has moved the group of counters whose first
/// key (in sorted order) is `anchor`:
/// `{<anchor>}:applied:<ballot box>:<revision>`. Only read now.
///
/// The anchor already names the election, so markers of different elections
/// never collide, and the hash tag puts the marker in the anchor's slot.
pub fn legacy_marker(anchor: &str, ballot_box: &BallotBoxId, revision: Revision) -> String {
    legacy_marker_of_field(anchor, &marker_field(ballot_box, revision))
}

/// [`legacy_marker`] from the marker's [`marker_field`], which names the
/// same box and revision: `{<anchor>}:applied:<field>`.
pub(crate) fn legacy_marker_of_field(anchor: &str, field: &str) -> String {
    join(&["{", anchor, "}:applied:", field])
}

/// `parts` concatenated into a string allocated once at its final size.
///
/// Why not `format!`: the tally names ~11 keys per revision it plans (8
/// counters of 4 parties, the marker's bucket, field and flag), and
/// `format!`'s formatting machinery cost ~700 instructions per name
/// (callgrind of ingest in bulk, docs/benchmarks.md, "Keys named without
/// `format!`"), several times the copy itself.
fn join(parts: &[&str]) -> String {
    let mut name = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        name.push_str(part);
    }
    name
}

/// 32-bit FNV-1a: simple, stable across versions and platforms, and spreads
/// ids that differ in their last characters (`BX0000001`, `BX0000002`).
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &byte in bytes {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The Redis Cluster hash slot of `key`: CRC16/XMODEM of the key, or of its
/// hash tag (the bytes between the first `{` and the next `}`, when that is
/// not empty), modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) % SLOTS
}

/// The first witness key (`election::witness:{w<n>}`, `n` from 0) whose
/// slot `serves` accepts: a master's witness is a key of a slot it serves.
/// `None` when no `n` below 200,000 lands in such a slot (a master serving
/// no slot; one serving a single slot finds one after ~16,000 tries).
pub fn witness(serves: impl Fn(u16) -> bool) -> Option<String> {
    (0..200_000u32)
        .map(|n| format!("election::witness:{{w{n}}}"))
        .find(|key| serves(slot(key.as_bytes())))
}

/// The part of `key` that decides its slot.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        // An empty tag `{}` does not count: the whole key is hashed.
        Some(0) | None => key,
        Some(close) => &rest[..close],
    }
}

/// CRC16 with polynomial 0x1021, initial value 0, no reflection (XMODEM), as
/// in the Redis Cluster specification.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_specification() {
        // The check value of CRC16/XMODEM given in the Cluster specification.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from `redis-cli -c CLUSTER KEYSLOT <key>` on a Redis 7.0
        // cluster.
        for (key, expected) in [
            ("foo", 12182),
            ("bar", 5061),
            ("election:2025:party:labour", 10356),
            ("election:2025:city:london:party:labour", 14889),
            ("{election:2025:party:labour}:applied:BB-LON-1:1", 10356),
            ("{user1000}.following", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("", 0),
        ] {
            assert_eq!(slot(key.as_bytes()), expected, "slot of {key:?}");
        }
    }

    #[test]
    fn a_marker_shares_its_anchor_s_slot() {
        let election = ElectionId::parse("2025").unwrap();
        let party = PartyId::parse("labour").unwrap();
        let london = CityId::parse("london").unwrap();
        let ballot_box = BallotBoxId::parse("BB-LON-1").unwrap();
        let revision = Revision::new(3).unwrap();
        for anchor in [
            national(&election, &party),
            city(&election, &london, &party),
        ] {
            for key in [
                marker_bucket(&anchor, &ballot_box),
                layout_flag(&anchor),
                legacy_marker(&anchor, &ballot_box, revision),
            ] {
                assert_eq!(slot(key.as_bytes()), slot(anchor.as_bytes()), "{key}");
            }
        }
        assert_eq!(
            legacy_marker("election:2025:party:labour", &ballot_box, revision),
            "{election:2025:party:labour}:applied:BB-LON-1:3"
        );
        assert_eq!(marker_field(&ballot_box, revision), "BB-LON-1:3");
        assert_eq!(
            layout_flag("election:2025:party:labour"),
            "{election:2025:party:labour}:applied:layout"
        );
    }

    #[test]
    fn buckets_are_stable_and_sized_by_the_anchor_s_kind() {
        // FNV-1a 32 check values: a change of hash would hide every marker
        // already set, so these must never change.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
        let ballot_box = BallotBoxId::parse("BB-LON-1").unwrap();
        let national_anchor = "election:2025:party:labour";
        let city_anchor = "election:2025:city:london:party:labour";
        assert_eq!(buckets(national_anchor), NATIONAL_BUCKETS);
        assert_eq!(buckets(city_anchor), CITY_BUCKETS);
        let hash = fnv1a(b"BB-LON-1");
        assert_eq!(
            marker_bucket(national_anchor, &ballot_box),
            format!("{{{national_anchor}}}:applied:{}", hash % 16_384)
        );
        assert_eq!(
            marker_bucket(city_anchor, &ballot_box),
            format!("{{{city_anchor}}}:applied:{}", hash % 512)
        );
        // A million boxes named as the load generator names them spread
        // evenly: no bucket of a national anchor leaves the listpack
        // encoding (128 fields).
        let mut fields = vec![0u32; NATIONAL_BUCKETS as usize];
        for index in 0..1_000_000 {
            let name = format!("BX{index:07}");
            fields[(fnv1a(name.as_bytes()) % NATIONAL_BUCKETS) as usize] += 1;
        }
        let fullest = fields.iter().copied().max().unwrap();
        assert!(fullest <= 128, "the fullest bucket holds {fullest} fields");
    }

    #[test]
    fn key_names_follow_the_specification() {
        let election = ElectionId::parse("2025").unwrap();
        let party = PartyId::parse("labour").unwrap();
        let london = CityId::parse("london").unwrap();
        assert_eq!(national(&election, &party), "election:2025:party:labour");
        assert_eq!(
            counter(&election, &Counter::City(london.clone(), party.clone())),
            "election:2025:city:london:party:labour"
        );
        assert_eq!(
            counter(&election, &Counter::National(party.clone())),
            "election:2025:party:labour"
        );
        assert_eq!(
            city(&election, &london, &party),
            "election:2025:city:london:party:labour"
        );
        assert_eq!(parties(&election), "election:2025:meta:parties");
        assert_eq!(cities(&election), "election:2025:meta:cities");
        assert_eq!(
            city_boxes(&election, &london),
            "election:2025:meta:city:london:boxes"
        );
    }

    #[test]
    fn a_witness_lands_in_a_slot_its_master_serves() {
        let key = witness(|slot| (5461..=10922).contains(&slot)).unwrap();
        assert!(key.starts_with("election::witness:{w"), "{key}");
        assert!((5461..=10922).contains(&slot(key.as_bytes())), "{key}");
        // One slot is found too; no slot, never.
        let one = witness(|slot| slot == 16383).unwrap();
        assert_eq!(slot(one.as_bytes()), 16383);
        assert_eq!(witness(|_| false), None);
        // Standalone: the first.
        assert_eq!(witness(|_| true).as_deref(), Some("election::witness:{w0}"));
    }
}
