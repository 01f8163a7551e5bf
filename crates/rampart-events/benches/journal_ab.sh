#!/usr/bin/env bash
# A/B of the event journal on plain HTTP through the gateway, in one run.
# Like bench/run.sh plain: nginx (1 worker, /1k) and wrk (1 thread, 50
# keep-alive connections, absolute-form requests) on CPU 0, the gateway on CPU 1
# with its access log and event store on; the only difference between A and B
# is `[events] journal`. Rounds alternate the two so outside load hits both.
# usage: RAMPART_BIN=target/release/rampart ROUNDS=4 DURATION=10 \
#          bash crates/rampart-events/benches/journal_ab.sh
# Needs nginx and wrk (bench/setup.sh installs both).
set -euo pipefail
BIN=${RAMPART_BIN:-target/release/rampart}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
BENCH_NAME=journal-ab
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/bench/lib.sh"
TCK=$(getconf CLK_TCK)

start_nginx_1k 0

run() { # journal=true|false
    local d="$WORK/gw-$1-$RANDOM" port api tun
    mkdir -p "$d/data"
    port=$(free_port); api=$(free_port); tun=$(free_port)
    cat >"$d/rampart.toml" <<CFG
data_dir = "$d/data"
[proxy]
listen = "127.0.0.1:$port"
allow_loopback_destinations = true
[api]
listen = "127.0.0.1:$api"
[tunnel]
listen = "127.0.0.1:$tun"
[events]
journal = $1
[log]
level = "warn"
CFG
    taskset -c 1 "$BIN" server --config "$d/rampart.toml" 2>"$d/stderr" &
    local pid=$!
    wait_port "$port"
    taskset -c 0 wrk -t1 -c50 -d2s -s "$WORK/abs.lua" "http://127.0.0.1:$port/" >/dev/null
    local c0 c1 out reqs rps
    c0=$(cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" -s "$WORK/abs.lua" "http://127.0.0.1:$port/")
    c1=$(cpu_ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    local errs; errs=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    local jbytes; jbytes=$(du -sb "$d/data/journal" 2>/dev/null | cut -f1 || echo 0)
    python3 -c "print(f'journal={\"$1\":5} req/s={float(\"$rps\"):9.0f}  CPU/req={($c1-$c0)/$TCK/$reqs*1e6:6.2f} us  requests=$reqs  {\"$errs\"}')"
}
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $BIN"
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then run true; run false; else run false; run true; fi
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
