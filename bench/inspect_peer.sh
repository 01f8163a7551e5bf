#!/usr/bin/env bash
# Inspection bench (issue 17): a bulk plain-HTTP download through
#   direct                      (curl straight to the origin)
#   rampart                     (inspection off)
#   rampart+inspect             (type + SHA-256 + archive walk + YARA rules, no clamd)
#   rampart+inspect+clamd       (the same plus clamd INSTREAM)
#   squid+c-icap+clamd          (Squid RESPMOD to c-icap's virus_scan, clamd_mod)
# all on loopback, one clamd shared by both clamd columns, its database only a
# test signature written here (no freshclam). Figures: MB/s, median of runs.
#
# Known (2026-12-07, Debian 12): c-icap-modules 0.5.5's clamd_mod cannot parse
# ClamAV 1.4.6's VERSION answer ("clamd_get_versions: Can not parse response")
# and the RESPMOD of a large body then never completes (curl's 120 s cap ends
# it: the column reads FAILED). The Rampart columns are valid on their own.
#
# Plain HTTP only: Squid's ssl_bump needs Debian's squid-openssl, which
# replaces the squid package other tests run; the intercepted comparison is
# left for a machine where that swap is safe.
#
# Needs: Debian squid, clamav-daemon, c-icap, libc-icap-mod-virus-scan,
# python3, curl; target/release/rampart (cargo build --release -p rampart-cli).
# Env: BENCH_SIZE_MB (200), BENCH_RUNS (3), BENCH_YARA_RULES (100), RAMPART_BIN.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
size_mb=${BENCH_SIZE_MB:-200}
runs=${BENCH_RUNS:-3}
rules=${BENCH_YARA_RULES:-100}
rampart=${RAMPART_BIN:-$root/target/release/rampart}
for tool in squid clamd c-icap python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (bench/setup.sh; apt-get install -y c-icap libc-icap-mod-virus-scan clamav-daemon squid)" >&2; exit 1; }
done
[ -x "$rampart" ] || { echo "$rampart is missing: cargo build --release -p rampart-cli" >&2; exit 1; }
[ -f /usr/lib/x86_64-linux-gnu/c_icap/virus_scan.so ] || { echo "apt-get install -y libc-icap-mod-virus-scan" >&2; exit 1; }

work=$(mktemp -d /tmp/inspect-peer.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# Ports below the ephemeral range, picked free.
free_port() {
    python3 -c 'import random,socket
while True:
    p=random.randint(20000,30000); s=socket.socket()
    try: s.bind(("127.0.0.1",p)); s.close(); print(p); break
    except OSError: pass'
}
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1 ($2)" >&2; exit 1
}

# Origin: a random (incompressible, signature-free) file.
mkdir -p "$work/www"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/www/bulk.bin"
origin_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$origin_port" >/dev/null 2>&1 &
pids+=($!)
wait_port "$origin_port" origin
url="http://127.0.0.1:$origin_port/bulk.bin"

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
StreamMaxLength $((size_mb + 50))M
MaxScanSize $((size_mb + 50))M
MaxFileSize $((size_mb + 50))M
EOF
clamd -c "$work/clamd/clamd.conf" >/dev/null 2>&1 &
pids+=($!)
wait_port "$clamd_port" clamd

# c-icap: virus_scan through clamd_mod.
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
pids+=($!)
wait_port "$icap_port" c-icap

# Squid: RESPMOD to c-icap, no cache.
squid_port=$(free_port)
mkdir -p "$work/squid"
chmod 777 "$work/squid"
cat > "$work/squid/squid.conf" <<EOF
http_port 127.0.0.1:$squid_port
pid_filename $work/squid/squid.pid
access_log none
cache_log $work/squid/cache.log
cache deny all
cache_mem 8 MB
http_access allow localhost
http_access deny all
icap_enable on
icap_service av respmod_precache bypass=0 icap://127.0.0.1:$icap_port/avscan
adaptation_access av allow all
EOF
squid -N -f "$work/squid/squid.conf" >/dev/null 2>&1 &
pids+=($!)
wait_port "$squid_port" squid

# YARA rules: N rules with marker strings that never occur in random data.
for i in $(seq 1 "$rules"); do
    printf 'rule bench_%d { strings: $a = "RAMPART-BENCH-RULE-%06d-A" $b = { 52 42 %02x 52 42 4d 41 52 4b } condition: $a or $b }\n' "$i" "$i" "$((i % 256))"
done > "$work/rules.yar"

