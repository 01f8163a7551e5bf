#!/usr/bin/env bash
# Soak (issue 16, item 8): SOAK_SECONDS (3600 by default) of mixed traffic through
# one `rampart server` — plain HTTP, intercepted HTTPS, spliced tunnels, blocked
# requests and 1 MiB intercepted downloads, a fifth of them on new connections —
# with the server's RSS, descriptors, threads, the event database's size and the
# load's counters sampled every SOAK_SAMPLE seconds into a CSV, then judged after
# the warm-up (SOAK_WARMUP s):
#
# - no request may fail;
# - descriptors never above the warm-up's maximum plus the load's own connections;
# - the anonymous RSS (what the process holds) flat, apart from the store writer's
#   SQLite page cache: that cache keeps every page the writer touched until it
#   reaches `[events] page_cache` (16 MiB unless SOAK_PAGE_CACHE_MIB sets it), so
#   while the database is smaller than the cap the cache grows with it. The
#   last quarter's mean may exceed the first quarter's by SOAK_RSS_SLACK percent
#   plus what the cache could have grown in between (min(cap, 1.25 × (database +
#   WAL)) at the end less the same at the start). Once the database is larger than the
#   cap, the cache is full: the samples from then on (when there are at least 8)
#   are judged again with no allowance but the slack.
#
# The file-backed RSS is reported beside it, not judged: the binary's mapped pages
# (the store does not mmap its database).
#
# With SOAK_SEARCH_EVERY=SECONDS, bench/soak_search.py reads the store the whole
# time as an analyst would: every SECONDS a round of API searches with the admin
# token (a query with a `since` span or a `from`/`to` range, the next page by
# cursor, an event by id, alerts) and console pages with a session (overview,
# events search, an event, a device timeline, alerts; an NDJSON export every
# sixth round), SOAK_SEARCH_PARALLEL (4) at a time, so both reader pools and
# their page caches are in the soak. Every answer must be 200 (a console page
# without an error on it) and the searches for the load's own hosts must find
# events: a failed search fails the soak like a failed request. SOAK_SEARCH_TAIL=1
# also follows every HTTP event with `rampart events tail --server` and fails the
# soak if the tail missed a stored event or printed one twice.
#
#   bash bench/soak.sh                       # one hour, 100 req/s
#   SOAK_SECONDS=600 SOAK_RATE=200 bash bench/soak.sh
#   SOAK_PAGE_CACHE_MIB=256 bash bench/soak.sh   # the writer's page cache capped at 256 MiB
#   SOAK_EVENTS_ENABLED=0 bash bench/soak.sh     # no event store at all
#   SOAK_SEARCH_EVERY=10 bash bench/soak.sh      # with console and API searches
#
# Needs nginx, openssl, python3 with `requests` (Debian's python3-requests, which
# scripts/install-test-deps.sh installs) and a release build (cargo build --release -p
# rampart-cli) or RAMPART_BIN. Everything runs on loopback; the work directory
# (kept with BENCH_KEEP=1) holds the CSV and the logs.
set -euo pipefail
BENCH_NAME=soak
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RAMPART_BIN=${RAMPART_BIN:-$ROOT/target/release/rampart}
SECONDS_TOTAL=${SOAK_SECONDS:-3600}
RATE=${SOAK_RATE:-100}
SAMPLE=${SOAK_SAMPLE:-10}
WARMUP=${SOAK_WARMUP:-300}
RSS_SLACK=${SOAK_RSS_SLACK:-10}
PYTHON=${SOAK_PYTHON:-python3}
# Keep in step with DEFAULT_PAGE_CACHE_BYTES (crates/rampart-events/src/store/writer.rs).
DEFAULT_PAGE_CACHE_MIB=16
PAGE_CACHE_MIB=${SOAK_PAGE_CACHE_MIB:-}
EVENTS_ENABLED=${SOAK_EVENTS_ENABLED:-1}
SEARCH_EVERY=${SOAK_SEARCH_EVERY:-0}
SEARCH_PARALLEL=${SOAK_SEARCH_PARALLEL:-4}
SEARCH_TAIL=${SOAK_SEARCH_TAIL:-}
[[ -x $RAMPART_BIN ]] || die "no Rampart binary at $RAMPART_BIN (cargo build --release -p rampart-cli)"
require_tools "apt-get install nginx openssl" nginx openssl
"$PYTHON" -c 'import requests' 2>/dev/null || die "$PYTHON has no requests module (apt-get install python3-requests)"
[[ $SEARCH_EVERY == 0 || $EVENTS_ENABLED == 1 ]] || die "SOAK_SEARCH_EVERY needs the event store (SOAK_EVENTS_ENABLED=1)"
((WARMUP < SECONDS_TOTAL)) || die "SOAK_WARMUP ($WARMUP s) must be shorter than SOAK_SECONDS ($SECONDS_TOTAL s)"

