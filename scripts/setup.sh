#!/usr/bin/env bash
# `just setup` (run first by `just test` and `just demo`): installs what the
# tests and the demo need and starts the local services that are not
# answering, so a fresh machine of this project's kind (Debian with the Rust
# toolchain, PostgreSQL and Redis installed) needs nothing else by hand.
# Each step is skipped when its tool is already there, so a second run costs
# a few checks.
#
# Installs (Debian packages unless noted): libpq-dev and pkg-config (diesel's
# PostgreSQL driver), the redis-server and psql command lines when missing,
# chromium (the dashboard's browser tests), schemathesis (PyPI, the API
# fuzzing of `just test`). Starts PostgreSQL on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379 (nothing kept on disk) when they do not answer; with
# DATABASE_URL or REDIS_URL pointing elsewhere, nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== setup: %s\n' "$*"; }

apt_updated=0
need_apt() {
    local pkg=$1
    dpkg -s "$pkg" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    log "installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}

need_apt libpq-dev
need_apt pkg-config
command -v redis-server >/dev/null || need_apt redis-server
command -v psql >/dev/null || need_apt postgresql-client
command -v chromium >/dev/null || need_apt chromium

if ! command -v schemathesis >/dev/null; then
    log "installing schemathesis (from PyPI)"
    pip install --quiet schemathesis
fi

if [ -z "${DATABASE_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    pg_isready -h 127.0.0.1 -p 5432
fi

if [ -z "${REDIS_URL:-}" ] && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/setup.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
fi
