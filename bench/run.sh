#!/usr/bin/env bash
# Rampart benchmark: the same load through Squid, tinyproxy, mitmproxy, g3proxy,
# Rampart and directly, in one run, on loopback. See bench/README.md.
#
#   bench/run.sh [all|plain|connect|latency|rss|intercept]...
#   BENCH_QUICK=1 bench/run.sh          smoke test: 2 s loops, 1 run, 64 MiB object
#
# Environment:
#   BENCH_QUICK=1           short mode (seconds, not minutes)
#   BENCH_DURATION=SECS     length of each timed load loop (default 10; quick 2)
#   BENCH_RUNS=N            runs per figure, the median is reported (default 3; quick 1)
#   BENCH_BIG_SIZE=SIZE     size of the bulk object (default 1G; quick 64M)
#   BENCH_PEERS="..."       subset of: squid tinyproxy mitmproxy g3proxy rampart
#   G3PROXY_BIN, G3FCGEN_BIN  g3proxy and g3fcgen (default bench/.peers/g3/, made by
#                           bench/g3proxy-build.sh PATH-TO-G3-CHECKOUT)
#   BENCH_G3_LOG=0          leave out g3proxy's "everything logged" columns
#                           (g3proxy-log, g3proxy-mitm-log): only its `log: discard` ones
#   BENCH_PROXY_CPU=1       CPU the proxy under test is pinned to
#   BENCH_LOAD_CPU=0        CPU for the load generators and the origin
#   BENCH_TUNNELS=1000      idle CONNECT tunnels held for the RSS figure
#   RAMPART_BIN=PATH        default: target/release/rampart in the repository
#   BENCH_RAMPART_TOML=TEXT extra TOML appended to Rampart's config (all modes)
#   BENCH_RAMPART_MITM_TOML=TEXT extra TOML for Rampart's interception run
#   BENCH_RAMPART_PEEK=1    Rampart's plain run peeks at CONNECTs to the origin's
#                           HTTPS port and splices them as do-not-decrypt (the
#                           "peeking costs < 5 %" figure of issue 3)
#   BENCH_KEEP=1            keep the work directory (configs, logs) after the run
#   BENCH_LAT_WARMUP=SECS   latency runs: requests scheduled in the first SECS s are
#                           not counted in p99 (default 1; 0 counts the whole run)
#   BENCH_INTERCEPT="..."   the intercept scenario's measures, a subset of
#                           "keepalive new p99 bulk" (default all four)
#
# Output: progress on stderr, the Markdown table on stdout; raw figures and the
# table are also copied to bench/out/<timestamp>/.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_NAME=bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
export PATH="$HOME/.cargo/bin:$PATH"

# --- parameters --------------------------------------------------------------
QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DUR=${BENCH_DURATION:-2}
    RUNS=${BENCH_RUNS:-1}
    BIG_SIZE=${BENCH_BIG_SIZE:-64M}
else
    DUR=${BENCH_DURATION:-10}
    RUNS=${BENCH_RUNS:-3}
    BIG_SIZE=${BENCH_BIG_SIZE:-1G}
fi
CONNS=50
LAT_RATE=500
LAT_CONNS=10
# Latency runs count the requests scheduled after this warm-up (seconds), for
# every target alike: the first second holds oha's own start-up (its first
# request takes ~35 ms even direct) and the opening of the 10 connections (for
# an interceptor a CONNECT and two TLS handshakes each, ten at once on one CPU):
# 25-65 requests over 1 ms (most 5-12 ms) that would otherwise decide a 6-10 s run's p99 alone
# (3,000-5,000 requests: p99 is the 30th-50th slowest), so the figure would
# depend on the run's length. New-connection cost has its own figures
# (i_rps_new, i_new_cpu_us); the whole run's p99 is still recorded
# (p99_full_ms, i_p99_full_ms in results.tsv).
LAT_WARMUP=${BENCH_LAT_WARMUP:-1}
INTERCEPT_MEASURES=" ${BENCH_INTERCEPT:-keepalive new p99 bulk} "
TUNNELS=${BENCH_TUNNELS:-1000}
PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
PEERS=${BENCH_PEERS:-squid tinyproxy mitmproxy g3proxy rampart}
G3PROXY_BIN=${G3PROXY_BIN:-$BENCH_DIR/.peers/g3/g3proxy}
G3FCGEN_BIN=${G3FCGEN_BIN:-$BENCH_DIR/.peers/g3/g3fcgen}
G3_LOG=${BENCH_G3_LOG:-1}
RAMPART_BIN=${RAMPART_BIN:-$REPO_DIR/target/release/rampart}
SQUID_BIN=$(command -v squid || echo /usr/sbin/squid)
SQUID_SSL_DIR="$BENCH_DIR/.peers/squid-openssl"
SQUID_SSL_BIN="$SQUID_SSL_DIR/usr/sbin/squid"
MITMDUMP="$BENCH_DIR/.venv/bin/mitmdump"
# A single curl download is bounded too (a slow peer must not stall the run).
BIG_MAX_TIME=${BENCH_BIG_MAX_TIME:-120}

SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -eq 0 ]] && SCENARIOS=(all)
for s in "${SCENARIOS[@]}"; do
    case $s in
    all) SCENARIOS=(plain connect latency rss intercept) ;;
    plain | connect | latency | rss | intercept) ;;
    *)
        echo "unknown scenario '$s' (all, plain, connect, latency, rss, intercept)" >&2
        exit 2
        ;;
    esac
