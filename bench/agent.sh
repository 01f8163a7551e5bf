#!/usr/bin/env bash
# Issue 6 performance figures, side by side in one run:
#   direct               client → origin
#   gateway              client → gateway proxy (CONNECT, spliced) → origin
#   agent                client → agent local proxy → mTLS HTTP/2 tunnel → gateway → origin
# 1. added latency of a steered, non-decrypted flow: p99 of a new HTTPS connection per
#    request, agent minus gateway (target ≤ 1 ms);
# 2. throughput of one bulk flow: agent / direct (target ≥ 0.7);
# 3. agent RSS with 1,000 concurrent steered flows (target ≤ 30 MiB).
#
# Builds nothing: run `cargo build --release -p rampart-cli` first (or set RAMPART_BIN).
# Needs curl, nginx, openssl, python3. No root: everything runs on 127.0.0.1.
# See bench/README.md ("Agent (issue 6)") for the method and why loopback.
#
# BENCH_LINK=RATE (e.g. 1gbit; needs root, ip and tc) measures across a network link
# instead: the endpoint (curl, the agent) runs in a network namespace of its own and the
# network side (origin, gateway) in another, joined by a veth pair shaped to RATE each
# way (tbf), as when the gateway and the origin are other machines on a LAN. Every path
# crosses the same link. Latency samples default to 300 per path in this mode.
#
# Knobs: BENCH_QUICK=1 (smoke run: 300 samples, 256 MiB, 1 bulk run), BENCH_SAMPLES
# (latency requests per path, 2000), BENCH_BIG_SIZE (1G), BENCH_RUNS (bulk runs per path,
# best counts, 3), BENCH_FLOWS (1000), RAMPART_BIN, GATEWAY_BIN and AGENT_BIN (each defaults to
# RAMPART_BIN), BENCH_GATEWAY_TOML and BENCH_AGENT_TOML (extra TOML appended to the gateway's
# and the agent's configuration), BENCH_KEEP=1 (keep
# the work directory), BENCH_LINK (above).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RAMPART_BIN=${RAMPART_BIN:-$REPO_DIR/target/release/rampart}
# A/B comparisons: run the gateway or the agent from another build (default RAMPART_BIN).
GATEWAY_BIN=${GATEWAY_BIN:-$RAMPART_BIN}
AGENT_BIN=${AGENT_BIN:-$RAMPART_BIN}
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    SAMPLES=${BENCH_SAMPLES:-300}
    BIG_SIZE=${BENCH_BIG_SIZE:-256M}
    RUNS=${BENCH_RUNS:-1}
elif [[ -n ${BENCH_LINK:-} ]]; then
    SAMPLES=${BENCH_SAMPLES:-300}
    BIG_SIZE=${BENCH_BIG_SIZE:-1G}
    RUNS=${BENCH_RUNS:-3}
else
    SAMPLES=${BENCH_SAMPLES:-2000}
    BIG_SIZE=${BENCH_BIG_SIZE:-1G}
    RUNS=${BENCH_RUNS:-3}
fi
FLOWS=${BENCH_FLOWS:-1000}
ROUNDS=5 # latency samples are taken in interleaved rounds, so load spikes hit every path

BENCH_NAME=agent-bench
# shellcheck source=bench/lib.sh
source "$REPO_DIR/bench/lib.sh"

require_tools "bench/setup.sh installs it" curl nginx openssl python3
for bin in "$RAMPART_BIN" "$GATEWAY_BIN" "$AGENT_BIN"; do
    [[ -x $bin ]] || die "$bin missing: run cargo build --release -p rampart-cli"
done

