//! The load: N concurrent clients posting a deterministic night and retrying
//! what was not answered, as a ballot box's reporting client does.
//!
//! The night is `election_loadgen::night` (every box's revision 1, then
//! identical re-posts and corrections at revision 2, shuffled). A post is
//! *answered* by any status below 500; a connection error, a timeout or a
//! 5xx (503 while PostgreSQL is down) is retried after a short backoff,
//! against the next target when there are several, until it is answered.
//! Every attempt is recorded with its time and status, so a scenario can ask
//! what was answered while a server was down.
//!
//! Since every post ends answered, every revision that reached PostgreSQL
//! was eventually acknowledged (a retry of a recorded revision is a replay,
//! `200`): the totals the acknowledged posts imply must equal the log's.
//!
//! The load runs on a thread with its own tokio runtime, so scenarios are
//! plain blocking tests that kill and restart things while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use election_loadgen::{Outcome, Plan, Post, night};

/// How to post.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://host:port` of every ingest instance; client `i` starts on
    /// target `i % n` and moves to the next one on each retry.
    pub targets: Vec<String>,
    /// The election.
    pub election: String,
    /// A token valid for any of its boxes.
    pub token: String,
    /// Clients posting at once.
    pub concurrency: usize,
    /// The load fails when a post is still unanswered after this long.
    pub give_up_after: Duration,
    /// Posts started per second overall (`None`: as fast as answers come),
    /// so a night lasts long enough for a slow fault (a failover) to land
    /// in its middle.
    pub rate: Option<f64>,
}

/// One attempt to post.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// Index of the post in the night.
    pub post: usize,
    /// When the attempt ended.
    pub at: Instant,
    /// The status, or `None` for no answer (refused, reset, timed out).
    pub status: Option<u16>,
}

#[derive(Default)]
struct Shared {
    /// Posts answered so far.
    answered: AtomicUsize,
    attempts: Mutex<Vec<Attempt>>,
}

/// A load running in the background.
pub struct Load {
    plan: Plan,
    posts: Arc<Vec<Post>>,
    shared: Arc<Shared>,
    started: Instant,
    thread: JoinHandle<Result<(), String>>,
}

impl Load {
    /// Starts posting `plan`'s night as `spec` says.
    pub fn start(plan: &Plan, spec: LoadSpec) -> Load {
        assert!(!spec.targets.is_empty(), "no ingest to post to");
        let posts = Arc::new(night(plan));
        let shared = Arc::new(Shared::default());
        let thread = {
            let posts = Arc::clone(&posts);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("building the load's runtime: {e}"))?;
                runtime.block_on(drive(spec, posts, shared))
            })
        };
        Load {
            plan: plan.clone(),
            posts,
            shared,
            started: Instant::now(),
            thread,
        }
    }

    /// Posts in the night.
    pub fn len(&self) -> usize {
        self.posts.len()
    }

    /// Whether the night has no post.
    pub fn is_empty(&self) -> bool {
        self.posts.is_empty()
    }

    /// Posts answered so far.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Answers (final or not) with `status` since `since`.
    pub fn statuses_since(&self, since: Instant, status: Option<u16>) -> usize {
        self.shared
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|attempt| attempt.at >= since && attempt.status == status)
            .count()
    }

    /// Waits until `count` posts are answered (or the load ended).
    ///
    /// # Panics
    /// After `timeout`.
    #[track_caller]
    pub fn wait_answered(&self, count: usize, timeout: Duration) {
        crate::wait_until(&format!("{count} posts are answered"), timeout, || {
            self.answered() >= count.min(self.len()) || self.thread.is_finished()
        });
    }

    /// Waits until every post is answered and returns what happened.
    ///
    /// # Panics
    /// When a post stayed unanswered past `give_up_after`.
    pub fn finish(self) -> LoadResult {
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => panic!("the load failed: {failure}"),
            Err(_) => panic!("the load's thread panicked"),
        }
        let attempts = std::mem::take(
            &mut *self
                .shared
                .attempts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        LoadResult::new(self.plan, self.posts, attempts, self.started.elapsed())
    }
}

