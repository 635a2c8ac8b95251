//! Group commit: concurrent requests share one PostgreSQL transaction and one
//! pipelined Redis round trip per node.
//!
//! One durable transaction per report caps near 6,000 reports/s on our
//! machines; a hundred reports per transaction is worth about four times that
//! (docs/benchmarks.md). So handlers do not call the engine themselves: they
//! queue their validated report here and wait for its own answer.
//!
//! The batcher takes a permit (at most `max_in_flight` batches run at once,
//! one per database connection it may use) and a recording permit (at most
//! `max_recording` of them in their PostgreSQL transaction at once), then
//! gathers what is queued: the first report it waits for, then anything
//! already waiting, then whatever arrives within `linger`, up to its share.
//! While every permit is busy, reports pile up, so batches grow exactly when
//! load does and a lone report waits at most `linger`.
//!
//! Why two: a batch's recording transaction is PostgreSQL's work, its
//! counting (the Redis apply and the counted mark) mostly Redis's and
//! ingest's. Fewer transactions at once make each larger and cheaper per
//! report for PostgreSQL, but a batch that held its permit while it was
//! counted kept the next one from being recorded (docs/benchmarks.md,
//! "Recording and counting in step"). So the recording permit is handed
//! back as soon as the transaction is over, and the next batch is formed
//! and recorded while this one is counted.
//!
//! The share: what is waiting, counted in reports (a bulk request's job
//! counts as its reports), is split evenly among the batches that may
//! start recording now (this one and the free recording permits), but no
//! batch is made smaller than [`MIN_SHARE`] (each batch has a fixed cost)
//! or larger than `batch_size`. Clients that post again as soon as they are answered move
//! in step: without the split, all of them landed in one batch while the
//! other permits idled, and each batch waited for the whole previous one.
//! Measured at 64 such clients: 6,000 reports/s in batches of ~63 one at a
//! time; 8,300/s when split four ways. That was when a batch held its one
//! permit until it was counted; since the recording permit is handed back
//! after the transaction (below), one recording permit (the default) takes
//! everything waiting into each batch and the next is recorded while this
//! one is counted, with as many reports a second as two permits for less
//! CPU per report (docs/benchmarks.md, "One recording transaction at a
//! time").
//!
//! Each report still gets its own answer: the engine answers per report, and
//! one conflicting report never fails its neighbours. Only a failure of the
//! whole transaction (PostgreSQL unavailable, or a definition that changed
//! since the reports were checked) fails the batch, and then nothing of it
//! was recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use election_core::{Engine, Outcome, Phases, Report, StoreError};
use election_http::metrics::{EncodeLabelSet, Histogram, LATENCY_BUCKETS, Registry, SIZE_BUCKETS};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// How batches are formed.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Most reports in one transaction.
    pub batch_size: usize,
    /// Longest wait for more reports once one is queued.
    pub linger: Duration,
    /// Most batches under way at once (being recorded, counted or marked).
    pub max_in_flight: usize,
    /// Most of them in their recording transaction at once (at most
    /// `max_in_flight`).
    pub max_recording: usize,
    /// Most jobs waiting for a batch (a job is one report, or a bulk
    /// request's reports: up to a thousand); beyond, requests wait to
    /// queue. Counted in jobs, not reports: a waiting request holds its
    /// parsed reports whether it is in the queue or waiting for room in it,
    /// so a bound in reports here would not bound ingest's memory.
    pub queue: usize,
}

/// What a queued report gets back.
pub type Answer = Result<Outcome, NotRecorded>;

/// Why a queued report was not recorded (nor anything of its batch).
#[derive(Debug)]
pub enum NotRecorded {
    /// The log failed the whole batch (PostgreSQL unavailable).
    Store(Arc<StoreError>),
    /// Its election's definition (or a batch-mate's) changed since the
    /// reports were checked: here is the report back, to be checked against
    /// the new definition and submitted again.
    DefinitionChanged(Box<Report>),
}

