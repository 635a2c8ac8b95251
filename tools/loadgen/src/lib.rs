//! `election-loadgen`: simulated ballot boxes posting to `election-ingest`.
//!
//! It builds a deterministic election night from a seed (boxes spread over
//! cities, random counts per party, a share of identical re-posts and of
//! corrections at revision 2), posts it with a fixed number of concurrent
//! clients (optionally at a fixed rate, or for a fixed time), and measures
//! throughput and latency percentiles. Then it checks the point of the whole
//! system: the live totals must equal the sum of the latest revision the
//! service *acknowledged* for every ballot box — no more, no less.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng, seq::SliceRandom};

/// The shape of the simulated night.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Ballot boxes, each posting revision 1.
    pub boxes: usize,
    /// Cities the boxes are spread over.
    pub cities: usize,
    /// Parties on every report.
    pub parties: usize,
    /// Share of boxes that post revision 1 a second time (identical).
    pub duplicates: f64,
    /// Share of boxes that send a correction (revision 2).
    pub revisions: f64,
    /// Random seed: the same seed gives the same night.
    pub seed: u64,
}

/// One post of the night.
#[derive(Clone, Debug)]
pub struct Post {
    /// Index of the ballot box.
    pub ballot_box: usize,
    /// Its revision.
    pub revision: u32,
    /// Votes per party index.
    pub votes: Vec<u32>,
    /// The JSON body.
    pub body: String,
}

/// The city id of box `index`.
pub fn city_of(plan: &Plan, index: usize) -> String {
    format!("city-{:04}", index % plan.cities.max(1))
}

/// The party id of party `index`.
pub fn party_name(index: usize) -> String {
    format!("party-{index:02}")
}

/// Builds every post of the night: every box's revision 1 first (shuffled),
/// then the duplicates and corrections (shuffled).
pub fn night(plan: &Plan) -> Vec<Post> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut first = Vec::with_capacity(plan.boxes);
    let mut later = Vec::new();
    for index in 0..plan.boxes {
        let votes: Vec<u32> = (0..plan.parties)
            .map(|_| rng.random_range(0..400))
            .collect();
        let post = make_post(plan, index, 1, votes.clone());
        if rng.random_bool(plan.duplicates.clamp(0.0, 1.0)) {
            later.push(post.clone());
        }
        if rng.random_bool(plan.revisions.clamp(0.0, 1.0)) {
            let corrected: Vec<u32> = votes
                .iter()
                .map(|&n| n.saturating_add_signed(rng.random_range(-5..=5)))
                .collect();
            later.push(make_post(plan, index, 2, corrected));
        }
        first.push(post);
    }
    first.shuffle(&mut rng);
    later.shuffle(&mut rng);
    first.extend(later);
    first
}

fn make_post(plan: &Plan, index: usize, revision: u32, votes: Vec<u32>) -> Post {
    let parties: serde_json::Map<String, serde_json::Value> = votes
        .iter()
        .enumerate()
        .map(|(p, &n)| (party_name(p), serde_json::Value::from(n)))
        .collect();
    let mut body = serde_json::json!({
        "ballot_box_id": format!("BX{index:07}"),
        "city": city_of(plan, index),
        "votes": parties,
    });
    if revision > 1 {
        body["revision"] = revision.into();
        body["reason"] = "recount".into();
    }
    Post {
        ballot_box: index,
        revision,
        votes,
        body: body.to_string(),
    }
}

/// How to send the night.
#[derive(Clone, Debug)]
pub struct Load {
    /// `http://host:port` of election-ingest.
    pub ingest_url: String,
    /// The election to post to.
    pub election: String,
    /// A token valid for it.
    pub token: String,
    /// Clients posting at once.
    pub concurrency: usize,
    /// Posts per second overall (`None`: as fast as answers come).
    pub rate: Option<f64>,
    /// Stop starting new posts after this long.
    pub duration: Option<Duration>,
    /// Spread the posts over this long on an election-night curve (few
    /// reports at first, a peak, then the stragglers) instead of a flat rate.
    pub spread: Option<Duration>,
    /// Reports per request: 1 posts each alone to `/reports`; more posts
    /// that many consecutive reports of the night in one request to
    /// `/report-batches` (a counting centre's upload).
    pub batch: usize,
}

