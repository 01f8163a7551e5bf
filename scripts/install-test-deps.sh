#!/usr/bin/env bash
# Installs what the test suite drives for real: curl, openssl, Squid (as an
# upstream proxy), rsyslog (syslog sink), nftables and iproute2 (agent tests in
# network namespaces), git and Python requests/pip (TLS trust tests).
# Debian 12, as root. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=()
for pkg in curl openssl squid rsyslog rsyslog-gnutls util-linux nftables iproute2 git python3 python3-pip ca-certificates procps; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Squid's Debian package starts a system instance; tests start their own.
systemctl disable --now squid >/dev/null 2>&1 || service squid stop >/dev/null 2>&1 || true
pkill -x squid 2>/dev/null || true
python3 -c 'import requests' 2>/dev/null || python3 -m pip install -q requests
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# scripts/fuzz-smoke.sh runs the parsers' fuzz targets for a bounded time.
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