done

has_peer() { [[ " $PEERS " == *" $1 "* ]]; }

require_tools "run bench/setup.sh" wrk oha curl openssl nginx taskset python3 timeout setsid
(($(nproc) >= 2)) || log "warning: fewer than 2 CPUs; pinning cannot separate proxy and load"

# Each proxy holds two descriptors per tunnel; 1,000 tunnels need headroom.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/rampart-bench.XXXXXX)
# Squid drops privileges to the `proxy` user: it must reach its files.
chmod 755 "$WORK"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
STARTED_TARGETS=("direct")

# --- process bookkeeping --------------------------------------------------------
# Every daemon runs in its own session (setsid), so one signal to its process
# group reaches its helpers too; cleanup runs on exit, failure and Ctrl-C.
declare -a DAEMON_PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${DAEMON_PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${DAEMON_PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# spawn NAME CPU CMD... : start a daemon pinned to CPU, logs in $WORK/NAME.log
spawn() {
    local name=$1 cpu=$2
    shift 2
    # Append: a target started once per scenario keeps every start's log.
    setsid taskset -c "$cpu" "$@" >>"$WORK/$name.log" 2>&1 </dev/null &
    local pid=$!
    DAEMON_PIDS+=("$pid")
    LAST_PID=$pid
}

stop() {
    local pid=$1
    stop_daemon "$pid"
    local keep=() p
    for p in "${DAEMON_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    DAEMON_PIDS=("${keep[@]}")
}

record() { # scenario metric target run value [note]
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$RESULTS"
}

# --- origin: nginx, one worker, HTTP and HTTPS with a throwaway CA ---------------
setup_origin() {
    local d="$WORK/origin"
    mkdir -p "$d/www" "$d/tls" "$d/tmp"
    head -c 1024 /dev/urandom >"$d/www/1k"
    # Sparse: no disk or page-cache cost to speak of, nginx reads zeros.
    truncate -s "$BIG_SIZE" "$d/www/big"
    BIG_BYTES=$(stat -c %s "$d/www/big")

    local t="$d/tls"
    mkca "$t" ca "Rampart bench origin CA"
    # keyUsage as public CAs issue it: g3fcgen copies the origin certificate's
    # extensions into the leaf it mints ("mimic") and fails without one.
    mkleaf "$t" ca origin 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE'
    ORIGIN_CA="$t/ca.pem"
    # System roots plus the origin CA, for proxies that read SSL_CERT_FILE.
    cat /etc/ssl/certs/ca-certificates.crt "$ORIGIN_CA" >"$t/bundle.pem" 2>/dev/null ||
        cp "$ORIGIN_CA" "$t/bundle.pem"
    ORIGIN_BUNDLE="$t/bundle.pem"

    # A second throwaway CA that intercepting proxies sign their leaves with.
    mkca "$t" mitm-ca "Rampart bench interception CA"
    MITM_CA="$t/mitm-ca.pem"
    MITM_KEY="$t/mitm-ca.key"

    HTTP_PORT=$(free_port)
    HTTPS_PORT=$(free_port)
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench:10m;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        listen [::1]:$HTTP_PORT;
        listen 127.0.0.1:$HTTPS_PORT ssl;
        listen [::1]:$HTTPS_PORT ssl;
        server_name localhost;
        ssl_certificate $t/origin.pem;
        ssl_certificate_key $t/origin.key;
        root $d/www;
    }
}
EOF
    spawn origin "$LOAD_CPU" nginx -c "$d/nginx.conf" -p "$d"
    wait_port "$HTTP_PORT" "$LAST_PID" origin
    wait_port "$HTTPS_PORT" "$LAST_PID" origin
    # Plain HTTP goes to an IP literal (no resolver in the way); HTTPS uses a
    # name so that SNI is sent and interception can mint a leaf for it.
    URL_1K="http://127.0.0.1:$HTTP_PORT/1k"
    URL_S_1K="https://localhost:$HTTPS_PORT/1k"
    URL_S_BIG="https://localhost:$HTTPS_PORT/big"
    curl -sS --max-time 5 -o /dev/null "$URL_1K" || die "origin HTTP does not answer"
    curl -sS --max-time 5 --cacert "$ORIGIN_CA" -o /dev/null "$URL_S_1K" || die "origin HTTPS does not answer"
    log "origin: nginx http=$HTTP_PORT https=$HTTPS_PORT, big object $BIG_SIZE"

    # wrk sends origin-form requests to the host in its URL; a proxy needs the
    # absolute form, so the script rewrites the request line and Host.
    WRK_LUA="$WORK/absolute.lua"
    cat >"$WRK_LUA" <<EOF
wrk.method = "GET"
wrk.path = "$URL_1K"
wrk.headers["Host"] = "127.0.0.1:$HTTP_PORT"
EOF
}

# --- peers ------------------------------------------------------------------------
# start_TARGET sets PORT and PID of a fresh instance pinned to PROXY_CPU.