WORK=$(mktemp -d /tmp/rampart-agent-bench.XXXXXX)
# nginx workers run as an unprivileged user when started by root: they must read www/.
chmod 755 "$WORK"
PIDS=()
NAMESPACES=()
cleanup() {
    # Only what this script started, by pid.
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    # Deleting a namespace deletes its end of the veth pair, and so the pair.
    for ns in "${NAMESPACES[@]}"; do
        ip netns delete "$ns" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# 1,000 flows need ~2,000 descriptors in the gateway and in the agent.
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

# --- where each side runs ---------------------------------------------------------
# EP prefixes commands of the endpoint (curl, the agent), NET those of the network side
# (origin, gateway); SERVER_ADDR is where the network side listens. On loopback both
# prefixes are empty and everything listens on 127.0.0.1.
EP=()
NET=()
SERVER_ADDR=127.0.0.1
PROXY_CLIENTS="" # loopback-only listeners need no client allowlist
LINK_NOTE="loopback (no link)"
if [[ -n ${BENCH_LINK:-} ]]; then
    LINK_RATE=$BENCH_LINK
    [[ $(id -u) == 0 ]] || die "BENCH_LINK needs root (network namespaces)"
    for tool in ip tc; do
        command -v "$tool" >/dev/null || die "$tool is not installed (BENCH_LINK needs it)"
    done
    NS_EP=rampart-bench-ep-$$
    NS_NET=rampart-bench-net-$$
    ip netns add "$NS_EP" || die "cannot create network namespace $NS_EP"
    NAMESPACES+=("$NS_EP")
    ip netns add "$NS_NET" || die "cannot create network namespace $NS_NET"
    NAMESPACES+=("$NS_NET")
    ip link add rbench-ep netns "$NS_EP" type veth peer name rbench-net netns "$NS_NET" ||
        die "cannot create the veth pair"
    SERVER_ADDR=10.199.0.1
    # Listening beyond loopback: the gateway refuses to be an open proxy.
    PROXY_CLIENTS='allow_networks = ["10.199.0.0/30"]'
    ip -n "$NS_NET" addr add "$SERVER_ADDR/30" dev rbench-net
    ip -n "$NS_EP" addr add 10.199.0.2/30 dev rbench-ep
    for pair in "$NS_NET rbench-net" "$NS_EP rbench-ep"; do
        read -r ns dev <<<"$pair"
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "$dev" up
        # Each direction shaped to the rate. A token bucket (tbf) rather than netem,
        # which not every kernel has; its 20 ms queue covers TCP's bursts.
        tc -n "$ns" qdisc add dev "$dev" root tbf rate "$LINK_RATE" burst 2mb latency 20ms ||
            die "tc tbf on $dev failed (rate $LINK_RATE)"
    done
    EP=(ip netns exec "$NS_EP")
    NET=(ip netns exec "$NS_NET")
    LINK_NOTE="a veth link between two network namespaces, shaped to $LINK_RATE each way"
    log "link: $LINK_NOTE"
fi

start() { # name command... — runs in the background, output to $WORK/name.log
    local name=$1
    shift
    "$@" >>"$WORK/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# The agent listens on the endpoint's side, the rest on the network side: the probe
# of lib.sh's wait_port runs there.
bench_wait_port() { # port pid name [address]
    local -a WAIT_PROBE
    [[ $3 == agent ]] && WAIT_PROBE=("${EP[@]}") || WAIT_PROBE=("${NET[@]}")
    wait_port "$@"
}

# --- origin: nginx, one worker, HTTPS with a throwaway CA --------------------------
O=$WORK/origin
mkdir -p "$O/www" "$O/tmp"
head -c 1024 /dev/urandom >"$O/www/1k"
truncate -s "$BIG_SIZE" "$O/www/big" # sparse: nginx sends zeros from the page cache
BIG_BYTES=$(stat -c %s "$O/www/big")
cat "$O/www/big" >/dev/null # page cache warm before the first path is timed
mkca "$O" ca "Rampart agent bench origin CA"
mkleaf "$O" ca origin "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:$SERVER_ADDR\nextendedKeyUsage=serverAuth"
HTTPS_PORT=$(free_port)
HTTP_PORT=$(free_port)
cat >"$O/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $O/nginx.pid;
error_log $O/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    default_type application/octet-stream;
    client_body_temp_path $O/tmp/body;
    proxy_temp_path $O/tmp/proxy;
    fastcgi_temp_path $O/tmp/fastcgi;
    uwsgi_temp_path $O/tmp/uwsgi;
    scgi_temp_path $O/tmp/scgi;
    ssl_protocols TLSv1.3;
    server {
        listen $SERVER_ADDR:$HTTP_PORT;
        listen $SERVER_ADDR:$HTTPS_PORT ssl;
        server_name localhost;
        ssl_certificate $O/origin.pem;
        ssl_certificate_key $O/origin.key;
        root $O/www;
    }
}
EOF
start origin "${NET[@]}" nginx -c "$O/nginx.conf" -p "$O"
ORIGIN_PID=$LAST_PID
bench_wait_port "$HTTPS_PORT" "$LAST_PID" origin "$SERVER_ADDR"
# HTTPS to a port outside the gateway's tls_ports: the gateway splices the tunnel
# without peeking or decrypting, which is the "steered, non-decrypted flow".
# An IP literal (the certificate has it as a SAN): no resolver on any path.
URL_1K="https://$SERVER_ADDR:$HTTPS_PORT/1k"
URL_BIG="https://$SERVER_ADDR:$HTTPS_PORT/big"
CURL_TLS=(--cacert "$O/ca.pem")
"${EP[@]}" curl -fsS --max-time 5 "${CURL_TLS[@]}" -o /dev/null "$URL_1K" || die "origin does not answer"
log "origin: nginx https=$HTTPS_PORT http=$HTTP_PORT, big object $BIG_SIZE"

# --- gateway: rampart server (proxy + agent tunnel + API) --------------------------
G=$WORK/gateway
mkdir -p "$G"
GW_PORT=$(free_port)
API_PORT=$(free_port)
TUNNEL_PORT=$(free_port)
cat >"$G/rampart.toml" <<EOF
data_dir = "$G/data"
[proxy]
listen = "$SERVER_ADDR:$GW_PORT"
allow_loopback_destinations = true
connect_ports = [443, "1025-65535"]
$PROXY_CLIENTS
[api]
listen = "$SERVER_ADDR:$API_PORT"
# Plain HTTP also in the namespace setup (10.199.0.1): enrollment below uses http://.
tls = "off"
[tunnel]
listen = "$SERVER_ADDR:$TUNNEL_PORT"
EOF
printf '%s\n' "${BENCH_GATEWAY_TOML:-}" >>"$G/rampart.toml"
start gateway "${NET[@]}" "$GATEWAY_BIN" server --config "$G/rampart.toml"
GW_PID=$LAST_PID
bench_wait_port "$GW_PORT" "$GW_PID" gateway "$SERVER_ADDR"
bench_wait_port "$TUNNEL_PORT" "$GW_PID" gateway "$SERVER_ADDR"
bench_wait_port "$API_PORT" "$GW_PID" gateway "$SERVER_ADDR"

# --- agent: enrolled with a one-time token, local-proxy mode -----------------------
A=$WORK/agent
mkdir -p "$A"
AGENT_PORT=$(free_port)
cat >"$A/agent.toml" <<EOF
data_dir = "$A/state"
[steering]
mode = "local-proxy"
default = "steer"
[local_proxy]
listen = "127.0.0.1:$AGENT_PORT"
EOF
printf '%s\n' "${BENCH_AGENT_TOML:-}" >>"$A/agent.toml"
TOKEN=$("$RAMPART_BIN" device token create --user bench --data-dir "$G/data")
"${EP[@]}" "$RAMPART_BIN" agent enroll --server "http://$SERVER_ADDR:$API_PORT" --token "$TOKEN" \
    --config "$A/agent.toml" >>"$WORK/enroll.log" 2>&1 || {
    cat "$WORK/enroll.log" >&2
    die "enrollment failed"
}
start agent "${EP[@]}" "$AGENT_BIN" agent run --config "$A/agent.toml"
AGENT_PID=$LAST_PID
bench_wait_port "$AGENT_PORT" "$AGENT_PID" agent
AGENT_IDLE_KIB=$(rss_kib "$AGENT_PID")
"${EP[@]}" curl -fsS --max-time 10 -p -x "http://127.0.0.1:$AGENT_PORT" "${CURL_TLS[@]}" -o /dev/null "$URL_1K" ||
    die "a request through the agent failed (see $WORK/agent.log)"
grep -q "Tunneling connection from process: curl" "$A/state/agent.log" ||
    die "the agent did not tunnel curl's flow (agent.log: $(tail -n 3 "$A/state/agent.log"))"
log "gateway proxy=$GW_PORT tunnel=$TUNNEL_PORT; agent local proxy=$AGENT_PORT (pid $AGENT_PID)"

# Proxy arguments per path. `-p` makes curl use CONNECT for every path, so the
# gateway and agent paths carry exactly the same bytes.
path_args() {
    case $1 in
    direct) ;;
    gateway) printf '%s\n' -p -x "http://$SERVER_ADDR:$GW_PORT" ;;
    agent) printf '%s\n' -p -x "http://127.0.0.1:$AGENT_PORT" ;;
    esac
}

