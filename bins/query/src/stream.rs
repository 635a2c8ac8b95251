//! The live stream's events: the whole state once, then only what changed,
//! each rendered once per refresh and shared by every subscriber.
//!
//! Why: at 10,000 cities × 20 parties the whole state is megabytes. Sending
//! it on every change would cost every subscriber megabytes per second, and
//! the service a copy of it per subscriber per change. So:
//!
//! - A subscriber gets the whole state (`snapshot`) when it connects, then
//!   one `delta` per change with only the scopes that changed: the national
//!   totals if they moved, the cities whose entry moved, cities that are
//!   gone, `unreadable_counters` if that list moved.
//! - Every event's `id:` is the version it leads to. The feed keeps the
//!   deltas of its last versions (`Settings::stream_history`) with every
//!   published snapshot. A subscriber that reconnects with `Last-Event-ID`
//!   naming a version the kept deltas start from gets only the deltas after
//!   it; any other id (too old, made up, from another process or an earlier
//!   feed) gets a snapshot. A subscriber that reads too slowly to keep up is
//!   treated the same way: it catches up from the kept deltas, or gets a
//!   snapshot, never a backlog.
//! - Deltas are computed once per change and rendered once per variant of
//!   the stream (everything, `?scope=national`, `?city=C`) into shared
//!   [`Bytes`]; the variants of one city are rendered when a subscriber of
//!   that city first needs them and then kept with the delta. What one
//!   subscriber costs per change is a wake-up and reference-count copies,
//!   never a serialisation.
//!
//! Deltas compose: applying, in order, every delta after a snapshot gives
//! the state of the last one's version. A scoped subscriber is sent only the
//! deltas that touch its scope; those it skips change nothing it shows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use election_core::CityId;
use tokio::sync::OnceCell;

use crate::gzip_stream::Segment;
use crate::render::{Rendered, json};

/// What a stream carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The national totals and every city.
    All,
    /// `?scope=national`: the national totals only.
    National,
    /// `?city=C`: one city only.
    City(CityId),
}

/// One event as sent: `event:`, `id:` and `data:` lines and the blank line
/// that ends it. The data is JSON, which never holds a line break.
pub fn frame(kind: &str, version: u64, data: &str) -> Event {
    Event::new(Bytes::from(format!(
        "event: {kind}\nid: {version}\ndata: {data}\n\n"
    )))
}

/// Events at least this large are compressed on the blocking pool, so that
/// no runtime worker is held for long (at the deltas' level, ~0.1 ms per
/// KiB); smaller ones (a scoped stream's events, the keep-alive) cost less
/// than handing them over.
const COMPRESS_INLINE_BELOW: usize = 4 * 1024;

/// One piece of a stream as sent (an event, or the `retry:` and keep-alive
/// lines), shared by every subscriber it is sent to: its plain bytes, and
/// its gzip segment ([`crate::gzip_stream`]), made when a compressed stream
/// first sends it and then shared too. Derefs to the plain bytes.
#[derive(Clone, Debug)]
pub struct Event(Arc<EventInner>);

#[derive(Debug)]
struct EventInner {
    plain: Bytes,
    segment: OnceCell<Segment>,
}

impl Event {
    /// An event of these bytes.
    pub fn new(plain: Bytes) -> Event {
        Event(Arc::new(EventInner {
            plain,
            segment: OnceCell::new(),
        }))
    }

    /// The bytes a plain stream sends.
    pub fn plain(&self) -> &Bytes {
        &self.0.plain
    }

    /// The bytes a gzip stream sends: compressed by the first stream that
    /// needs them (large events on the blocking pool), then shared.
    pub async fn segment(&self) -> std::io::Result<Segment> {
        self.0
            .segment
            .get_or_try_init(|| async {
                if self.0.plain.len() < COMPRESS_INLINE_BELOW {
                    return Segment::new(&self.0.plain);
                }
                let plain = self.0.plain.clone();
                tokio::task::spawn_blocking(move || Segment::new(&plain))
                    .await
                    .map_err(std::io::Error::other)?
            })
            .await
            .cloned()
    }
}

impl std::ops::Deref for Event {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.plain
    }
}

/// What changed from one version to the next, rendered for every variant.
#[derive(Debug)]
pub struct Delta {
    /// The version it leads to (its event id).
    pub version: u64,
    /// The version it applies to.
    pub previous: u64,
    /// The event of the unscoped stream.
    all: Event,
    /// The event of `?scope=national`, when the national totals or
    /// `unreadable_counters` changed.
    national: Option<Event>,
    /// The cities whose entry changed (with it) or that are gone (`None`),
    /// in city order.
    cities: Vec<(Arc<str>, Option<Arc<str>>)>,
    /// `unreadable_counters`, when the list changed.
    unreadable: Option<Vec<String>>,
    election_json: Arc<str>,
    as_of_json: Arc<str>,
    /// The events of `?city=C`, rendered when first asked for (`None`: this
    /// delta does not touch the city).
    city_events: Mutex<HashMap<Box<str>, Option<Event>>>,
}

