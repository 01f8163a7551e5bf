#!/usr/bin/env bash
# Installs everything bench/run.sh needs, idempotently, on Debian 12 (run as root).
#
#   bench/setup.sh            install what is missing
#
# What it installs and where:
#   - Debian: squid (plain peer), tinyproxy, nginx-light (origin), wrk, curl,
#     openssl, python3-venv/pip, util-linux (taskset), procps.
#   - squid-openssl (the build with ssl_bump) is *unpacked* into
#     bench/.peers/squid-openssl instead of installed: the Debian package
#     conflicts with `squid`, which the gateway's own tests use as an upstream,
#     and both must coexist on one machine.
#   - mitmproxy from PyPI into the venv bench/.venv.
#   - oha (`cargo install oha --locked`) when no `oha` is on PATH.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_DIR="$BENCH_DIR/.peers"
VENV_DIR="$BENCH_DIR/.venv"

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

# --- Debian packages -------------------------------------------------------
apt_pkgs=(squid tinyproxy wrk curl openssl python3 python3-venv python3-pip util-linux procps
    capnproto libssl-dev pkg-config # bench/g3proxy-build.sh (g3proxy, g3fcgen)
    clamav-daemon c-icap libc-icap-mod-virus-scan # bench/inspect_peer.sh (Squid + c-icap + clamd)
    zip # bench/inspect_peer.sh concurrent (the stored-zip downloads)
    nats-server linux-perf) # bench/fleet_ab.sh (fleet mode; PERF=1 profiles)
# nginx-light is enough (core HTTP + SSL); accept full nginx if it is already there.
if ! command -v nginx >/dev/null 2>&1; then
    apt_pkgs+=(nginx-light)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packages start their daemons on install where an init system runs; the
# benchmark starts its own instances on ephemeral ports, so stop the system ones
# (they would compete for the CPUs). Ignore failures: containers have no init.
for svc in squid tinyproxy nginx; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        log "stopping system service $svc"
        $SUDO systemctl stop "$svc" || true
    fi
done

# --- squid-openssl, unpacked -----------------------------------------------
SQUID_SSL="$PEERS_DIR/squid-openssl/usr/sbin/squid"
if [[ ! -x $SQUID_SSL ]]; then
    log "unpacking squid-openssl into $PEERS_DIR/squid-openssl"
    mkdir -p "$PEERS_DIR/debs"
    (cd "$PEERS_DIR/debs" && apt-get download squid-openssl >/dev/null)
    deb=$(ls -t "$PEERS_DIR"/debs/squid-openssl_*.deb | head -n1)
    dpkg-deb -x "$deb" "$PEERS_DIR/squid-openssl"
fi
# Its shared-library needs are the same as Debian squid's plus libssl3.
if ldd "$SQUID_SSL" | grep -q 'not found'; then
    log "squid-openssl misses libraries:"
    ldd "$SQUID_SSL" | grep 'not found' >&2
    exit 1
fi
"$SQUID_SSL" -v | grep -q -- '--with-openssl' || {
    log "unpacked squid is not built with OpenSSL"
    exit 1
}

# --- mitmproxy in a venv -----------------------------------------------------
# Debian's python3 (3.11 on Debian 12) so the result does not depend on pyenv.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)
if [[ ! -x $VENV_DIR/bin/mitmdump ]]; then
    log "installing mitmproxy into $VENV_DIR"
    "$PY" -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install -q --upgrade pip
    "$VENV_DIR/bin/pip" install -q mitmproxy
fi
"$VENV_DIR/bin/mitmdump" --version >/dev/null

# --- oha ------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null 2>&1; then
    log "cargo install oha --locked (a few minutes on 2 cores)"
    cargo install oha --locked
fi
oha --version >&2

log "ready: squid $(squid -v | head -n1 | awk '{print $4}'), squid-openssl, tinyproxy, nginx, wrk, oha, mitmproxy"