# --- 1. latency: a new connection (CONNECT + TLS + GET 1 KiB) per request ----------
# `Connection: close` makes nginx close after each response, so curl opens a new
# connection — through the proxies, a new tunnel — for every URL of the glob.
PATHS=(direct gateway agent)
per_round=$(((SAMPLES + ROUNDS - 1) / ROUNDS))
log "latency: $((per_round * ROUNDS)) requests per path in $ROUNDS interleaved rounds"
for path in "${PATHS[@]}"; do
    mapfile -t args < <(path_args "$path")
    # Warm-up: leaf caches, connection pools, the agent's attribution cache.
    "${EP[@]}" curl -s "${args[@]}" "${CURL_TLS[@]}" -H 'Connection: close' -o /dev/null "$URL_1K?w=[1-20]"
done
for round in $(seq "$ROUNDS"); do
    for path in "${PATHS[@]}"; do
        mapfile -t args < <(path_args "$path")
        "${EP[@]}" curl -s "${args[@]}" "${CURL_TLS[@]}" -H 'Connection: close' -o /dev/null \
            -w '%{http_code} %{time_total}\n' "$URL_1K?r=$round&n=[1-$per_round]" \
            >>"$WORK/latency-$path.txt"
    done
done
stats() { # file → "count errors p50_us p99_us"
    python3 - "$1" <<'EOF'
import sys
ok, bad = [], 0
for line in open(sys.argv[1]):
    code, t = line.split()
    if code == "200":
        ok.append(float(t) * 1e6)
    else:
        bad += 1
ok.sort()
pct = lambda p: ok[min(len(ok) - 1, round((len(ok) - 1) * p))] if ok else float("nan")
print(len(ok), bad, f"{pct(0.5):.0f}", f"{pct(0.99):.0f}")
EOF
}
declare -A P50 P99 ERR
for path in "${PATHS[@]}"; do
    read -r n bad p50 p99 < <(stats "$WORK/latency-$path.txt")
    P50[$path]=$p50
    P99[$path]=$p99
    ERR[$path]=$bad
    log "latency $path: $n ok, $bad failed, p50 ${p50} µs, p99 ${p99} µs"
