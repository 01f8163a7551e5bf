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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
TCK=$(getconf CLK_TCK)

mkdir -p "$WORK/www"
head -c 1024 /dev/urandom >"$WORK/www/1k"
chmod 755 "$WORK" "$WORK/www"; chmod 644 "$WORK/www/1k"  # nginx workers run unprivileged
OPORT=$(free_port)
cat >"$WORK/nginx.conf" <<NG
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$OPORT; root $WORK/www; } }
NG
taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)
wait_port "$OPORT"
printf 'wrk.method = "GET"\nwrk.path = "http://127.0.0.1:%s/1k"\nwrk.headers["Host"] = "127.0.0.1:%s"\n' "$OPORT" "$OPORT" >"$WORK/abs.lua"

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
