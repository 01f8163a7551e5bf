#!/usr/bin/env bash
# Installs what the test suite drives for real, on a fresh Debian 12, as root.
# Idempotent. Debian packages come from apt; PyPI packages go only into the
# virtual environment this script creates ($RAMPART_TEST_VENV, default
# /opt/rampart-test-venv): Debian 12's own python3 refuses system-wide pip.
#
# What each group is for:
#   base      curl, openssl, git, python3-requests (trust and proxy tests), python3-yaml
#             (openapi.yaml check), procps
#   trust     libnss3-tools (certutil), nodejs, python3-pip, default-jre-headless
#             (keytool): the tools `rampart trust install|verify` covers
#   upstream  squid (egress chaining peer), rsyslog (syslog sink)
#   netns     nftables, iproute2, conntrack, dnsmasq, udhcpc (agent steering and isolation
#             tests in network namespaces)
#   inspect   zip, p7zip-full, qpdf (encrypted fixtures), clamav-daemon (INSTREAM)
#   build     build-essential, pkg-config (crates that build C), python3-venv
#   console   chromium (driven by Playwright from the venv; never `playwright install`)
#   fleet     nats-server (JetStream), postgresql (fleet event store), haproxy
#             (PROXY protocol v2 in front of gateways); tests start their own
#   package   systemd (systemd-analyze verify), logrotate, binutils (strip), dpkg
#             (the .deb install test; cargo-deb below builds the package)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
  # base
  curl openssl ca-certificates git python3 python3-requests python3-venv python3-yaml procps util-linux
  # trust
  libnss3-tools nodejs python3-pip default-jre-headless
  # upstream
  squid rsyslog rsyslog-gnutls
  # netns
  nftables iproute2 conntrack dnsmasq-base udhcpc
  # inspect
  zip unzip p7zip-full qpdf clamav-daemon
  # build
  build-essential pkg-config
  # console
  chromium
  # fleet
  nats-server postgresql haproxy
  # package
  systemd logrotate binutils dpkg
)
need_apt=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Squid's and ClamAV's Debian packages start system instances (and freshclam
# would try to download signatures); tests start their own on loopback.
for unit in squid clamav-daemon clamav-freshclam nats-server postgresql haproxy; do
  systemctl disable --now "$unit" >/dev/null 2>&1 || service "$unit" stop >/dev/null 2>&1 || true
done
pkill -x squid 2>/dev/null || true
pkill -x clamd 2>/dev/null || true
pkill -x freshclam 2>/dev/null || true

# PyPI packages for tests, in a venv of our own (tests look for it at
# $RAMPART_TEST_VENV or /opt/rampart-test-venv).
venv=${RAMPART_TEST_VENV:-/opt/rampart-test-venv}
pypi=(msoffcrypto-tool playwright)
if [[ ! -x "$venv/bin/python" ]]; then
  /usr/bin/python3 -m venv "$venv"
fi
for p in "${pypi[@]}"; do
  "$venv/bin/python" -m pip show -q "$p" >/dev/null 2>&1 || "$venv/bin/python" -m pip install -q "$p"
done

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# scripts/fuzz-smoke.sh runs the parsers' fuzz targets for a bounded time.
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# scripts/build-deb.sh and the .deb install test package the binary with it.
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
