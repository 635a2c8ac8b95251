# Every recipe of the election workspace. `just` alone lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# The system with the seed's three-city example, then a simulated election night (Ctrl-C stops it).
demo:
    scripts/demo.sh

# Everything CI checks: format, lints, the architecture invariant, all tests.
test: fmt-check lint arch-check test-all

# What CI runs (`.ci/run` calls `just test`).
ci: test

# Check formatting.
fmt-check:
    cargo fmt --all --check

# Clippy on every target, warnings are errors.
lint:
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# Architecture invariant: election-core depends on no database, cache, HTTP or async crate.
arch-check:
    #!/usr/bin/env bash
    set -euo pipefail
    forbidden='^(diesel|diesel_migrations|redis|tokio|axum|r2d2|hyper|pq-sys) '
    deps=$(cargo tree -p election-core -e normal --prefix none --no-dedupe)
    echo "$deps" | grep -q '^election-core ' || { echo "cargo tree printed no election-core"; exit 1; }
    if echo "$deps" | grep -E "$forbidden"; then
        echo "election-core must not depend on the crates above (docs/ARCHITECTURE.md)"; exit 1
    fi
    echo "arch-check: election-core depends on none of diesel, redis, tokio, axum, r2d2, hyper"

# Every test, against real PostgreSQL, Redis and a Redis Cluster the tests start.
test-all:
    cargo test --workspace --all-features

# The end-to-end fault scenarios at full size (docs/reliability.md): ingest, Redis, a Redis Cluster master, PostgreSQL and the reprocessor killed under load.
chaos:
    ELECTION_CHAOS=full cargo test --release -p election-e2e -- --test-threads=1 --nocapture
    @# The fuzz part of `just chaos` goes below this line.

# Build the API docs with warnings as errors.
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Count every report recorded but not counted yet, then exit (uses DATABASE_URL, REDIS_URL).
drain *flags:
    cargo run --release -q -p election-reprocessor -- run --once {{flags}}

# Compare an election's Redis counters with PostgreSQL: `just reconcile 2025 [--repair]`.
reconcile election *flags:
    cargo run --release -q -p election-reprocessor -- reconcile --election {{election}} {{flags}}

# Measure ingest, the PostgreSQL-only alternative, the servers' ceilings, query and reconcile (`just bench --quick` for a short run).
bench *flags:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
    # 5,000 stream subscribers need as many sockets on each side.
    ulimit -n "$(ulimit -Hn)"
    cargo build --release -q -p election-ingest -p election-query -p election-reprocessor -p election-bench
    target/release/election-bench {{flags}}
