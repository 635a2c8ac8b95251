//! A small Prometheus registry: counters, gauges and histograms with labels,
//! rendered in the text exposition format for `GET /metrics`.
//!
//! Hand-written rather than a metrics framework: the services need a dozen
//! series, and this keeps their names, labels and help texts in one place per
//! service, visible in its code. Label values must be bounded sets (status
//! codes, outcomes, error codes): never ids or tokens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Values {
    Counter(BTreeMap<Labels, f64>),
    Gauge(BTreeMap<Labels, f64>),
    Histogram {
        buckets: &'static [f64],
        series: BTreeMap<Labels, Histogram>,
    },
}

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    values: Values,
}

/// Latency buckets in seconds, from 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Size buckets (batch sizes, counts).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// A gauge whose value is computed when the metrics are rendered.
type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

/// The gauges computed at render time, by name.
#[derive(Default)]
struct GaugeFns(Vec<(&'static str, &'static str, GaugeFn)>);

impl std::fmt::Debug for GaugeFns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _, _)| name))
            .finish()
    }
}

/// The metrics of one service.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
    gauge_fns: Mutex<GaugeFns>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn with<R>(
        &self,
        name: &'static str,
        help: &'static str,
        init: impl FnOnce() -> Values,
        f: impl FnOnce(&mut Values) -> R,
    ) -> R {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            values: init(),
        });
        f(&mut family.values)
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

    /// Adds `by` to a counter.
    pub fn inc(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        by: u64,
    ) {
        self.with(
            name,
            help,
            || Values::Counter(BTreeMap::new()),
            |values| {
                if let Values::Counter(series) = values {
                    *series.entry(labels(pairs)).or_insert(0.0) += by as f64;
                }
            },
        );
    }

    /// Sets a gauge.
    pub fn set(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        value: f64,
    ) {
        self.with(
            name,
            help,
            || Values::Gauge(BTreeMap::new()),
            |values| {
                if let Values::Gauge(series) = values {
                    series.insert(labels(pairs), value);
                }
            },
        );
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
        self.gauge_fns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .push((name, help, Box::new(value)));
    }

    /// Records one observation in a histogram.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
        pairs: &[(&'static str, &str)],
        value: f64,
    ) {
        self.with(
            name,
            help,
            || Values::Histogram {
                buckets,
                series: BTreeMap::new(),
            },
            |values| {
                if let Values::Histogram { buckets, series } = values {
                    let histogram = series.entry(labels(pairs)).or_insert_with(|| Histogram {
                        counts: vec![0; buckets.len()],
                        sum: 0.0,
                        count: 0,
                    });
                    for (i, bound) in buckets.iter().enumerate() {
                        if value <= *bound {
                            histogram.counts[i] += 1;
                        }
                    }
                    histogram.sum += value;
                    histogram.count += 1;
                }
            },
        );
    }

    /// The current value of a counter or gauge series (for tests).
    pub fn value(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> f64 {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        match families.get(name).map(|f| &f.values) {
            Some(Values::Counter(series)) | Some(Values::Gauge(series)) => {
                series.get(&labels(pairs)).copied().unwrap_or(0.0)
            }
            _ => 0.0,
        }
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        {
            let gauge_fns = self.gauge_fns.lock().unwrap_or_else(|p| p.into_inner());
            for (name, help, value) in &gauge_fns.0 {
                self.set(name, help, &[], value());
            }
        }
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.values {
                Values::Counter(_) => "counter",
                Values::Gauge(_) => "gauge",
                Values::Histogram { .. } => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match &family.values {
                Values::Counter(series) | Values::Gauge(series) => {
                    for (labels, value) in series {
                        let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
                    }
                }
                Values::Histogram { buckets, series } => {
                    for (labels, histogram) in series {
                        for (bound, count) in buckets.iter().zip(&histogram.counts) {
                            let le = bound.to_string();
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {count}",
                                render_labels(labels, Some(&le))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            render_labels(labels, Some("+Inf")),
                            histogram.count
                        );
                        let _ = writeln!(
                            out,
                            "{name}_sum{} {}",
                            render_labels(labels, None),
                            histogram.sum
                        );
                        let _ = writeln!(
                            out,
                            "{name}_count{} {}",
                            render_labels(labels, None),
                            histogram.count
                        );
                    }
                }
            }
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let registry = Registry::new();
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
        registry.observe("batch_size", "Batch sizes.", &[1.0, 10.0], &[], 3.0);
        let text = registry.render();
        assert_eq!(
            text,
            "# HELP batch_size Batch sizes.\n# TYPE batch_size histogram\n\
             batch_size_bucket{le=\"1\"} 0\nbatch_size_bucket{le=\"10\"} 1\n\
             batch_size_bucket{le=\"+Inf\"} 1\nbatch_size_sum 3\nbatch_size_count 1\n\
             # HELP pending Pending reports.\n# TYPE pending gauge\npending 4\n\
             # HELP reports_total Reports by outcome.\n# TYPE reports_total counter\n\
             reports_total{outcome=\"counted\"} 3\n"
        );
        assert_eq!(
            registry.value("reports_total", &[("outcome", "counted")]),
            3.0
        );
    }

    #[test]
    fn computed_gauges_are_read_at_each_render() {
        let registry = Registry::new();
        let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let read = std::sync::Arc::clone(&value);
        registry.gauge_fn("evicting", "Whether it evicts.", move || {
            read.load(std::sync::atomic::Ordering::Relaxed) as f64
        });
        assert!(
            registry
                .render()
                .contains("# TYPE evicting gauge\nevicting 0\n")
        );
        value.store(1, std::sync::atomic::Ordering::Relaxed);
        assert!(registry.render().contains("evicting 1\n"));
        assert_eq!(registry.value("evicting", &[]), 1.0);
    }
}
