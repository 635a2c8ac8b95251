//! Every Redis key the tally reads or writes, and the Cluster hash slot of a
//! key.
//!
//! Counter keys are fixed by SPEC §4 because users read them with a plain
//! `GET`: `election:<e>:party:<p>` (national) and
//! `election:<e>:city:<c>:party:<p>` (city). They carry no hash tag, so on a
//! Cluster each lands in the slot of its whole name.
//!
//! The other keys are ours:
//! - markers `{<counter key>}:applied:<ballot box>:<revision>`: the hash tag
//!   is a whole counter key, so a marker lands in that counter's slot and one
//!   script may set it and move the counter atomically;
//! - index sets under `election:<e>:meta:`, which cannot collide with counter
//!   keys because no counter key has `meta` where `party` or `city` stands.
//!
//! Ids never contain `:`, `{`, `}` or spaces (the core validates them), so
//! these names are unambiguous and no hash tag can appear by accident.

use election_core::{BallotBoxId, CityId, Counter, ElectionId, PartyId, Revision};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The national counter of `party`: `election:<e>:party:<p>`.
pub fn national(election: &ElectionId, party: &PartyId) -> String {
    format!("election:{election}:party:{party}")
}

/// The counter of `party` in `city`: `election:<e>:city:<c>:party:<p>`.
pub fn city(election: &ElectionId, city: &CityId, party: &PartyId) -> String {
    format!("election:{election}:city:{city}:party:{party}")
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
    format!("election:{election}:meta:parties")
}

/// The set of cities seen: `election:<e>:meta:cities`.
pub fn cities(election: &ElectionId) -> String {
    format!("election:{election}:meta:cities")
}

/// The set of ballot boxes counted: `election:<e>:meta:boxes`.
pub fn boxes(election: &ElectionId) -> String {
    format!("election:{election}:meta:boxes")
}

/// The set of ballot boxes counted in `city`:
/// `election:<e>:meta:city:<c>:boxes`.
pub fn city_boxes(election: &ElectionId, city: &CityId) -> String {
    format!("election:{election}:meta:city:{city}:boxes")
}

/// The marker saying that revision `revision` of `ballot_box` has moved the
/// group of counters whose first key (in sorted order) is `anchor`:
/// `{<anchor>}:applied:<ballot box>:<revision>`.
///
/// The anchor already names the election, so markers of different elections
/// never collide, and the hash tag puts the marker in the anchor's slot.
pub fn marker(anchor: &str, ballot_box: &BallotBoxId, revision: Revision) -> String {
    format!("{{{anchor}}}:applied:{ballot_box}:{}", revision.get())
}

/// The Redis Cluster hash slot of `key`: CRC16/XMODEM of the key, or of its
/// hash tag (the bytes between the first `{` and the next `}`, when that is
/// not empty), modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) % SLOTS
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
            let marker = marker(&anchor, &ballot_box, revision);
            assert_eq!(slot(marker.as_bytes()), slot(anchor.as_bytes()), "{marker}");
        }
        assert_eq!(
            marker("election:2025:party:labour", &ballot_box, revision),
            "{election:2025:party:labour}:applied:BB-LON-1:3"
        );
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
        assert_eq!(boxes(&election), "election:2025:meta:boxes");
        assert_eq!(
            city_boxes(&election, &london),
            "election:2025:meta:city:london:boxes"
        );
    }
}
