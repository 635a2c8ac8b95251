//! Each service's metrics, on the `prometheus-client` crate (the Prometheus
//! project's Rust client), rendered as OpenMetrics text for `GET /metrics`.
//!
//! Two ways to count, for two kinds of path:
//!
//! - **Hot paths** (every request, every batch) hold typed handles made once
//!   at start-up: [`Registry::counter_family`], [`Registry::histogram`]…
//!   Their label sets are small `Copy` structs (`&'static str`, `u16`), so an
//!   increment allocates nothing and takes no lock but the family's read
//!   lock (shared; a write only the first time a label set is seen), and a
//!   plain counter or histogram is a few atomics. The hand-written registry
//!   this replaces took one global mutex and allocated the labels on every
//!   increment; docs/benchmarks.md ("Metrics on the hot path") has the
//!   figures before and after.
//! - **Cold paths** (once per reprocessor round, per snapshot refresh) use the
//!   named API, [`Registry::inc`], [`Registry::set`], [`Registry::observe`]:
//!   a metric is found by name under a read lock and its labels are
//!   allocated, which is fine a few times per second and keeps those call
//!   sites one line each.
//!
//! Kept by hand, and why: the [`Histogram`] (the crate's takes a mutex per
//! observation, and every request observes the same latency histogram: that
//! mutex would be the global lock again; this one is an atomic per bucket
//! and a compare-and-swap on the sum, encoded through the crate), gauges
//! computed at render time
//! ([`Registry::gauge_fn`], for state another component keeps) and gauges
//! that render whole numbers as integers (`ingest_redis_up 1`, not `1.0`,
//! which operators' alerts and our tests compare as text). Both are small
//! [`EncodeMetric`] implementations; the crate offers neither.
//!
//! Label values must be bounded sets (status codes, outcomes, error codes,
//! route patterns): never ids or tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::{MetricType, TypedMetric};

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, from 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Size buckets (batch sizes, counts).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// A histogram with fixed buckets that observes without a lock: one atomic
/// per bucket and a compare-and-swap loop on the sum. A scrape during
/// observations may see the sum a few observations behind the buckets; the
/// count is the buckets' sum, so buckets and count always agree.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), the last one `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with upper bounds `bounds` (ascending), plus `+Inf`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let inner = &self.0;
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len());
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Never fails: the closure always returns Some.
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What a label set of a typed family must be.
pub trait LabelSet:
    EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static
{
}

impl<T> LabelSet for T where
    T: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static
{
}

/// Makes the histograms of a family, with fixed buckets.
#[derive(Clone, Copy, Debug)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0)
    }
}

/// A histogram family with fixed buckets.
pub type HistogramFamily<L> = Family<L, Histogram, Buckets>;

