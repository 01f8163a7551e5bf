#!/usr/bin/env bash
# What logging costs Rampart on the plain HTTP path, two builds side by side
# and g3proxy beside them, in one interleaved run: bench/run.sh's `plain`
# load (nginx origin and `wrk -t1 -c50`, absolute-form GET of 1 KiB, on CPU 0)
# through each target in turn (every proxy on CPU 1), round after round, so a
# burst of load on this shared host lands on every column alike.
#
#   RAMPART_A=/tmp/rampart-old RAMPART_B=target/release/rampart bench/logging_ab.sh
#
# Targets: g3proxy (`log: discard`, if built), and for each of A and B
# Rampart on its defaults (access log and event store on, every request
# logged and stored) and with both off (`-off`). Prints a Markdown table:
# req/s and CPU µs per request (the proxy's process tree, user + system, over
# wrk's requests), medians of the rounds, each round's figures, the ratios
# within the run, and the load average at the start and the end.
#
# Environment: RAMPART_A, RAMPART_B (binaries; B defaults to
# target/release/rampart), BENCH_DURATION (s per loop, 6), BENCH_RUNS (3),
# G3PROXY_BIN (default bench/.peers/g3/g3proxy; without it no g3proxy column).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_NAME=logging-ab
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools "run bench/setup.sh" nginx wrk taskset curl python3 setsid

RAMPART_A=${RAMPART_A:?the baseline binary, e.g. /tmp/rampart-old}
RAMPART_B=${RAMPART_B:-$REPO_DIR/target/release/rampart}
G3PROXY_BIN=${G3PROXY_BIN:-$BENCH_DIR/.peers/g3/g3proxy}
DUR=${BENCH_DURATION:-6}
RUNS=${BENCH_RUNS:-3}
for b in "$RAMPART_A" "$RAMPART_B"; do [[ -x $b ]] || die "no Rampart binary at $b"; done

bench_workdir logging-ab
start_nginx_1k 0
HTTP_PORT=$OPORT
URL="http://127.0.0.1:$HTTP_PORT/1k"

declare -A PORT=() PID=()

# start_rampart NAME BINARY EXTRA-TOML: bench/run.sh's `rampart` configuration.
start_rampart() {
    local name=$1 bin=$2 extra=$3 d="$WORK/$1"
    mkdir -p "$d/data"
    PORT[$name]=$(free_port)
    cat >"$d/rampart.toml" <<EOF
data_dir = "$d/data"

[proxy]
listen = "127.0.0.1:${PORT[$name]}"
connect_ports = ["443", "1025-65535"]
tls_ports = [443]
allow_loopback_destinations = true

[api]
listen = "127.0.0.1:$(free_port)"

[tunnel]
listen = "127.0.0.1:$(free_port)"

$extra
EOF
    setsid taskset -c 1 "$bin" server --config "$d/rampart.toml" >"$d/log" 2>&1 &
    PID[$name]=$!
    PIDS+=($!)
    wait_port "${PORT[$name]}"
}

# g3proxy as bench/run.sh's `g3proxy` target: one worker, `log: discard`.
start_g3proxy() {
    local d="$WORK/g3proxy"
    mkdir -p "$d/ctl"
    PORT[g3proxy]=$(free_port)
    cat >"$d/g3proxy.yaml" <<EOF
---
runtime:
  thread_number: 1
log: discard
resolver:
  - name: none
    type: deny_all
escaper:
  - name: direct
    type: direct_fixed
    resolver: none
    resolve_redirection:
      - exact: localhost
        to: [127.0.0.1]
    egress_network_filter:
      default: allow
      allow:
        - 127.0.0.0/8
        - ::1/128
server:
  - name: bench
    type: http_proxy
    escaper: direct
    listen:
      address: 127.0.0.1:${PORT[g3proxy]}
EOF
    setsid taskset -c 1 "$G3PROXY_BIN" -c "$d/g3proxy.yaml" -C "$d/ctl" -G g3proxy >"$d/log" 2>&1 &
    PID[g3proxy]=$!
    PIDS+=($!)
    wait_port "${PORT[g3proxy]}"
}

