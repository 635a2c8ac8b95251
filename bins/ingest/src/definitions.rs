//! Election definitions as ingest checks them (docs/contract.md §7): a report for a
//! defined election must name a defined city and defined parties and, when
//! the election registers its ballot boxes, a registered box in its own city;
//! otherwise it is refused with 422 before anything is written (I4).
//!
//! At thousands of reports per second a PostgreSQL query per report would
//! cost more than the report itself, so definitions are cached per election
//! in the process: loaded on first use, and looked up again once the entry
//! is older than [`DefinitionCache::ttl`] (5 s by default); the look-up
//! reads only the definition's version unless it changed, so a registry of a
//! million boxes is not read again every interval. While one request
//! refreshes a stale entry, the others keep using it, so an election costs
//! one query per interval whatever the load. "Not defined" is cached too.
//!
//! A stale copy never lets a report through that the stored definition
//! refuses: each report carries the version it was checked against
//! ([`Current::version`]), the log refuses a batch checked against another
//! version (`StoreError::DefinitionChanged`, see store-pg's `record`), and
//! the handler then [`invalidate`](DefinitionCache::invalidate)s the entry,
//! checks the report against the new definition and submits it again. So a
//! definition loaded while ingest runs applies to the next report recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use election_core::{
    Definition, DefinitionLookup, DefinitionVersion, ElectionId, Lookup, StoreError,
};

/// Every election undefined: for embedders and tests without definitions.
pub struct NoDefinitions;

impl DefinitionLookup for NoDefinitions {
    fn find(&self, _: &ElectionId, _: Option<DefinitionVersion>) -> Result<Lookup, StoreError> {
        Ok(Lookup::Current(None))
    }
}

/// An election's definition as the cache holds it.
#[derive(Clone, Debug, Default)]
pub struct Current {
    /// The definition; `None`: the election is not defined.
    pub definition: Option<Arc<Definition>>,
    /// Its stored version, what a report checked against it carries.
    pub version: Option<DefinitionVersion>,
}

struct Entry {
    current: Current,
    fetched: Instant,
    refreshing: bool,
    /// The log said the definition changed: look it up on the next request.
    stale: bool,
}

/// Cached definitions by election; see the module docs.
pub struct DefinitionCache {
    lookup: Arc<dyn DefinitionLookup>,
    ttl: Duration,
    entries: Mutex<HashMap<ElectionId, Entry>>,
}

/// What the cache can answer without a query.
pub enum Cached {
    /// A fresh (or being refreshed by another request) answer.
    Hit(Current),
    /// Nothing usable: the caller must call [`DefinitionCache::refresh`] (on
    /// the blocking pool).
    Miss,
}

impl DefinitionCache {
    /// A cache in front of `lookup`, keeping answers for `ttl`.
    pub fn new(lookup: Arc<dyn DefinitionLookup>, ttl: Duration) -> DefinitionCache {
        DefinitionCache {
            lookup,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is used before it is looked up again.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cached answer, unless it is missing or stale and nobody else is
    /// refreshing it (then this caller is elected to refresh it).
    pub fn cached(&self, election: &ElectionId) -> Cached {
        let mut entries = self.entries.lock().expect("definition cache poisoned");
        match entries.get_mut(election) {
            // A stale entry is never answered: the log has refused it.
            Some(entry)
                if !entry.stale && (entry.refreshing || entry.fetched.elapsed() < self.ttl) =>
            {
                Cached::Hit(entry.current.clone())
            }
            Some(entry) => {
                entry.refreshing = true;
                Cached::Miss
            }
            None => Cached::Miss,
        }
    }

    /// Marks the election's entry stale (the log said its definition
    /// changed), so the next request looks it up again.
    pub fn invalidate(&self, election: &ElectionId) {
        let mut entries = self.entries.lock().expect("definition cache poisoned");
        if let Some(entry) = entries.get_mut(election) {
            entry.stale = true;
        }
    }

    /// Looks the election up (blocking) and caches the answer. When the
    /// lookup fails, a stale answer is used if there is one.
    pub fn refresh(&self, election: &ElectionId) -> Result<Current, StoreError> {
        let known = {
            let entries = self.entries.lock().expect("definition cache poisoned");
            entries
                .get(election)
                .and_then(|entry| entry.current.version)
        };
        let found = self.lookup.find(election, known);
        let mut entries = self.entries.lock().expect("definition cache poisoned");
        match found {
            Ok(Lookup::Current(found)) => {
                let current = match found {
                    Some((definition, version)) => Current {
                        definition: Some(Arc::from(definition)),
                        version: Some(version),
                    },
                    None => Current::default(),
                };
                entries.insert(
                    election.clone(),
                    Entry {
                        current: current.clone(),
                        fetched: Instant::now(),
                        refreshing: false,
                        stale: false,
                    },
                );
                Ok(current)
            }
            Ok(Lookup::Unchanged) => {
                // `known` came from this election's entry, and entries are
                // never removed, so the entry is there.
                let entry = entries
                    .get_mut(election)
                    .expect("an unchanged definition has its entry");
                entry.fetched = Instant::now();
                entry.refreshing = false;
                entry.stale = false;
                Ok(entry.current.clone())
            }
            Err(error) => match entries.get_mut(election) {
                Some(entry) => {
                    tracing::warn!(%error, election.id = %election, "definition lookup failed; using the cached one");
                    entry.refreshing = false;
                    Ok(entry.current.clone())
                }
                None => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    impl DefinitionLookup for Counting {
        fn find(&self, _: &ElectionId, _: Option<DefinitionVersion>) -> Result<Lookup, StoreError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Lookup::Current(None))
        }
    }

    #[test]
    fn one_lookup_per_interval_and_stale_entries_are_refreshed_by_one_caller() {
        let lookup = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = DefinitionCache::new(lookup.clone(), Duration::from_millis(50));
        let e = ElectionId::parse("e").unwrap();
        assert!(matches!(cache.cached(&e), Cached::Miss));
        assert!(cache.refresh(&e).unwrap().definition.is_none());
        for _ in 0..100 {
            assert!(matches!(
                cache.cached(&e),
                Cached::Hit(Current {
                    definition: None,
                    ..
                })
            ));
        }
        assert_eq!(lookup.0.load(Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            matches!(cache.cached(&e), Cached::Miss),
            "the first caller refreshes"
        );
        assert!(
            matches!(
                cache.cached(&e),
                Cached::Hit(Current {
                    definition: None,
                    ..
                })
            ),
            "the others use the stale entry"
        );
        cache.refresh(&e).unwrap();
        assert_eq!(lookup.0.load(Ordering::SeqCst), 2);
    }
}
