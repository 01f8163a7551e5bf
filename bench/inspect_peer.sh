#!/usr/bin/env bash
# Inspection bench (issue 17): one bulk download, repeated, through
#   direct                      curl straight to the origin (nginx, sendfile)
#   rampart                     inspection off
#   rampart+default             type + SHA-256 + archive walk (the default config)
#   rampart+inspect             type + SHA-256 + archive walk + N YARA rules, no clamd
#   rampart+inspect+clamd       the same plus clamd (INSTREAM)
#   squid+c-icap+clamd          Squid RESPMOD to c-icap's virus_scan, clamd_mod
#   c-icap+clamd (no Squid)     plain mode: c-icap-client sends the file to the
#                               same c-icap service (an upper bound for the Squid
#                               stack: the proxy hop is left out)
# and, with BENCH_TLS=1, intercepted HTTPS instead of plain HTTP:
#   rampart-mitm (off / inspect / inspect+clamd), g3proxy-mitm (no AV engine:
#   interception only), squid-bump+c-icap+clamd (Squid ssl_bump + the same ICAP).
# All on loopback; one clamd shared by every clamd column, its database only a
# test signature written here (no freshclam). Figures: MB/s (median of runs)
# and CPU seconds per GB of each process involved (its whole process tree,
# over all the runs of the column, from /proc: bench/cputime.py).
#
# RAMPART_BASE_BIN=/path adds the same Rampart columns for a second binary
# (a before/after comparison in one run, on the same host state).
#
# The Squid + c-icap stack (Debian 12: Squid 5.7, c-icap 0.5.10, virus_scan
# 0.5.5) hits Squid bug 5352 (a RESPMOD body stalls for good once Squid's 64 KiB
# buffer towards the ICAP service is full while the origin has more to send;
# fixed upstream in Squid 6/7, not in 5.7). Squid's configuration below avoids
# the two ways every bulk download filled it (the preview wait, the 64 KiB first
# read); a download that still stalls (c-icap lagging by 60 KiB at some moment)
# fails after BENCH_PEER_TIMEOUT and is counted as failed in its row. See
# bench/notes/31-issue-17-200-concurrent-downloads-the-squid-c-i.md.
# The clamd_mod warning "clamd_get_versions: ... Can not parse response" is not
# a fault (ClamAV answers without a database version with a test-only database).
#
# Needs: nginx, squid, clamd, c-icap (+ libc-icap-mod-virus-scan), python3,
# curl, openssl; target/release/rampart (cargo build --release -p rampart-cli);
# with BENCH_TLS=1 also Squid 6 from bench/squid6-root.sh (preferred: Debian
# 12's Squid 5.7 stalls ICAP bodies, bug 5352) or bench/.peers/squid-openssl
# (bench/setup.sh), and bench/.peers/g3 (bench/g3proxy-build.sh); a missing
# peer is reported and its column left out.
# Env: BENCH_SIZE_MB (200), BENCH_RUNS (3), BENCH_YARA_RULES (100),
#      BENCH_PEER_TIMEOUT (20 s, per Squid-stack download), RAMPART_BIN,
#      RAMPART_BASE_BIN, BENCH_TLS (0), BENCH_KEEP (1: keep the work dir),
#      BENCH_SQUID6 (unset: Squid 6 from bench/squid6-root.sh when present;
#      0: Debian 12's 5.7; 1: Squid 6 required).
#
# BENCH_AB=1: only Rampart, interleaved — three instances of RAMPART_BIN
# (inspection off; type + hash + archive + N YARA rules scanned while the
# body streams; the same with `[inspect.yara] stream = false`, the whole
# body scanned at the end), one download through each per round for
# BENCH_ROUNDS rounds (8), the order rotating every round, so that the
# host's load falls on all three alike. Prints every download, the medians,
# the per-round ratios to "off", CPU s/GB of each instance and the median
# scan time (access log). No peers, no clamd.
#
# `bench/inspect_peer.sh concurrent`: 200 concurrent intercepted downloads of a
# 100 MiB random file (BENCH_CONC_FLOWS, BENCH_SIZE_MB) through one Rampart with
# type + hash + archive + N YARA rules (no clamd), then, with BENCH_CONC_ZIP_MB
# (25; 0 leaves it out), the same count of downloads of a stored zip of that
# size (an archive is spooled whole: the archive walk reads it after the end;
# BENCH_CONC_RANDOM=0 runs the zip alone).
# One curl with --parallel, bodies to /dev/null, each checked for 200 and the
# full size. Rampart's VmRSS and VmHWM (/proc/PID/status) and the bytes of its
# open spool files (unlinked at creation: summed over /proc/PID/fd) are sampled
# (VmRSS split into RssAnon and RssFile: a spool mapped for YARA or an archive
# counts as file-backed pages, which the kernel can drop)
# every BENCH_SAMPLE_S (0.5) s into WORK/concurrent-*.tsv; the report gives the
# peaks (target: RSS <= 300 MiB), wall time, throughput and CPU s/GB. Rampart
# inherits the environment: MALLOC_MMAP_THRESHOLD_=131072 in front of the
# command shows the same binary with glibc's mmap threshold fixed (see
# bench/RESULTS.md, issue 17, 200 concurrent downloads).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
scenario=${1:-peers}
case "$scenario" in
peers) size_mb=${BENCH_SIZE_MB:-200} ;;
concurrent)
    size_mb=${BENCH_SIZE_MB:-100}
    BENCH_TLS=1 # intercepted HTTPS: the case the target is about
    ;;