/// What handlers queue: one report, or a bulk request's reports, which stay
/// together and in order in one batch (so revisions 1 and 2 of a box in one
/// request are decided in that order) and get one answer each.
enum Job {
    One {
        report: Report,
        reply: oneshot::Sender<Answer>,
    },
    Many {
        reports: Vec<Report>,
        reply: oneshot::Sender<Vec<Answer>>,
    },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::One { .. } => 1,
            Job::Many { reports, .. } => reports.len(),
        }
    }
}

/// Where a job's answers go once its batch is done.
enum Reply {
    One(oneshot::Sender<Answer>),
    Many(oneshot::Sender<Vec<Answer>>, usize),
}

impl Reply {
    /// Takes this job's answers off the front of `answers` and sends them.
    /// A client that went away no longer waits: fine.
    fn send(self, answers: &mut impl Iterator<Item = Answer>) {
        match self {
            Reply::One(reply) => {
                if let Some(answer) = answers.next() {
                    let _ = reply.send(answer);
                }
            }
            Reply::Many(reply, n) => {
                let _ = reply.send(answers.take(n).collect());
            }
        }
    }
}

/// The handle handlers queue reports on. Cloning is cheap.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    queued: Arc<Queued>,
}

/// Reports queued and not yet taken into a batch. The channel counts jobs,
/// and a bulk job holds up to a thousand reports: the share must count
/// reports, or a queue of bulk jobs looks like a few reports and every batch
/// is one job (measured in bulk: batches of 100 where the share allowed 256).
/// Counted when a job is queued and when a batch takes it; read only to size
/// the next batch, so a count a job ahead or behind changes nothing.
#[derive(Default)]
struct Queued(AtomicUsize);

impl Queued {
    fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn take(&self, n: usize) {
        // Never below zero: every job is counted before it is sent.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The batcher's task; await it after the last [`Batcher`] is dropped to be
/// sure every accepted report was answered.
pub struct BatcherTask(JoinHandle<()>);

impl BatcherTask {
    /// Waits until every queued and in-flight batch is done.
    pub async fn finish(self) {
        if let Err(error) = self.0.await {
            tracing::error!(%error, "batcher task failed");
        }
    }
}

impl Batcher {
    /// Starts the batcher task on the current runtime.
    pub fn start(
        engine: Engine,
        config: BatchConfig,
        metrics: Arc<Registry>,
    ) -> (Batcher, BatcherTask) {
        let (jobs, queue) = mpsc::channel(config.queue.max(1));
        let queued = Arc::new(Queued::default());
        let task = tokio::spawn(run(queue, Arc::clone(&queued), engine, config, metrics));
        (Batcher { jobs, queued }, BatcherTask(task))
    }

    /// Queues a report and waits for its answer. `None` when the batcher has
    /// stopped (the service is shutting down).
    pub async fn submit(&self, report: Report) -> Option<Answer> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::One { report, reply }).await?;
        answer.await.ok()
    }

    /// Queues reports that must be recorded in one batch, in this order
    /// (a bulk request's), and waits for their answers, one each, in order.
    /// `None` when the batcher has stopped.
    pub async fn submit_all(&self, reports: Vec<Report>) -> Option<Vec<Answer>> {
        if reports.is_empty() {
            return Some(Vec::new());
        }
        let (reply, answers) = oneshot::channel();
        self.send(Job::Many { reports, reply }).await?;
        answers.await.ok()
    }

    /// Queues a job, counting its reports. `None` when the batcher has
    /// stopped. The slot is reserved first and the count added only with
    /// the job in hand, so a handler dropped while it waits for room (its
    /// client went away) leaves no count behind.
    async fn send(&self, job: Job) -> Option<()> {
        let slot = self.jobs.reserve().await.ok()?;
        self.queued.add(job.len());
        slot.send(job);
        Some(())
    }
}

/// The smallest batch the batcher makes when more reports wait: below it the
/// fixed cost of a transaction outweighs running batches side by side
/// (measured: batches of 8 cost PostgreSQL ~1.8× the CPU per report of 32).
pub const MIN_SHARE: usize = 16;