done

# --- 2. throughput: one bulk download per path, best of $RUNS ----------------------
# Besides the speed, the CPU each process spent on the download (user + system, from
# /proc; curl's from the shell's `time`): on loopback the paths are CPU-bound, and the
# CPU per GB says what each part costs whatever else the machine runs.
declare -A SPEED CPU_GB
for path in "${PATHS[@]}"; do SPEED[$path]=0; done
TIMEFORMAT='%U %S'
for run in $(seq "$RUNS"); do
    for path in "${PATHS[@]}"; do
        mapfile -t args < <(path_args "$path")
        before="$(cpu_of "$ORIGIN_PID") $(cpu_of "$GW_PID") $(cpu_of "$AGENT_PID")"
        { time "${EP[@]}" curl -sS --max-time 300 "${args[@]}" "${CURL_TLS[@]}" -o /dev/null \
            -w '%{size_download} %{speed_download}' "$URL_BIG" >"$WORK/bulk.out" 2>"$WORK/bulk.err"; } \
            2>"$WORK/bulk.time" || die "bulk download via $path failed: $(cat "$WORK/bulk.err")"
        after="$(cpu_of "$ORIGIN_PID") $(cpu_of "$GW_PID") $(cpu_of "$AGENT_PID")"
        read -r size speed <"$WORK/bulk.out" || true # curl -w writes no newline
        [[ $size == "$BIG_BYTES" ]] || die "bulk download via $path: $size of $BIG_BYTES bytes"
        # "curl origin gateway agent": CPU seconds per GB of this run
        cpu=$(python3 - "$size" "$(cat "$WORK/bulk.time")" "$before" "$after" <<'EOF'
import sys
gb = int(sys.argv[1]) / 1e9
curl = sum(float(x) for x in sys.argv[2].split())
before, after = ([float(x) for x in a.split()] for a in sys.argv[3:5])
print(" ".join(f"{c / gb:.3f}" for c in [curl] + [b - a for a, b in zip(before, after)]))
EOF
        )
        log "bulk run $run $path: $(python3 -c "print(f'{$speed/1e6:.0f}')") MB/s; CPU s/GB curl origin gateway agent: $cpu"
        if python3 -c "import sys; sys.exit(0 if $speed > ${SPEED[$path]} else 1)"; then
            SPEED[$path]=$speed
            CPU_GB[$path]=$cpu
        fi
    done
