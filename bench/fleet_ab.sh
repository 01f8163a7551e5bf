#!/usr/bin/env bash
# Per-gateway proxy throughput in fleet mode against all-in-one (issue 20), in
# one run, on plain HTTP: nginx (1 worker, /1k) and wrk (1 thread, 50 keep-alive
# connections, absolute-form requests) on CPU 0; the measured Rampart on CPU 1.
#   A: `rampart server` all-in-one (events into its own store).
#   B: `rampart gateway` of a fleet: configuration from a real nats-server with
#      JetStream (published by a `rampart server` on CPU 0), events into its own
#      store and forwarded from it to the JetStream stream.
# Rounds alternate A and B so outside load hits both. CPU per request is the
# measured process's user + system time over the run divided by wrk's requests;
# nats-server's CPU per request is shown for B (the hop the fleet adds).
# usage: RAMPART_BIN=target/release/rampart ROUNDS=4 DURATION=10 bash bench/fleet_ab.sh
# PERF=1: also `perf record` the fleet gateway during its measured runs and print
# where its CPU went (the top symbols, self time).
# Needs nginx, wrk and nats-server (bench/setup.sh, scripts/install-test-deps.sh).
set -euo pipefail
BIN=${RAMPART_BIN:-target/release/rampart}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$WORK"; }
trap cleanup EXIT
BENCH_NAME=fleet-ab
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
TCK=$(getconf CLK_TCK)

start_nginx_1k 0

# The fleet's control plane, on CPU 0 beside the load generator.
NPORT=$(free_port)
taskset -c 0 nats-server -js -a 127.0.0.1 -p "$NPORT" -sd "$WORK/nats" 2>"$WORK/nats.log" &
NATS_PID=$!
PIDS+=("$NATS_PID")
wait_port "$NPORT"
mkdir -p "$WORK/server/data"
printf '[proxy]\nallow_loopback_destinations = true\n[log]\nlevel = "warn"\n' >"$WORK/shared.toml"
cat >"$WORK/server/rampart.toml" <<CFG
data_dir = "$WORK/server/data"
[proxy]
listen = "127.0.0.1:$(free_port)"
[api]
listen = "127.0.0.1:$(free_port)"
[tunnel]
listen = "127.0.0.1:$(free_port)"
[log]
level = "warn"
[fleet]
nats = "nats://127.0.0.1:$NPORT"
gateway_config = "$WORK/shared.toml"
CFG
taskset -c 0 "$BIN" server --config "$WORK/server/rampart.toml" 2>"$WORK/server/stderr" &
PIDS+=($!)
for _ in $(seq 200); do [[ -s $WORK/server/data/ca.key ]] && break; sleep 0.05; done

run() { # allinone | fleet
    local d="$WORK/$1-$RANDOM" port api tun role=server fleet=""
    mkdir -p "$d/data"
    port=$(free_port); api=$(free_port); tun=$(free_port)
    if [[ $1 == fleet ]]; then
        role=gateway
        cp "$WORK/server/data/ca.pem" "$WORK/server/data/ca.key" "$d/data/"
        fleet=$'[fleet]\nnats = "nats://127.0.0.1:'"$NPORT"$'"\ngateway_id = "gw-'"$RANDOM"$'"\n'
    fi
    cat >"$d/rampart.toml" <<CFG
data_dir = "$d/data"
[proxy]
listen = "127.0.0.1:$port"
allow_loopback_destinations = true
[api]
listen = "127.0.0.1:$api"
[tunnel]
listen = "127.0.0.1:$tun"
[log]
level = "warn"
$fleet
CFG
    taskset -c 1 "$BIN" "$role" --config "$d/rampart.toml" 2>"$d/stderr" &
    local pid=$!
    (wait_port "$port") || { echo "$1 did not start:"; cat "$d/stderr"; exit 1; }
    taskset -c 0 wrk -t1 -c50 -d2s -s "$WORK/abs.lua" "http://127.0.0.1:$port/" >/dev/null
    local c0 c1 n0 n1 out reqs rps
    c0=$(cpu_ticks "$pid"); n0=$(cpu_ticks "$NATS_PID")
    local perf_pid=""
    if [[ ${PERF:-0} == 1 && $1 == fleet ]]; then
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
    python3 -c "print(f'{\"$1\":8} req/s={float(\"$rps\"):9.0f}  CPU/req={($c1-$c0)/$TCK/$reqs*1e6:6.2f} us  nats-server CPU/req={($n1-$n0)/$TCK/$reqs*1e6:5.2f} us  requests=$reqs  {\"$errs\"}')"
}
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $BIN"
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then run allinone; run fleet; else run fleet; run allinone; fi
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