start_squid() { # squid | squid-bump
    local name=$1 bin=$SQUID_BIN
    local d="$WORK/$name"
    mkdir -p "$d"
    PORT=$(free_port)
    local port_line="http_port 127.0.0.1:$PORT"
    local bump=""
    if [[ $name == squid-bump ]]; then
        bin=$SQUID_SSL_BIN
        [[ -x $bin ]] || die "squid-openssl not unpacked: run bench/setup.sh"
        "$SQUID_SSL_DIR/usr/lib/squid/security_file_certgen" -c -s "$d/ssl_db" -M 16MB >/dev/null
        cat "$MITM_CA" "$MITM_KEY" >"$d/ca.pem"
        port_line="http_port 127.0.0.1:$PORT ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert=$d/ca.pem"
        bump="sslcrtd_program $SQUID_SSL_DIR/usr/lib/squid/security_file_certgen -s $d/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile=$ORIGIN_CA"
    fi
    cat >"$d/squid.conf" <<EOF
$port_line
workers 1
cache deny all
cache_mem 0 MB
acl localnet src 127.0.0.1/32 ::1
http_access allow localnet
http_access deny all
$bump
access_log stdio:$d/access.log
cache_log $d/cache.log
pid_filename $d/squid.pid
coredump_dir $d
max_filedescriptors 65536
shutdown_lifetime 0 seconds
visible_hostname rampart-bench
# No ICMP probes (netdb) and no helpers the benchmark does not need.
pinger_enable off
# Names come from /etc/hosts; never ask a resolver off this machine.
dns_nameservers 127.0.0.1
EOF
    chown -R proxy:proxy "$d" 2>/dev/null || chmod -R a+rwX "$d"
    spawn "$name" "$PROXY_CPU" "$bin" -N -f "$d/squid.conf"
    PID=$LAST_PID
    wait_port "$PORT" "$PID" "$name"
}

start_tinyproxy() {
    local d="$WORK/tinyproxy"
    mkdir -p "$d"
    PORT=$(free_port)
    # No ConnectPort line: CONNECT to every port (the origin listens on a high one).
    cat >"$d/tinyproxy.conf" <<EOF
Port $PORT
Listen 127.0.0.1
Timeout 600
MaxClients 4096
Allow 127.0.0.1
LogFile "$d/tinyproxy.log"
LogLevel Info
PidFile "$d/tinyproxy.pid"
EOF
    chmod -R a+rwX "$d"
    spawn tinyproxy "$PROXY_CPU" tinyproxy -d -c "$d/tinyproxy.conf"
    PID=$LAST_PID
    wait_port "$PORT" "$PID" tinyproxy
}

start_mitmproxy() { # mitmproxy (HTTP proxy, tunnels CONNECT) | mitmproxy-mitm (intercepts)
    local name=$1
    local d="$WORK/$name"
    mkdir -p "$d/conf"
    [[ -x $MITMDUMP ]] || die "mitmproxy not installed: run bench/setup.sh"
    PORT=$(free_port)
    local args=(--listen-host 127.0.0.1 --listen-port "$PORT" --set "confdir=$d/conf"
        --set stream_large_bodies=1m --set "ssl_verify_upstream_trusted_ca=$ORIGIN_CA")
    if [[ $name == mitmproxy ]]; then
        # Plain HTTP is proxied request by request; CONNECT tunnels pass untouched.
        args+=(--ignore-hosts '.*')
    else
        cat "$MITM_KEY" "$MITM_CA" >"$d/conf/mitmproxy-ca.pem"
    fi
    spawn "$name" "$PROXY_CPU" "$MITMDUMP" "${args[@]}"
    PID=$LAST_PID
    wait_port "$PORT" "$PID" "$name"
}

