//! Whether Redis answers, as ingest last saw it: for `/healthz`, the
//! `ingest_redis_up` gauge and a log line when it changes.
//!
//! Why a watch and not a readiness condition: ingest without Redis still
//! records every report durably and answers 202 (the reprocessor counts
//! them later), so `/readyz` must stay 200 and a load balancer must keep
//! sending reports. An operator still needs to see that counting is
//! deferred: this task pings Redis every [`PROBE_INTERVAL`] (on the
//! blocking pool, bounded by the client's own timeouts) and keeps the
//! verdict, which `/healthz` and `/metrics` read without any I/O.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use election_http::health::HealthDetails;
use store_redis::RedisTally;
use tokio::sync::watch;

/// Time between two pings.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The gauge's name.
pub const UP_GAUGE: &str = "ingest_redis_up";
/// The gauge's help text.
pub const UP_GAUGE_HELP: &str = "1 when Redis answered ingest's last ping, 0 when it did not (reports are then recorded and counted later), -1 before the first ping.";

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The last verdict on Redis.
#[derive(Debug, Default)]
pub struct RedisWatch {
    state: AtomicU8,
    why: Mutex<String>,
}

impl RedisWatch {
    /// No verdict yet.
    pub fn new() -> Arc<RedisWatch> {
        Arc::new(RedisWatch::default())
    }

    /// Pings `redis` now and every [`PROBE_INTERVAL`] until `stop` is true.
    pub async fn run(self: Arc<Self>, redis: Arc<RedisTally>, mut stop: watch::Receiver<bool>) {
        loop {
            let ping = Arc::clone(&redis);
            let verdict = match tokio::task::spawn_blocking(move || ping.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(error) => Err(format!("the ping task failed: {error}")),
            };
            self.record(verdict);
            tokio::select! {
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
        }
    }

    fn record(&self, verdict: Result<(), String>) {
        let before = self.state.load(Ordering::Relaxed);
        match verdict {
            Ok(()) => {
                self.state.store(UP, Ordering::Relaxed);
                if before == DOWN {
                    tracing::info!("redis answers again");
                }
            }
            Err(why) => {
                *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why.clone();
                self.state.store(DOWN, Ordering::Relaxed);
                if before != DOWN {
                    tracing::warn!(error = %why, "redis does not answer; reports are recorded and answered 202, counted once it is back");
                }
            }
        }
    }

    /// The gauge's value: 1 up, 0 down, -1 unknown.
    pub fn gauge(&self) -> f64 {
        match self.state.load(Ordering::Relaxed) {
            UP => 1.0,
            DOWN => 0.0,
            _ => -1.0,
        }
    }

    /// The `/healthz` line: `redis: ok`, `redis: unavailable (<why>)...`,
    /// or nothing before the first ping.
    pub fn details(self: &Arc<Self>) -> HealthDetails {
        let watch = Arc::clone(self);
        Arc::new(move || match watch.state.load(Ordering::Relaxed) {
            UP => vec!["redis: ok".to_owned()],
            DOWN => vec![format!(
                "redis: unavailable ({}); reports are recorded and counted later",
                watch.why.lock().unwrap_or_else(|p| p.into_inner())
            )],
            UNKNOWN => Vec::new(),
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_shows_in_the_gauge_and_the_details() {
        let watch = RedisWatch::new();
        assert_eq!(watch.gauge(), -1.0);
        assert!((watch.details())().is_empty());
        watch.record(Err("connection refused".to_owned()));
        assert_eq!(watch.gauge(), 0.0);
        assert_eq!(
            (watch.details())(),
            vec![
                "redis: unavailable (connection refused); reports are recorded and counted later"
                    .to_owned()
            ]
        );
        watch.record(Ok(()));
        assert_eq!(watch.gauge(), 1.0);
        assert_eq!((watch.details())(), vec!["redis: ok".to_owned()]);
    }
}
