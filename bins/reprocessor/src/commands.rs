//! The subcommands: `run [--once]`, `reconcile --election E [--repair]` and
//! `verify --election E [--head H]`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use election_core::reconcile::{self, Comparison, CounterCheck, Repair, Verdict};
use election_core::{Claim, Counter, ElectionId, ReportLog, Tally};
use election_http::redact;
use store_pg::PgPool;
use store_redis::UnreadableCounter;

use crate::cli::{Reconcile, Run, Verify};
use crate::healer::HealSettings;
use crate::{Services, Settings};

/// Counted revisions read and checked per page by the healing sweep.
const HEAL_PAGE: usize = 1000;

/// The repair locks of `store_pg` (session advisory locks).
struct PgRepairLocks(PgPool);

impl crate::healer::RepairLocks for PgRepairLocks {
    fn try_lock(&self, election: &ElectionId) -> Result<Option<Box<dyn Send>>, String> {
        store_pg::try_lock_repair(&self.0, election)
            .map(|lock| lock.map(|lock| Box::new(lock) as Box<dyn Send>))
            .map_err(|error| format!("{:#}", anyhow::Error::new(error)))
    }
}

/// The repair locks of `reconcile --repair`, for the healing loop.
pub fn repair_locks(pg: PgPool) -> Arc<dyn crate::healer::RepairLocks> {
    Arc::new(PgRepairLocks(pg))
}

/// What `/readyz` checks: PostgreSQL and Redis both answer (counting needs
/// both).
pub use election_wiring::ready::stores as ready_check;

/// `election-reprocessor run [--once]`, on a runtime of its own. Returns
/// whether it succeeded (`--once`: nothing left pending).
pub fn run(args: Run) -> anyhow::Result<bool> {
    let stores = args.stores.connect()?;
    let settings = Settings {
        claim: Claim {
            limit: args.batch_size.max(1),
            pending_for: args.pending_after,
            lease: args.lease,
        },
        interval: args.interval,
        stuck_attempts: args.stuck_attempts,
        heal: (!args.once && !args.heal_interval.is_zero()).then_some(HealSettings {
            interval: args.heal_interval,
            page_size: HEAL_PAGE,
        }),
        seal: (!args.once && !args.seal_interval.is_zero()).then_some(
            crate::sealer::SealSettings {
                interval: args.seal_interval,
            },
        ),
    };
    tracing::info!(
        database.url = %redact(&args.stores.database.database_url),
        redis.url = %redact(&args.stores.redis.redis_url),
        once = args.once,
        "election-reprocessor starting"
    );
    election_wiring::block_on(async move {
        if args.once {
            let stopping = election_wiring::stop_flag(election_http::shutdown::signal());
            let summary = crate::drain(stores.log, stores.tally, &settings, stopping).await;
            println!("election-reprocessor: {}", summary.line());
            return Ok(summary.is_done());
        }
        let serving = args.listen.bind().await?;
        tracing::info!(listen.addr = %serving.local_addr()?, "serving /healthz, /readyz and /metrics");
        let services = Services {
            ready: ready_check(stores.pg.clone(), Arc::clone(&stores.tally)),
            locks: repair_locks(stores.pg.clone()),
            log: stores.log,
            redis: Some(Arc::clone(&stores.tally)),
            tally: stores.tally,
            sealer: Some(store_pg::seal::Sealer::new(stores.pg.clone())),
        };
        crate::run(serving, services, settings).await?;
        tracing::info!("election-reprocessor stopped");
        Ok(true)
    })
}

/// `election-reprocessor reconcile --election E [--repair]`: prints the
/// comparison (and what the repair did) on standard output; returns whether
/// Redis is exact.
pub fn reconcile(args: Reconcile) -> anyhow::Result<bool> {
    let election = ElectionId::parse(&args.election).context("--election")?;
    let stores = args.stores.connect()?;
    let config = reconcile::Config {
        page_size: reconcile::Config::DEFAULT.page_size,
        max_rounds: args.rounds.max(2),
        round_interval: args.round_interval,
    };
    // A Redis that may evict keys can lose any counter or marker at any
    // moment: say so rather than compare or repair.
    stores
        .tally
        .check_policy()
        .with_context(|| format!("not reconciling election {election}"))?;
    let log: &dyn ReportLog = &*stores.log;
    let tally: &dyn Tally = &*stores.tally;
    let mut out = std::io::stdout().lock();
    let comparison = if args.repair {
        // The repair argument assumes nobody else re-applies lost revisions
        // meanwhile: one repair per election at a time.
        let _lock = store_pg::try_lock_repair(&stores.pg, &election)
            .context("taking the repair lock")?
            .with_context(|| {
                format!(
                    "another `reconcile --repair` of election {election} is running;                      run one at a time"
                )
            })?;
        tracing::info!(election.id = %election, "repairing the counters of an election");
        let repair = reconcile::repair(log, tally, &election, &config)
            .with_context(|| format!("repairing the counters of election {election}"))?;
        print_repair(&mut out, &election, &repair)?;
        repair.after
    } else {
        reconcile::compare(log, tally, &election, &config)
            .with_context(|| format!("comparing the counters of election {election}"))?
    };
    print_comparison(&mut out, &election, &comparison, args.max_rows)?;
    // Keys holding something that is not an integer read as absent above
    // (0); they need a person before anything can count or repair them.
    let compared: Vec<Counter> = comparison
        .checks
        .iter()
        .map(|check| check.counter.clone())
        .collect();
    let unreadable = stores
        .tally
        .unreadable_counters(&election, &compared)
        .with_context(|| format!("reading the counters of election {election}"))?;
    print_unreadable(&mut out, &unreadable)?;
    out.flush()?;
    Ok(comparison.is_exact() && unreadable.is_empty())
}