# g3proxy (bytedance/g3), built by bench/g3proxy-build.sh. One tokio worker
# thread (`runtime.thread_number: 1`), pinned like every proxy here.
#   g3proxy            forward proxy, `log: discard` (logs nothing)
#   g3proxy-log        the same with every log to a file: `log: stdout` sends its
#                      task logs (one per HTTP request / CONNECT tunnel), escape
#                      and resolve logs to standard output, which this script
#                      points at $WORK/NAME/access.log (g3proxy has no file log
#                      driver; its drivers are discard, stdout, journal, syslog,
#                      fluentd). An intercepting g3proxy logs each intercepted
#                      request through its audit ("intercept") logger, which
#                      follows the same default.
#   g3proxy-mitm       TLS interception: an auditor with protocol inspection and
#                      g3fcgen as its certificate generator; g3fcgen mints a leaf
#                      that copies the origin's certificate (which therefore
#                      carries keyUsage, see setup_origin), signed by the bench's
#                      interception CA. Origin verified against the origin CA.
#   g3proxy-mitm-log   the same, everything logged as in g3proxy-log.
start_g3proxy() {
    local name=$1
    local d="$WORK/$name"
    mkdir -p "$d/ctl"
    [[ -x $G3PROXY_BIN ]] || die "no g3proxy at $G3PROXY_BIN: run bench/g3proxy-build.sh PATH-TO-G3-CHECKOUT"
    PORT=$(free_port)
    local log_driver=discard stdout_to=""
    if [[ $name == *-log ]]; then
        log_driver=stdout
        stdout_to=">>\"$d/access.log\""
    fi
    local auditor="" auditor_ref="" fcgen="" udp=""
    if [[ $name == g3proxy-mitm* ]]; then
        [[ -x $G3FCGEN_BIN ]] || die "no g3fcgen at $G3FCGEN_BIN: run bench/g3proxy-build.sh PATH-TO-G3-CHECKOUT"
        # g3fcgen's UDP port is a command-line default (127.0.0.1:2999) or
        # UDP_LISTEN_ADDR; a free port keeps two runs (or a test) apart.
        udp=$(free_udp_port)
        cat >"$d/g3fcgen.yaml" <<EOF
---
backend:
  ca_certificate: $MITM_CA
  ca_private_key: $MITM_KEY
EOF
        auditor="auditor:
  - name: bench
    protocol_inspection: {}
    tls_cert_generator:
      query_peer_addr: 127.0.0.1:$udp
    tls_interception_client:
      ca_certificate: $ORIGIN_CA
"
        auditor_ref="    auditor: bench"
        # Started by the launcher, so after its exec g3fcgen is g3proxy's
        # child: cputime.py's process tree and the group kill cover both (as
        # Squid's certificate helpers are covered).
        fcgen="UDP_LISTEN_ADDR=127.0.0.1:$udp \"$G3FCGEN_BIN\" -c \"$d/g3fcgen.yaml\" &"
    fi
    cat >"$d/g3proxy.yaml" <<EOF
---
runtime:
  thread_number: 1

log: $log_driver

# Names never go to a DNS server: the escaper maps the origin's name itself.
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
    # The origin is on loopback, which g3proxy refuses by default.
    egress_network_filter:
      default: allow
      allow:
        - 127.0.0.0/8
        - ::1/128

$auditor
server:
  - name: bench
    type: http_proxy
    escaper: direct
$auditor_ref
    listen:
      address: 127.0.0.1:$PORT
EOF
    cat >"$d/launch.sh" <<EOF
#!/usr/bin/env bash
$fcgen
exec "$G3PROXY_BIN" -c "$d/g3proxy.yaml" -C "$d/ctl" -G "$name" $stdout_to
EOF
    spawn "$name" "$PROXY_CPU" bash "$d/launch.sh"
    PID=$LAST_PID
    wait_port "$PORT" "$PID" "$name"
    if [[ -n $udp ]]; then
        for _ in $(seq 100); do
            ss -Hlun "src 127.0.0.1:$udp" | grep -q . && return 0
            sleep 0.1
        done
        die "g3fcgen did not listen on UDP $udp (log: $WORK/$name.log)"
    fi
}

start_rampart() { # rampart | rampart-mitm
    local name=$1
    local d="$WORK/$name"
    mkdir -p "$d/data"
    [[ -x $RAMPART_BIN ]] || die "no Rampart binary at $RAMPART_BIN"
    PORT=$(free_port)
    local api
    api=$(free_port)
    API_PORT[$name]=$api
    local extra=${BENCH_RAMPART_TOML:-}
    # Interception applies to CONNECTs to [proxy] tls_ports only: the plain run
    # keeps the default [443] (the origin's ephemeral port is spliced, as a
    # tunnel); the interception run adds the origin's HTTPS port, trusts the
    # origin CA through [tls] extra_roots, and signs its leaves with the same
    # throwaway interception CA as the peers (imported into its data dir).
    local tls_ports="[443]" tls_section=""
    if [[ $name == rampart && ${BENCH_RAMPART_PEEK:-0} == 1 ]]; then
        # The origin's port is a TLS port, so every CONNECT to it has its ClientHello
        # peeked, and its name is on the do-not-decrypt list, so it is then spliced.
        tls_ports="[443, $HTTPS_PORT]"
        tls_section="[tls]
do_not_decrypt = [\"localhost\", \"127.0.0.1\"]"
    fi
    if [[ $name == rampart-mitm ]]; then
        tls_ports="[443, $HTTPS_PORT]"
        tls_section="[tls]
extra_roots = [\"$ORIGIN_CA\"]"
        "$RAMPART_BIN" ca init --data-dir "$d/data" --force \
            --import-cert "$MITM_CA" --import-key "$MITM_KEY" >"$d/ca-init.log" 2>&1 ||
            die "rampart ca init --import-cert failed: $(cat "$d/ca-init.log")"
        extra+=$'\n'"${BENCH_RAMPART_MITM_TOML:-}"
        # Extra TOML with its own [tls] table gets the roots key inside it
        # (a second [tls] header would be a TOML error).
        if grep -qx '\[tls\]' <<<"$extra"; then
            extra=$(awk -v roots="extra_roots = [\"$ORIGIN_CA\"]" \
                '!done && $0 == "[tls]" { print; print roots; done = 1; next } { print }' <<<"$extra")
            tls_section=""
        fi
    fi
    # Top-level keys first: extra TOML may open its own tables.
    cat >"$d/rampart.toml" <<EOF
data_dir = "$d/data"

[proxy]
listen = "127.0.0.1:$PORT"
connect_ports = ["443", "1025-65535"]
tls_ports = $tls_ports
allow_loopback_destinations = true

[api]
listen = "127.0.0.1:$api"

[tunnel]
listen = "127.0.0.1:$(free_port)"

[access_log]
enabled = true

$tls_section

$extra
EOF
    spawn "$name" "$PROXY_CPU" "$RAMPART_BIN" server --config "$d/rampart.toml"
    PID=$LAST_PID
    wait_port "$PORT" "$PID" "$name"
    for _ in $(seq 100); do
        curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$api/healthz" && return 0
        sleep 0.1
    done
    log "warning: $name /healthz did not answer 200; measuring anyway"
}

start_target() { # TARGET -> PORT, PID
    case $1 in
    squid | squid-bump) start_squid "$1" ;;
    tinyproxy) start_tinyproxy ;;
    mitmproxy | mitmproxy-mitm) start_mitmproxy "$1" ;;
    rampart | rampart-mitm) start_rampart "$1" ;;
    g3proxy | g3proxy-log | g3proxy-mitm | g3proxy-mitm-log) start_g3proxy "$1" ;;
    *) die "unknown target $1" ;;
    esac
    [[ " ${STARTED_TARGETS[*]} " == *" $1 "* ]] || STARTED_TARGETS+=("$1")
}