/// When post `index` of `count` is due on an election-night curve spread
/// over `spread`: the inverse of a logistic distribution's CDF, so the rate
/// rises to a peak in the middle and falls off again.
pub fn curve_due(index: usize, count: usize, spread: Duration) -> Duration {
    let u = (index as f64 + 0.5) / count.max(1) as f64;
    // The logistic quantile, scaled so ~99.5% of posts fall inside `spread`.
    let x = (u / (1.0 - u)).ln() / 10.6 + 0.5;
    spread.mul_f64(x.clamp(0.0, 1.0))
}

/// What happened to the posts.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Posts sent.
    pub sent: usize,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, usize>,
    /// Posts that got no answer (connection refused, reset, timeout).
    pub transport_errors: usize,
    /// Wall time from the first post to the last answer.
    pub elapsed: Duration,
    /// Latency of every answered post, sorted.
    pub latencies: Vec<Duration>,
    /// Per box: the highest acknowledged revision and its votes.
    pub acknowledged: BTreeMap<usize, (u32, Vec<u32>)>,
}

impl Outcome {
    /// Answered posts per second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of latencies.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index]
    }

    /// Acknowledged posts (200, 201, 202).
    pub fn acknowledged_posts(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The national totals the acknowledged posts add up to, per party.
    pub fn expected_national(&self) -> BTreeMap<String, i64> {
        let mut totals = BTreeMap::new();
        for (_, votes) in self.acknowledged.values() {
            for (party, &n) in votes.iter().enumerate() {
                *totals.entry(party_name(party)).or_insert(0) += i64::from(n);
            }
        }
        totals
    }

    /// The per-city totals the acknowledged posts add up to.
    pub fn expected_cities(&self, plan: &Plan) -> BTreeMap<(String, String), i64> {
        let mut totals = BTreeMap::new();
        for (&index, (_, votes)) in &self.acknowledged {
            for (party, &n) in votes.iter().enumerate() {
                *totals
                    .entry((city_of(plan, index), party_name(party)))
                    .or_insert(0) += i64::from(n);
            }
        }
        totals
    }
}

/// Progress while posting, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    /// Posts answered so far.
    pub answered: AtomicUsize,
    /// Set to stop early (Ctrl-C).
    pub stop: AtomicBool,
}

struct Answer {
    post: usize,
    status: Option<u16>,
    latency: Duration,
}

/// Posts `posts` as `load` says.
pub async fn run(
    load: &Load,
    posts: Arc<Vec<Post>>,
    progress: Arc<Progress>,
) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let batch = load.batch.max(1);
    let url = format!(
        "{}/v1/elections/{}/{}",
        load.ingest_url.trim_end_matches('/'),
        load.election,
        if batch == 1 {
            "reports"
        } else {
            "report-batches"
        }
    );
    let started = Instant::now();
    let worker = Worker {
        client,
        url,
        token: load.token.clone(),
        posts: Arc::clone(&posts),
        next: Arc::new(AtomicUsize::new(0)),
        progress,
        batch,
        rate: load.rate,
        duration: load.duration,
        spread: load.spread,
        started,
    };
    let workers: Vec<_> = (0..load.concurrency.max(1))
        .map(|_| tokio::spawn(worker.clone().post_all()))
        .collect();
    let mut outcome = Outcome::default();
    for worker in workers {
        for answer in worker.await.context("a posting task failed")? {
            outcome.note(&posts, answer);
        }
    }
    outcome.elapsed = started.elapsed();
    outcome.latencies.sort_unstable();
    Ok(outcome)
}

/// One posting task: takes the next `batch` posts in turn until none is
/// left, the time is up or the run is stopped.
#[derive(Clone)]
struct Worker {
    client: reqwest::Client,
    url: String,
    token: String,
    posts: Arc<Vec<Post>>,
    /// The index of the next post to take, shared by every task.
    next: Arc<AtomicUsize>,
    progress: Arc<Progress>,
    batch: usize,
    rate: Option<f64>,
    duration: Option<Duration>,
    spread: Option<Duration>,
    started: Instant,
}