impl Delta {
    /// What changed from `before` to `after`.
    pub fn between(before: &Rendered, after: &Rendered) -> Delta {
        // Both lists are in city order: one merge, no lookups.
        // An entry that did not move is the very same `Arc` (see
        // `render::Renderer`): most cities are told apart by a pointer.
        let mut cities: Vec<(Arc<str>, Option<Arc<str>>)> = Vec::new();
        let mut old = before.items.iter().peekable();
        for (city, item) in &after.items {
            while let Some((gone, _)) = old.next_if(|(listed, _)| listed < city) {
                cities.push((Arc::clone(gone), None));
            }
            match old.next_if(|(listed, _)| listed == city) {
                Some((_, was)) if Arc::ptr_eq(was, item) || was == item => {}
                _ => cities.push((Arc::clone(city), Some(Arc::clone(item)))),
            }
        }
        for (gone, _) in old {
            cities.push((Arc::clone(gone), None));
        }
        let national =
            (before.national_item != after.national_item).then(|| Arc::clone(&after.national_item));
        let unreadable = (before.unreadable != after.unreadable).then(|| after.unreadable.clone());

        let head = format!(
            "{{\"election\":{},\"version\":{}",
            after.election_json, after.version
        );
        let national_field = national
            .as_ref()
            .map_or_else(String::new, |n| format!(",\"national\":{n}"));
        let unreadable_json = unreadable.as_ref().map_or_else(String::new, |u| {
            format!(",\"unreadable_counters\":{}", json(u))
        });
        let mut changed = String::new();
        let mut removed = Vec::new();
        for (city, item) in &cities {
            match item {
                Some(item) => {
                    if !changed.is_empty() {
                        changed.push(',');
                    }
                    changed.push_str(item);
                }
                None => removed.push(&**city),
            }
        }
        let removed = if removed.is_empty() {
            String::new()
        } else {
            format!(",\"removed_cities\":{}", json(&removed))
        };
        let all = format!(
            "{head},\"previous\":{},\"as_of\":{}{national_field},\"cities\":[{changed}]{removed}{unreadable_json}}}",
            before.version, after.as_of_json
        );
        let national_event = (national.is_some() || unreadable.is_some()).then(|| {
            frame(
                "delta",
                after.version,
                &format!(
                    "{head},\"as_of\":{}{national_field}{unreadable_json}}}",
                    after.as_of_json
                ),
            )
        });
        Delta {
            version: after.version,
            previous: before.version,
            all: frame("delta", after.version, &all),
            national: national_event,
            cities,
            unreadable,
            election_json: Arc::clone(&after.election_json),
            as_of_json: Arc::clone(&after.as_of_json),
            city_events: Mutex::new(HashMap::new()),
        }
    }

    /// This delta's event for `variant`, or `None` when it changes nothing
    /// the variant carries.
    pub fn event(&self, variant: &Variant) -> Option<Event> {
        match variant {
            Variant::All => Some(self.all.clone()),
            Variant::National => self.national.clone(),
            Variant::City(city) => {
                let mut events = self
                    .city_events
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                events
                    .entry(Box::from(city.as_str()))
                    .or_insert_with(|| self.render_city(city.as_str()))
                    .clone()
            }
        }
    }

    fn render_city(&self, city: &str) -> Option<Event> {
        let entry = self
            .cities
            .binary_search_by(|(listed, _)| (**listed).cmp(city))
            .ok()
            .map(|index| &self.cities[index].1);
        if entry.is_none() && self.unreadable.is_none() {
            return None;
        }
        let city_field = match entry {
            Some(Some(item)) => format!(",\"city\":{item}"),
            Some(None) => ",\"city\":null".to_owned(),
            None => String::new(),
        };
        let unreadable = self.unreadable.as_ref().map_or_else(String::new, |u| {
            format!(",\"unreadable_counters\":{}", json(u))
        });
        Some(frame(
            "delta",
            self.version,
            &format!(
                "{{\"election\":{},\"version\":{},\"as_of\":{}{city_field}{unreadable}}}",
                self.election_json, self.version, self.as_of_json
            ),
        ))
    }

