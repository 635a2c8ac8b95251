#!/usr/bin/env bash
# `just demo`: the whole system on this machine, the seed article's three-city
# example, then a simulated election night, until Ctrl-C.
#
# PostgreSQL and Redis: the ones DATABASE_URL / REDIS_URL point at (default:
# the local standard ports) if they answer, otherwise throwaway instances
# started here from the installed server binaries, with their data under
# target/demo/. The demo uses its own database (election_demo) on that
# PostgreSQL, recreated each run, and resets the Redis keys of its two
# elections (2025 and demo-night) only.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=target/demo
LOGS=$DEMO_DIR/logs
mkdir -p "$LOGS"
BOXES=${DEMO_BOXES:-20000}
CITIES=${DEMO_CITIES:-300}
NIGHT_SECS=${DEMO_NIGHT_SECS:-90}
INGEST=127.0.0.1:${INGEST_PORT:-8080}
QUERY=127.0.0.1:${QUERY_PORT:-8081}
REPROCESSOR=127.0.0.1:${REPROCESSOR_PORT:-8082}

pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "stopping the demo..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n ${OWN_PG:-} ]]; then pg_ctl -D "$DEMO_DIR/pg" -m fast stop >/dev/null 2>&1 || true; fi
    if [[ -n ${OWN_REDIS:-} ]]; then redis-cli -p "$OWN_REDIS" shutdown nosave >/dev/null 2>&1 || true; fi
    echo "stopped. Logs are in $LOGS/."
}
trap cleanup EXIT
trap 'exit 0' INT TERM

need() {
    command -v "$1" >/dev/null || {
        echo "demo: '$1' is not installed. On Debian: apt-get install -y $2" >&2
        exit 1
    }
}
need curl curl
need redis-cli redis-tools
need psql postgresql-client

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- PostgreSQL ------------------------------------------------------------
BASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if psql "$BASE_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    echo "using PostgreSQL at ${BASE_URL%%\?*}" | sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#'
else
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    if [[ -z $PG_BIN ]] && ! command -v initdb >/dev/null; then
        echo "demo: no PostgreSQL answers at $BASE_URL and none is installed. Install it with" >&2
        echo "  apt-get install -y postgresql   (or set DATABASE_URL)" >&2
        exit 1
    fi
    export PATH="${PG_BIN:+$PG_BIN:}$PATH"
    OWN_PG=$(free_port)
    echo "starting a throwaway PostgreSQL on port $OWN_PG (data in $DEMO_DIR/pg)"
    rm -rf "$DEMO_DIR/pg"
    # initdb refuses to run as root; run it as the postgres user when we are root.
    as_pg=()
    if [[ $(id -u) == 0 ]]; then
        as_pg=(runuser -u postgres --)
        mkdir -p "$DEMO_DIR/pg" && chown postgres "$DEMO_DIR/pg"
        chmod o+x "$PWD" "$PWD/target" "$PWD/$DEMO_DIR" 2>/dev/null || true
    fi
    "${as_pg[@]}" initdb -D "$DEMO_DIR/pg" -U postgres -A trust >"$LOGS/initdb.log"
    "${as_pg[@]}" pg_ctl -D "$DEMO_DIR/pg" -o "-p $OWN_PG -k /tmp -c listen_addresses=127.0.0.1" -l "$LOGS/postgres.log" -w start >/dev/null
    BASE_URL=postgres://postgres@127.0.0.1:$OWN_PG/postgres
