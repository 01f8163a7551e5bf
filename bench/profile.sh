#!/usr/bin/env bash
# perf profile of Rampart on bench/run.sh's plain HTTP load: nginx origin and
# wrk (-t1 -c50, absolute-form GET of 1 KiB) on CPU 0, `rampart server` on
# CPU 1 with the bench's configuration (access log on, event store on: its
# defaults), `perf record -g` on the gateway for the timed loop.
#
#   bench/profile.sh                  top entries (self and children) to stdout
#   BENCH_RAMPART_TOML=$'[events]\nenabled = false' bench/profile.sh
#
# Environment: RAMPART_BIN (default target/release/rampart), BENCH_DURATION
# (s, default 10), BENCH_RAMPART_TOML (extra TOML), PROFILE_OUT (directory for
# perf.data and the reports, default bench/out/profile-<UTC time>), PERF_FREQ
# (sampling frequency, default 999 Hz).
# Needs perf (Debian linux-perf), nginx, wrk; run as root (or with
# kernel.perf_event_paranoid <= 1) to see kernel frames.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
RAMPART_BIN=${RAMPART_BIN:-$REPO_DIR/target/release/rampart}
DUR=${BENCH_DURATION:-10}
FREQ=${PERF_FREQ:-999}
OUT=${PROFILE_OUT:-$BENCH_DIR/out/profile-$(date -u +%Y%m%dT%H%M%SZ)}

BENCH_NAME=profile
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools "perf: apt-get install linux-perf; the others: bench/setup.sh" perf nginx wrk taskset curl python3
[[ -x $RAMPART_BIN ]] || die "no Rampart binary at $RAMPART_BIN (cargo build --release -p rampart-cli)"
mkdir -p "$OUT"

bench_workdir profile
start_nginx_1k 0
HTTP_PORT=$OPORT

PORT=$(free_port)
mkdir -p "$WORK/data"
# The same configuration as bench/run.sh's `rampart` target.
cat >"$WORK/rampart.toml" <<EOF
data_dir = "$WORK/data"

[proxy]
listen = "127.0.0.1:$PORT"
connect_ports = ["443", "1025-65535"]
tls_ports = [443]
allow_loopback_destinations = true

[api]
listen = "127.0.0.1:$(free_port)"

[tunnel]
listen = "127.0.0.1:$(free_port)"

[access_log]
enabled = true

${BENCH_RAMPART_TOML:-}
EOF
setsid taskset -c 1 "$RAMPART_BIN" server --config "$WORK/rampart.toml" >"$WORK/rampart.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "$PORT"

URL="http://127.0.0.1:$HTTP_PORT/1k"
cat >"$WORK/absolute.lua" <<EOF
wrk.method = "GET"
wrk.path = "$URL"
wrk.headers["Host"] = "127.0.0.1:$HTTP_PORT"
EOF
curl -fsS --max-time 5 -o /dev/null -x "http://127.0.0.1:$PORT" "$URL" || die "request through Rampart failed"
# Warm-up: connections, caches, the event store's first commits.
taskset -c 0 wrk -t1 -c50 -d2s -s "$WORK/absolute.lua" "http://127.0.0.1:$PORT/" >/dev/null

cpu() { awk '{print $14 + $15}' "/proc/$GW/stat"; }
c0=$(cpu)
perf record -F "$FREQ" -g --call-graph dwarf,8192 -p "$GW" -o "$OUT/perf.data" -- sleep "$((DUR + 1))" \
    >"$OUT/perf-record.log" 2>&1 &
PERF=$!
sleep 0.5
taskset -c 0 wrk -t1 -c50 -d"${DUR}s" -s "$WORK/absolute.lua" "http://127.0.0.1:$PORT/" >"$OUT/wrk.txt"
c1=$(cpu)
wait "$PERF" || true
requests=$(awk '/requests in/ {print $1; exit}' "$OUT/wrk.txt")
ticks=$(getconf CLK_TCK)
us=$(python3 -c "print(round(($c1 - $c0) / $ticks * 1e6 / $requests, 1))")
log "$(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk.txt") req/s, $us µs CPU per request while profiled"

perf report -i "$OUT/perf.data" --no-children --sort symbol --percent-limit 0.7 --stdio -g none \
    >"$OUT/self.txt" 2>/dev/null
perf report -i "$OUT/perf.data" --children --sort symbol --percent-limit 3 --stdio -g none \
    >"$OUT/children.txt" 2>/dev/null
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none >"$OUT/threads.txt" 2>/dev/null
{
    echo "## Rampart plain HTTP profile: $(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk.txt") req/s, $us µs CPU per request (while profiled)"
    echo
    echo "### By thread"
    grep -v '^#' "$OUT/threads.txt" | grep -v '^$' | head -n 12
    echo
    echo "### Self time"
    grep -v '^#' "$OUT/self.txt" | grep -v '^$' | head -n 40
    echo
    echo "### Including callees"
    grep -v '^#' "$OUT/children.txt" | grep -v '^$' | head -n 60
} | tee "$OUT/summary.md"
log "perf.data and reports in $OUT"