    /// The size of its unscoped event, in bytes.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Always false: a delta's event has at least its `event:` line.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// What a subscriber that has version `client_has` (none: nothing yet) is
/// sent to reach `rendered`'s version: nothing when it has it, the deltas
/// after its version that touch its variant when the kept deltas start from
/// it, else a snapshot.
pub fn catch_up(rendered: &Rendered, client_has: Option<u64>, variant: &Variant) -> Vec<Event> {
    if client_has == Some(rendered.version) {
        return Vec::new();
    }
    if let Some(has) = client_has
        && let Some(start) = rendered.recent.iter().position(|d| d.previous == has)
    {
        return rendered.recent[start..]
            .iter()
            .filter_map(|delta| delta.event(variant))
            .collect();
    }
    vec![rendered.snapshot_event(variant)]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use election_core::{Counter, ElectionId, PartyId, Snapshot, Totals};
    use serde_json::{Value, json};

    /// The JSON of an event's `data:` line.
    pub(crate) fn data(frame: &[u8]) -> Value {
        let text = std::str::from_utf8(frame).unwrap();
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data line in {text:?}"));
        serde_json::from_str(line).unwrap()
    }

    fn kind(frame: &[u8]) -> String {
        let text = std::str::from_utf8(frame).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("event: "))
            .unwrap()
            .to_owned()
    }