*) echo "usage: $0 [peers|concurrent] (see the header)" >&2; exit 2 ;;
esac
runs=${BENCH_RUNS:-3}
rules=${BENCH_YARA_RULES:-100}
peer_timeout=${BENCH_PEER_TIMEOUT:-20}
tls=${BENCH_TLS:-0}
rampart=${RAMPART_BIN:-$root/target/release/rampart}
rampart_base=${RAMPART_BASE_BIN:-}
squid_ssl_dir="$here/.peers/squid-openssl"
g3proxy_bin=${G3PROXY_BIN:-$here/.peers/g3/g3proxy}
g3fcgen_bin=${G3FCGEN_BIN:-$here/.peers/g3/g3fcgen}
[ -x "$rampart" ] || { echo "$rampart is missing: cargo build --release -p rampart-cli" >&2; exit 1; }
[ -z "$rampart_base" ] || [ -x "$rampart_base" ] || { echo "RAMPART_BASE_BIN=$rampart_base is not executable" >&2; exit 1; }
ab=${BENCH_AB:-0}
# Only Rampart runs (no clamd, c-icap, Squid or g3proxy) in the A/B and concurrent modes.
rampart_only=0
{ [ "$ab" = 1 ] || [ "$scenario" = concurrent ]; } && rampart_only=1
[ "$rampart_only" = 1 ] || [ -f /usr/lib/x86_64-linux-gnu/c_icap/virus_scan.so ] || { echo "apt-get install -y libc-icap-mod-virus-scan" >&2; exit 1; }