LOG_ON=$'[access_log]\nenabled = true'
LOG_OFF=$'[access_log]\nenabled = false\n\n[events]\nenabled = false'
TARGETS=()
if [[ -x $G3PROXY_BIN ]]; then
    start_g3proxy
    TARGETS+=(g3proxy)
fi
start_rampart A "$RAMPART_A" "$LOG_ON"
start_rampart A-off "$RAMPART_A" "$LOG_OFF"
start_rampart B "$RAMPART_B" "$LOG_ON"
start_rampart B-off "$RAMPART_B" "$LOG_OFF"
TARGETS+=(A A-off B B-off)

cat >"$WORK/absolute.lua" <<EOF
wrk.method = "GET"
wrk.path = "$URL"
wrk.headers["Host"] = "127.0.0.1:$HTTP_PORT"
EOF
for t in "${TARGETS[@]}"; do
    curl -fsS --max-time 5 -o /dev/null -x "http://127.0.0.1:${PORT[$t]}" "$URL" ||
        die "request through $t failed (log: $WORK/$t/log)"
    # Warm-up: connections, caches, the event store's first commits.
    taskset -c 0 wrk -t1 -c50 -d2s -s "$WORK/absolute.lua" "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$WORK/results.tsv"
for r in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        c0=$(python3 "$BENCH_DIR/cputime.py" "${PID[$t]}")
        out=$(taskset -c 0 timeout -k 5 $((DUR + 30)) wrk -t1 -c50 -d"${DUR}s" -s "$WORK/absolute.lua" \
            "http://127.0.0.1:${PORT[$t]}/" 2>&1) || true
        c1=$(python3 "$BENCH_DIR/cputime.py" "${PID[$t]}")
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        n=$(awk '/requests in/ {print $1; exit}' <<<"$out")
        bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
        [[ -n $rps && -n $n && -z $bad ]] || die "wrk through $t failed: $out"
        us=$(python3 -c "print(round(($c1 - $c0) * 1e6 / $n, 2))")
        printf '%s\t%s\t%s\t%s\n' "$t" "$r" "$rps" "$us" >>"$WORK/results.tsv"
        log "run $r $t: $rps req/s, $us µs CPU per request"
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK/results.tsv" "$LOAD_START" "$LOAD_END" "${TARGETS[@]}" <<'EOF'
import statistics, sys
path, load_start, load_end, *targets = sys.argv[1:]
rows = [l.split("\t") for l in open(path).read().splitlines()]
rps = {t: [float(r[2]) for r in rows if r[0] == t] for t in targets}
cpu = {t: [float(r[3]) for r in rows if r[0] == t] for t in targets}
med = {t: statistics.median(cpu[t]) for t in targets}
names = {
    "g3proxy": "g3proxy (`log: discard`)",
    "A": "A, logging on (defaults)",
    "A-off": "A, access log and events off",
    "B": "B, logging on (defaults)",
    "B-off": "B, access log and events off",
}
print(f"load average at start {load_start}, at end {load_end}\n")
print("| target | req/s (median) | CPU µs per request (median) | rounds, µs |")
print("|---|---|---|---|")
for t in targets:
    print(f"| {names[t]} | {statistics.median(rps[t]):,.0f} | {med[t]:.2f} | "
          + ", ".join(f"{v:.2f}" for v in cpu[t]) + " |")
print()
for side in ("A", "B"):
    print(f"- {side}: logging costs {med[side] - med[side + '-off']:.2f} µs per request "
          f"({med[side] / med[side + '-off']:.3f}× of logging off)")
    if "g3proxy" in med:
        print(f"- {side} / g3proxy CPU per request: {med[side] / med['g3proxy']:.3f}× "
              f"(logging off: {med[side + '-off'] / med['g3proxy']:.3f}×)")
print(f"- B / A CPU per request, logging on: {med['B'] / med['A']:.3f}×; off: {med['B-off'] / med['A-off']:.3f}×")
EOF