    /// A version of an election from `(city, party, votes)` counters.
    fn rendered(version: u64, counters: &[(&str, &str, i64)], unreadable: &[&str]) -> Rendered {
        let mut totals = Totals::new();
        let mut cities = std::collections::BTreeMap::new();
        let mut parties = std::collections::BTreeSet::new();
        for (city, party, votes) in counters {
            let city = CityId::parse(city).unwrap();
            let party = PartyId::parse(party).unwrap();
            totals.add(Counter::National(party.clone()), *votes);
            totals.add(Counter::City(city.clone(), party.clone()), *votes);
            parties.insert(party);
            cities.insert(city, 1);
        }
        let snapshot = Snapshot {
            totals,
            parties,
            ballot_boxes_reported: cities.len() as u64,
            cities,
            unreadable: unreadable.iter().map(|k| (*k).to_owned()).collect(),
        };
        let as_of = DateTime::parse_from_rfc3339("2025-09-15T18:12:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::milliseconds(version as i64);
        Rendered::new(
            &ElectionId::parse("2025").unwrap(),
            &snapshot,
            None,
            version,
            as_of,
        )
    }

    fn city(name: &str) -> Variant {
        Variant::City(CityId::parse(name).unwrap())
    }

    #[test]
    fn a_delta_carries_only_what_changed() {
        let before = rendered(
            1,
            &[
                ("leeds", "labour", 5),
                ("london", "labour", 10),
                ("york", "tories", 3),
            ],
            &[],
        );
        // London moved, York is gone (a flushed Redis), Bristol is new.
        let after = rendered(
            2,
            &[
                ("bristol", "green", 4),
                ("leeds", "labour", 5),
                ("london", "labour", 12),
            ],
            &[],
        );
        let delta = Delta::between(&before, &after);
        assert_eq!((delta.previous, delta.version), (1, 2));
        let all = delta.event(&Variant::All).unwrap();
        assert_eq!(kind(&all), "delta");
        assert!(
            std::str::from_utf8(&all)
                .unwrap()
                .starts_with("event: delta\nid: 2\n")
        );
        let all = data(&all);
        assert_eq!(all["version"], 2);
        assert_eq!(all["previous"], 1);
        assert_eq!(
            all["national"]["parties"],
            json!({"green": 4, "labour": 17})
        );
        let changed: Vec<&str> = all["cities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["city"].as_str().unwrap())
            .collect();
        assert_eq!(changed, ["bristol", "london"]);
        assert_eq!(all["cities"][1]["total_votes"], 12);
        assert_eq!(all["removed_cities"], json!(["york"]));
        assert!(all.get("unreadable_counters").is_none());

        let national = data(&delta.event(&Variant::National).unwrap());
        assert_eq!(national["national"]["total_votes"], 21);
        assert!(national.get("cities").is_none());
        assert_eq!(
            data(&delta.event(&city("london")).unwrap())["city"]["total_votes"],
            12
        );
        assert_eq!(
            data(&delta.event(&city("york")).unwrap())["city"],
            Value::Null
        );
        // Leeds did not change: its subscribers are sent nothing.
        assert!(delta.event(&city("leeds")).is_none());
        assert!(delta.event(&city("paris")).is_none());
    }

    #[test]
    fn a_city_change_that_leaves_the_nation_alone_is_not_sent_to_national_subscribers() {
        // Votes move from one city to another: the national totals stay.
        let before = rendered(1, &[("leeds", "labour", 5), ("york", "labour", 5)], &[]);
        let after = rendered(2, &[("leeds", "labour", 3), ("york", "labour", 7)], &[]);
        let delta = Delta::between(&before, &after);
        assert!(delta.event(&Variant::National).is_none());
        assert!(
            data(&delta.event(&Variant::All).unwrap())
                .get("national")
                .is_none()
        );
        // Unreadable counters concern every variant.
        let broken = rendered(3, &[("leeds", "labour", 3), ("york", "labour", 7)], &["k"]);
        let delta = Delta::between(&after, &broken);
        for variant in [Variant::All, Variant::National, city("leeds")] {
            let event = data(&delta.event(&variant).unwrap());
            assert_eq!(event["unreadable_counters"], json!(["k"]), "{variant:?}");
        }
        let fixed = rendered(4, &[("leeds", "labour", 3), ("york", "labour", 7)], &[]);
        let event = data(
            &Delta::between(&broken, &fixed)
                .event(&Variant::All)
                .unwrap(),
        );
        assert_eq!(event["unreadable_counters"], json!([]));
    }

    #[test]
    fn catching_up_sends_the_missing_deltas_or_a_snapshot() {
        let versions: Vec<Rendered> = (1..=4)
            .map(|v| {
                rendered(
                    v,
                    &[("leeds", "labour", v as i64), ("york", "tories", 1)],
                    &[],
                )
            })
            .collect();
        let deltas: Vec<Arc<Delta>> = versions
            .windows(2)
            .map(|pair| Arc::new(Delta::between(&pair[0], &pair[1])))
            .collect();
        // The newest version keeps the last two deltas (3 and 4).
        let mut newest = rendered(4, &[("leeds", "labour", 4), ("york", "tories", 1)], &[]);
        newest.recent = Arc::from(deltas[1..].to_vec());

        assert!(catch_up(&newest, Some(4), &Variant::All).is_empty());
        let sent = catch_up(&newest, Some(2), &Variant::All);
        let ids: Vec<u64> = sent
            .iter()
            .map(|f| data(f)["version"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [3, 4]);
        assert!(sent.iter().all(|f| kind(f) == "delta"));
        let sent = catch_up(&newest, Some(3), &Variant::All);
        assert_eq!(sent.len(), 1);
        assert_eq!(data(&sent[0])["previous"], 3);
        // Too old, unknown, none: a snapshot.
        for has in [Some(1), Some(99), None] {
            let sent = catch_up(&newest, has, &Variant::All);
            assert_eq!(sent.len(), 1);
            assert_eq!(kind(&sent[0]), "snapshot", "{has:?}");
            assert_eq!(data(&sent[0])["cities"].as_array().unwrap().len(), 2);
        }
        // York never changed: bridged, its subscribers are sent nothing.
        assert!(catch_up(&newest, Some(2), &city("york")).is_empty());
        assert_eq!(catch_up(&newest, Some(2), &city("leeds")).len(), 2);
        let snapshot = data(&catch_up(&newest, None, &city("york"))[0]);
        assert_eq!(snapshot["city"]["city"], "york");
        assert!(snapshot.get("cities").is_none());
        assert_eq!(
            data(&catch_up(&newest, None, &city("paris"))[0])["city"],
            Value::Null
        );
        // Shared: the same bytes for every subscriber of a version.
        let one = newest.snapshot_event(&Variant::All);
        let two = newest.snapshot_event(&Variant::All);
        assert_eq!(one.as_ptr(), two.as_ptr());
        let one = deltas[2].event(&city("leeds")).unwrap();
        let two = deltas[2].event(&city("leeds")).unwrap();
        assert_eq!(one.as_ptr(), two.as_ptr());
    }

    #[tokio::test]
    async fn an_event_is_compressed_once_for_every_gzip_stream() {
        let names: Vec<String> = (0..2_000).map(|i| format!("c{i}")).collect();
        let counters: Vec<(&str, &str, i64)> = names
            .iter()
            .zip(0..)
            .map(|(city, votes)| (city.as_str(), "labour", votes))
            .collect();
        let big = rendered(2, &counters, &[]);
        let small = rendered(1, &[("leeds", "labour", 1)], &[]);
        // One event compressed inline, one on the blocking pool.
        for event in [
            small.snapshot_event(&Variant::National),
            big.snapshot_event(&Variant::All),
        ] {
            let one = event.segment().await.unwrap();
            let two = event.clone().segment().await.unwrap();
            assert_eq!(one.deflate.as_ptr(), two.deflate.as_ptr());
            assert!(event.len() < 4096 || one.deflate.len() < event.len() / 3);
            // A flushed segment, no final block: it decodes whole.
            let mut plain = Vec::with_capacity(event.len() + 1);
            let mut inflate = flate2::Decompress::new(false);
            inflate
                .decompress_vec(&one.deflate, &mut plain, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(inflate.total_in(), one.deflate.len() as u64);
            assert_eq!(plain, event.plain().to_vec());
        }
    }
}
