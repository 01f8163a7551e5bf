#!/usr/bin/env bash
# Issue 16's login-cache A/B: plain HTTP 1 KiB through one Rampart, with and
# without proxy authentication, the two configurations taking turns round after
# round (noauth auth, auth noauth, ...) so a burst of load on this shared host
# lands on both alike. Pinning as bench/run.sh: the proxy on BENCH_PROXY_CPU,
# nginx and the load generators on BENCH_LOAD_CPU.
#
#   bench/login_ab.sh
#
# "auth" has one `[[proxy.users]]` entry (Argon2 hash from `rampart
# hash-password`) and the client sends `Proxy-Authorization: Basic`; "noauth"
# admits loopback by address. Two loads per configuration and round:
#   keepalive  wrk -t1 -c50, absolute-form requests (the header in the Lua script)
#   new        oha -c50 --disable-keepalive (a new TCP connection per request,
#              so every request is a fresh login that the credential cache answers)
#
# Environment: RAMPART_BIN (target/release/rampart), BENCH_AB_ROUNDS (4),
# BENCH_DURATION (s per load; 7), BENCH_PROXY_CPU (1), BENCH_LOAD_CPU (0),
# BENCH_PERF=1 (after the rounds, `perf record -g` each configuration under each
# load; reports in the output directory; BENCH_AB_ROUNDS=0 for the profiles only).
#
# Output: the Markdown table on stdout (medians, auth/noauth of the medians and
# of each round, every round's figures, the load average); progress on stderr;
# raw figures in bench/out/login-ab-<UTC time>/.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_NAME=login-ab
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools "run bench/setup.sh" python3 nginx wrk oha curl taskset
export PATH="$HOME/.cargo/bin:$PATH"

RAMPART_BIN=${RAMPART_BIN:-$REPO_DIR/target/release/rampart}
[[ -x $RAMPART_BIN ]] || die "no Rampart binary at $RAMPART_BIN (cargo build --release -p rampart-cli)"
ROUNDS=${BENCH_AB_ROUNDS:-4}
DUR=${BENCH_DURATION:-7}
PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
CONNS=50
LABELS=(noauth auth)

OUT="$BENCH_DIR/out/login-ab-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
: >"$OUT/results.tsv"
bench_workdir login-ab
start_nginx_1k "$LOAD_CPU"
URL_1K="http://127.0.0.1:$OPORT/1k"

# One user; the password never leaves this script.
PASSWORD="bench-$RANDOM$RANDOM"
HASH=$(printf %s "$PASSWORD" | "$RAMPART_BIN" hash-password) || die "rampart hash-password failed"
AUTH_HEADER="Basic $(printf '%s' "bench:$PASSWORD" | base64 -w0)"
cp "$WORK/abs.lua" "$WORK/abs-noauth.lua"
{
    cat "$WORK/abs.lua"
    printf 'wrk.headers["Proxy-Authorization"] = "%s"\n' "$AUTH_HEADER"
} >"$WORK/abs-auth.lua"

# write_config LABEL : $WORK/LABEL/rampart.toml, run.sh's plain-run settings
# plus, for "auth", the user.
write_config() {
    local d="$WORK/$1" users=""
    rm -rf "$d"
    mkdir -p "$d/data"
    PORT=$(free_port)
    if [[ $1 == auth ]]; then
        users="[[proxy.users]]
name = \"bench\"
password_hash = \"$HASH\"
groups = []"
    fi
    cat >"$d/rampart.toml" <<EOF
data_dir = "$d/data"

[proxy]
listen = "127.0.0.1:$PORT"
connect_ports = ["443", "1025-65535"]
allow_loopback_destinations = true

$users

[api]
listen = "127.0.0.1:$(free_port)"

[tunnel]
listen = "127.0.0.1:$(free_port)"

[access_log]
enabled = true
EOF
}

# start_proxy LABEL -> PORT, PROXY_PID (pinned, in PIDS for the cleanup)
start_proxy() {
    write_config "$1"
    setsid taskset -c "$PROXY_CPU" "$RAMPART_BIN" server --config "$WORK/$1/rampart.toml" \
        >"$WORK/$1.log" 2>&1 </dev/null &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PORT" "$PROXY_PID" "$1"
    local want=200 code hdr=()
    [[ $1 == auth ]] && hdr=(-H "Proxy-Authorization: $AUTH_HEADER")
    code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -x "http://127.0.0.1:$PORT" "${hdr[@]}" "$URL_1K") || true
    [[ $code == "$want" ]] || die "$1: check request got $code, not $want (log: $WORK/$1.log)"
    if [[ $1 == auth ]]; then
        # The user must really be required, or the A/B compares nothing.
        code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -x "http://127.0.0.1:$PORT" "$URL_1K") || true
        [[ $code == 407 ]] || die "auth: a request without credentials got $code, not 407"
    fi
}

