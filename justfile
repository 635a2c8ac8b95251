# Every recipe of the election workspace. `just` alone lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# The system with the seed's three-city example, then a simulated election night (Ctrl-C stops it; tools/xtask/src/demo.rs).
demo: setup
    cargo xtask demo

# Install what the tests and the demo need (Debian packages, schemathesis) and start PostgreSQL and Redis when they do not answer (`just test` and `just demo` run it first; it builds only the small xtask crate).
setup:
    cargo xtask setup

# Everything CI checks: format, lints, the architecture invariant, the API docs, all tests, the in-memory example, schemathesis against both services (a fixed seed, so CI is repeatable; `just api-fuzz` alone draws a new one).
test: setup fmt-check lint arch-check doc test-all examples (api-fuzz "20261128")

# What CI runs (`.ci/run` calls `just test`).
ci: test

# Check formatting.
fmt-check:
    cargo fmt --all --check

# Clippy on every target, warnings are errors.
lint:
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# Architecture invariants: election-core depends on no database, cache, HTTP or async crate; election-http on no store (tools/xtask/src/arch.rs).
arch-check:
    cargo xtask arch-check

# Every test, against real PostgreSQL, Redis and a Redis Cluster the tests start (this builds every example too).
test-all:
    cargo test --workspace --all-features

# Run election-core's in-memory example as `test-all` built it (`cargo run --example` resolves features without the tests and builds its own copy of most of the graph: 105 s on a clean checkout); the PostgreSQL + Redis one is built by `test-all` (`cargo run -p election-core --example postgres_redis` runs it).
examples:
    cargo xtask example in_memory

# Everything at full size (docs/reliability.md): the end-to-end fault scenarios (ingest, Redis, a Redis Cluster master, PostgreSQL and the reprocessor killed under load), 1,000,000 fuzzed reports, and schemathesis with a new seed.
chaos:
    ELECTION_CHAOS=full cargo test --release -p election-e2e -- --test-threads=1 --nocapture
    {{just_executable()}} fuzz 1000000
    {{just_executable()}} api-fuzz

# Fuzz report parsing and validation with 1,000,000 generated inputs in release mode (~1.5 min; `just fuzz 50000` for fewer).
fuzz cases="1000000":
    ELECTION_FUZZ_CASES={{cases}} cargo test --release -p election-core --test integration hostile::fuzz_report_parsing_and_validation -- --nocapture

# libFuzzer on Report::from_json for `secs` seconds (fuzz/, its own workspace; needs `cargo install --locked cargo-fuzz`; RUSTC_BOOTSTRAP=1 lets stable build it).
fuzz-libfuzzer secs="300":
    mkdir -p fuzz/corpus/report_from_json
    RUSTC_BOOTSTRAP=1 cargo fuzz run report_from_json fuzz/corpus/report_from_json fuzz/seeds -- -max_total_time={{secs}} -max_len=4096

# schemathesis against both services: no 5xx, every answer as docs/openapi.yaml says (~1 min after `test-all`, whose build of the services it uses; needs `pip install schemathesis`; tools/xtask/src/api_fuzz.rs).
api-fuzz seed="":
    cargo xtask api-fuzz {{seed}}

# Dependency policy (deny.toml): licenses, bans and sources (advisories need GitHub; needs `cargo install --locked cargo-deny`, ~3 min).
deny:
    cargo xtask deny

# Build the API docs with warnings as errors (broken intra-doc links and the like).
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

# Count every report recorded but not counted yet, then exit (uses DATABASE_URL, REDIS_URL).
drain *flags:
    cargo run --release -q -p election-reprocessor -- run --once {{flags}}

# Compare an election's Redis counters with PostgreSQL: `just reconcile 2025 [--repair]`.
reconcile election *flags:
    cargo run --release -q -p election-reprocessor -- reconcile --election {{election}} {{flags}}

# Measure what users meet (docs/benchmarks.md): ingest on a freshly migrated database driven by wrk (64 and 512 connections, a growth curve to 2,000,000 reports), CPU and memory per process, the floor of one HTTP request per report, Redis memory per ballot box, the PostgreSQL-only alternative, the ceilings, query, bulk reporting in batches of 100 (`just bench --bulk-only` alone), the live stream at 10,000 cities (`just bench --stream-only` alone) and reconcile; one table with the targets (under 20 min: the growth curve stops at 10 min whatever it reached; `just bench --quick`: a few minutes).
bench *flags:
    cargo xtask bench {{flags}}