# Starts Rampart named $1 with extra TOML $2; its proxy port in $rampart_port
# (not echoed: a command substitution's subshell would lose the pid to kill).
start_rampart() { # name extra-toml
    local dir="$work/$1" port api
    mkdir -p "$dir"
    port=$(free_port); api=$(free_port)
    cat > "$dir/rampart.toml" <<EOF
data_dir = "$dir/data"
[proxy]
listen = "127.0.0.1:$port"
allow_loopback_destinations = true
[api]
listen = "127.0.0.1:$api"
[tunnel]
listen = "127.0.0.1:$(free_port)"
$2
EOF
    "$rampart" server --config "$dir/rampart.toml" >"$dir/stderr.log" 2>&1 &
    pids+=($!)
    wait_port "$port" "rampart $1"
    rampart_port=$port
}

# One download through $1 (a proxy URL or "direct"): bytes per second, or
# FAILED (curl error or short body: a scanner that refused it).
download() {
    local out
    if [ "$1" = direct ]; then
        out=$(curl -s --max-time 120 -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' "$url" || true)
    else
        out=$(curl -s --max-time 120 -x "$1" -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' "$url" || true)
    fi
    set -- $out
    if [ "${1:-}" = 200 ] && [ "${2:-0}" = "$((size_mb * 1024 * 1024))" ]; then echo "$3"; else echo FAILED; fi
}

median_mbs() { # proxy
    local vals=() v
    for _ in $(seq 1 "$runs"); do
        v=$(download "$1")
        [ "$v" = FAILED ] && { echo FAILED; return; }
        vals+=("$v")
    done
    printf '%s\n' "${vals[@]}" | sort -n | awk -v n="${#vals[@]}" '{a[NR]=$1} END {printf "%.0f", a[int((n+1)/2)]/1e6}'
}

start_rampart plain "[inspect]
enabled = false"
plain=$rampart_port
start_rampart inspect "[inspect]
max_scan_size = $(( (size_mb + 50) * 1024 * 1024 ))
[inspect.yara]
rules = [\"$work/rules.yar\"]"
inspect=$rampart_port
start_rampart inspect-clamd "[inspect]
max_scan_size = $(( (size_mb + 50) * 1024 * 1024 ))
scan_timeout = \"300s\"
hold_timeout = \"300s\"
[inspect.yara]
rules = [\"$work/rules.yar\"]
[inspect.clamav]
address = \"tcp:127.0.0.1:$clamd_port\"
max_stream_size = $(( (size_mb + 50) * 1024 * 1024 ))
io_timeout = \"300s\""
inspect_clamd=$rampart_port

declare -A mbs
mbs[direct]=$(median_mbs direct)
mbs[rampart]=$(median_mbs "http://127.0.0.1:$plain")
mbs[rampart_inspect]=$(median_mbs "http://127.0.0.1:$inspect")
mbs[rampart_inspect_clamd]=$(median_mbs "http://127.0.0.1:$inspect_clamd")
mbs[squid_icap_clamd]=$(median_mbs "http://127.0.0.1:$squid_port")

# Proof that each scanning path really scanned: the ICAP log has the request,
# Rampart's access log has an inspection record.
sleep 1
icap_seen=$(grep -c avscan "$work/icap/access.log" 2>/dev/null || echo 0)
rampart_scanned=$(grep -c '"inspection"' "$work/inspect-clamd/data/access.log" 2>/dev/null || echo 0)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "FAILED" && b != "FAILED") printf "%.2f", a / b; else print "n/a" }'; }
cat <<EOF
## Inspection: bulk plain-HTTP download, ${size_mb} MiB, median of $runs (MB/s)

| path | MB/s |
|---|---|
| direct | ${mbs[direct]} |
| rampart, inspection off | ${mbs[rampart]} |
| rampart, type + hash + archive + $rules YARA rules | ${mbs[rampart_inspect]} |
| rampart, the same + clamd | ${mbs[rampart_inspect_clamd]} |
| squid + c-icap virus_scan + clamd | ${mbs[squid_icap_clamd]} |

- rampart inspection / rampart without: $(ratio "${mbs[rampart_inspect]}" "${mbs[rampart]}") (target ≥ 0.6)
- rampart + clamd / squid + c-icap + clamd: $(ratio "${mbs[rampart_inspect_clamd]}" "${mbs[squid_icap_clamd]}") (target ≥ 3)
- scanned: c-icap access-log lines for avscan: $icap_seen; Rampart (clamd run) access-log records with inspection: $rampart_scanned
EOF