stop_proxy() {
    stop_daemon "$PROXY_PID"
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$PROXY_PID" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# warm_up LABEL : 1 s of the keep-alive load, unrecorded, so neither
# configuration's first figures carry the process's start-up (store, first
# connections to the origin).
warm_up() {
    load 30 wrk -t1 -c"$CONNS" -d1s -s "$WORK/abs-$1.lua" "http://127.0.0.1:$PORT/" >/dev/null 2>&1 || true
}

load() { taskset -c "$LOAD_CPU" timeout -k 5 "$@"; }

record() { # label round measure metric value
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/results.tsv"
}

# keepalive LABEL ROUND : wrk over 50 kept-alive connections.
keepalive() {
    local c0 c1 out rps n non2xx
    c0=$(cpu_of "$PROXY_PID")
    out=$(load $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$WORK/abs-$1.lua" "http://127.0.0.1:$PORT/" 2>&1) || true
    c1=$(cpu_of "$PROXY_PID")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    n=$(awk '/requests in/ {print $1; exit}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    [[ -n $rps && -n $n ]] || die "$1 round $2: wrk gave no figures: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    [[ -z $non2xx ]] || die "$1 round $2: wrk saw $non2xx non-2xx answers"
    record "$1" "$2" keepalive rps "$rps"
    record "$1" "$2" keepalive cpu_us "$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.2f", (b - a) * 1e6 / n }')"
    log "round $2 $1 keepalive: $rps req/s"
}

# newconn LABEL ROUND : oha, a new connection per request, 50 at a time.
newconn() {
    local c0 c1 hdr=() res rps ok bad
    [[ $1 == auth ]] && hdr=(-H "Proxy-Authorization: $AUTH_HEADER")
    rm -f "$WORK/oha.json"
    c0=$(cpu_of "$PROXY_PID")
    load $((DUR + 30)) oha --no-tui --output-format json -o "$WORK/oha.json" -z "${DUR}s" \
        -c "$CONNS" --disable-keepalive -x "http://127.0.0.1:$PORT" "${hdr[@]}" "$URL_1K" \
        >"$WORK/oha.out" 2>&1 || true
    c1=$(cpu_of "$PROXY_PID")
    res=$(python3 - "$WORK/oha.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution") or {}
ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
elapsed = d["summary"]["total"]
print(f"{ok / elapsed:.1f} {ok} {sum(codes.values()) - ok}")
EOF
    ) || die "$1 round $2: oha gave no figures: $(tail -n 3 "$WORK/oha.out" | tr '\n' ' ')"
    read -r rps ok bad <<<"$res"
    ((bad == 0)) || die "$1 round $2: oha saw $bad non-2xx answers"
    record "$1" "$2" new rps "$rps"
    record "$1" "$2" new cpu_us "$(awk -v a="$c0" -v b="$c1" -v n="$ok" 'BEGIN { printf "%.2f", (b - a) * 1e6 / n }')"
    log "round $2 $1 new connection per request: $rps req/s"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "$ROUNDS rounds of noauth/auth, ${DUR} s per load, proxy on CPU $PROXY_CPU, load on CPU $LOAD_CPU; out: $OUT"
LOADS=""
for r in $(seq "$ROUNDS"); do
    order=("${LABELS[@]}")
    ((r % 2 == 0)) && order=("${LABELS[1]}" "${LABELS[0]}")
    for label in "${order[@]}"; do
        LOADS+="$r-$label $(cut -d' ' -f1 /proc/loadavg), "
        start_proxy "$label"
        warm_up "$label"
        keepalive "$label" "$r"
        newconn "$label" "$r"
        stop_proxy
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

if [[ ${BENCH_PERF:-0} == 1 ]]; then
    require_tools "apt-get install -y linux-perf" perf
    for label in "${LABELS[@]}"; do
        start_proxy "$label"
        warm_up "$label"
        for measure in keepalive new; do
            perf record -g -o "$OUT/perf-$label-$measure.data" -p "$PROXY_PID" -- sleep "$DUR" >/dev/null 2>&1 &
            perf_pid=$!
            if [[ $measure == keepalive ]]; then keepalive "$label" perf; else newconn "$label" perf; fi
            wait "$perf_pid" || true
            perf report -i "$OUT/perf-$label-$measure.data" --no-children --percent-limit 0.05 --stdio -g none \
                >"$OUT/perf-$label-$measure.txt" 2>/dev/null || true
        done
        stop_proxy
    done
fi

python3 - "$OUT/results.tsv" "$LOAD_START" "$LOAD_END" "${LOADS%, }" <<'EOF' | tee "$OUT/table.md"
import statistics, sys

path, load_start, load_end, loads = sys.argv[1:]
rows = [l.split("\t") for l in open(path).read().splitlines() if l.strip()]
fig = {}
for label, rnd, measure, metric, value in rows:
    if rnd == "perf":
        continue
    fig.setdefault((measure, metric), {}).setdefault(label, {})[int(rnd)] = float(value)

print(f"load average at start {load_start}, at end {load_end}; at each run: {loads}\n")
print("| figure | noauth (median) | auth (median) | auth / noauth (medians) | auth / noauth per round | rounds noauth; auth |")
print("|---|---|---|---|---|---|")
names = {"keepalive": "keep-alive (wrk -c50)", "new": "new connection per request (oha -c50)"}
units = {"rps": "req/s", "cpu_us": "proxy CPU µs/req"}
for measure in ("keepalive", "new"):
    for metric in ("rps", "cpu_us"):
        per = fig.get((measure, metric))
        if not per or len(per) < 2:
            continue
        a, b = per["noauth"], per["auth"]
        ma, mb = statistics.median(a.values()), statistics.median(b.values())
        ratios = [b[r] / a[r] for r in sorted(a) if r in b and a[r]]
        fmt = (lambda v: f"{v:,.0f}") if metric == "rps" else (lambda v: f"{v:.1f}")
        print(f"| {names[measure]}, {units[metric]} | {fmt(ma)} | {fmt(mb)} | **{mb / ma:.3f}** | "
              + ", ".join(f"{x:.3f}" for x in ratios) + " | "
              + " / ".join(fmt(a[r]) for r in sorted(a)) + "; " + " / ".join(fmt(b[r]) for r in sorted(b)) + " |")
EOF
log "table and raw figures in $OUT"
