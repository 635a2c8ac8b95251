//! What the tests of every binary need from ingest (the `test-support`
//! feature, enabled only by dev-dependencies): one copy of the settings an
//! in-process ingest runs with in tests.

use std::time::Duration;

use election_http::ServeConfig;
use election_http::client::TrustedProxies;
use election_http::layers::CorsOrigins;

use crate::Settings;
use crate::batcher::BatchConfig;

/// Settings for an ingest in a test: small batches with a short linger, and
/// no caching of tokens or definitions, so a revocation or a definition a
/// test loads applies at once. Two batches may record at once, not the
/// shipped one (`MAX_RECORDING`): the in-process tests then also meet two
/// transactions racing for one box's chain, while the process and e2e
/// tests run the binaries with their defaults.
pub fn settings() -> Settings {
    Settings {
        batch: BatchConfig {
            batch_size: 64,
            linger: Duration::from_millis(2),
            max_in_flight: 3,
            max_recording: 2,
            queue: 1024,
        },
        token_cache_ttl: Duration::ZERO,
        definition_cache_ttl: Duration::ZERO,
        serve: ServeConfig {
            header_read_timeout: election_http::serve::DEFAULT_HEADER_TIMEOUT,
        },
        body_timeout: Duration::from_secs(10),
        bodies_in_flight: (crate::cli::DEFAULT_BODIES_IN_FLIGHT_MIB as usize) << 20,
        rate_limit: None,
        cors_origins: CorsOrigins::None,
        auth_failures: None,
        trusted_proxies: TrustedProxies::none(),
    }
}
