//! Election definitions as ingest checks them (SPEC §7): a report for a
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
//! one query per interval whatever the load. "Not defined" is cached too. A
//! definition loaded (or grown) while ingest runs therefore applies within
//! the interval; definitions only grow, so a stale copy can only be stricter
//! than the stored one, never accept something the stored one refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use election_core::{Definition, ElectionId, StoreError};
use store_pg::definitions::{Lookup, Version};

/// Finds an election's definition.
pub trait DefinitionLookup: Send + Sync {
    /// Looks the election up: [`Lookup::Unchanged`] when its stored version
    /// is still `known`, else the stored definition (`None`: not defined).
    fn find(&self, election: &ElectionId, known: Option<Version>) -> Result<Lookup, StoreError>;
}

/// Every election undefined: for embedders and tests without definitions.
pub struct NoDefinitions;

impl DefinitionLookup for NoDefinitions {
    fn find(&self, _: &ElectionId, _: Option<Version>) -> Result<Lookup, StoreError> {
        Ok(Lookup::Current(None))
    }
}

struct Entry {
    definition: Option<Arc<Definition>>,
    version: Option<Version>,
    fetched: Instant,
    refreshing: bool,
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
    Hit(Option<Arc<Definition>>),
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
            Some(entry) if entry.fetched.elapsed() < self.ttl || entry.refreshing => {
                Cached::Hit(entry.definition.clone())
            }
            Some(entry) => {
                entry.refreshing = true;
                Cached::Miss
            }
            None => Cached::Miss,
        }
    }

    /// Looks the election up (blocking) and caches the answer. When the
    /// lookup fails, a stale answer is used if there is one.
    pub fn refresh(&self, election: &ElectionId) -> Result<Option<Arc<Definition>>, StoreError> {
        let known = {
            let entries = self.entries.lock().expect("definition cache poisoned");
            entries.get(election).and_then(|entry| entry.version)
        };
        let found = self.lookup.find(election, known);
        let mut entries = self.entries.lock().expect("definition cache poisoned");
        match found {
            Ok(Lookup::Current(found)) => {
                let (definition, version) = match found {
                    Some((definition, version)) => (Some(Arc::from(definition)), Some(version)),
                    None => (None, None),
                };
                entries.insert(
                    election.clone(),
                    Entry {
                        definition: definition.clone(),
                        version,
                        fetched: Instant::now(),
                        refreshing: false,
                    },
                );
                Ok(definition)
            }
            Ok(Lookup::Unchanged) => {
                // `known` came from this election's entry, and entries are
                // never removed, so the entry is there.
                let entry = entries
                    .get_mut(election)
                    .expect("an unchanged definition has its entry");
                entry.fetched = Instant::now();
                entry.refreshing = false;
                Ok(entry.definition.clone())
            }
            Err(error) => match entries.get_mut(election) {
                Some(entry) => {
                    tracing::warn!(%error, election.id = %election, "definition lookup failed; using the cached one");
                    entry.refreshing = false;
                    Ok(entry.definition.clone())
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
        fn find(&self, _: &ElectionId, _: Option<Version>) -> Result<Lookup, StoreError> {
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
        assert!(cache.refresh(&e).unwrap().is_none());
        for _ in 0..100 {
            assert!(matches!(cache.cached(&e), Cached::Hit(None)));
        }
        assert_eq!(lookup.0.load(Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            matches!(cache.cached(&e), Cached::Miss),
            "the first caller refreshes"
        );
        assert!(
            matches!(cache.cached(&e), Cached::Hit(None)),
            "the others use the stale entry"
        );
        cache.refresh(&e).unwrap();
        assert_eq!(lookup.0.load(Ordering::SeqCst), 2);
    }
}