/// How many reports the next batch takes, with `waiting` reports queued
/// besides the one it starts with (the rest of its first job's included)
/// and `free` other batches able to start.
fn share(waiting: usize, free: usize, batch_size: usize) -> usize {
    (waiting + 1)
        .div_ceil(free + 1)
        .max(MIN_SHARE)
        .min(batch_size)
        .max(1)
}

async fn run(
    mut queue: mpsc::Receiver<Job>,
    queued: Arc<Queued>,
    engine: Engine,
    config: BatchConfig,
    metrics: Arc<Registry>,
) {
    let in_flight = config.max_in_flight.max(1);
    let permits = Arc::new(Semaphore::new(in_flight));
    let recording = Arc::new(Semaphore::new(config.max_recording.clamp(1, in_flight)));
    let batch_size = config.batch_size.max(1);
    let deferrals = Arc::new(DeferralLog::default());
    // Handles made once: observing takes no lock.
    let sizes = metrics.histogram(
        "ingest_batch_size",
        "Reports per group-commit batch.",
        SIZE_BUCKETS,
    );
    let durations = metrics.histogram(
        "ingest_batch_duration_seconds",
        "Time to record and count one batch.",
        LATENCY_BUCKETS,
    );
    let phases = PhaseHistograms::new(&metrics);
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let Ok(recording_permit) = Arc::clone(&recording).acquire_owned().await else {
            break;
        };
        let Some(first) = queue.recv().await else {
            break;
        };
        queued.take(first.len());
        // The reports waiting besides the first one the batch holds.
        let waiting = queued.get() + first.len() - 1;
        let share = share(waiting, recording.available_permits(), batch_size);
        let (jobs, size) = gather(first, &mut queue, &queued, share, config.linger).await;
        let engine = engine.clone();
        let (sizes, durations, phases) = (sizes.clone(), durations.clone(), phases.clone());
        let deferrals = Arc::clone(&deferrals);
        tokio::spawn(async move {
            let started = Instant::now();
            let (reports, replies) = unpack(jobs, size);
            let span = tracing::info_span!("batch", batch.size = size);
            let result = tokio::task::spawn_blocking(move || {
                let result = span.in_scope(|| {
                    engine.submit_timed_then(&reports, move || drop(recording_permit))
                });
                let result = result.map(|(outcomes, why, timings)| {
                    phases.observe(&timings);
                    (outcomes, why)
                });
                (reports, result)
            })
            .await;
            drop(permit);
            sizes.observe(size as f64);
            durations.observe(started.elapsed().as_secs_f64());
            match result {
                Ok((reports, result)) => answer(reports, result, replies, &deferrals),
                Err(join_error) => {
                    // A panic in the engine: the repliers are dropped and
                    // their handlers answer 500.
                    tracing::error!(error = %join_error, batch.size = size, "batch task panicked");
                }
            }
        });
    }
    // Wait for the batches still in flight.
    let _ = permits.acquire_many(in_flight as u32).await;
}

/// `ingest_batch_phase_duration_seconds`: how long each step of a batch took
/// (recording in PostgreSQL, applying in Redis, marking counted), so a slow
/// batch names the store that held it. Handles made once, one per phase.
#[derive(Clone)]
struct PhaseHistograms {
    record: Histogram,
    apply: Histogram,
    mark: Histogram,
}

/// The label of [`PhaseHistograms`].
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: &'static str,
}

impl PhaseHistograms {
    fn new(metrics: &Registry) -> PhaseHistograms {
        let family = metrics.histogram_family::<Phase>(
            "ingest_batch_phase_duration_seconds",
            "Time each step of a batch took: record (PostgreSQL), apply (Redis), mark (PostgreSQL).",
            LATENCY_BUCKETS,
        );
        let handle = |phase| family.get_or_create(&Phase { phase }).clone();
        PhaseHistograms {
            record: handle("record"),
            apply: handle("apply"),
            mark: handle("mark"),
        }
    }

