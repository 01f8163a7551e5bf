#!/usr/bin/env bash
# Issue 20's fleet figures in one run, variants interleaved so outside load
# hits them all alike.
#
# 1. Per-gateway proxy throughput, fleet mode against all-in-one, on plain
#    HTTP: nginx (1 worker, /1k) and wrk (1 thread, 50 keep-alive
#    connections, absolute-form requests) on CPU 0; the measured Rampart on CPU 1.
#      allinone: `rampart server` (events into its own store).
#      fleet:    `rampart gateway` of a fleet: configuration from a real
#                nats-server with JetStream (published by a `rampart server` on
#                CPU 0), events into its own store and forwarded from it to the
#                JetStream stream.
#      fleet-before: the same with RAMPART_BIN_BEFORE (an older build), when set.
#    Rounds rotate the variants. CPU per request is the measured process's
#    user + system time over the run divided by wrk's requests; nats-server's
#    CPU per request is shown for the fleet variants (the hop the fleet adds).
# 2. Ingest into PostgreSQL: per variant (RAMPART_BIN, and RAMPART_BIN_BEFORE
#    when set), a fresh nats-server and database; a gateway under wrk for
#    INGEST_LOAD seconds fills the stream (no consumer yet); then a
#    `rampart server` with `[fleet] postgres` drains that backlog into
#    PostgreSQL 15 (fsync on). Reported: events/s while draining, and CPU per
#    event of the server (consumer), PostgreSQL and nats-server. Variants
#    alternate over INGEST_ROUNDS.
# A summary gives the means and the ratios.
#
# usage: RAMPART_BIN=target/release/rampart [RAMPART_BIN_BEFORE=/path/to/old/rampart] \
#        ROUNDS=4 DURATION=10 INGEST_ROUNDS=2 INGEST_LOAD=8 nice bash bench/fleet_ab.sh
# PERF=1: also `perf record` the fleet gateway during its measured runs and print
# where its CPU went (the top symbols, self time).
# Needs nginx, wrk, nats-server and postgresql-15 (bench/setup.sh,
# scripts/install-test-deps.sh); run as root (PostgreSQL runs as `postgres`).
set -euo pipefail
BIN=${RAMPART_BIN:-target/release/rampart}
BEFORE=${RAMPART_BIN_BEFORE:-}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10}
INGEST_ROUNDS=${INGEST_ROUNDS:-2}
INGEST_LOAD=${INGEST_LOAD:-8}
PGBIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$WORK"; }
trap cleanup EXIT
BENCH_NAME=fleet-ab
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
require_tools "see scripts/install-test-deps.sh" nginx wrk nats-server taskset python3
[[ -x $PGBIN/postgres ]] || die "$PGBIN/postgres not found: install Debian's postgresql-15"
TCK=$(getconf CLK_TCK)
RESULTS=$WORK/results.tsv
: >"$RESULTS"

start_nginx_1k 0

# ------------------------------------------------------------------ services

# start_nats DIR : a nats-server with JetStream on CPU 0; sets NPORT and NATS_PID.
start_nats() {
    NPORT=$(free_port)
    taskset -c 0 nats-server -js -a 127.0.0.1 -p "$NPORT" -sd "$1" 2>"$1.log" &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_port "$NPORT"
}

# PostgreSQL 15 with its default durability (fsync on), as for the fleet store.
PGDIR=$WORK/pg
mkdir -p "$PGDIR"
chmod 755 "$WORK"
as_postgres=()
if [[ $(id -u) == 0 ]]; then
    chown postgres: "$PGDIR"
    as_postgres=(runuser -u postgres --)
fi
"${as_postgres[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 --locale=C -N >"$WORK/initdb.log"
PGPORT=$(free_port)
"${as_postgres[@]}" "$PGBIN/postgres" -D "$PGDIR/data" -p "$PGPORT" -k "$PGDIR" \
    -c listen_addresses=127.0.0.1 -c shared_buffers=512MB -c max_wal_size=2GB \
    -c checkpoint_timeout=15min -c wal_compression=on 2>"$WORK/postgres.log" &