WORK=$(mktemp -d /tmp/rampart-soak.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_daemon "$pid"; done
    if [[ ${BENCH_KEEP:-0} == 1 || $rc != 0 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# --- origin: nginx, HTTP and HTTPS, a 1 KiB and a 1 MiB object -------------------
O="$WORK/origin"
mkdir -p "$O/www" "$O/tls" "$O/tmp"
head -c 1024 /dev/urandom >"$O/www/1k"
head -c 1048576 /dev/urandom >"$O/www/1m"
chmod -R a+rX "$O/www"
mkca "$O/tls" ca "Rampart soak origin CA"
mkleaf "$O/tls" ca origin 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE'
HTTP_PORT=$(free_port)
HTTPS_PORT=$(free_port)
cat >"$O/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $O/nginx.pid;
error_log $O/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $O/tmp/body;
    proxy_temp_path $O/tmp/proxy;
    fastcgi_temp_path $O/tmp/fastcgi;
    uwsgi_temp_path $O/tmp/uwsgi;
    scgi_temp_path $O/tmp/scgi;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        listen 127.0.0.1:$HTTPS_PORT ssl;
        ssl_certificate $O/tls/origin.pem;
        ssl_certificate_key $O/tls/origin.key;
        root $O/www;
    }
}
EOF
setsid nginx -c "$O/nginx.conf" -p "$O" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_port "$HTTP_PORT" "${PIDS[-1]}" origin
wait_port "$HTTPS_PORT" "${PIDS[-1]}" origin

# --- Rampart: interception for localhost, 127.0.0.1 spliced, one block rule ------
R="$WORK/rampart"
mkdir -p "$R/data"
PROXY_PORT=$(free_port)
API_PORT=$(free_port)
cat >"$R/policy.toml" <<'EOF'
[[access]]
id = "soak-block"
when = { hosts = ["blocked.soak.test"] }
action = "block"
EOF
cat >"$R/rampart.toml" <<EOF
data_dir = "$R/data"
policy = "$R/policy.toml"

[proxy]
listen = "127.0.0.1:$PROXY_PORT"
connect_ports = ["443", "1025-65535"]
tls_ports = [443, $HTTPS_PORT]
allow_loopback_destinations = true

[tls]
extra_roots = ["$O/tls/ca.pem"]
do_not_decrypt = ["127.0.0.1"]

[api]
listen = "127.0.0.1:$API_PORT"

[tunnel]
listen = "127.0.0.1:$(free_port)"

[access_log]
enabled = true

[events]
EOF
if [[ $EVENTS_ENABLED == 0 ]]; then
    echo "enabled = false" >>"$R/rampart.toml"
elif [[ -n $PAGE_CACHE_MIB ]]; then
    echo "page_cache = \"${PAGE_CACHE_MIB}MiB\"" >>"$R/rampart.toml"
fi
"$RAMPART_BIN" ca init --data-dir "$R/data" >"$WORK/ca-init.log" 2>&1 || die "rampart ca init: $(cat "$WORK/ca-init.log")"
CONSOLE_USER=soak
CONSOLE_PASSWORD=$(head -c 18 /dev/urandom | base64)
if [[ $SEARCH_EVERY != 0 ]]; then
    printf '%s\n' "$CONSOLE_PASSWORD" | "$RAMPART_BIN" user add "$CONSOLE_USER" --role analyst --data-dir "$R/data" \
        >"$WORK/user-add.log" 2>&1 || die "rampart user add: $(cat "$WORK/user-add.log")"
fi
setsid "$RAMPART_BIN" server --config "$R/rampart.toml" >"$WORK/rampart.log" 2>&1 &
RAMPART_PID=$!
PIDS+=("$RAMPART_PID")
wait_port "$PROXY_PORT" "$RAMPART_PID" rampart
for _ in $(seq 100); do
    curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$API_PORT/healthz" && break
    sleep 0.1
done
curl -sf --max-time 5 -o /dev/null -x "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$HTTP_PORT/1k" ||
    die "a plain request through Rampart failed (log: $WORK/rampart.log)"

# --- load and sampling -------------------------------------------------------------
"$PYTHON" "$(dirname "$0")/soak_load.py" \
    --proxy "http://127.0.0.1:$PROXY_PORT" \
    --plain "http://127.0.0.1:$HTTP_PORT/1k" \
    --intercepted "https://localhost:$HTTPS_PORT/1k" \
    --tunnel "https://127.0.0.1:$HTTPS_PORT/1k" \
    --big "https://localhost:$HTTPS_PORT/1m" \
    --blocked "http://blocked.soak.test/" \
    --proxy-ca "$R/data/ca.pem" --origin-ca "$O/tls/ca.pem" \
    --rate "$RATE" --seconds "$SECONDS_TOTAL" --report "$SAMPLE" \
    >"$WORK/load.jsonl" 2>"$WORK/load.err" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
SEARCH_PID=
if [[ $SEARCH_EVERY != 0 ]]; then
    "$PYTHON" "$(dirname "$0")/soak_search.py" \
        --api "http://127.0.0.1:$API_PORT" --token-file "$R/data/admin.token" \
        --console-user "$CONSOLE_USER" --console-password "$CONSOLE_PASSWORD" \
        --expect-host localhost --expect-host 127.0.0.1 \
        --every "$SEARCH_EVERY" --parallel "$SEARCH_PARALLEL" --seconds "$SECONDS_TOTAL" --report "$SAMPLE" \
        ${SEARCH_TAIL:+--tail-bin "$RAMPART_BIN"} \
        >"$WORK/search.jsonl" 2>"$WORK/search.err" &
    SEARCH_PID=$!
    PIDS+=("$SEARCH_PID")
fi
log "soak: ${SECONDS_TOTAL} s at $RATE req/s${SEARCH_PID:+, searches every $SEARCH_EVERY s}; Rampart pid $RAMPART_PID, work dir $WORK"

CSV="$WORK/samples.csv"
echo "elapsed_s,rss_kib,anon_kib,file_kib,fds,threads,cpu_s,db_kib,wal_kib,load1" >"$CSV"
size_kib() { if [[ -f $1 ]]; then echo $(($(stat -c %s "$1") / 1024)); else echo 0; fi; }
start=$(date +%s)
while kill -0 "$LOAD_PID" 2>/dev/null; do
    kill -0 "$RAMPART_PID" 2>/dev/null || die "Rampart exited during the soak (log: $WORK/rampart.log)"
    now=$(date +%s)
    fds=$(find "/proc/$RAMPART_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$RAMPART_PID/status")
    anon_file=$(awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {print a "," f}' "/proc/$RAMPART_PID/status")
    db=$(size_kib "$R/data/events.db")
    wal=$(size_kib "$R/data/events.db-wal")
    load1=$(cut -d' ' -f1 /proc/loadavg)
    echo "$((now - start)),$(rss_kib "$RAMPART_PID"),$anon_file,$fds,$threads,$(python3 "$BENCH_LIB_DIR/cputime.py" "$RAMPART_PID"),$db,$wal,$load1" >>"$CSV"
    sleep "$SAMPLE"
done
wait "$LOAD_PID" || die "the load generator failed: $(tail -n 5 "$WORK/load.err")"
if [[ -n $SEARCH_PID ]]; then
    wait "$SEARCH_PID" || die "the searches failed to run: $(tail -n 5 "$WORK/search.err")"
fi

# --- verdict -------------------------------------------------------------------------
if [[ $EVENTS_ENABLED == 0 ]]; then cache_mib=0; else cache_mib=${PAGE_CACHE_MIB:-$DEFAULT_PAGE_CACHE_MIB}; fi
python3 - "$CSV" "$WORK/load.jsonl" "$WARMUP" "$RSS_SLACK" "$cache_mib" "${SEARCH_PID:+$WORK/search.jsonl}" <<'EOF'
import csv, json, sys
csv_path, load_path, warmup, slack, cache_mib = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
search_path = sys.argv[6]
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(csv_path))]
after = [r for r in rows if r["elapsed_s"] >= warmup]
if len(after) < 8:
    sys.exit(f"only {len(after)} samples after the warm-up: run longer")
mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
mib = lambda kib: kib / 1024
cap_kib = cache_mib * 1024
# The most the writer's page cache can hold at a sample: every page of the
# database (its newest pages may still be in the WAL), up to the cap. Each cached
# page costs more than its size: the anonymous RSS grew 1.19-1.25 MiB per MiB of
# cached database in the soaks of bench/RESULTS.md (SQLite's page headers, the
# allocator's rounding), hence 1.25, for a full cache as for a filling one.
for r in rows:
    r["cache"] = 1.25 * min(cap_kib, r["db_kib"] + r["wal_kib"])


def judge(rs, allow_cache):
    """Growth of the anonymous RSS from the first to the last quarter of rs, and
    what is allowed: the slack, plus the page cache's possible growth if asked."""
    q = max(len(rs) // 4, 1)
    first, last = rs[:q], rs[-q:]
    base, end = mean(first, "anon_kib"), mean(last, "anon_kib")
    cache_growth = max(mean(last, "cache") - mean(first, "cache"), 0.0) if allow_cache else 0.0
    return 100.0 * (end - base) / base, slack + 100.0 * cache_growth / base, base, end


growth, allowed, rss_first, rss_last = judge(after, True)
full = [r for r in after if cap_kib and r["db_kib"] + r["wal_kib"] >= cap_kib]
warm_fds = max(r["fds"] for r in rows if r["elapsed_s"] < warmup)
max_fds = max(r["fds"] for r in after)
counts = json.loads(open(load_path).read().strip().splitlines()[-1])
ok = sum(v["ok"] for k, v in counts.items() if k != "t")
bad = sum(v["bad"] for k, v in counts.items() if k != "t")
cpu = rows[-1]["cpu_s"] - rows[0]["cpu_s"]
print(f"samples: {len(rows)} ({len(after)} after the {warmup:.0f} s warm-up); load average (1 min) "
      f"{min(r['load1'] for r in rows):.1f}-{max(r['load1'] for r in rows):.1f}, mean {mean(rows, 'load1'):.1f}")
print(f"requests: {ok} ok, {bad} failed; per kind: " + ", ".join(f"{k} {v['ok']}/{v['ok'] + v['bad']}" for k, v in counts.items() if k != "t"))
print(f"anonymous RSS after warm-up: min {mib(min(r['anon_kib'] for r in after)):.1f} MiB, max {mib(max(r['anon_kib'] for r in after)):.1f} MiB; "
      f"first quarter {mib(rss_first):.1f} MiB, last quarter {mib(rss_last):.1f} MiB ({growth:+.1f} %, allowed {allowed:.1f} %: "
      f"{slack:.0f} % slack + the page cache's possible growth, cap {cache_mib:.0f} MiB)")
print(f"event database: {mib(after[0]['db_kib']):.1f} -> {mib(after[-1]['db_kib']):.1f} MiB after the warm-up "
      f"(WAL {mib(after[-1]['wal_kib']):.1f} MiB at the end)")
print(f"file-backed RSS (the mapped binary): {mib(after[0]['file_kib']):.1f} -> {mib(after[-1]['file_kib']):.1f} MiB; "
      f"total RSS last {mib(after[-1]['rss_kib']):.1f} MiB")
print(f"descriptors: warm-up max {warm_fds:.0f}, after max {max_fds:.0f}, last {after[-1]['fds']:.0f}; threads last {after[-1]['threads']:.0f}")
print(f"server CPU: {cpu:.1f} s over the soak ({1e6 * cpu / max(ok + bad, 1):.0f} µs per request)")
failed = []
if bad:
    failed.append(f"{bad} requests failed")
if search_path:
    lines = open(search_path).read().strip().splitlines()
    if not lines:
        sys.exit("soak FAILED: the searches reported nothing")
    s = json.loads(lines[-1])
    total = s["all"]
    print(f"searches: {s['rounds']} rounds, {total['ok']} ok, {total['bad']} failed; latency p50 {total['p50_ms']:.0f} ms, "
          f"p95 {total['p95_ms']:.0f} ms, p99 {total['p99_ms']:.0f} ms, max {total['max_ms']:.0f} ms")
    for k, v in s.items():
        if isinstance(v, dict) and k not in ("all", "tail"):
            print(f"  {k}: {v['ok']}/{v['ok'] + v['bad']} ok, p50 {v['p50_ms']:.0f} ms, p95 {v['p95_ms']:.0f} ms, max {v['max_ms']:.0f} ms")
    if "tail" in s:
        print(f"  tail: {s['tail']}")
    if total["bad"]:
        failed.append(f"{total['bad']} searches failed")
    if not total["ok"]:
        failed.append("no search succeeded")
if growth > allowed:
    failed.append(f"anonymous RSS grew {growth:.1f} % (> {allowed:.1f} %)")
if len(full) >= 8:
    g, a, b, e = judge(full, False)
    print(f"with the page cache full (database + WAL >= {cache_mib:.0f} MiB from {full[0]['elapsed_s']:.0f} s, {len(full)} samples): "
          f"{mib(b):.1f} -> {mib(e):.1f} MiB ({g:+.1f} %, allowed {a:.1f} %)")
    if g > a:
        failed.append(f"anonymous RSS grew {g:.1f} % with the page cache full (> {a:.1f} %)")
elif cap_kib:
    print(f"the page cache cannot be full yet: the database stayed below its {cache_mib:.0f} MiB cap "
          f"(fewer than 8 samples above it after the warm-up)")
# Each load worker holds at most one proxy connection (plus one being replaced).
if max_fds > warm_fds + 16:
    failed.append(f"descriptors rose from {warm_fds:.0f} to {max_fds:.0f}")
if failed:
    sys.exit("soak FAILED: " + "; ".join(failed))
print("soak passed: memory (beyond the page cache) and descriptors flat, no failed request" + (", no failed search" if search_path else ""))
EOF