impl Worker {
    async fn post_all(self) -> Vec<Answer> {
        let count = self.posts.len();
        let mut answers = Vec::new();
        loop {
            if self.progress.stop.load(Ordering::Relaxed) {
                break;
            }
            if self.duration.is_some_and(|d| self.started.elapsed() >= d) {
                break;
            }
            let index = self.next.fetch_add(self.batch, Ordering::Relaxed);
            if index >= count {
                break;
            }
            let end = (index + self.batch).min(count);
            if let Some(due) = self.due(index, count) {
                tokio::time::sleep_until(due.into()).await;
            }
            let sent = Instant::now();
            let response = self
                .client
                .post(&self.url)
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(self.body(index, end))
                .send()
                .await;
            let statuses = statuses_of(response, self.batch, end - index).await;
            let latency = sent.elapsed();
            for (offset, status) in statuses.into_iter().enumerate() {
                answers.push(Answer {
                    post: index + offset,
                    status,
                    latency,
                });
            }
            self.progress
                .answered
                .fetch_add(end - index, Ordering::Relaxed);
        }
        answers
    }

    /// When post `index` of `count` is due: on the reporting curve, at the
    /// steady rate, or at once.
    fn due(&self, index: usize, count: usize) -> Option<Instant> {
        match (self.spread, self.rate) {
            (Some(spread), _) => Some(self.started + curve_due(index, count, spread)),
            (None, Some(rate)) => Some(self.started + Duration::from_secs_f64(index as f64 / rate)),
            (None, None) => None,
        }
    }

    /// The request body for posts `index..end`: the report itself, or a
    /// batch of them.
    fn body(&self, index: usize, end: usize) -> String {
        if self.batch == 1 {
            self.posts[index].body.clone()
        } else {
            let items: Vec<&str> = self.posts[index..end]
                .iter()
                .map(|p| p.body.as_str())
                .collect();
            format!("{{\"reports\":[{}]}}", items.join(","))
        }
    }
}

impl Outcome {
    /// Counts one answer; a 2xx acknowledges its post's revision.
    fn note(&mut self, posts: &[Post], answer: Answer) {
        self.sent += 1;
        match answer.status {
            Some(status) => {
                *self.statuses.entry(status).or_insert(0) += 1;
                self.latencies.push(answer.latency);
                if (200..300).contains(&status) {
                    let post = &posts[answer.post];
                    let entry = self
                        .acknowledged
                        .entry(post.ballot_box)
                        .or_insert((0, Vec::new()));
                    if post.revision > entry.0 {
                        *entry = (post.revision, post.votes.clone());
                    }
                }
            }
            None => self.transport_errors += 1,
        }
    }
}