done

# --- 3. agent RSS with $FLOWS concurrent steered flows -----------------------------
# Each flow: CONNECT through the agent to the origin's plain HTTP port, one keep-alive
# request, then held open while RSS is read.
AGENT_BEFORE_KIB=$(rss_kib "$AGENT_PID")
GW_BEFORE_KIB=$(rss_kib "$GW_PID")
STEERED_BEFORE=$(grep -c "Tunneling connection from process" "$A/state/agent.log" || true)
mkfifo "$WORK/release"
"${EP[@]}" python3 - "$AGENT_PORT" "$SERVER_ADDR" "$HTTP_PORT" "$FLOWS" "$WORK/release" >"$WORK/flows.out" 2>"$WORK/flows.log" <<'EOF' &
import resource, socket, sys, time
proxy, host, origin = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
flows, release = int(sys.argv[4]), sys.argv[5]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
began = time.monotonic()
for i in range(flows):
    s = socket.create_connection(("127.0.0.1", proxy), timeout=30)
    s.sendall(f"CONNECT {host}:{origin} HTTP/1.1\r\nHost: {host}:{origin}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"flow {i}: proxy closed during CONNECT")
        head += chunk
    if b" 200 " not in head.split(b"\r\n")[0] + b" ":
        sys.exit(f"flow {i}: CONNECT answered {head[:60]!r}")
    s.sendall(b"GET /1k HTTP/1.1\r\nHost: localhost\r\n\r\n")
    got = b""
    while len(got) < 1024 + 100:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    if b" 200 " not in got[:20]:
        sys.exit(f"flow {i}: origin answered {got[:60]!r}")
    held.append(s)
print("ready", len(held), f"{time.monotonic() - began:.1f}", flush=True)
open(release).read()
EOF
FLOWS_PID=$!
PIDS+=("$FLOWS_PID")
for _ in $(seq 600); do
    grep -q ready "$WORK/flows.out" 2>/dev/null && break
    kill -0 "$FLOWS_PID" 2>/dev/null || {
        cat "$WORK/flows.log" >&2
        die "flow holder failed"
    }
    sleep 0.2
done
grep -q ready "$WORK/flows.out" || die "flows not established within 120 s"
sleep 1 # let the agent and gateway settle (buffers, idle tasks)
AGENT_HELD_KIB=$(rss_kib "$AGENT_PID")
AGENT_HWM_KIB=$(hwm_kib "$AGENT_PID")
GW_HELD_KIB=$(rss_kib "$GW_PID")
AGENT_FDS=$(find "/proc/$AGENT_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
read -r _ _ OPEN_SECS <"$WORK/flows.out"
STEERED=$(($(grep -c "Tunneling connection from process" "$A/state/agent.log") - STEERED_BEFORE))
echo >"$WORK/release"
wait "$FLOWS_PID" 2>/dev/null || true
log "rss: agent idle ${AGENT_IDLE_KIB} KiB, before flows ${AGENT_BEFORE_KIB} KiB, with $FLOWS flows ${AGENT_HELD_KIB} KiB (peak ${AGENT_HWM_KIB} KiB, $AGENT_FDS fds, $STEERED steered, opened one after another in ${OPEN_SECS} s)"

# --- report ------------------------------------------------------------------------
python3 - <<EOF
direct, gw, agent = ${SPEED[direct]}, ${SPEED[gateway]}, ${SPEED[agent]}
p50 = {"direct": ${P50[direct]}, "gateway": ${P50[gateway]}, "agent": ${P50[agent]}}
p99 = {"direct": ${P99[direct]}, "gateway": ${P99[gateway]}, "agent": ${P99[agent]}}
err = {"direct": ${ERR[direct]}, "gateway": ${ERR[gateway]}, "agent": ${ERR[agent]}}
added99 = p99["agent"] - p99["gateway"]
ratio = agent / direct if direct else 0
held = ${AGENT_HELD_KIB}
ok = lambda b: "met" if b else "MISSED"
print("| measure | direct | gateway alone | agent + tunnel + gateway | target | |")
print("|---|---|---|---|---|---|")
print(f"| new HTTPS connection + GET 1 KiB, p50 | {p50['direct']/1000:.2f} ms | {p50['gateway']/1000:.2f} ms | {p50['agent']/1000:.2f} ms | | |")
print(f"| same, p99 | {p99['direct']/1000:.2f} ms | {p99['gateway']/1000:.2f} ms | {p99['agent']/1000:.2f} ms | | |")
print(f"| added p99 of agent + tunnel over the gateway alone | | | {added99/1000:.2f} ms | <= 1 ms | {ok(added99 <= 1000)} |")
print(f"| failed requests | {err['direct']} | {err['gateway']} | {err['agent']} | 0 | |")
print(f"| one bulk flow ($BIG_SIZE, best of $RUNS) | {direct/1e6:.0f} MB/s | {gw/1e6:.0f} MB/s ({gw/direct:.2f}x) | {agent/1e6:.0f} MB/s ({ratio:.2f}x) | >= 0.7x direct | {ok(ratio >= 0.7)} |")
cpu = {"direct": "${CPU_GB[direct]}", "gateway": "${CPU_GB[gateway]}", "agent": "${CPU_GB[agent]}"}
cpu = {k: [float(x) for x in v.split()] for k, v in cpu.items()}
cell = lambda c: f"{sum(c):.2f} s (curl {c[0]:.2f}, origin {c[1]:.2f}" + (f", gateway {c[2]:.2f}" if c[2] > 0.005 else "") + (f", agent {c[3]:.2f}" if c[3] > 0.005 else "") + ")"
print(f"| CPU per GB in that run, all processes | {cell(cpu['direct'])} | {cell(cpu['gateway'])} | {cell(cpu['agent'])} | | |")
ceiling = lambda c: $(nproc) / sum(c) * 1e3
print(f"| what that CPU per GB allows on $(nproc) CPUs at 100 % | {ceiling(cpu['direct']):.0f} MB/s | {ceiling(cpu['gateway']):.0f} MB/s | {ceiling(cpu['agent']):.0f} MB/s | | |")
print(f"| agent RSS, idle / with $FLOWS concurrent steered flows | | | ${AGENT_IDLE_KIB} KiB / {held} KiB ({held/1024:.1f} MiB; peak ${AGENT_HWM_KIB} KiB; $STEERED flows steered) | <= 30 MiB | {ok(held <= 30*1024 and $STEERED >= $FLOWS)} |")
print(f"| gateway RSS, before / with the same flows | | ${GW_BEFORE_KIB} KiB / ${GW_HELD_KIB} KiB | | | |")
print(f"| time to open the $FLOWS flows one after another (CONNECT + 1 request each) | | | ${OPEN_SECS} s | | |")
EOF
echo
echo "- binary: $RAMPART_BIN, built $(date -u -r "$RAMPART_BIN" '+%Y-%m-%d %H:%M UTC'), HEAD $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
[[ $GATEWAY_BIN == "$RAMPART_BIN" ]] || echo "- gateway binary: $GATEWAY_BIN"
[[ $AGENT_BIN == "$RAMPART_BIN" ]] || echo "- agent binary: $AGENT_BIN"
echo "- paths: $LINK_NOTE"
echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), TCP congestion control $(cat /proc/sys/net/ipv4/tcp_congestion_control), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; samples $((per_round * ROUNDS)) per path, bulk $BIG_SIZE x $RUNS, $FLOWS flows"