/// The counter keys that are not integers, and what to do about them.
fn print_unreadable(out: &mut impl Write, unreadable: &[UnreadableCounter]) -> std::io::Result<()> {
    let n = unreadable.len();
    if n == 0 {
        return Ok(());
    }
    let (keys, hold, they, them, are) = if n == 1 {
        ("key", "holds", "it reads", "it", "it is")
    } else {
        ("keys", "hold", "they read", "them", "they are")
    };
    writeln!(
        out,
        "unreadable: {n} counter {keys} {hold} something that is not an integer ({they} as 0 \
         above, the live totals leave {them} out, and no revision touching {them} can be counted \
         until {are} fixed or deleted; then run `reconcile --repair`):"
    )?;
    for counter in unreadable {
        writeln!(out, "  {counter}")?;
    }
    Ok(())
}

fn print_repair(
    out: &mut impl Write,
    election: &ElectionId,
    repair: &Repair,
) -> std::io::Result<()> {
    writeln!(
        out,
        "phase A: re-applied {} counted revision{} of election {election} in id order; \
         {} had lost counters with their markers and were restored",
        repair.reapplied,
        plural(repair.reapplied),
        repair.restored
    )?;
    writeln!(
        out,
        "phase B: rewrote {} counter{} that drifted otherwise (guarded); {} rewrite{} refused \
         because the counter moved meanwhile; {} round{}",
        repair.fixes.len(),
        plural(repair.fixes.len() as u64),
        repair.refused,
        plural(repair.refused),
        repair.rounds,
        plural(u64::from(repair.rounds))
    )?;
    for fix in &repair.fixes {
        writeln!(
            out,
            "  {}: {} -> {}",
            store_redis::keys::counter(election, &fix.counter),
            fix.observed,
            fix.expected
        )?;
    }
    writeln!(out, "after the repair:")
}

/// The drift table, the counters in flight, and a summary line.
fn print_comparison(
    out: &mut impl Write,
    election: &ElectionId,
    comparison: &Comparison,
    max_rows: usize,
) -> std::io::Result<()> {
    let limit = if max_rows == 0 { usize::MAX } else { max_rows };
    let drifted: Vec<&CounterCheck> = comparison.drifted().collect();
    let in_flight: Vec<&CounterCheck> = comparison.in_flight().collect();
    let key = |check: &CounterCheck| store_redis::keys::counter(election, &check.counter);
    let width = drifted
        .iter()
        .chain(&in_flight)
        .take(limit.saturating_mul(2))
        .map(|check| key(check).len())
        .max()
        .unwrap_or(0)
        .max("key".len());
    if !drifted.is_empty() {
        writeln!(
            out,
            "{:<width$}  {:>12}  {:>12}  {:>12}",
            "key", "redis", "expected", "difference"
        )?;
        print_rows(out, &drifted, limit, |out, check| {
            writeln!(
                out,
                "{:<width$}  {:>12}  {:>12}  {:>12}",
                key(check),
                check.tally,
                check.expected,
                signed(check.difference())
            )
        })?;
    }
    if !in_flight.is_empty() {
        writeln!(
            out,
            "in flight (not compared: revisions touching them are not counted yet, or were \
             recorded during the comparison):"
        )?;
        writeln!(
            out,
            "{:<width$}  {:>12}  {:>12}  {:>12}  why",
            "key", "redis", "counted", "difference"
        )?;
        print_rows(out, &in_flight, limit, |out, check| {
            let why = match check.verdict {
                Verdict::Pending => "pending revision",
                _ => "revision recorded meanwhile",
            };
            writeln!(
                out,
                "{:<width$}  {:>12}  {:>12}  {:>12}  {why}",
                key(check),
                check.tally,
                check.expected,
                signed(check.difference())
            )
        })?;
    }
    print_summary(out, election, comparison, drifted.len(), in_flight.len())
}