PG_PID=$!
PIDS+=("$PG_PID")
wait_port "$PGPORT"
psql_q() { psql -X -q -t -A -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$1" -c "$2"; }
# CPU ticks of the postmaster and every backend it runs (PG_PID may be runuser's).
pg_ticks() {
    local total=0 p master
    master=$(head -1 "$PGDIR/data/postmaster.pid")
    for p in $master $(pgrep -P "$master"); do
        total=$((total + $(cpu_ticks "$p" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

printf '[proxy]\nallow_loopback_destinations = true\n[log]\nlevel = "warn"\n' >"$WORK/shared.toml"

# start_server BIN DIR NATS_PORT [POSTGRES_URL] : a `rampart server` on CPU 0
# publishing the fleet's configuration (and consuming events into PostgreSQL
# when a URL is given); sets SERVER_PID once its CA exists.
start_server() {
    local bin=$1 dir=$2 nport=$3 pgline=""
    [[ -n ${4:-} ]] && pgline="postgres = \"$4\""
    mkdir -p "$dir/data"
    cat >"$dir/rampart.toml" <<CFG
data_dir = "$dir/data"
[proxy]
listen = "127.0.0.1:$(free_port)"
[api]
listen = "127.0.0.1:$(free_port)"
[tunnel]
listen = "127.0.0.1:$(free_port)"
[log]
level = "warn"
[fleet]
nats = "nats://127.0.0.1:$nport"
gateway_config = "$WORK/shared.toml"
$pgline
CFG
    taskset -c 0 "$bin" server --config "$dir/rampart.toml" 2>>"$dir/stderr" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 200); do [[ -s $dir/data/ca.key ]] && return 0; sleep 0.05; done
    die "server $bin did not make its CA: $(tail -5 "$dir/stderr")"
}

# start_rampart ROLE BIN DIR NATS_PORT SERVER_DIR : the measured process on
# CPU 1; sets RPID and RPORT (its proxy).
start_rampart() {
    local role=$1 bin=$2 d=$3 nport=$4 server_dir=$5 fleet=""
    mkdir -p "$d/data"
    RPORT=$(free_port)
    if [[ $role == gateway ]]; then
        cp "$server_dir/data/ca.pem" "$server_dir/data/ca.key" "$d/data/"
        fleet=$'[fleet]\nnats = "nats://127.0.0.1:'"$nport"$'"\ngateway_id = "gw-'"$RANDOM"$'"\n'
    fi
    cat >"$d/rampart.toml" <<CFG
data_dir = "$d/data"
[proxy]
listen = "127.0.0.1:$RPORT"
allow_loopback_destinations = true
[api]
listen = "127.0.0.1:$(free_port)"
[tunnel]
listen = "127.0.0.1:$(free_port)"
[log]
level = "warn"
$fleet
CFG
    taskset -c 1 "$bin" "$role" --config "$d/rampart.toml" 2>"$d/stderr" &
    RPID=$!
    PIDS+=("$RPID")
    (wait_port "$RPORT") || { echo "$role did not start:"; cat "$d/stderr"; exit 1; }
}

# -------------------------------------------------- 1. proxy throughput A/B

start_nats "$WORK/nats"
start_server "$BIN" "$WORK/server" "$NPORT"

run() { # allinone | fleet | fleet-before
    local variant=$1 role=server bin=$BIN d="$WORK/$1-$RANDOM"
    [[ $variant != allinone ]] && role=gateway
    [[ $variant == fleet-before ]] && bin=$BEFORE
    start_rampart "$role" "$bin" "$d" "$NPORT" "$WORK/server"
    local pid=$RPID port=$RPORT
    taskset -c 0 wrk -t1 -c50 -d2s -s "$WORK/abs.lua" "http://127.0.0.1:$port/" >/dev/null
    local c0 c1 n0 n1 out reqs rps
    c0=$(cpu_ticks "$pid"); n0=$(cpu_ticks "$NATS_PID")
    local perf_pid=""
    if [[ ${PERF:-0} == 1 && $variant != allinone ]]; then
        perf record -q -F 499 -g -p "$pid" -o "$d/perf.data" -- sleep "$DURATION" 2>/dev/null &
        perf_pid=$!
    fi
    out=$(taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" -s "$WORK/abs.lua" "http://127.0.0.1:$port/")
    c1=$(cpu_ticks "$pid"); n1=$(cpu_ticks "$NATS_PID")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    local errs; errs=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        for sort in comm symbol; do
            perf report -i "$d/perf.data" --no-children --sort "$sort" --percent-limit 1.5 --stdio 2>/dev/null \
                | grep -E '^ +[0-9.]+%' | sed 's/  *-  *-  *$//' | head -15
        done
    fi
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$variant" "$rps" "$c0" "$c1" "$n0" "$n1" "$reqs" "$TCK" "$errs" "$RESULTS" <<'PY'
import sys
v, rps, c0, c1, n0, n1, reqs, tck, errs, out = sys.argv[1:]
rps, reqs, tck = float(rps), float(reqs), float(tck)
cpu = (float(c1) - float(c0)) / tck / reqs * 1e6
nats = (float(n1) - float(n0)) / tck / reqs * 1e6
print(f"{v:13} req/s={rps:9.0f}  CPU/req={cpu:6.2f} us  nats-server CPU/req={nats:5.2f} us  requests={int(reqs)}  {errs}")
open(out, "a").write(f"proxy\t{v}\t{rps}\t{cpu}\t{nats}\n")
PY
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), A/B: $BIN${BEFORE:+, before: $BEFORE}"
variants=(allinone fleet)
[[ -n $BEFORE ]] && variants+=(fleet-before)
for r in $(seq "$ROUNDS"); do
    n=${#variants[@]}
    for i in $(seq 0 $((n - 1))); do
        run "${variants[$(((i + r - 1) % n))]}"
    done
done
kill "$SERVER_PID" "$NATS_PID" 2>/dev/null || true
wait "$SERVER_PID" "$NATS_PID" 2>/dev/null || true

# ----------------------------------------------------- 2. ingest into PostgreSQL

ingest() { # LABEL BIN ROUND
    local label=$1 bin=$2 round=$3 base="$WORK/ingest-$1-$3"
    local db="ingest_${label//-/_}_$round"
    mkdir -p "$base"
    psql_q postgres "CREATE DATABASE $db" >/dev/null
    start_nats "$base/nats"
    local nport=$NPORT nats_pid=$NATS_PID
    # The backlog: a gateway under load, no consumer yet.
    start_server "$bin" "$base/server" "$nport"
    local config_server=$SERVER_PID
    start_rampart gateway "$bin" "$base/gateway" "$nport" "$base/server"
    local gw=$RPID
    taskset -c 0 wrk -t1 -c50 -d"${INGEST_LOAD}s" -s "$WORK/abs.lua" "http://127.0.0.1:$RPORT/" >/dev/null
    sleep 3 # the store's last commit and the forwarder's last publish
    kill -TERM "$gw" "$config_server"; wait "$gw" "$config_server" 2>/dev/null || true
    # The drain: a server consuming into PostgreSQL, on both CPUs.
    local s0 p0 n0 t0 count=0 last=-1 first_t="" first_n=0 last_change
    p0=$(pg_ticks); n0=$(cpu_ticks "$nats_pid")
    t0=$(date +%s.%N)
    start_server "$bin" "$base/server" "$nport" "postgresql://postgres@127.0.0.1:$PGPORT/$db"
    taskset -p -c 0,1 "$SERVER_PID" >/dev/null
    s0=$(cpu_ticks "$SERVER_PID")
    last_change=$(date +%s.%N)
    local last_change_n=0
    while :; do
        # The sequence's last value follows the inserts without counting rows
        # (ahead by at most its cache of 1,000); the exact count comes at the end.
        count=$(psql_q "$db" "SELECT last_value FROM rampart_events_seq WHERE is_called" 2>/dev/null || echo 0)
        [[ $count =~ ^[0-9]+$ ]] || count=0
        local now; now=$(date +%s.%N)
        if [[ $count -gt 0 && -z $first_t ]]; then first_t=$now; first_n=$count; fi
        if [[ $count != "$last" ]]; then last=$count; last_change=$now; last_change_n=$count; fi
        # Done when nothing arrived for 3 s (or nothing at all for 60 s).
        if python3 -c "import sys; sys.exit(0 if $now - $last_change > 3 and ($count > 0 or $now - $t0 > 60) else 1)"; then break; fi
        sleep 0.2
    done
    local s1 p1 n1
    s1=$(cpu_ticks "$SERVER_PID"); p1=$(pg_ticks); n1=$(cpu_ticks "$nats_pid")
    local distinct
    count=$(psql_q "$db" "SELECT count(*) FROM rampart_events")
    distinct=$(psql_q "$db" "SELECT count(DISTINCT id) FROM rampart_events")
    kill -TERM "$SERVER_PID" "$nats_pid"; wait "$SERVER_PID" "$nats_pid" 2>/dev/null || true
    python3 - "$label" "$count" "$distinct" "$first_t" "$first_n" "$last_change" "$s0" "$s1" "$p0" "$p1" "$n0" "$n1" "$TCK" "$RESULTS" <<'PY'
import sys
label, count, distinct, first_t, first_n, last_t, s0, s1, p0, p1, n0, n1, tck, out = sys.argv[1:]
count, first_n, tck = int(count), int(first_n), float(tck)
span = float(last_t) - float(first_t) if first_t else 0
rate = (count - first_n) / span if span > 0 else 0
per = lambda a, b: (float(b) - float(a)) / tck / max(count, 1) * 1e6
print(f"ingest {label:13} events={count} (distinct {distinct})  {rate:8.0f} events/s  CPU/event: server {per(s0, s1):5.1f} us, PostgreSQL {per(p0, p1):5.1f} us, nats-server {per(n0, n1):4.1f} us")
open(out, "a").write(f"ingest\t{label}\t{rate}\t{per(s0, s1)}\t{per(p0, p1)}\t{per(n0, n1)}\n")
PY
}

ingest_variants=(after)
[[ -n $BEFORE ]] && ingest_variants=(after before)
for r in $(seq "$INGEST_ROUNDS"); do
    n=${#ingest_variants[@]}
    for i in $(seq 0 $((n - 1))); do
        v=${ingest_variants[$(((i + r - 1) % n))]}
        if [[ $v == before ]]; then ingest before "$BEFORE" "$r"; else ingest after "$BIN" "$r"; fi
    done
done

# ---------------------------------------------------------------- summary
python3 - "$RESULTS" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
proxy, ingest = {}, {}
for r in rows:
    (proxy if r[0] == "proxy" else ingest).setdefault(r[1], []).append([float(x) for x in r[2:]])
mean = lambda xs, i: st.mean(x[i] for x in xs)
if "allinone" in proxy:
    base = mean(proxy["allinone"], 0)
    for v, xs in proxy.items():
        print(f"# {v:13} mean {mean(xs, 0):8.0f} req/s ({mean(xs, 0) / base:.2f}x all-in-one), CPU/req {mean(xs, 1):5.1f} us, nats-server {mean(xs, 2):4.1f} us/req, {len(xs)} runs")
for v, xs in ingest.items():
    print(f"# ingest {v:7} mean {mean(xs, 0):8.0f} events/s, CPU/event: server {mean(xs, 1):5.1f} us, PostgreSQL {mean(xs, 2):5.1f} us, nats-server {mean(xs, 3):4.1f} us, {len(xs)} runs")
if "after" in ingest and "before" in ingest:
    print(f"# ingest after/before: {mean(ingest['after'], 0) / mean(ingest['before'], 0):.2f}x")
PY
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
