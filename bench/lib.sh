# Shared by the bench scripts (sourced, never run): logging, free ports, waiting
# for a listener, CPU and memory of a process, throwaway CAs, stopping daemons.
# A script sets BENCH_NAME (the log prefix) and WORK (where daemons log,
# $WORK/NAME.log) before it uses them.
# shellcheck shell=bash

BENCH_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# require_tools HINT TOOL... : dies naming the first missing tool and HINT (how to get it).
require_tools() {
    local hint=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found: $hint"
    done
}

# A free loopback TCP port below the kernel's ephemeral range (32768 and up):
# a port from bind(:0) comes from that range, where every outgoing connection's
# local port comes from too, and could be taken before the daemon binds it.
free_port() {
    python3 -c 'import random, socket
while True:
    p = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError:
        pass'
}

free_udp_port() {
    python3 -c 'import socket; s=socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# port_open PORT [ADDR] : whether something accepts TCP connections there; the
# probe runs under ${WAIT_PROBE[@]} (e.g. `ip netns exec NS`) when it is set.
port_open() {
    local -a probe=()
    [[ -n ${WAIT_PROBE+x} ]] && probe=("${WAIT_PROBE[@]}")
    timeout 1 "${probe[@]}" bash -c "exec 3<>/dev/tcp/${2:-127.0.0.1}/$1" 2>/dev/null
}

# wait_port PORT [PID NAME [ADDR]] : waits up to 20 s for a listener; with PID,
# dies with the tail of $WORK/NAME.log as soon as that process exits.
wait_port() {
    local port=$1 pid=${2:-} name=${3:-"the daemon on $1"} addr=${4:-127.0.0.1}
    for _ in $(seq 200); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$WORK/$name.log" >&2 2>/dev/null || true
            die "$name exited during start-up (log above)"
        fi
        port_open "$port" "$addr" && return 0
        sleep 0.1
    done
    [[ -n $pid ]] && { tail -n 20 "$WORK/$name.log" >&2 2>/dev/null || true; }
    die "$name did not listen on $addr:$port within 20 s"
}

# cpu_of PID... : CPU seconds (user + system) of their whole process trees.
cpu_of() {
    local total=0 p
    for p in "$@"; do
        total=$(awk -v a="$total" -v b="$(python3 "$BENCH_LIB_DIR/cputime.py" "$p")" 'BEGIN { printf "%.3f", a + b }')
    done
    echo "$total"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# mkca DIR NAME CN : a throwaway CA, DIR/NAME.pem and DIR/NAME.key (P-256, 2 days).
mkca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1/$2.key" -out "$1/$2.pem" -days 2 -subj "/CN=$3" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
}

# stop_daemon PID : TERM to its process group (or itself), up to 5 s, then KILL.
stop_daemon() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# mkleaf DIR CA LEAF EXTENSIONS : DIR/LEAF.pem and DIR/LEAF.key for CN=localhost,
# signed by the CA DIR/CA.pem (from mkca), with EXTENSIONS (an openssl extfile's
# lines; `\n` between them).
mkleaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1/$3.key" -out "$1/$3.csr" -subj "/CN=localhost" 2>/dev/null
    printf '%b\n' "$4" >"$1/$3.ext"
    openssl x509 -req -in "$1/$3.csr" -CA "$1/$2.pem" -CAkey "$1/$2.key" -CAcreateserial \
        -out "$1/$3.pem" -days 2 -extfile "$1/$3.ext" 2>/dev/null
}

# cpu_ticks PID : user + system clock ticks of one process (getconf CLK_TCK a second).
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# bench_workdir NAME : WORK, a fresh directory nginx's unprivileged workers can
# read (mktemp makes it 0700), and PIDS, the daemons to stop; at exit each of them
# is stopped (stop_daemon) and WORK removed.
bench_workdir() {
    WORK=$(mktemp -d "/tmp/rampart-$1.XXXXXX")
    chmod 755 "$WORK"
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_daemon "$p"; done
    rm -rf "$WORK"
}

# start_nginx_1k CPU : nginx (one worker, pinned to CPU) serving 1 KiB at /1k from
# $WORK/www on a free port, OPORT; $WORK/abs.lua is a wrk script that sends it as an
# absolute-form (proxy) request. The pid goes to PIDS (the caller's cleanup stops it).
start_nginx_1k() {
    mkdir -p "$WORK/www"
    head -c 1024 /dev/urandom >"$WORK/www/1k"
    chmod 755 "$WORK" "$WORK/www"
    chmod 644 "$WORK/www/1k" # nginx workers run unprivileged
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
    taskset -c "$1" nginx -c "$WORK/nginx.conf" -p "$WORK" &
    PIDS+=($!)
    wait_port "$OPORT"
    printf 'wrk.method = "GET"\nwrk.path = "http://127.0.0.1:%s/1k"\nwrk.headers["Host"] = "127.0.0.1:%s"\n' "$OPORT" "$OPORT" >"$WORK/abs.lua"
}