/// The labels of the named API.
type Labels = Vec<(&'static str, String)>;

/// A gauge holding an `f64`, rendered as an integer when it is one.
#[derive(Clone, Debug, Default)]
pub struct Value(Arc<AtomicU64>);

impl Value {
    /// Sets it.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Reads it.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

fn encode_number(value: f64, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        encoder.encode_gauge(&(value as i64))
    } else {
        encoder.encode_gauge(&value)
    }
}

impl TypedMetric for Value {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Value {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encode_number(self.get(), encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A gauge computed when the metrics are rendered.
#[derive(Clone)]
struct Computed(Arc<dyn Fn() -> f64 + Send + Sync>);

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Computed")
    }
}

impl EncodeMetric for Computed {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encode_number((self.0)(), encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A metric of the named API.
#[derive(Clone, Debug)]
enum Named {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Value>),
    Histogram(HistogramFamily<Labels>),
    Computed(Computed),
}

/// The metrics of one service.
#[derive(Debug, Default)]
pub struct Registry {
    /// Taken to register a metric (start-up, a named metric's first use) and
    /// to render; never to count.
    registry: Mutex<prometheus_client::registry::Registry>,
    /// The named API's metrics by name (including `_total`).
    named: RwLock<HashMap<&'static str, Named>>,
}

/// `name` as registered: the crate adds `_total` to counters itself.
fn base_name(name: &str, counter: bool) -> &str {
    if counter {
        name.strip_suffix("_total").unwrap_or(name)
    } else {
        name
    }
}

/// `help` as registered: the crate adds the final full stop itself.
fn base_help(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A service's registry: empty but for `build_info{version,revision} 1`.
    pub fn for_service() -> Registry {
        let registry = Registry::new();
        registry.set(
            crate::build::BUILD_INFO_GAUGE,
            crate::build::BUILD_INFO_HELP,
            &[
                ("version", crate::build::VERSION),
                ("revision", crate::build::REVISION),
            ],
            1.0,
        );
        registry
    }

    fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, base_help(help), metric);
    }

    /// A counter without labels (a handle: keep it).
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        let counter = Counter::default();
        self.register(base_name(name, true), help, counter.clone());
        counter
    }

    /// A family of counters by the labels `L` (a handle: keep it).
    pub fn counter_family<L: LabelSet>(
        &self,
        name: &'static str,
        help: &'static str,
    ) -> Family<L, Counter> {
        let family = Family::default();
        self.register(base_name(name, true), help, family.clone());
        family
    }

    /// A histogram without labels (a handle: keep it).
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
    ) -> Histogram {
        let histogram = Buckets(buckets).new_metric();
        self.register(name, help, histogram.clone());
        histogram
    }

    /// A family of histograms by the labels `L` (a handle: keep it).
    pub fn histogram_family<L: LabelSet>(
        &self,
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
    ) -> HistogramFamily<L> {
        let family = Family::new_with_constructor(Buckets(buckets));
        self.register(name, help, family.clone());
        family
    }

    /// The named metric `name`, made by `make` and registered on first use.
    fn named(&self, name: &'static str, make: impl FnOnce() -> (Named, &'static str)) -> Named {
        if let Some(found) = self
            .named
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return found.clone();
        }
        let mut named = self.named.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = named.get(name) {
            return found.clone();
        }
        let (metric, help) = make();
        match &metric {
            Named::Counter(family) => self.register(base_name(name, true), help, family.clone()),
            Named::Gauge(family) => self.register(name, help, family.clone()),
            Named::Histogram(family) => self.register(name, help, family.clone()),
            Named::Computed(computed) => self.register(name, help, computed.clone()),
        }
        named.insert(name, metric.clone());
        metric
    }

    /// Adds `by` to a counter (named API: cold paths only).
    pub fn inc(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        by: u64,
    ) {
        if let Named::Counter(family) =
            self.named(name, || (Named::Counter(Family::default()), help))
        {
            family.get_or_create(&labels(pairs)).inc_by(by);
        }
    }

    /// Sets a gauge (named API).
    pub fn set(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        value: f64,
    ) {
        if let Named::Gauge(family) = self.named(name, || (Named::Gauge(Family::default()), help)) {
            family.get_or_create(&labels(pairs)).set(value);
        }
    }

    /// A gauge without labels whose value `value` computes each time the
    /// metrics are rendered (it must be cheap: no I/O). For state another
    /// component keeps, such as a cached verdict about a store.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        value: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let computed = Computed(Arc::new(value));
        self.named(name, move || (Named::Computed(computed), help));
    }

    /// Records one observation in a histogram (named API: cold paths only).
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
        pairs: &[(&'static str, &str)],
        value: f64,
    ) {
        let make = || {
            let family = Family::new_with_constructor(Buckets(buckets));
            (Named::Histogram(family), help)
        };
        if let Named::Histogram(family) = self.named(name, make) {
            family.get_or_create(&labels(pairs)).observe(value);
        }
    }

    /// The current value of a named counter or gauge series (for tests).
    pub fn value(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> f64 {
        let named = self.named.read().unwrap_or_else(|p| p.into_inner());
        match named.get(name) {
            Some(Named::Counter(family)) => family
                .get(&labels(pairs))
                .map_or(0.0, |counter| counter.get() as f64),
            Some(Named::Gauge(family)) => family.get(&labels(pairs)).map_or(0.0, |g| g.get()),
            Some(Named::Computed(computed)) => (computed.0)(),
            _ => 0.0,
        }
    }

    /// Renders every metric as OpenMetrics text.
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Answer {
        status: u16,
        code: &'static str,
    }

    #[test]
    fn renders_openmetrics_text() {
        let registry = Registry::new();
        let answers = registry.counter_family::<Answer>("answers_total", "Answers by status.");
        answers
            .get_or_create(&Answer {
                status: 202,
                code: "pending",
            })
            .inc();
        registry.inc(
            "reports_total",
            "Reports by outcome.",
            &[("outcome", "counted")],
            2,
        );
        registry.inc(
            "reports_total",
            "Reports by outcome.",
            &[("outcome", "counted")],
            1,
        );
        registry.set("pending", "Pending reports.", &[], 4.0);
        registry.set("age_seconds", "Oldest age.", &[], 1.5);
        registry.observe("batch_size", "Batch sizes.", &[1.0, 10.0], &[], 3.0);
        let text = registry.render();
        assert_eq!(
            text,
            "# HELP answers Answers by status.\n# TYPE answers counter\n\
             answers_total{status=\"202\",code=\"pending\"} 1\n\
             # HELP reports Reports by outcome.\n# TYPE reports counter\n\
             reports_total{outcome=\"counted\"} 3\n\
             # HELP pending Pending reports.\n# TYPE pending gauge\npending 4\n\
             # HELP age_seconds Oldest age.\n# TYPE age_seconds gauge\nage_seconds 1.5\n\
             # HELP batch_size Batch sizes.\n# TYPE batch_size histogram\n\
             batch_size_sum 3.0\nbatch_size_count 1\n\
             batch_size_bucket{le=\"1.0\"} 0\nbatch_size_bucket{le=\"10.0\"} 1\n\
             batch_size_bucket{le=\"+Inf\"} 1\n\
             # EOF\n"
        );
        assert_eq!(
            registry.value("reports_total", &[("outcome", "counted")]),
            3.0
        );
    }

    #[test]
    fn concurrent_observations_are_all_kept() {
        let registry = Registry::new();
        let histogram = registry.histogram("latency_seconds", "Latency.", &[0.001, 0.01]);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        // Binary fractions: the sum is exact.
                        histogram.observe(if (i + t) % 2 == 0 { 0.0009765625 } else { 0.5 });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = registry.render();
        for line in [
            "latency_seconds_count 40000\n",
            "latency_seconds_sum 10019.53125\n",
            "latency_seconds_bucket{le=\"0.001\"} 20000\n",
            "latency_seconds_bucket{le=\"0.01\"} 20000\n",
            "latency_seconds_bucket{le=\"+Inf\"} 40000\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn build_info_names_version_and_revision() {
        let text = Registry::for_service().render();
        let expected = format!(
            "build_info{{version=\"{}\",revision=\"{}\"}} 1\n",
            crate::build::VERSION,
            crate::build::REVISION
        );
        assert!(text.contains(&expected), "{text}");
    }

    #[test]
    fn computed_gauges_are_read_at_each_render() {
        let registry = Registry::new();
        let value = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&value);
        registry.gauge_fn("evicting", "Whether it evicts.", move || {
            read.load(Ordering::Relaxed) as f64
        });
        assert!(
            registry
                .render()
                .contains("# TYPE evicting gauge\nevicting 0\n")
        );
        value.store(1, Ordering::Relaxed);
        assert!(registry.render().contains("evicting 1\n"));
        assert_eq!(registry.value("evicting", &[]), 1.0);
    }
}
