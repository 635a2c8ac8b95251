//! Identifiers of the domain, each validated once when it is built.
//!
//! Election, city and party ids end up inside Redis key names
//! (`election:<e>:city:<c>:party:<p>`), so their alphabets exclude `:`, `{`,
//! `}` and whitespace: a value that could change the shape of a key, or its
//! Cluster hash slot, can never get in. Once a value has one of these types it
//! is known to be valid, and nothing downstream checks it again.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Problem;

/// Longest id of any kind, in bytes (docs/contract.md §2: one leading character and up to
/// 63 more).
pub const MAX_ID_LEN: usize = 64;

/// Which characters an id may hold after its first one.
#[derive(Clone, Copy)]
enum Alphabet {
    /// Election ids: `[a-z0-9][a-z0-9-]*`.
    Election,
    /// Cities and parties: `[a-z0-9][a-z0-9_-]*`.
    Slug,
    /// Ballot boxes: `[A-Za-z0-9][A-Za-z0-9_-]*`.
    BallotBox,
}

impl Alphabet {
    fn first_ok(self, c: u8) -> bool {
        match self {
            Alphabet::Election | Alphabet::Slug => c.is_ascii_lowercase() || c.is_ascii_digit(),
            Alphabet::BallotBox => c.is_ascii_alphanumeric(),
        }
    }

    fn rest_ok(self, c: u8) -> bool {
        match self {
            Alphabet::Election => c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
            Alphabet::Slug => {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'
            }
            Alphabet::BallotBox => c.is_ascii_alphanumeric() || c == b'-' || c == b'_',
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Alphabet::Election => {
                "must be 1 to 64 characters of a-z, 0-9 and '-', starting with a letter or digit"
            }
            Alphabet::Slug => {
                "must be 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
            }
            Alphabet::BallotBox => {
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-', starting with a letter or digit"
            }
        }
    }

    fn check(self, field: &str, value: &str) -> Result<(), Problem> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_ID_LEN
            && self.first_ok(bytes[0])
            && bytes[1..].iter().all(|&c| self.rest_ok(c));
        if ok {
            Ok(())
        } else {
            Err(Problem::new(
                field,
                format!("{} {}", describe(value), self.rule()),
            ))
        }
    }
}

/// Quotes a rejected value for an error message, shortened so a hostile
/// megabyte-long id does not end up in a log line whole.
pub(crate) fn describe(value: &str) -> String {
    const SHOWN: usize = 40;
    if value.is_empty() {
        return "is empty;".to_owned();
    }
    let mut shown: String = value.chars().take(SHOWN).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $alphabet:expr, $field:literal) => {
        $(#[$doc])*
        // Shared text (`Arc<str>`): a report's ids are cloned into every
        // structure of its batch (its difference, its counting, the
        // decisions' view), and a clone of a `Box<str>` was an allocation
        // and a copy each time (docs/benchmarks.md, "Fewer allocations per
        // report").
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value`; the error names the field and the rule broken.
            pub fn parse(value: &str) -> Result<Self, Problem> {
                $alphabet.check($field, value)?;
                Ok(Self(value.into()))
            }

            /// Like [`Self::parse`], with the field named `field` in the error
            /// (for example `votes.<party>`).
            pub fn parse_as(field: &str, value: &str) -> Result<Self, Problem> {
                $alphabet.check(field, value)?;
                Ok(Self(value.into()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Problem;
            fn try_from(value: &str) -> Result<Self, Problem> {
                Self::parse(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Problem;
            fn try_from(value: String) -> Result<Self, Problem> {
                Self::parse(&value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Problem;
            fn from_str(value: &str) -> Result<Self, Problem> {
                Self::parse(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An election, e.g. `2025`: `[a-z0-9][a-z0-9-]{0,63}`.
    ElectionId,
    Alphabet::Election,
    "election"
);
id_type!(
    /// A city, e.g. `london`: `[a-z0-9][a-z0-9_-]{0,63}`.
    CityId,
    Alphabet::Slug,
    "city"
);
id_type!(
    /// A party, e.g. `labour`: `[a-z0-9][a-z0-9_-]{0,63}`.
    PartyId,
    Alphabet::Slug,
    "party"
);
id_type!(
    /// A ballot box (polling station), e.g. `BB123`:
    /// `[A-Za-z0-9][A-Za-z0-9_-]{0,63}`. Unique within an election; a box
    /// belongs to exactly one city.
    BallotBoxId,
    Alphabet::BallotBox,
    "ballot_box_id"
);

/// One stored state of an election's definition, as the store that keeps
/// definitions numbers them (PostgreSQL: its `loaded_at` in microseconds).
/// Every load moves it, so two equal versions are the same definition.
///
/// A report carries the version it was checked against
/// ([`Report::checked_against`](crate::Report::checked_against); `None`:
/// the election was not defined), and the log refuses to record it when the
/// stored version differs ([`StoreError::DefinitionChanged`](crate::StoreError::DefinitionChanged)):
/// that is how a definition loaded while ingest runs applies to the very next
/// report recorded, however long ingest keeps its copy (I4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DefinitionVersion(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_election(value: &str, ok: bool) {
        assert_eq!(ElectionId::parse(value).is_ok(), ok, "{value:?}");
    }

    #[test]
    fn election_ids() {
        check_election("2025", true);
        check_election("uk-general-2025", true);
        check_election("a", true);
        check_election(&"a".repeat(64), true);
        check_election(&"a".repeat(65), false);
        check_election("", false);
        check_election("-2025", false);
        check_election("UK", false);
        check_election("uk_2025", false);
        check_election("uk:2025", false);
        check_election("{uk}", false);
    }

    #[test]
    fn slugs_refuse_key_breaking_characters() {
        for bad in [
            "lon:don", "lon{don", "lon}don", "lon don", "London", "_london", "é", "",
        ] {
            let err = CityId::parse(bad).unwrap_err();
            assert_eq!(err.field(), "city");
        }
        assert!(PartyId::parse("lib_dems-2").is_ok());
    }

    #[test]
    fn ballot_boxes_allow_upper_case() {
        assert!(BallotBoxId::parse("BB-123_a").is_ok());
        assert!(BallotBoxId::parse("_BB").is_err());
        assert!(BallotBoxId::parse("BB:1").is_err());
    }

    #[test]
    fn errors_name_the_field_and_rule_and_shorten_the_value() {
        let err = CityId::parse(&"X".repeat(1000)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("city: \"XXXX"), "{text}");
        assert!(text.contains("must be 1 to 64 characters"), "{text}");
        assert!(text.len() < 200, "{text}");
        let err = CityId::parse("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "city: is empty; must be 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        );
    }
}