# Targets for a scenario, in column order; Rampart only when it is built.
targets_for() { # plain|intercept
    local list=()
    if [[ $1 == intercept ]]; then
        has_peer squid && list+=(squid-bump)
        has_peer mitmproxy && list+=(mitmproxy-mitm)
        if has_peer g3proxy && [[ -x $G3PROXY_BIN ]]; then
            list+=(g3proxy-mitm)
            [[ $G3_LOG == 1 ]] && list+=(g3proxy-mitm-log)
        fi
        has_peer rampart && [[ -x $RAMPART_BIN ]] && list+=(rampart-mitm)
    else
        local p
        for p in squid tinyproxy mitmproxy; do has_peer "$p" && list+=("$p"); done
        if has_peer g3proxy && [[ -x $G3PROXY_BIN ]]; then
            list+=(g3proxy)
            [[ $G3_LOG == 1 ]] && list+=(g3proxy-log)
        fi
        has_peer rampart && [[ -x $RAMPART_BIN ]] && list+=(rampart)
    fi
    echo "${list[@]}"
}

# Start every target of a scenario; fills PORTS[target] and PIDS[target].
declare -A PORTS=() PIDS=() API_PORT=()
start_all() {
    local t
    PORTS=() PIDS=()
    for t in "$@"; do
        start_target "$t"
        PORTS[$t]=$PORT
        PIDS[$t]=$PID
    done
}
stop_all() {
    local t
    for t in "${!PIDS[@]}"; do
        # Rampart's counters (connections, rejections, errors) explain failures.
        if [[ -n ${API_PORT[$t]:-} ]]; then
            curl -s --max-time 3 "http://127.0.0.1:${API_PORT[$t]}/metrics" >>"$WORK/$t.metrics" 2>/dev/null || true
        fi
        stop "${PIDS[$t]}"
    done
    PORTS=() PIDS=()
}

# A proxied request that must work before a target is measured.
check_target() { # target url [insecure]
    local t=$1 url=$2 opts=(-sS --max-time 10 -o /dev/null -w '%{http_code}')
    [[ $t == direct ]] || opts+=(-x "http://127.0.0.1:${PORTS[$t]}")
    [[ $url == https* ]] && opts+=(-k)
    local code
    code=$(curl "${opts[@]}" "$url" 2>&1) || true
    [[ $code == 200 ]]
}

# --- measurements ------------------------------------------------------------------
load() { taskset -c "$LOAD_CPU" timeout -k 5 "$@"; }

# CPU seconds used so far by a target's process tree (0 for direct).
target_cpu() {
    if [[ $1 == direct ]]; then
        echo 0
    else
        python3 "$BENCH_DIR/cputime.py" "${PIDS[$1]}"
    fi
}

# record_cpu scenario metric target run cpu_before cpu_after divisor scale
# records (after - before) * scale / divisor, e.g. CPU µs per request.
record_cpu() {
    [[ $3 == direct ]] && return 0
    local v
    v=$(python3 -c "import sys; a,b,d,k=map(float,sys.argv[1:]); print(round((b-a)*k/d, 2) if d > 0 else 'fail')" \
        "$5" "$6" "${7:-0}" "$8" 2>/dev/null) || v=fail
    record "$1" "$2" "$3" "$4" "$v"
}