/// The status of each of the `n` reports a request carried: the answer's
/// own for a single report; for a batch, each item's `status` from a
/// 200, or the whole answer's status for every item otherwise. `None`: no
/// answer (connection refused, reset, timeout) or an unreadable one.
async fn statuses_of(
    response: reqwest::Result<reqwest::Response>,
    batch: usize,
    n: usize,
) -> Vec<Option<u16>> {
    let Ok(response) = response else {
        return vec![None; n];
    };
    let status = response.status().as_u16();
    if batch == 1 || status != 200 {
        // Read the body so the connection can carry the next request.
        let _ = response.bytes().await;
        return vec![Some(status); n];
    }
    let Ok(body) = response.json::<serde_json::Value>().await else {
        return vec![None; n];
    };
    let items = body["results"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    (0..n)
        .map(|i| {
            items
                .get(i)
                .and_then(|item| item["status"].as_u64())
                .and_then(|s| u16::try_from(s).ok())
        })
        .collect()
}

/// Differences between the live national totals and the acknowledged ones:
/// `(party, live, expected)`.
pub fn national_drift(
    live: &BTreeMap<String, i64>,
    expected: &BTreeMap<String, i64>,
) -> Vec<(String, i64, i64)> {
    let parties: std::collections::BTreeSet<&String> = live.keys().chain(expected.keys()).collect();
    parties
        .into_iter()
        .filter_map(|party| {
            let (l, e) = (
                live.get(party).copied().unwrap_or(0),
                expected.get(party).copied().unwrap_or(0),
            );
            (l != e).then(|| (party.clone(), l, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            boxes: 1000,
            cities: 7,
            parties: 4,
            duplicates: 0.1,
            revisions: 0.05,
            seed: 42,
        }
    }

    /// `just demo` defines demo-night with demo/demo-night.toml: every post
    /// of the demo's night must pass it, and each city must expect exactly
    /// the boxes the night sends it, so percent reporting ends at 100%.
    #[test]
    fn the_demo_definition_fits_the_demo_night() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../demo/demo-night.toml"),
        )
        .unwrap();
        let definition = election_core::Definition::from_toml(&text).unwrap();
        let demo = Plan {
            boxes: 20_000,
            cities: 300,
            parties: 6,
            duplicates: 0.05,
            revisions: 0.03,
            seed: 1,
        };
        let election = election_core::ElectionId::parse("demo-night").unwrap();
        let mut boxes_per_city: BTreeMap<String, std::collections::BTreeSet<usize>> =
            BTreeMap::new();
        for post in night(&demo) {
            let report = election_core::Report::from_json(&election, post.body.as_bytes()).unwrap();
            assert_eq!(definition.check_report(&report), Ok(()), "{}", post.body);
            boxes_per_city
                .entry(report.city().to_string())
                .or_default()
                .insert(post.ballot_box);
        }
        assert_eq!(definition.cities().len(), boxes_per_city.len());
        for city in definition.cities() {
            assert_eq!(
                u64::from(city.expected_ballot_boxes),
                boxes_per_city[city.id.as_str()].len() as u64,
                "{}",
                city.id
            );
        }
        assert_eq!(definition.expected_ballot_boxes(), 20_000);
    }

    #[test]
    fn nights_are_deterministic_and_shaped_as_asked() {
        let a = night(&plan());
        let b = night(&plan());
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.body == y.body));
        let firsts = a.iter().filter(|p| p.revision == 1).count();
        let seconds = a.iter().filter(|p| p.revision == 2).count();
        // 1000 first posts plus roughly 10% duplicates; roughly 5% corrections.
        assert!((1060..=1140).contains(&firsts), "{firsts}");
        assert!((25..=75).contains(&seconds), "{seconds}");
        // Every revision 1 comes before any duplicate or correction.
        let first_later = a.iter().position(|p| p.revision == 2).unwrap();
        assert!(first_later >= 1000);
        assert!(a[0].body.contains("\"city\":\"city-"));
    }

    #[test]
    fn the_curve_peaks_in_the_middle() {
        let spread = Duration::from_secs(100);
        let dues: Vec<f64> = (0..1000)
            .map(|i| curve_due(i, 1000, spread).as_secs_f64())
            .collect();
        assert!(
            dues.windows(2).all(|w| w[0] <= w[1]),
            "due times never go back"
        );
        let in_window = |from: f64, to: f64| dues.iter().filter(|&&d| d >= from && d < to).count();
        // The middle tenth of the night sees far more reports than the first.
        assert!(in_window(45.0, 55.0) > 4 * in_window(0.0, 10.0));
        assert!(dues[999] <= 100.0 && dues[0] >= 0.0);
    }

    #[test]
    fn expected_totals_follow_the_highest_acknowledged_revision() {
        let mut outcome = Outcome::default();
        outcome.acknowledged.insert(0, (2, vec![5, 1]));
        outcome.acknowledged.insert(1, (1, vec![1, 1]));
        let expected = outcome.expected_national();
        assert_eq!(expected[&party_name(0)], 6);
        assert_eq!(expected[&party_name(1)], 2);
        let live: BTreeMap<String, i64> = [(party_name(0), 6), (party_name(1), 3)].into();
        assert_eq!(national_drift(&live, &expected), [(party_name(1), 3, 2)]);
    }
}