    /// Observes a batch's phases; a phase that did not run (nothing fresh
    /// to apply, nothing applied to mark) is not observed.
    fn observe(&self, phases: &Phases) {
        self.record.observe(phases.record.as_secs_f64());
        if !phases.apply.is_zero() {
            self.apply.observe(phases.apply.as_secs_f64());
        }
        if !phases.mark.is_zero() {
            self.mark.observe(phases.mark.as_secs_f64());
        }
    }
}

/// The jobs of the next batch, with `first` and as many reports as are
/// queued up to `share`, waiting up to `linger` for more when fewer are.
/// Counted in reports; a bulk job is never split, so a batch may go over
/// its share by less than one job. Returns the jobs and their reports.
async fn gather(
    first: Job,
    queue: &mut mpsc::Receiver<Job>,
    queued: &Queued,
    share: usize,
    linger: Duration,
) -> (Vec<Job>, usize) {
    let mut size = first.len();
    let mut jobs = Vec::with_capacity(share);
    jobs.push(first);
    while size < share {
        match queue.try_recv() {
            Ok(job) => {
                queued.take(job.len());
                size += job.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    if size < share && !linger.is_zero() {
        let deadline = tokio::time::Instant::now() + linger;
        while size < share {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(job)) => {
                    queued.take(job.len());
                    size += job.len();
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    (jobs, size)
}

/// The batch's reports in job order, and who waits for which answers.
fn unpack(jobs: Vec<Job>, size: usize) -> (Vec<Report>, Vec<Reply>) {
    let mut reports = Vec::with_capacity(size);
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job {
            Job::One { report, reply } => {
                reports.push(report);
                replies.push(Reply::One(reply));
            }
            Job::Many {
                reports: many,
                reply,
            } => {
                replies.push(Reply::Many(reply, many.len()));
                reports.extend(many);
            }
        }
    }
    (reports, replies)
}

/// Sends each waiting handler its answers: the outcomes in order; for a
/// definition that moved since the reports were checked, the reports back
/// to be checked again; for any other failure, the error to all.
fn answer(
    reports: Vec<Report>,
    result: Result<(Vec<Outcome>, Option<String>), StoreError>,
    replies: Vec<Reply>,
    deferrals: &DeferralLog,
) {
    let size = reports.len();
    match result {
        Ok((outcomes, why)) => {
            let pending = outcomes
                .iter()
                .filter(|outcome| matches!(outcome, Outcome::Pending(_)))
                .count();
            deferrals.note(pending, why.as_deref());
            let mut answers = outcomes.into_iter().map(Ok);
            for reply in replies {
                reply.send(&mut answers);
            }
        }
        Err(StoreError::DefinitionChanged { election }) => {
            tracing::info!(election.id = %election, batch.size = size, "a definition changed since the batch was checked; checking again");
            let mut answers = reports
                .into_iter()
                .map(|report| Err(NotRecorded::DefinitionChanged(Box::new(report))));
            for reply in replies {
                reply.send(&mut answers);
            }
        }
        Err(error) => {
            tracing::warn!(error = %election_core::engine::explain(&error), batch.size = size, "batch not recorded");
            let error = Arc::new(error);
            let mut answers =
                std::iter::repeat_with(|| Err(NotRecorded::Store(Arc::clone(&error))));
            for reply in replies {
                reply.send(&mut answers);
            }
        }
    }
}

/// Logs reports recorded but not counted (Redis unavailable or failing), at
/// most once per [`DEFERRAL_LOG_EVERY`] with how many there were since the
/// last line: an operator sees the outage in the log without a line per
/// batch while it lasts (the metric `ingest_redis_deferred_total` counts
/// every one).
#[derive(Default)]
struct DeferralLog {
    state: std::sync::Mutex<(Option<Instant>, usize)>,
}

/// Least time between two deferral warnings.
const DEFERRAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl DeferralLog {
    fn note(&self, pending: usize, why: Option<&str>) {
        if pending == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, unlogged) = &mut *state;
        *unlogged += pending;
        if last.is_none_or(|at| at.elapsed() >= DEFERRAL_LOG_EVERY) {
            tracing::warn!(
                reports.pending = *unlogged,
                error = why.unwrap_or("unknown"),
                "reports recorded but not counted (Redis unavailable or failing); they answer 202 and the reprocessor counts them"
            );
            *last = Some(Instant::now());
            *unlogged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use election_core::memory::{MemoryLog, MemoryTally};
    use election_core::store::{Claim, Counting, LogAudit, PendingStats, Recorded, ReportLog};
    use election_core::{ElectionId, ReportId};

    #[test]
    fn what_waits_is_split_among_the_batches_that_can_start() {
        // 64 clients in step, 4 permits: four batches of 16.
        assert_eq!(share(63, 3, 256), 16);
        // Heavy load: a fair share, capped by the batch size.
        assert_eq!(share(511, 3, 256), 128);
        assert_eq!(share(5_000, 3, 256), 256);
        // Every permit busy but ours: everything that waits, up to the cap.
        assert_eq!(share(100, 0, 256), 101);
        // Light load: never below the minimum, so a lone report still lingers
        // for company, and a small batch size still rules.
        assert_eq!(share(0, 3, 256), MIN_SHARE);
        assert_eq!(share(40, 3, 256), MIN_SHARE);
        assert_eq!(share(40, 3, 4), 4);
        assert_eq!(share(0, 0, 0), 1);
    }

    /// How many batches are in each step at once, and the most seen.
    #[derive(Default)]
    struct Steps {
        recording: AtomicUsize,
        most_recording: AtomicUsize,
        under_way: AtomicUsize,
        most_under_way: AtomicUsize,
        /// Counting (its last step, the counted mark) waits while this
        /// holds `true`.
        held: Mutex<bool>,
        /// The size of every batch recorded, in order.
        sizes: Mutex<Vec<usize>>,
    }

    impl Steps {
        fn enter(now: &AtomicUsize, most: &AtomicUsize) {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
        }
    }

    /// A memory log whose recording takes a while and is watched, and
    /// whose counted mark waits while the test holds it.
    struct SlowLog(MemoryLog, Arc<Steps>);

    impl ReportLog for SlowLog {
        fn record(&self, reports: &[Report]) -> Result<Vec<Recorded>, StoreError> {
            Steps::enter(&self.1.recording, &self.1.most_recording);
            Steps::enter(&self.1.under_way, &self.1.most_under_way);
            self.1.sizes.lock().unwrap().push(reports.len());
            std::thread::sleep(Duration::from_millis(20));
            let recorded = self.0.record(reports);
            self.1.recording.fetch_sub(1, Ordering::SeqCst);
            recorded
        }
        fn claim_pending(&self, claim: &Claim) -> Result<Vec<Counting>, StoreError> {
            self.0.claim_pending(claim)
        }
        fn mark_counted(&self, ids: &[ReportId]) -> Result<(), StoreError> {
            while *self.1.held.lock().unwrap() {
                std::thread::sleep(Duration::from_millis(2));
            }
            self.1.under_way.fetch_sub(1, Ordering::SeqCst);
            self.0.mark_counted(ids)
        }
        fn release(&self, ids: &[ReportId], error: &str) -> Result<(), StoreError> {
            self.0.release(ids, error)
        }
        fn counted_revisions(
            &self,
            election: &ElectionId,
            after: Option<ReportId>,
            limit: usize,
        ) -> Result<Vec<Counting>, StoreError> {
            self.0.counted_revisions(election, after, limit)
        }
        fn audit(&self, election: &ElectionId) -> Result<LogAudit, StoreError> {
            self.0.audit(election)
        }
        fn pending_stats(&self, stuck_attempts: u32) -> Result<PendingStats, StoreError> {
            self.0.pending_stats(stuck_attempts)
        }
        fn elections(&self) -> Result<Vec<ElectionId>, StoreError> {
            self.0.elections()
        }
    }

    /// A batcher over a [`SlowLog`] whose counting starts held, with no
    /// linger and a queue of 64 jobs.
    fn held_batcher(
        batch_size: usize,
        max_in_flight: usize,
        max_recording: usize,
    ) -> (Arc<Steps>, Batcher, BatcherTask) {
        let steps = Arc::new(Steps::default());
        *steps.held.lock().unwrap() = true;
        let engine = Engine::new(
            Arc::new(SlowLog(MemoryLog::new(), Arc::clone(&steps))),
            Arc::new(MemoryTally::new()),
        );
        let config = BatchConfig {
            batch_size,
            linger: Duration::ZERO,
            max_in_flight,
            max_recording,
            queue: 64,
        };
        let (batcher, task) = Batcher::start(engine, config, Arc::new(Registry::default()));
        (steps, batcher, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_recorded_while_others_are_counted_two_at_a_time() {
        let (steps, batcher, task) = held_batcher(1, 4, 2);
        let election = ElectionId::parse("e").unwrap();
        let mut answers = Vec::new();
        for i in 0..8 {
            let report = report(&election, &format!("B{i}"));
            let batcher = batcher.clone();
            answers.push(tokio::spawn(async move { batcher.submit(report).await }));
        }
        // Counting is held: batches are recorded until four are under way,
        // two of them at most in their recording transaction at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        while steps.most_under_way.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = (
            steps.most_under_way.load(Ordering::SeqCst),
            steps.most_recording.load(Ordering::SeqCst),
        );
        // Released before asserting, so a failure ends the test.
        *steps.held.lock().unwrap() = false;
        assert_eq!(
            seen,
            (4, 2),
            "(batches under way, recording) at most at once"
        );
        for answer in answers {
            let answer = answer.await.unwrap().expect("answered");
            assert!(matches!(answer, Ok(Outcome::Counted(_))), "{answer:?}");
        }
        assert_eq!(steps.most_under_way.load(Ordering::SeqCst), 4);
        assert_eq!(steps.most_recording.load(Ordering::SeqCst), 2);
        drop(batcher);
        task.finish().await;
    }

    fn report(election: &ElectionId, ballot_box: &str) -> Report {
        let body = format!(r#"{{"ballot_box_id":"{ballot_box}","city":"c","votes":{{"a":1}}}}"#);
        Report::from_json(election, body.as_bytes()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_jobs_that_wait_are_counted_in_reports_when_batches_are_formed() {
        let (steps, batcher, task) = held_batcher(256, 1, 1);
        let election = ElectionId::parse("e").unwrap();
        // A lone report takes the only permit and holds it (counting held).
        let lone = {
            let (batcher, report) = (batcher.clone(), report(&election, "lone"));
            tokio::spawn(async move { batcher.submit(report).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while steps.sizes.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Six bulk requests of 100 queue behind it.
        let mut bulk = Vec::new();
        for job in 0..6 {
            let reports = (0..100)
                .map(|i| report(&election, &format!("J{job}-{i}")))
                .collect();
            let batcher = batcher.clone();
            bulk.push(tokio::spawn(
                async move { batcher.submit_all(reports).await },
            ));
        }
        while batcher.queued.get() < 600 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued = batcher.queued.get();
        *steps.held.lock().unwrap() = false;
        assert_eq!(queued, 600, "reports queued behind the lone one");
        // 600 reports wait and one batch may start: its share is the batch
        // size, 256, so it takes whole jobs until it has at least that.
        // Counted in jobs (six), the share was the minimum and every batch
        // one job of 100.
        assert!(matches!(
            lone.await.unwrap().expect("answered"),
            Ok(Outcome::Counted(_))
        ));
        for answers in bulk {
            let answers = answers.await.unwrap().expect("answered");
            assert_eq!(answers.len(), 100);
            assert!(answers.iter().all(|a| matches!(a, Ok(Outcome::Counted(_)))));
        }
        assert_eq!(*steps.sizes.lock().unwrap(), vec![1, 300, 300]);
        assert_eq!(batcher.queued.get(), 0, "every queued report taken");
        drop(batcher);
        task.finish().await;
    }
}