async fn drive(spec: LoadSpec, posts: Arc<Vec<Post>>, shared: Arc<Shared>) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let give_up = started + spec.give_up_after;
    let mut clients = Vec::new();
    for client_index in 0..spec.concurrency.max(1) {
        let (client, spec, posts, shared, next) = (
            client.clone(),
            Arc::clone(&spec),
            Arc::clone(&posts),
            Arc::clone(&shared),
            Arc::clone(&next),
        );
        clients.push(tokio::spawn(async move {
            let mut target = client_index % spec.targets.len();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(post) = posts.get(index) else {
                    return Ok(());
                };
                if let Some(rate) = spec.rate {
                    let due = started + Duration::from_secs_f64(index as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut backoff = Duration::from_millis(20);
                loop {
                    let url = format!(
                        "{}/v1/elections/{}/reports",
                        spec.targets[target], spec.election
                    );
                    let status = client
                        .post(&url)
                        .bearer_auth(&spec.token)
                        .header("content-type", "application/json")
                        .body(post.body.clone())
                        .send()
                        .await
                        .ok()
                        .map(|response| response.status().as_u16());
                    shared
                        .attempts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Attempt {
                            post: index,
                            at: Instant::now(),
                            status,
                        });
                    if status.is_some_and(|status| status < 500) {
                        shared.answered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if Instant::now() > give_up {
                        return Err(format!(
                            "post {index} ({}) still unanswered after {:?} (last: {status:?})",
                            post.body, spec.give_up_after
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    target = (target + 1) % spec.targets.len();
                }
            }
        }));
    }
    for client in clients {
        client
            .await
            .map_err(|e| format!("a client task failed: {e}"))??;
    }
    Ok(())
}

/// Everything the load saw.
#[derive(Debug)]
pub struct LoadResult {
    /// The night's shape.
    pub plan: Plan,
    /// Every post of the night.
    pub posts: Arc<Vec<Post>>,
    /// Every attempt, in the order they ended.
    pub attempts: Vec<Attempt>,
    /// The final answers, in loadgen's terms (statuses of the answered
    /// posts, acknowledged revision per box; `transport_errors` counts
    /// attempts without an answer).
    pub outcome: Outcome,
}

impl LoadResult {
    fn new(plan: Plan, posts: Arc<Vec<Post>>, attempts: Vec<Attempt>, elapsed: Duration) -> Self {
        let mut outcome = Outcome {
            sent: posts.len(),
            elapsed,
            ..Outcome::default()
        };
        for attempt in &attempts {
            match attempt.status {
                None => outcome.transport_errors += 1,
                Some(status) if status >= 500 => {}
                Some(status) => {
                    *outcome.statuses.entry(status).or_insert(0) += 1;
                    if (200..300).contains(&status) {
                        let post = &posts[attempt.post];
                        let entry = outcome
                            .acknowledged
                            .entry(post.ballot_box)
                            .or_insert((0, Vec::new()));
                        if post.revision > entry.0 {
                            *entry = (post.revision, post.votes.clone());
                        }
                    }
                }
            }
        }
        LoadResult {
            plan,
            posts,
            attempts,
            outcome,
        }
    }

    /// Posts acknowledged (200, 201, 202).
    pub fn acknowledged(&self) -> usize {
        self.outcome.acknowledged_posts()
    }

    /// Attempts that were retried (no answer or a 5xx).
    pub fn retried(&self) -> usize {
        self.attempts
            .iter()
            .filter(|attempt| attempt.status.is_none_or(|status| status >= 500))
            .count()
    }

    /// Attempts answered `status` (`None`: no answer).
    pub fn count(&self, status: Option<u16>) -> usize {
        self.attempts
            .iter()
            .filter(|attempt| attempt.status == status)
            .count()
    }

    /// Attempts answered `status` within `[from, to]`.
    pub fn count_between(&self, status: Option<u16>, from: Instant, to: Instant) -> usize {
        self.attempts
            .iter()
            .filter(|attempt| attempt.status == status && attempt.at >= from && attempt.at <= to)
            .count()
    }

    /// Every acknowledged `(ballot box id, revision)`.
    pub fn acknowledged_revisions(&self) -> BTreeSet<(String, i32)> {
        self.attempts
            .iter()
            .filter(|attempt| attempt.status.is_some_and(|s| (200..300).contains(&s)))
            .map(|attempt| {
                let post = &self.posts[attempt.post];
                (
                    box_id(post),
                    i32::try_from(post.revision).unwrap_or(i32::MAX),
                )
            })
            .collect()
    }

    /// The counters the acknowledged posts imply, under the contract's key
    /// names: `election:<e>:party:<p>` and `election:<e>:city:<c>:party:<p>`.
    pub fn expected_counters(&self, election: &str) -> BTreeMap<String, i64> {
        let mut counters = BTreeMap::new();
        for (party, votes) in self.outcome.expected_national() {
            counters.insert(format!("election:{election}:party:{party}"), votes);
        }
        for ((city, party), votes) in self.outcome.expected_cities(&self.plan) {
            counters.insert(
                format!("election:{election}:city:{city}:party:{party}"),
                votes,
            );
        }
        counters
    }

    /// Asserts that every post was answered with what a night can bring:
    /// 200 (replay), 201, 202, or 409 (a re-post of revision 1 after the
    /// correction was recorded). Anything else is a bug.
    #[track_caller]
    pub fn assert_answers_expected(&self) {
        let unexpected: Vec<(&u16, &usize)> = self
            .outcome
            .statuses
            .iter()
            .filter(|(status, _)| ![200, 201, 202, 409].contains(*status))
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected answers (status, count): {unexpected:?}"
        );
        let answered: usize = self.outcome.statuses.values().sum();
        assert_eq!(answered, self.posts.len(), "every post is answered once");
    }

    /// One line for the scenario's output.
    pub fn describe(&self) -> String {
        format!(
            "{} posts in {:.1} s: answers {:?}, {} retried attempts ({} without an answer, {} answered 5xx)",
            self.posts.len(),
            self.outcome.elapsed.as_secs_f64(),
            self.outcome.statuses,
            self.retried(),
            self.outcome.transport_errors,
            self.retried() - self.outcome.transport_errors,
        )
    }
}

/// The ballot box id in a post's body.
pub fn box_id(post: &Post) -> String {
    serde_json::from_str::<serde_json::Value>(&post.body)
        .ok()
        .and_then(|body| body["ballot_box_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("a post without ballot_box_id: {}", post.body))
}