measure_wrk() { # target -> VAL (req/s), NOTE
    local t=$1 out
    if [[ $t == direct ]]; then
        out=$(load $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" "$URL_1K" 2>&1) || true
    else
        out=$(load $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$WRK_LUA" \
            "http://127.0.0.1:${PORTS[$t]}/" 2>&1) || true
    fi
    local rps non2xx errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    WRK_COUNT=$(awk '/requests in/ {print $1; exit}' <<<"$out")
    WRK_COUNT=${WRK_COUNT:-0}
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    errs=$(awk '/Socket errors:/ {print}' <<<"$out")
    NOTE=""
    [[ -n $non2xx ]] && NOTE+="non-2xx=$non2xx "
    [[ -n $errs ]] && NOTE+="${errs# } "
    if [[ -z $rps ]]; then
        NOTE+="wrk: $(tail -n 2 <<<"$out" | tr '\n' ' ')"
        VAL=fail
    else
        VAL=$rps
    fi
}

# oha JSON summary: successful req/s, p99 (ms), error count.
oha_json() { # json-file -> "rps p99ms errors status_ok"
    python3 - "$1" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("fail fail 0 0 0 " + type(e).__name__)
    sys.exit()
s = d.get("summary", {})
p = d.get("latencyPercentiles", {})
codes = d.get("statusCodeDistribution", {}) or {}
ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
total = sum(codes.values())
# oha cuts in-flight requests when -z runs out; those are not failures.
errs = sum(v for k, v in (d.get("errorDistribution") or {}).items()
           if "deadline" not in k)
elapsed = s.get("total")
# Only 2xx answers count as served requests.
rps = ok / elapsed if elapsed else None
p99 = p.get("p99")
print(f"{rps if rps is not None else 'fail'} {p99 * 1000 if p99 is not None else 'fail'} {errs} {total - ok} {ok}")
EOF
}

# p99 (ms) of the requests in oha's database scheduled at least WARMUP s after
# the first one; latency from the scheduled start (coordinated-omission
# corrected), the percentile picked as oha picks it.
oha_db_p99() { # db-file warmup-seconds -> "p99ms count" or "fail 0"
    python3 - "$1" "$2" <<'EOF'
import sqlite3, sys
try:
    rows = sqlite3.connect(sys.argv[1]).execute(
        "SELECT COALESCE(start_latency_correction, start), end FROM oha").fetchall()
except Exception:
    rows = []
first = min((r[0] for r in rows), default=0)
lat = sorted(end - start for start, end in rows if start - first >= float(sys.argv[2]))
if not lat:
    print("fail 0")
else:
    print(f"{lat[min(int(len(lat) * 0.99), len(lat) - 1)] * 1000} {len(lat)}")
EOF
}

run_oha() { # target url extra-args... -> sets OHA_RPS OHA_P99 OHA_P99_FULL NOTE
    local t=$1 url=$2
    shift 2
    local args=(--no-tui --output-format json -o "$WORK/oha.json" --insecure)
    [[ $t == direct ]] || args+=(-x "http://127.0.0.1:${PORTS[$t]}")
    # Latency runs keep every request (oha writes them after the run) for the
    # warm-up cut, see LAT_WARMUP.
    local latency_run=0
    [[ " $* " == *" --latency-correction "* ]] && latency_run=1
    ((latency_run)) && args+=(--db-url "$WORK/oha.db")
    rm -f "$WORK/oha.json" "$WORK/oha.db"
    load $((DUR + 30)) oha "${args[@]}" -z "${DUR}s" "$@" "$url" >"$WORK/oha.out" 2>&1 || true
    local rps p99 errs bad ok
    read -r rps p99 errs bad ok _ <<<"$(oha_json "$WORK/oha.json")"
    OHA_RPS=$rps
    OHA_OK=$ok
    OHA_P99=$p99
    OHA_P99_FULL=$p99
    if ((latency_run)) && [[ $rps != fail ]]; then
        read -r OHA_P99 _ <<<"$(oha_db_p99 "$WORK/oha.db" "$LAT_WARMUP")"
        # Every request's times, for a look at where the slow ones fall.
        [[ ${BENCH_KEEP:-0} == 1 ]] && cp "$WORK/oha.db" "$WORK/latency-$t-$(date +%H%M%S).db"
    fi
    NOTE=""
    [[ $errs != 0 ]] && NOTE+="errors=$errs "
    [[ $bad != 0 ]] && NOTE+="non-2xx=$bad "
    [[ $rps == fail ]] && NOTE+="oha: $(tail -n 2 "$WORK/oha.out" | tr '\n' ' ')"
    return 0
}

measure_big() { # target -> VAL (MB/s), NOTE
    local t=$1 opts=(-sS -k --max-time "$BIG_MAX_TIME" -o /dev/null -w '%{speed_download} %{size_download} %{http_code}')
    [[ $t == direct ]] || opts+=(-x "http://127.0.0.1:${PORTS[$t]}")
    local out speed size code
    out=$(load $((BIG_MAX_TIME + 10)) curl "${opts[@]}" "$URL_S_BIG" 2>"$WORK/curl.err") || true
    read -r speed size code <<<"$out"
    BIG_GOT=${size:-0}
    NOTE=""
    if [[ -z $speed || $code != 200 ]]; then
        NOTE="curl: code=${code:-none} $(head -c 200 "$WORK/curl.err" | tr '\n' ' ')"
        VAL=fail
        return
    fi
    [[ $size != "$BIG_BYTES" ]] && NOTE="incomplete: $size of $BIG_BYTES bytes"
    VAL=$(python3 -c "print(round($speed / 1e6, 1))")
}

# Runs RUNS rounds; each round visits every target once (interleaved, so a
# transient load on the machine does not land on one column only).
scenario_plain() {
    local targets
    read -r -a targets <<<"$(targets_for plain)"
    start_all "${targets[@]}"
    local r t v c0 c1
    for r in $(seq "$RUNS"); do
        for t in direct "${targets[@]}"; do
            if ! check_target "$t" "$URL_1K"; then
                log "plain    run $r $t: check request through the proxy failed"
                record plain plain_rps "$t" "$r" fail "check request failed"
                continue
            fi
            c0=$(target_cpu "$t")
            measure_wrk "$t"
            c1=$(target_cpu "$t")
            v=$VAL
            record plain plain_rps "$t" "$r" "$v" "$NOTE"
            record_cpu plain plain_cpu_us "$t" "$r" "$c0" "$c1" "$WRK_COUNT" 1e6
            log "plain    run $r $t: $v req/s $NOTE"
        done
    done
    stop_all
}

scenario_connect() {
    local targets
    read -r -a targets <<<"$(targets_for plain)"
    start_all "${targets[@]}"
    local r t v c0 c1
    local -A tunnel_note=()
    for t in "${targets[@]}"; do
        # This scenario measures plain tunnels: a proxy that decrypts here
        # (Rampart decrypts by default) needs BENCH_RAMPART_TOML to say otherwise.
        if intercepts "$t"; then
            log "warning: $t intercepts CONNECT to the origin; its tunnel figures measure interception"
            tunnel_note[$t]="intercepted, not a plain tunnel"
        fi
    done
    for r in $(seq "$RUNS"); do
        for t in direct "${targets[@]}"; do
            if ! check_target "$t" "$URL_S_1K"; then
                log "connect  run $r $t: check request through the proxy failed"
                record connect https_rps "$t" "$r" fail "check request failed"
                record connect big_mbps "$t" "$r" fail "check request failed"
                continue
            fi
            c0=$(target_cpu "$t")
            run_oha "$t" "$URL_S_1K" -c "$CONNS"
            c1=$(target_cpu "$t")
            NOTE+=${tunnel_note[$t]:-}
            record connect https_rps "$t" "$r" "$OHA_RPS" "$NOTE"
            record_cpu connect https_cpu_us "$t" "$r" "$c0" "$c1" "$OHA_OK" 1e6
            log "connect  run $r $t: $OHA_RPS req/s $NOTE"
            c0=$(target_cpu "$t")
            measure_big "$t"
            c1=$(target_cpu "$t")
            v=$VAL
            record connect big_mbps "$t" "$r" "$v" "$NOTE"
            record_cpu connect big_cpu_s_gb "$t" "$r" "$c0" "$c1" "$BIG_GOT" 1e9
            log "bulk     run $r $t: $v MB/s $NOTE"
        done
    done
    stop_all
}

scenario_latency() {
    local targets
    read -r -a targets <<<"$(targets_for plain)"
    start_all "${targets[@]}"
    local r t
    for r in $(seq "$RUNS"); do
        for t in direct "${targets[@]}"; do
            if ! check_target "$t" "$URL_1K"; then
                log "latency  run $r $t: check request through the proxy failed"
                record latency p99_ms "$t" "$r" fail "check request failed"
                continue
            fi
            run_oha "$t" "$URL_1K" -c "$LAT_CONNS" -q "$LAT_RATE" --latency-correction
            record latency p99_ms "$t" "$r" "$OHA_P99" "$NOTE"
            record latency p99_full_ms "$t" "$r" "$OHA_P99_FULL" "$NOTE"
            log "latency  run $r $t: p99 $OHA_P99 ms after ${LAT_WARMUP} s warm-up (whole run $OHA_P99_FULL ms) $NOTE"
        done
    done
    stop_all
}

scenario_rss() {
    local targets
    read -r -a targets <<<"$(targets_for plain)"
    local r t out
    for r in $(seq "$RUNS"); do
        for t in "${targets[@]}"; do
            # A fresh process each time: "at rest" means started, ready, idle.
            start_all "$t"
            sleep 1
            out=$(load 120 python3 "$BENCH_DIR/tunnels.py" --proxy "127.0.0.1:${PORTS[$t]}" \
                --target "localhost:$HTTPS_PORT" --pid "${PIDS[$t]}" --count "$TUNNELS" \
                --deadline 100 2>&1) || true
            stop_all
            local rest per ok failed note
            read -r rest per ok failed note <<<"$(python3 -c '
import json, sys
try:
    d = json.loads(sys.argv[1].strip().splitlines()[-1])
except Exception:
    print("fail fail 0 0 unreadable"); sys.exit()
rest = d.get("rest_kib"); per = d.get("per_tunnel_kib")
note = d.get("first_error", d.get("error", "")).replace(" ", "_")[:80]
print(round(rest / 1024, 2) if rest else "fail", per if per is not None else "fail",
      d.get("ok", 0), d.get("failed", 0), note)' "$out")"
            record rss rss_rest_mib "$t" "$r" "$rest"
            local n=""
            [[ $failed != 0 ]] && n="only $ok of $TUNNELS tunnels opened (${note:-})"
            record rss rss_tunnel_kib "$t" "$r" "$per" "$n"
            log "rss      run $r $t: rest ${rest} MiB, ${per} KiB/tunnel, $ok ok $failed failed"
        done
    done
}

# Does this proxy show a certificate that is not the origin's? (interception on)
intercepts() { # target
    local issuer
    issuer=$(timeout 10 openssl s_client -proxy "127.0.0.1:${PORTS[$1]}" \
        -connect "localhost:$HTTPS_PORT" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -issuer 2>/dev/null) || true
    [[ -n $issuer && $issuer != *"Rampart bench origin CA"* ]]
}

scenario_intercept() {
    local targets
    read -r -a targets <<<"$(targets_for intercept)"
    start_all "${targets[@]}"
    local active=(direct) t
    for t in "${targets[@]}"; do
        if intercepts "$t"; then
            active+=("$t")
        else
            log "intercept: $t does not intercept TLS (yet); no figures for it"
            local m
            for m in i_rps_ka i_rps_new i_big_mbps i_p99_ms; do
                record intercept "$m" "$t" 1 fail "does not intercept: origin certificate passed through"
            done
        fi
    done
    local r v c0 c1
    for r in $(seq "$RUNS"); do
        for t in "${active[@]}"; do
            if ! check_target "$t" "$URL_S_1K"; then
                log "intercept run $r $t: check request through the proxy failed"
                record intercept i_rps_ka "$t" "$r" fail "check request failed"
                continue
            fi
            if [[ $INTERCEPT_MEASURES == *" keepalive "* ]]; then
                c0=$(target_cpu "$t")
                run_oha "$t" "$URL_S_1K" -c "$CONNS"
                c1=$(target_cpu "$t")
                record intercept i_rps_ka "$t" "$r" "$OHA_RPS" "$NOTE"
                record_cpu intercept i_ka_cpu_us "$t" "$r" "$c0" "$c1" "$OHA_OK" 1e6
                log "i-keep   run $r $t: $OHA_RPS req/s $NOTE"
            fi
            if [[ $INTERCEPT_MEASURES == *" new "* ]]; then
                c0=$(target_cpu "$t")
                run_oha "$t" "$URL_S_1K" -c "$CONNS" --disable-keepalive
                c1=$(target_cpu "$t")
                record intercept i_rps_new "$t" "$r" "$OHA_RPS" "$NOTE"
                record_cpu intercept i_new_cpu_us "$t" "$r" "$c0" "$c1" "$OHA_OK" 1e6
                log "i-new    run $r $t: $OHA_RPS req/s $NOTE"
            fi
            if [[ $INTERCEPT_MEASURES == *" p99 "* ]]; then
                run_oha "$t" "$URL_S_1K" -c "$LAT_CONNS" -q "$LAT_RATE" --latency-correction
                record intercept i_p99_ms "$t" "$r" "$OHA_P99" "$NOTE"
                record intercept i_p99_full_ms "$t" "$r" "$OHA_P99_FULL" "$NOTE"
                log "i-p99    run $r $t: $OHA_P99 ms after ${LAT_WARMUP} s warm-up (whole run $OHA_P99_FULL ms) $NOTE"
            fi
            if [[ $INTERCEPT_MEASURES == *" bulk "* ]]; then
                c0=$(target_cpu "$t")
                measure_big "$t"
                c1=$(target_cpu "$t")
                v=$VAL
                record intercept i_big_mbps "$t" "$r" "$v" "$NOTE"
                record_cpu intercept i_big_cpu_s_gb "$t" "$r" "$c0" "$c1" "$BIG_GOT" 1e9
                log "i-bulk   run $r $t: $v MB/s $NOTE"
            fi
        done
    done
    stop_all
}

# --- main ----------------------------------------------------------------------------
log "work dir $WORK; scenarios: ${SCENARIOS[*]}; ${RUNS} run(s) of ${DUR}s; peers: $PEERS"
if has_peer rampart && [[ ! -x $RAMPART_BIN ]]; then
    log "Rampart binary not found at $RAMPART_BIN: its column will read 'pending'"
fi
if has_peer g3proxy && [[ ! -x $G3PROXY_BIN ]]; then
    log "g3proxy not found at $G3PROXY_BIN (bench/g3proxy-build.sh PATH-TO-G3-CHECKOUT builds it): no g3proxy columns"
fi
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_TS=$(date +%s)
setup_origin
for s in "${SCENARIOS[@]}"; do
    log "scenario $s"
    "scenario_$s"
done
ELAPSED=$(($(date +%s) - START_TS))

OUT_DIR="$BENCH_DIR/out/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT_DIR"
cp "$RESULTS" "$OUT_DIR/results.tsv"
ran=("${STARTED_TARGETS[@]}")
{
    echo "## Rampart benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`$(for v in BENCH_QUICK BENCH_DURATION BENCH_RUNS BENCH_BIG_SIZE BENCH_PEERS BENCH_G3_LOG BENCH_RAMPART_TOML BENCH_INTERCEPT; do [[ -n ${!v:-} ]] && printf '%s=%q ' "$v" "${!v}"; done)bench/run.sh ${*:-all}\`"
    echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
    echo "- load average at start: $LOADAVG_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- ${RUNS} run(s) of ${DUR} s per figure (median), big object $BIG_SIZE, proxy on CPU $PROXY_CPU, load and origin on CPU $LOAD_CPU; took ${ELAPSED} s"
    echo "- versions: squid $("$SQUID_BIN" -v | head -n1 | awk '{print $4}'), tinyproxy $(tinyproxy -v 2>&1 | awk '{print $2}'), mitmproxy $("$MITMDUMP" --version 2>/dev/null | awk '/Mitmproxy:/ {print $2}'), g3proxy $("$G3PROXY_BIN" -V 2>/dev/null | awk '{print $2; exit}') (g3fcgen $("$G3FCGEN_BIN" -V 2>/dev/null | awk '{print $2; exit}')), nginx $(nginx -v 2>&1 | cut -d/ -f2), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk", $2}'), $(oha --version), rampart $([[ -x $RAMPART_BIN ]] && echo "binary built $(date -u -r "$RAMPART_BIN" '+%Y-%m-%d %H:%M UTC') (HEAD $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null))" || echo pending)"
    echo
    python3 "$BENCH_DIR/report.py" "$RESULTS" "${ran[@]}"
} | tee "$OUT_DIR/table.md"
log "raw figures and table in $OUT_DIR"