fi
psql "$BASE_URL" -qc 'DROP DATABASE IF EXISTS election_demo' -qc 'CREATE DATABASE election_demo' >/dev/null
export DATABASE_URL=${BASE_URL%/*}/election_demo

# --- Redis -----------------------------------------------------------------
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
redis_host_port=${REDIS_URL#redis://}; redis_host_port=${redis_host_port##*@}; redis_host_port=${redis_host_port%%/*}
if redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" ping >/dev/null 2>&1; then
    echo "using Redis at ${redis_host_port}; resetting the keys of elections 2025 and demo-night"
    for election in 2025 demo-night; do
        for pattern in "election:$election:*" "{election:$election:*"; do
            redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" --scan --pattern "$pattern" \
                | xargs -r -n 500 redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" del >/dev/null
        done
    done
else
    need redis-server redis-server
    OWN_REDIS=$(free_port)
    echo "starting a throwaway Redis on port $OWN_REDIS"
    redis-server --port "$OWN_REDIS" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --logfile "$PWD/$LOGS/redis.log" --dir "$PWD/$DEMO_DIR"
    export REDIS_URL=redis://127.0.0.1:$OWN_REDIS
fi

# --- Build, migrate, tokens --------------------------------------------------
echo "building (release)..."
cargo build --release --quiet -p election-ingest -p election-query -p election-reprocessor -p election-loadgen
BIN=target/release
$BIN/election-ingest migrate >/dev/null
SEED_TOKEN=$($BIN/election-ingest token issue --election 2025 --label "demo: seed" 2>/dev/null)
NIGHT_TOKEN=$($BIN/election-ingest token issue --election demo-night --label "demo: night" 2>/dev/null)
# Define demo-night (parties, cities, expected ballot boxes) so the dashboard
# shows reporting progress. The checked-in file matches the default sizes;
# other sizes get a definition generated to match loadgen's.
DEFINITION=demo/demo-night.toml
if [[ "$BOXES" != 20000 || "$CITIES" != 300 ]]; then
    DEFINITION=$LOGS/demo-night.toml
    scripts/demo-definition.sh "$BOXES" "$CITIES" 6 >"$DEFINITION"
fi
$BIN/election-ingest election load "$DEFINITION" >/dev/null

# --- Services ------------------------------------------------------------------
INGEST_LISTEN_ADDR=$INGEST $BIN/election-ingest serve >"$LOGS/ingest.log" 2>&1 & pids+=($!)
QUERY_LISTEN_ADDR=$QUERY $BIN/election-query serve >"$LOGS/query.log" 2>&1 & pids+=($!)
REPROCESSOR_LISTEN_ADDR=$REPROCESSOR $BIN/election-reprocessor run --pending-after 2s >"$LOGS/reprocessor.log" 2>&1 & pids+=($!)
for addr in $INGEST $QUERY $REPROCESSOR; do
    for _ in $(seq 1 100); do
        curl -sf "http://$addr/healthz" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://$addr/healthz" >/dev/null || { echo "demo: a service did not start; see $LOGS/" >&2; exit 1; }
done

echo
echo "  dashboard (election night):  http://$QUERY/?election=demo-night"
echo "  dashboard (the seed example): http://$QUERY/?election=2025"
echo

# --- The seed article's example ------------------------------------------------
post() {
    curl -s -o /dev/null -w '%{http_code}' -X POST "http://$INGEST/v1/elections/2025/reports" \
        -H "Authorization: Bearer $SEED_TOKEN" -H 'Content-Type: application/json' -d "$1"
}
echo "posting the seed's three ballot boxes to election 2025:"
echo "  london     $(post '{"ballot_box_id":"BB-LON-1","city":"london","votes":{"tories":120,"labour":200,"libdems":45,"reform":20}}')"
echo "  manchester $(post '{"ballot_box_id":"BB-MAN-1","city":"manchester","votes":{"tories":90,"labour":150,"libdems":30,"reform":10}}')"
echo "  edinburgh  $(post '{"ballot_box_id":"BB-EDI-1","city":"edinburgh","votes":{"tories":50,"labour":80,"libdems":40,"reform":5}}')"
echo
rhost=${REDIS_URL#redis://}; rhost=${rhost##*@}; rhost=${rhost%%/*}
get() { redis-cli -h "${rhost%:*}" -p "${rhost##*:}" GET "$1"; }
echo "national totals (redis-cli GET election:2025:party:<party>):"
for party in tories labour libdems reform; do
    printf '  %-8s %s\n' "$party" "$(get "election:2025:party:$party")"
done
echo "city totals (GET election:2025:city:<city>:party:<party>):"
printf '  %-11s %7s %7s %8s %7s\n' city tories labour libdems reform
for city in london manchester edinburgh; do
    printf '  %-11s %7s %7s %8s %7s\n' "$city" \
        "$(get "election:2025:city:$city:party:tories")" "$(get "election:2025:city:$city:party:labour")" \
        "$(get "election:2025:city:$city:party:libdems")" "$(get "election:2025:city:$city:party:reform")"
done
echo
echo "  GET http://$QUERY/v1/elections/2025/totals"
echo "  $(curl -s "http://$QUERY/v1/elections/2025/totals")"
echo

# --- Election night ---------------------------------------------------------------
echo "simulating election night 'demo-night': $BOXES ballot boxes in $CITIES cities over ${NIGHT_SECS}s,"
echo "with duplicate posts and corrections (watch the dashboard)..."
$BIN/election-loadgen --ingest-url "http://$INGEST" --election demo-night --token "$NIGHT_TOKEN" \
    --boxes "$BOXES" --cities "$CITIES" --parties 6 --duplicates 0.05 --revisions 0.03 \
    --concurrency 64 --spread-secs "$NIGHT_SECS" --progress --redis-url "$REDIS_URL" || true
echo

# --- Certification and flags -------------------------------------------------------
# A returning officer certifies one city: the dashboard shows it certified,
# and any new report for it is refused (409 certified). Corrections that move
# a box's total by more than 20% are flagged (GET .../flags; ⚑ on the
# dashboard's city table).
$BIN/election-ingest election certify --election demo-night --city city-0000 \
    --by "demo returning officer" >/dev/null
echo "certified city-0000 of demo-night (its status on the dashboard: certified)"
night_post() {
    curl -s -o /dev/null -w '%{http_code}' -X POST "http://$INGEST/v1/elections/demo-night/reports" \
        -H "Authorization: Bearer $NIGHT_TOKEN" -H 'Content-Type: application/json' -d "$1"
}
echo "a late box in city-0001 and its correction, four times the first count (a flag):" \
    "$(night_post '{"ballot_box_id":"DEMO-LATE-1","city":"city-0001","votes":{"party-00":100}}')" \
    "$(night_post '{"ballot_box_id":"DEMO-LATE-1","city":"city-0001","revision":2,"reason":"a second ballot bag was found","votes":{"party-00":400}}')"
flags=$(curl -s "http://$QUERY/v1/elections/demo-night/flags" | { grep -o '"reason":' || true; } | wc -l)
echo "flagged revisions (large corrections, marked ⚑ on the dashboard): $flags"
echo "  GET http://$QUERY/v1/elections/demo-night/flags"
echo
echo "the night is over; the services keep running. Press Ctrl-C to stop everything."
# `wait` (unlike a foreground sleep) lets the INT/TERM trap run at once; the
# sleeper is in `pids`, so the cleanup stops it too.
sleep infinity & pids+=($!)
wait $!