/// The first `limit` of `checks`, one `row` each, and how many more there
/// are.
fn print_rows<W: Write>(
    out: &mut W,
    checks: &[&CounterCheck],
    limit: usize,
    row: impl Fn(&mut W, &CounterCheck) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for check in checks.iter().take(limit) {
        row(out, check)?;
    }
    if checks.len() > limit {
        writeln!(
            out,
            "... and {} more (--max-rows 0 shows all)",
            checks.len() - limit
        )?;
    }
    Ok(())
}

/// The comparison's last lines: lost markers, when Redis lost some, then
/// the verdict with what is in flight, pending and present.
fn print_summary(
    out: &mut impl Write,
    election: &ElectionId,
    comparison: &Comparison,
    drifted: usize,
    in_flight: usize,
) -> std::io::Result<()> {
    let compared = comparison.checks.len() - in_flight;
    let verdict = if drifted == 0 {
        format!(
            "exact: {compared} counter{} match PostgreSQL",
            plural(compared as u64)
        )
    } else {
        format!(
            "drift: {drifted} of {compared} counter{} differ from PostgreSQL (difference = redis - expected)",
            plural(compared as u64)
        )
    };
    let pending = comparison.pending_revisions;
    let pending_note = if pending == 0 {
        "no revision pending".to_owned()
    } else {
        format!(
            "{pending} revision{} recorded but not counted yet: `election-reprocessor run` counts \
             them (their counters are in flight)",
            plural(pending)
        )
    };
    let markers = &comparison.markers;
    if markers.missing > 0 {
        writeln!(
            out,
            "lost: {} of {} counted revision{} have lost markers in Redis, with their counters \
             (a restart, a flush or a failover): `election-reprocessor run` restores them within \
             its heal interval, `reconcile --repair` at once; report ids {}",
            markers.missing,
            markers.checked,
            plural(markers.checked),
            markers
                .examples
                .iter()
                .map(|id| id.0.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    writeln!(
        out,
        "election {election}: {verdict}; {in_flight} in flight; {pending_note}; {} of {} counted \
         revision{} present in Redis; {} rounds",
        markers.checked - markers.missing,
        markers.checked,
        plural(markers.checked),
        comparison.rounds
    )
}

fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `election-reprocessor verify --election E [--head H]`: recomputes the
/// election's sealed log from the stored rows (store-pg `seal::verify`) and
/// prints what it found; returns whether the log is intact.
pub fn verify(args: Verify) -> anyhow::Result<bool> {
    let election = ElectionId::parse(&args.election).context("--election")?;
    let noted = args
        .head
        .as_deref()
        .map(store_pg::seal::Head::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--head")?;
    let pg = args.database.connect_checked(1)?;
    let verification = store_pg::seal::verify(&pg, &election, noted)
        .with_context(|| format!("verifying the sealed log of election {election}"))?;
    let mut out = std::io::stdout().lock();
    print_verification(&mut out, &election, &verification, args.max_rows)?;
    Ok(verification.findings.is_empty())
}

/// The verdict of `verify`, the first finding first.
pub fn print_verification(
    out: &mut impl Write,
    election: &ElectionId,
    verification: &store_pg::seal::Verification,
    max_rows: usize,
) -> std::io::Result<()> {
    let (count, through, head) =
        verification
            .latest
            .as_ref()
            .map_or((0, 0, store_pg::seal::ZERO_HEAD), |latest| {
                (
                    latest.sealed_count,
                    latest.sealed_through_report_id,
                    latest.head,
                )
            });
    match verification.findings.first() {
        None => writeln!(
            out,
            "election {election}: intact: {count} reports sealed through report {through} \
             in {} checkpoints, head {head}; {} recorded since, not sealed yet",
            verification.checkpoints, verification.unsealed
        )?,
        Some(first) => {
            writeln!(out, "election {election}: TAMPERED: {first}")?;
            let shown = if max_rows == 0 {
                verification.findings.len()
            } else {
                max_rows.min(verification.findings.len())
            };
            for finding in &verification.findings[..shown] {
                writeln!(out, "  {finding}")?;
            }
            if shown < verification.findings.len() {
                writeln!(
                    out,
                    "  ... and {} more",
                    verification.findings.len() - shown
                )?;
            }
            writeln!(
                out,
                "the chain of {count} reports sealed through report {through} ends in head {head} \
                 by its own seals; the rows no longer give it"
            )?;
        }
    }
    Ok(())
}