work=$(mktemp -d /tmp/inspect-peer.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # g3fcgen outlives g3proxy (its launcher's child): stopped by its own pid.
    [ ! -f "$work/g3/g3fcgen.pid" ] || kill "$(cat "$work/g3/g3fcgen.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

BENCH_NAME=inspect-peer
WORK=$work
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
if [ "$rampart_only" = 1 ]; then
    require_tools "apt-get install -y nginx zip" nginx python3 curl openssl zip
else
    require_tools "bench/setup.sh; apt-get install -y nginx c-icap libc-icap-mod-virus-scan clamav-daemon squid" nginx squid clamd c-icap c-icap-client python3 curl openssl
fi

# TLS material: an origin CA and an interception CA shared by every intercepting proxy.
tlsdir="$work/tls"
mkdir -p "$tlsdir"
mkca "$tlsdir" origin-ca "inspect bench origin CA"
mkca "$tlsdir" mitm-ca "inspect bench interception CA"
mkleaf "$tlsdir" origin-ca origin 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE'

# Origin: nginx serving a random (incompressible, signature-free) file, plain and TLS.
mkdir -p "$work/www" "$work/nginx/tmp"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/www/bulk.bin"
# A small file each path fetches once before it is measured (connections,
# clamd's first scan, page cache).
head -c $((1024 * 1024)) /dev/urandom > "$work/www/warm.bin"
# nginx's worker runs as nobody: the files must be readable by it.
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/bulk.bin" "$work/www/warm.bin"
http_port=$(free_port)
https_port=$(free_port)
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    fastcgi_temp_path $work/nginx/tmp;
    uwsgi_temp_path $work/nginx/tmp;
    scgi_temp_path $work/nginx/tmp;
    server { listen 127.0.0.1:$http_port; root $work/www; }
    server {
        listen 127.0.0.1:$https_port ssl;
        ssl_certificate $tlsdir/origin.pem;
        ssl_certificate_key $tlsdir/origin.key;
        root $work/www;
    }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" >"$work/nginx/stdout.log" 2>&1 &
pids+=($!)
wait_port "$http_port" "" origin
wait_port "$https_port" "" "origin (TLS)"
if [ "$tls" = 1 ]; then
    url="https://localhost:$https_port/bulk.bin"
else
    url="http://127.0.0.1:$http_port/bulk.bin"
fi

# The peers (clamd, c-icap, Squid, g3proxy): not in the A/B and concurrent modes.
if [ "$rampart_only" != 1 ]; then
# clamd with a test-only database.
mkdir -p "$work/clamd/db"
printf 'Rampart.Bench.Marker:0:*:%s\n' "$(printf RAMPART-BENCH-MARKER | od -An -tx1 | tr -d ' \n')" > "$work/clamd/db/bench.ndb"
clamd_port=$(free_port)
cat > "$work/clamd/clamd.conf" <<EOF
Foreground yes
DatabaseDirectory $work/clamd/db
TCPSocket $clamd_port
TCPAddr 127.0.0.1
LogFile $work/clamd/clamd.log
TemporaryDirectory $work/clamd
# No cache of clean results: every download is new content to clamd, as on the
# web (the bench repeats one file, which clamd would otherwise skip by its MD5).
DisableCache yes
StreamMaxLength $((size_mb + 50))M
MaxScanSize $((size_mb + 50))M
MaxFileSize $((size_mb + 50))M
EOF
clamd -c "$work/clamd/clamd.conf" >/dev/null 2>&1 &
clamd_pid=$!
pids+=($clamd_pid)
wait_port "$clamd_port" "" clamd

# c-icap: virus_scan through clamd_mod (clamd reads c-icap's temporary file: zSCAN).
icap_port=$(free_port)
mkdir -p "$work/icap"
chmod 777 "$work/icap"
cat > "$work/icap/c-icap.conf" <<EOF
PidFile $work/icap/c-icap.pid
CommandsSocket $work/icap/c-icap.ctl
Port 127.0.0.1:$icap_port
User root
TmpDir $work/icap
MaxMemObject 131072
StartServers 1
MaxServers 4
ThreadsPerChild 10
ServerLog $work/icap/server.log
AccessLog $work/icap/access.log
ModulesDir /usr/lib/x86_64-linux-gnu/c_icap
ServicesDir /usr/lib/x86_64-linux-gnu/c_icap
TemplateDir /usr/share/c_icap/templates/
LoadMagicFile /etc/c-icap/c-icap.magic
Module common clamd_mod.so
clamd_mod.ClamdHost 127.0.0.1
clamd_mod.ClamdPort $clamd_port
Service antivirus_module virus_scan.so
ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple
virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE
virus_scan.MaxObjectSize $((size_mb + 50))M
virus_scan.DefaultEngine clamd
EOF
c-icap -N -f "$work/icap/c-icap.conf" >"$work/icap/stdout.log" 2>&1 &
icap_pid=$!
pids+=($icap_pid)
wait_port "$icap_port" "" c-icap

# Squid: RESPMOD to c-icap, no cache; with TLS, ssl_bump from squid-openssl.
# Squid 6.x from a Debian 13 root (bench/squid6-root.sh) when it is there,
# unless BENCH_SQUID6=0: Debian 12's 5.7 stalls RESPMOD bodies (bug 5352,
# below) and Debian 12 has no 6.x. BENCH_SQUID6=1 makes the root required.
squid_port=$(free_port)
squid_bin=squid
squid6_dir="$here/.peers/squid6"
squid6=0
if [ "${BENCH_SQUID6:-auto}" != 0 ] && [ -x "$squid6_dir/squid" ]; then
    squid6=1
    squid_bin="$squid6_dir/squid"
    # The chrooted Squid sees the work dir at the same path (its config, CA, logs).
    export SQUID6_BIND="$work"
elif [ "${BENCH_SQUID6:-auto}" = 1 ]; then
    die "BENCH_SQUID6=1 but $squid6_dir/squid is missing: run bench/squid6-root.sh"
fi
mkdir -p "$work/squid"
chmod 777 "$work/squid"
squid_http_port="http_port 127.0.0.1:$squid_port"
squid_bump=""
if [ "$tls" = 1 ]; then
    if [ "$squid6" = 1 ] || [ -x "$squid_ssl_dir/usr/sbin/squid" ]; then
        # The helper's path as Squid sees it, and the command that runs it from here.
        squid_certgen="$squid_ssl_dir/usr/lib/squid/security_file_certgen"
        squid_certgen_cmd=$squid_certgen
        if [ "$squid6" = 1 ]; then
            squid_certgen=/usr/lib/squid/security_file_certgen
            squid_certgen_cmd="$squid6_dir/security_file_certgen"
        else
            squid_bin="$squid_ssl_dir/usr/sbin/squid"
        fi
        "$squid_certgen_cmd" -c -s "$work/squid/ssl_db" -M 16MB >/dev/null
        cat "$tlsdir/mitm-ca.pem" "$tlsdir/mitm-ca.key" > "$work/squid/ca.pem"
        squid_http_port="http_port 127.0.0.1:$squid_port ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert=$work/squid/ca.pem"
        squid_bump="sslcrtd_program $squid_certgen -s $work/squid/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile=$tlsdir/origin-ca.pem"
    else
        squid_bin=""
        echo "no squid-openssl at $squid_ssl_dir (bench/setup.sh): the Squid column is left out" >&2
    fi
fi
squid_pid=""
# Squid 5.7 stalls a RESPMOD body for good when its 64 KiB buffer to the ICAP
# service fills while the origin has more to send (Squid bug 5352: the read
# it had scheduled finds no room and is never rescheduled; fixed in Squid 6/7,
# not in Debian 12's 5.7). c-icap holds the body until it has scanned it, so on
# loopback every bulk download hit it at once: the first 64 KiB header read and
# the wait for c-icap's 100 Continue to a preview filled the buffer. Without a
# preview and with reads of 4 KiB, only a moment when c-icap lags more than
# 60 KiB stalls the body; such downloads are counted as failed. Squid 6 runs
# with its defaults.
squid_stall_workaround=""
[ "$squid6" = 1 ] || squid_stall_workaround="icap_preview_enable off
reply_header_max_size 4 KB
read_ahead_gap 4 KB"
if [ -n "$squid_bin" ]; then
    cat > "$work/squid/squid.conf" <<EOF
$squid_http_port
pid_filename $work/squid/squid.pid
access_log none
cache_log $work/squid/cache.log
cache deny all
cache_mem 8 MB
http_access allow localhost
http_access deny all
$squid_bump
icap_enable on
icap_service av respmod_precache bypass=0 icap://127.0.0.1:$icap_port/avscan
adaptation_access av allow all
pinger_enable off
dns_nameservers 127.0.0.1
shutdown_lifetime 1 seconds
$squid_stall_workaround
EOF
    chown -R proxy:proxy "$work/squid" 2>/dev/null || true
    "$squid_bin" -N -f "$work/squid/squid.conf" >/dev/null 2>&1 &
    squid_pid=$!
    pids+=($squid_pid)
    wait_port "$squid_port" "" squid
fi

# g3proxy-mitm (TLS only): interception, no AV engine.
g3_pid=""
g3_port=""
if [ "$tls" = 1 ]; then
    if [ -x "$g3proxy_bin" ] && [ -x "$g3fcgen_bin" ]; then
        mkdir -p "$work/g3/ctl"
        g3_port=$(free_port)
        udp=$(free_udp_port)
        cat > "$work/g3/g3fcgen.yaml" <<EOF
---
backend:
  ca_certificate: $tlsdir/mitm-ca.pem
  ca_private_key: $tlsdir/mitm-ca.key
EOF
        cat > "$work/g3/g3proxy.yaml" <<EOF
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
auditor:
  - name: bench
    protocol_inspection: {}
    tls_cert_generator:
      query_peer_addr: 127.0.0.1:$udp
    tls_interception_client:
      ca_certificate: $tlsdir/origin-ca.pem
server:
  - name: bench
    type: http_proxy
    escaper: direct
    auditor: bench
    listen:
      address: 127.0.0.1:$g3_port
EOF
        cat > "$work/g3/launch.sh" <<EOF
#!/usr/bin/env bash
UDP_LISTEN_ADDR=127.0.0.1:$udp "$g3fcgen_bin" -c "$work/g3/g3fcgen.yaml" &
echo \$! > "$work/g3/g3fcgen.pid"
exec "$g3proxy_bin" -c "$work/g3/g3proxy.yaml" -C "$work/g3/ctl" -G inspect-bench
EOF
        bash "$work/g3/launch.sh" >"$work/g3/stdout.log" 2>&1 &
        g3_pid=$!
        pids+=($g3_pid)
        wait_port "$g3_port" "" g3proxy
        sleep 0.5
    else
        echo "no g3proxy at $g3proxy_bin (bench/g3proxy-build.sh): its column is left out" >&2
    fi
fi

fi # the peers

# YARA rules: N rules with marker strings that never occur in random data.
for i in $(seq 1 "$rules"); do
    printf 'rule bench_%d { strings: $a = "RAMPART-BENCH-RULE-%06d-A" $b = { 52 42 %02x 52 42 4d 41 52 4b } condition: $a or $b }\n' "$i" "$i" "$((i % 256))"
done > "$work/rules.yar"

# Starts Rampart binary $1 named $2 with extra TOML $3; its proxy port in
# $rampart_port and pid in $rampart_pid (not echoed: a command substitution's
# subshell would lose the pid to kill). With TLS the origin's port is
# intercepted, the origin CA trusted and the bench's interception CA imported.
start_rampart() { # binary name extra-toml
    local bin=$1 dir="$work/$2" port api tls_ports="[443]" tls_section=""
    mkdir -p "$dir/data"
    port=$(free_port); api=$(free_port)
    if [ "$tls" = 1 ]; then
        tls_ports="[443, $https_port]"
        tls_section="[tls]
extra_roots = [\"$tlsdir/origin-ca.pem\"]"
        "$bin" ca init --data-dir "$dir/data" --force \
            --import-cert "$tlsdir/mitm-ca.pem" --import-key "$tlsdir/mitm-ca.key" >"$dir/ca-init.log" 2>&1 ||
            { echo "rampart ca init failed: $(cat "$dir/ca-init.log")" >&2; exit 1; }
    fi
    cat > "$dir/rampart.toml" <<EOF
data_dir = "$dir/data"
[proxy]
listen = "127.0.0.1:$port"
connect_ports = ["443", "1025-65535"]
tls_ports = $tls_ports
allow_loopback_destinations = true
[api]
listen = "127.0.0.1:$api"
[tunnel]
listen = "127.0.0.1:$(free_port)"
$tls_section
$3
EOF
    "$bin" server --config "$dir/rampart.toml" >"$dir/stderr.log" 2>&1 &
    rampart_pid=$!
    pids+=($rampart_pid)
    wait_port "$port" "" "rampart $2"
    rampart_port=$port
}

# One download through $1 (a proxy URL or "direct"), at most $2 seconds:
# bytes per second, or FAILED (curl error or short body: a scanner that
# refused it, or a stack that stalled).
download() {
    local out proxy=() ca="$tlsdir/mitm-ca.pem"
    if [ "$1" = direct ]; then ca="$tlsdir/origin-ca.pem"; else proxy=(-x "$1"); fi
    if [ "${3:-}" = warm ]; then
        curl -s --max-time "$2" --cacert "$ca" "${proxy[@]}" -o /dev/null "${url%/bulk.bin}/warm.bin" || true
        return
    fi
    out=$(curl -s --max-time "$2" --cacert "$ca" "${proxy[@]}" -o /dev/null \
        -w '%{http_code} %{size_download} %{speed_download}' "$url" || true)
    set -- $out
    if [ "${1:-}" = 200 ] && [ "${2:-0}" = "$((size_mb * 1024 * 1024))" ]; then echo "$3"; else echo FAILED; fi
}

# Columns are registered first (`measure`), then measured interleaved
# (`run_columns`): a warm-up download through each, then BENCH_RUNS rounds with
# one download through every column per round, the order rotating every round,
# so that the host's load falls on every column alike. measure's arguments: $1
# label, $2 proxy URL or "direct", $3 timeout, then "name=pid" pairs whose CPU
# is counted (read around each of the column's downloads, so a daemon shared by
# two columns, clamd, is charged to the column that used it). A download that
# fails (a stall past its timeout, a short body) is counted and left out of the
# median; the row says how many completed.
rows=""
declare -A mbs
col_labels=()
declare -A col_proxy col_timeout col_pairs
measure() {
    local label=$1
    col_labels+=("$label")
    col_proxy[$label]=$2
    col_timeout[$label]=$3
    shift 3
    col_pairs[$label]="$*"
}
run_columns() {
    local label pair n=${#col_labels[@]} r k i v
    declare -A speeds ok cpu
    for label in "${col_labels[@]}"; do
        download "${col_proxy[$label]}" "${col_timeout[$label]}" warm
        speeds[$label]=""; ok[$label]=0
        for pair in ${col_pairs[$label]}; do cpu["$label/${pair%%=*}"]=0; done
    done
    for r in $(seq 1 "$runs"); do
        for k in $(seq 0 $((n - 1))); do
            label=${col_labels[$(( (k + r - 1) % n ))]}
            local before=() after
            for pair in ${col_pairs[$label]}; do before+=("$(cpu_of "${pair#*=}")"); done
            v=$(download "${col_proxy[$label]}" "${col_timeout[$label]}")
            log "round $r: $label: $([ "$v" = FAILED ] && echo FAILED || awk -v v="$v" 'BEGIN { printf "%.0f MB/s", v / 1e6 }')"
            [ "$v" != FAILED ] || continue
            speeds[$label]+="$v "
            ok[$label]=$((ok[$label] + 1))
            i=0
            for pair in ${col_pairs[$label]}; do
                after=$(cpu_of "${pair#*=}")
                cpu["$label/${pair%%=*}"]=$(awk -v a="${cpu["$label/${pair%%=*}"]}" -v b="$after" -v c="${before[$i]}" 'BEGIN { printf "%.3f", a + b - c }')
                i=$((i + 1))
            done
        done
    done
    for label in "${col_labels[@]}"; do
        local median=FAILED cells="" gb
        if [ "${ok[$label]}" -gt 0 ]; then
            median=$(printf '%s\n' ${speeds[$label]} | sort -n | awk '{a[NR]=$1} END { if (NR % 2) m = a[(NR+1)/2]; else m = (a[NR/2] + a[NR/2+1]) / 2; printf "%.0f", m/1e6 }')
        fi
        gb=$(awk -v n="${ok[$label]}" -v s="$size_mb" 'BEGIN { printf "%.4f", (n > 0 ? n : 1) * s / 1024 }')
        for pair in ${col_pairs[$label]}; do
            cells+="${pair%%=*} $(awk -v a="${cpu["$label/${pair%%=*}"]}" -v g="$gb" 'BEGIN { printf "%.2f", a / g }'), "
        done
        [ "${ok[$label]}" -gt 0 ] || cells="— "
        mbs[$label]=$median
        rows+="| $label | $median | ${ok[$label]}/$runs | ${cells%, } |"$'\n'
    done
}

inspect_toml="[inspect]
max_scan_size = $(( (size_mb + 50) * 1024 * 1024 ))
[inspect.yara]
rules = [\"$work/rules.yar\"]"
# 200 concurrent downloads (`concurrent`): see the header.
if [ "$scenario" = concurrent ]; then
    flows=${BENCH_CONC_FLOWS:-200}
    zip_mb=${BENCH_CONC_ZIP_MB:-25}
    sample_s=${BENCH_SAMPLE_S:-0.5}
    # A stored zip (no compression: the entry is the random bytes themselves),
    # so the archive walk, hashing and YARA read every byte of it again.
    if [ "$zip_mb" -gt 0 ]; then
        head -c "$((zip_mb * 1024 * 1024))" /dev/urandom > "$work/payload.bin"
        (cd "$work" && zip -q -0 "$work/www/bulk.zip" payload.bin)
        rm -f "$work/payload.bin"
        chmod 644 "$work/www/bulk.zip"
        # Every spooled zip is on disk at once at the peak: refuse to fill the disk.
        need_kib=$((flows * zip_mb * 1024 * 2))
        free_kib=$(df -k --output=avail "$work" | tail -n1)
        [ "$free_kib" -gt "$need_kib" ] ||
            die "the zip run spools up to $((flows * zip_mb)) MiB and wants twice that free under $work; $((free_kib / 1024)) MiB free: lower BENCH_CONC_ZIP_MB or BENCH_CONC_FLOWS"
    fi
    start_rampart "$rampart" concurrent "[inspect]
max_scan_size = $(( (size_mb + 50) * 1024 * 1024 ))
scan_timeout = \"600s\"
hold_timeout = \"600s\"
[inspect.yara]
rules = [\"$work/rules.yar\"]"
    spool="$work/concurrent/data/inspect-spool"
    download "http://127.0.0.1:$rampart_port" 120 warm
    sleep 1
    rest_rss=$(rss_kib "$rampart_pid")

    # Samples VmRSS, VmHWM and the spool bytes of PID every PERIOD s until STOP exists.
    cat > "$work/sampler.py" <<'PY'
import os, sys, time
pid, period, spool, out, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def status(key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0
def spooled():
    size = blocks = files = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith(spool):
                st = os.stat(f"{fd_dir}/{fd}")
                size += st.st_size; blocks += st.st_blocks * 512; files += 1
        except OSError:
            pass  # the descriptor closed between listing and reading it
    return size, blocks, files
t0 = time.monotonic()
with open(out, "w") as f:
    f.write("t_s\tvmrss_kib\tvmhwm_kib\trss_anon_kib\trss_file_kib\tspool_bytes\tspool_allocated_bytes\tspool_files\n")
    while not os.path.exists(stop):
        try:
            rss, hwm = status("VmRSS"), status("VmHWM")
            anon, file = status("RssAnon"), status("RssFile")
            size, blocks, files = spooled()
        except OSError:
            break  # the process is gone
        f.write(f"{time.monotonic() - t0:.2f}\t{rss}\t{hwm}\t{anon}\t{file}\t{size}\t{blocks}\t{files}\n")
        f.flush()
        time.sleep(period)
PY

    # One run: FLOWS parallel downloads of PATH (SIZE bytes) through Rampart; prints a table row.
    conc_run() { # name path size_bytes
        local name=$1 path=$2 bytes=$3 cfg="$work/curl-$1.cfg" res="$work/curl-$1.out"
        local tsv="$work/concurrent-$1.tsv" stop="$work/sampler-$1.stop"
        : > "$cfg"
        for i in $(seq 1 "$flows"); do
            printf 'url = "%s?flow=%d"\noutput = "/dev/null"\n' "${url%/bulk.bin}/$path" "$i" >> "$cfg"
        done
        python3 "$work/sampler.py" "$rampart_pid" "$sample_s" "$spool" "$tsv" "$stop" &
        local sampler=$!
        local c0 t0 t1 c1
        c0=$(cpu_of "$rampart_pid"); t0=$(date +%s.%N)
        curl -s --parallel --parallel-immediate --parallel-max "$flows" --max-time 900 \
            --proxy "http://127.0.0.1:$rampart_port" --cacert "$tlsdir/mitm-ca.pem" \
            -w '%{http_code} %{size_download}\n' -K "$cfg" > "$res" 2> "$work/curl-$1.err" || true
        t1=$(date +%s.%N); c1=$(cpu_of "$rampart_pid")
        touch "$stop"; wait "$sampler" || true
        local ok
        ok=$(awk -v b="$bytes" '$1 == 200 && $2 == b' "$res" | wc -l)
        [ "$ok" = "$flows" ] || log "$name: only $ok of $flows downloads completed with 200 and $bytes bytes (curl's lines: $res)"
        python3 - "$tsv" "$name" "$flows" "$ok" "$bytes" "$t0" "$t1" "$c0" "$c1" "$(hwm_kib "$rampart_pid")" <<'PY'
import csv, sys
tsv, name, flows, ok, size, t0, t1, c0, c1, hwm_end = sys.argv[1:]
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
peak = lambda k: max((int(r[k]) for r in rows), default=0)
wall = float(t1) - float(t0)
total = int(ok) * int(size)
gb = total / 1e9
mib = lambda kib: kib / 1024
print(f"| {name} | {ok}/{flows} | {wall:.1f} | {total / wall / 1e6:.0f} | "
      f"{mib(peak('vmrss_kib')):.0f} | {mib(peak('rss_anon_kib')):.0f} | {mib(peak('rss_file_kib')):.0f} | {mib(int(hwm_end)):.0f} | "
      f"{peak('spool_bytes') / 2**20:.0f} ({peak('spool_files')} files) | "
      f"{(float(c1) - float(c0)) / gb if gb else 0:.2f} | {len(rows)} |")
PY
    }
    echo "## Inspection: $flows concurrent intercepted downloads, type + hash + archive + $rules YARA rules, no clamd (load average at start: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    echo "Rampart at rest after a warm-up download: VmRSS $((rest_rss / 1024)) MiB."
    echo
    echo "| body | complete | wall s | MB/s (all flows) | peak VmRSS MiB (sampled) | of it anonymous | of it file-backed (mapped spool, binary) | VmHWM MiB (kernel peak, cumulative) | peak spool MiB | Rampart CPU s/GB | samples |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    [ "${BENCH_CONC_RANDOM:-1}" = 0 ] || conc_run "random-${size_mb}MiB" bulk.bin "$((size_mb * 1024 * 1024))"
    if [ "$zip_mb" -gt 0 ]; then
        conc_run "zip-${zip_mb}MiB" bulk.zip "$(stat -c %s "$work/www/bulk.zip")"
    fi
    sleep 1
    verdicts=$(python3 - "$work/concurrent/data/access.log" <<'PY'
import collections, json, sys
count = collections.Counter()
for line in open(sys.argv[1]):
    insp = json.loads(line).get("inspection")
    if insp and insp.get("size", 0) >= 1024 * 1024:
        count[f"{insp.get('file_type', '?')}: {insp.get('verdict', '?')}"] += 1
print(", ".join(f"{k} x{v}" for k, v in sorted(count.items())) or "none")
PY
)
    echo
    echo "- access-log inspections of the big bodies: $verdicts"
    echo "- VmRSS after the runs: $(( $(rss_kib "$rampart_pid") / 1024 )) MiB; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- samples: $work/concurrent-*.tsv (BENCH_KEEP=1 keeps them)"
    exit 0
fi

# Interleaved A/B (BENCH_AB=1): see the header.
if [ "$ab" = 1 ]; then
    rounds=${BENCH_ROUNDS:-8}
    names=(off streamed whole)
    declare -A ports cpids
    start_rampart "$rampart" ab-off "[inspect]
enabled = false"
    ports[off]=$rampart_port; cpids[off]=$rampart_pid
    start_rampart "$rampart" ab-streamed "$inspect_toml"
    ports[streamed]=$rampart_port; cpids[streamed]=$rampart_pid
    start_rampart "$rampart" ab-whole "$inspect_toml
stream = false"
    ports[whole]=$rampart_port; cpids[whole]=$rampart_pid
    declare -A cpu0 speeds
    for n in "${names[@]}"; do
        download "http://127.0.0.1:${ports[$n]}" 120 warm
        cpu0[$n]=$(cpu_of "${cpids[$n]}")
        speeds[$n]=""
    done
    echo "## Interleaved A/B: $([ "$tls" = 1 ] && echo "intercepted HTTPS" || echo "plain HTTP"), ${size_mb} MiB, $rules YARA rules, $rounds rounds (load average at start: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    echo "| round | order | off MB/s | streamed MB/s | whole MB/s | streamed/off | whole/off |"
    echo "|---|---|---|---|---|---|---|"
    for r in $(seq 1 "$rounds"); do
        # Rotate the order: each instance is first, second and third alike.
        shift_by=$(( (r - 1) % 3 ))
        order=("${names[@]:$shift_by}" "${names[@]:0:$shift_by}")
        declare -A this
        for n in "${order[@]}"; do
            v=$(download "http://127.0.0.1:${ports[$n]}" 120)
            [ "$v" != FAILED ] || { echo "download through $n FAILED" >&2; exit 1; }
            this[$n]=$v
            speeds[$n]+="$v "
        done
        awk -v r="$r" -v o="${order[*]}" -v a="${this[off]}" -v b="${this[streamed]}" -v c="${this[whole]}" \
            'BEGIN { printf "| %d | %s | %.0f | %.0f | %.0f | %.2f | %.2f |\n", r, o, a/1e6, b/1e6, c/1e6, b/a, c/a }'
    done
    med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END { if (NR % 2) m = a[(NR+1)/2]; else m = (a[NR/2] + a[NR/2+1]) / 2; printf "%.0f", m/1e6 }'; }
    gb=$(awk -v n="$rounds" -v s="$size_mb" 'BEGIN { printf "%.4f", n * s / 1024 }')
    sleep 1
    echo
    echo "| instance | median MB/s | CPU s/GB | median scan_ms after the last byte (access log) |"
    echo "|---|---|---|---|"
    for n in "${names[@]}"; do
        cpu=$(awk -v a="$(cpu_of "${cpids[$n]}")" -v b="${cpu0[$n]}" -v g="$gb" 'BEGIN { printf "%.2f", (a - b) / g }')
        scan=$(python3 - "$work/ab-$n/data/access.log" <<'PY'
import json, statistics, sys
ms = []
try:
    for line in open(sys.argv[1]):
        insp = json.loads(line).get("inspection")
        if insp and insp.get("size", 0) >= 10 * 1024 * 1024:
            ms.append(insp.get("scan_ms", 0))
except FileNotFoundError:
    pass
print(f"{statistics.median(ms):.0f} ({len(ms)} scans)" if ms else "n/a")
PY
)
        echo "| $n | $(med "${speeds[$n]}") | $cpu | $scan |"
    done
    echo
    echo "- streamed/off (medians): $(awk -v a="$(med "${speeds[streamed]}")" -v b="$(med "${speeds[off]}")" 'BEGIN { printf "%.2f", a / b }') (target ≥ 0.6); whole/off: $(awk -v a="$(med "${speeds[whole]}")" -v b="$(med "${speeds[off]}")" 'BEGIN { printf "%.2f", a / b }')"
    echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi

clamd_toml="[inspect]
max_scan_size = $(( (size_mb + 50) * 1024 * 1024 ))
scan_timeout = \"300s\"
hold_timeout = \"300s\"
[inspect.yara]
rules = [\"$work/rules.yar\"]
[inspect.clamav]
address = \"tcp:127.0.0.1:$clamd_port\"
max_stream_size = $(( (size_mb + 50) * 1024 * 1024 ))
io_timeout = \"300s\""

rampart_columns() { # binary suffix
    local bin=$1 sfx=$2
    start_rampart "$bin" "plain$sfx" "[inspect]
enabled = false"
    measure "rampart$sfx, inspection off" "http://127.0.0.1:$rampart_port" 120 "rampart=$rampart_pid"
    start_rampart "$bin" "default$sfx" "[inspect]
max_scan_size = $(( (size_mb + 50) * 1024 * 1024 ))"
    measure "rampart$sfx, type + hash + archive (defaults, no YARA)" "http://127.0.0.1:$rampart_port" 120 "rampart=$rampart_pid"
    start_rampart "$bin" "inspect$sfx" "$inspect_toml"
    measure "rampart$sfx, type + hash + archive + $rules YARA rules" "http://127.0.0.1:$rampart_port" 120 "rampart=$rampart_pid"
    start_rampart "$bin" "inspect-clamd$sfx" "$clamd_toml"
    measure "rampart$sfx, the same + clamd" "http://127.0.0.1:$rampart_port" 300 "rampart=$rampart_pid" "clamd=$clamd_pid"
}
# Short names for the ratios, once the columns have been measured.
rampart_aliases() { # suffix
    local sfx=$1
    mbs[off$sfx]=${mbs["rampart$sfx, inspection off"]}
    mbs[inspect$sfx]=${mbs["rampart$sfx, type + hash + archive + $rules YARA rules"]}
    mbs[clamd$sfx]=${mbs["rampart$sfx, the same + clamd"]}
}

measure direct direct 120 "origin=${pids[0]}"
rampart_columns "$rampart" ""
[ -z "$rampart_base" ] || rampart_columns "$rampart_base" " (base)"
if [ -n "$g3_pid" ]; then
    measure "g3proxy-mitm (no AV)" "http://127.0.0.1:$g3_port" 120 "g3proxy=$g3_pid"
fi
squid_label=none
if [ -n "$squid_pid" ]; then
    squid_label="squid + c-icap virus_scan + clamd"
    [ "$tls" != 1 ] || squid_label="squid ssl-bump + c-icap virus_scan + clamd"
    squid_label+=" (squid $("$squid_bin" -v | awk 'NR == 1 { print $4 }'))"
    measure "$squid_label" "http://127.0.0.1:$squid_port" "$peer_timeout" \
        "squid=$squid_pid" "c-icap=$icap_pid" "clamd=$clamd_pid"
fi
run_columns
rampart_aliases ""
[ -z "$rampart_base" ] || rampart_aliases " (base)"

# c-icap + clamd without Squid: the ICAP service's own rate on the same file.
icap_direct=n/a
if [ "$tls" != 1 ]; then
    c0=$(cpu_of "$icap_pid"); k0=$(cpu_of "$clamd_pid")
    t0=$(date +%s.%N)
    c-icap-client -i 127.0.0.1 -p "$icap_port" -s avscan -f "$work/www/bulk.bin" \
        -resp "http://127.0.0.1/bulk.bin" -o "$work/icap-out.bin" >"$work/icap-client.log" 2>&1 || true
    t1=$(date +%s.%N)
    c1=$(cpu_of "$icap_pid"); k1=$(cpu_of "$clamd_pid")
    if grep -q "204\|200 OK" "$work/icap-client.log"; then
        icap_direct=$(awk -v a="$t0" -v b="$t1" -v s="$size_mb" 'BEGIN { printf "%.0f", s * 1048576 / (b - a) / 1e6 }')
    else
        icap_direct=FAILED
    fi
    gb=$(awk -v s="$size_mb" 'BEGIN { printf "%.4f", s / 1024 }')
    rows+="| c-icap virus_scan + clamd, no Squid (c-icap-client, one run) | $icap_direct | 1 | c-icap $(awk -v a="$c1" -v b="$c0" -v g="$gb" 'BEGIN { printf "%.2f", (a - b) / g }'), clamd $(awk -v a="$k1" -v b="$k0" -v g="$gb" 'BEGIN { printf "%.2f", (a - b) / g }') |"$'\n'
fi

# Proof that each scanning path really scanned.
sleep 1
rampart_scanned=$(grep -c '"inspection"' "$work/inspect-clamd/data/access.log" 2>/dev/null || echo 0)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "FAILED" && b != "FAILED" && a != "n/a") printf "%.2f", a / b; else print "n/a" }'; }
cat <<EOF
## Inspection: bulk $([ "$tls" = 1 ] && echo "intercepted HTTPS" || echo "plain-HTTP") download, ${size_mb} MiB, $runs interleaved rounds (median MB/s of the completed downloads; CPU s per GB over them) — load average at the end $(cut -d' ' -f1-3 /proc/loadavg)

| path | MB/s | complete | CPU s/GB |
|---|---|---|---|
$rows
- rampart inspection / rampart without: $(ratio "${mbs[inspect]}" "${mbs[off]}") (target ≥ 0.6)$([ -z "$rampart_base" ] || echo "; base binary: $(ratio "${mbs[inspect (base)]}" "${mbs[off (base)]}")")
- rampart inspection (no clamd) / squid + c-icap + clamd: $(ratio "${mbs[inspect]}" "${mbs[$squid_label]:-FAILED}") (target ≥ 3)
- rampart + clamd / squid + c-icap + clamd: $(ratio "${mbs[clamd]}" "${mbs[$squid_label]:-FAILED}") (target ≥ 3)$([ "$icap_direct" = n/a ] || echo "; / c-icap + clamd without Squid: $(ratio "${mbs[clamd]}" "$icap_direct")")
- Rampart (clamd run) access-log records with an inspection: $rampart_scanned
EOF
