#!/usr/bin/env bash
# Proves that the README's two commands work on a pristine Debian 12: builds a
# bookworm root with debootstrap, clones this repository into it and runs, in
# that root,
#   1. `cargo run --release -p rampart-cli -- server`, then checks that it
#      answers (/healthz, /metrics) and, with the README's demo origin, that it
#      proxies HTTP and intercepts HTTPS;
#   2. `bash scripts/install-test-deps.sh && cargo nextest run --workspace
#      --profile ci && scripts/fuzz-smoke.sh`.
# Run as root (debootstrap, chroot and namespaces need it):
#
#   FRESH_ROOT=/var/tmp/rampart-fresh-root scripts/fresh-debian-proof.sh          # all phases
#   scripts/fresh-debian-proof.sh bootstrap|prereqs|server|tests|shell|remove     # one phase
#
# Phases, each idempotent (rerun one after fixing what it revealed):
#   bootstrap  installs debootstrap on this host if missing, debootstraps bookworm
#              (minbase: the smallest Debian, like the debian:12 image) from the
#              mirror this host's apt uses, and clones the committed HEAD of this
#              repository into /root/rampart (a rerun fetches and checks out HEAD
#              again, keeping the root's target dir).
#   prereqs    what rustup.rs asks of a new machine before any `cargo` command:
#              a C linker (build-essential), curl, ca-certificates, git.
#   server     README command 1 (see above).
#   tests      README command 2 (see above).
#   run CMD    one command in the root (shared network), e.g. the README's first
#              command before prereqs, to see what a bare Debian lacks.
#   shell      an interactive shell in the root (shared network), to investigate.
#   remove     unmounts anything left under the root and deletes it.
#
# Isolation, so that nothing in the root touches this host's processes or ports:
# every command runs in fresh PID and mount namespaces (install-test-deps.sh's
# pkill sees only the root's processes; every mount lives and dies with the
# namespace, none is ever visible on the host), and the root has a
# /usr/sbin/policy-rc.d that stops Debian packages from starting their daemons
# (squid, postgresql, haproxy, ... would otherwise bind this host's ports: the
# apt step shares the host's network). The server and the tests run in a fresh
# network namespace too (loopback only), so their ports cannot collide with the
# host's. Because that namespace has no route out, the network half of each
# command runs first with the host's network: `cargo build` before `cargo run`,
# and `install-test-deps.sh` plus a `cargo fetch` of the workspace and of every
# fuzz crate before the tests; the offline half then runs exactly as written.
#
# The Rust toolchain is this host's ~/.rustup, bind-mounted read-only; the
# root's CARGO_HOME (/root/.cargo) is its own: rustup's proxies copied from this
# host, crates downloaded from crates.io, cargo-nextest, cargo-fuzz and cargo-deb
# built by install-test-deps.sh as on a new machine; the target dir is the
# clone's own (a cold build). Everything heavy runs under `nice -n 19`.
#
# Site settings copied from this host, because they describe this host's network,
# not Debian: /etc/resolv.conf, /etc/hosts, the CA certificates in
# /usr/local/share/ca-certificates (an egress proxy that re-signs TLS) and apt
# settings that mention Check-Valid-Until (a snapshot mirror).
#
# Disk: a default debug build of every test binary takes tens of GB (each links
# all its dependencies with full debug info). FRESH_LEAN=1 fits the proof into
# about 10 GB: test binaries without debug info and without incremental state
# (CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0), the release build deleted
# once the server phase is done (the tests run the debug binary) and the debug
# build deleted before fuzz-smoke. FRESH_CARGO_ENV adds any other variables to
# the root's environment. Each phase first checks that FRESH_MIN_FREE_GB
# (default 15 for bootstrap, 5 for later phases) is free.
#
# Logs go to $FRESH_LOGS (default: $FRESH_ROOT.logs), one file per phase.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
root=${FRESH_ROOT:-/var/tmp/rampart-fresh-root}
logs=${FRESH_LOGS:-$root.logs}
min_free_gb=${FRESH_MIN_FREE_GB:-15}
host_rustup=${RUSTUP_HOME:-$HOME/.rustup}
host_rustup_bin=$(command -v rustup || true)
clone=/root/rampart

die() {
  echo "fresh-debian-proof: $*" >&2
  exit 1
}
say() { echo "fresh-debian-proof: $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot and namespaces need it)"
[[ $root == /* && $root != / ]] || die "FRESH_ROOT must be an absolute path other than /"

# The Debian mirror this host's apt uses (deb822 or one-line format).
host_mirror() {
  local suite=$1 uri
  uri=$(awk -v s="$suite" '
    /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) {print u; exit}}
    /^deb / {for (i=2;i<=NF;i++) if ($i ~ /^(http|https|file):/) {url=$i; if ($(i+1)==s) {print url; exit}}}
  ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  echo "${uri:-}"
}

# Mounts still present under the root (left by a killed run of an older
# version, or by hand): never delete through them.
mounts_under_root() {
  findmnt -rn -o TARGET | awk -v r="$root" 'index($0, r "/") == 1 || $0 == r' | sort -r
}

unmount_leftovers() {
  local m
  for m in $(mounts_under_root); do
    umount -R "$m" 2>/dev/null || umount -l "$m" || true
  done
}

# Only delete what debootstrap made (its marker dir while it runs, ours once
# done) or an empty directory: FRESH_ROOT may be mistyped.
is_ours_or_empty() {
  [[ ! -e $root ]] || [[ -e $root/.debootstrap-complete || -d $root/debootstrap ]] ||
    [[ -d $root && -z $(ls -A "$root") ]]
}

ns_pid=
cleanup() {
  local status=$?
  # unshare ignores SIGTERM while it waits; SIGKILL it, and --kill-child takes
  # the namespace's PID 1, hence every process in the root, with it.
  if [[ -n $ns_pid ]] && kill -0 "$ns_pid" 2>/dev/null; then
    kill -KILL "$ns_pid" 2>/dev/null || true
  fi
  # The mounts live in the namespace and vanish with it; anything left is a bug.
  if [[ -d $root ]] && [[ -n $(mounts_under_root) ]]; then
    say "unmounting leftovers under $root"
    unmount_leftovers
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# in_root NET CMD...: runs CMD (a bash script) in the root, as root, in fresh PID
# and mount namespaces; NET=host shares this host's network, NET=isolated gives
# it a network namespace of its own with only loopback up. /proc, /sys, /dev,
# /dev/pts, a private /dev/shm and the read-only toolchain are mounted inside
# the namespace only.
in_root() {
  local net=$1 script=$2
  local args=(--pid --fork --kill-child --mount --propagation private)
  [[ $net == isolated ]] && args+=(--net)
  # shellcheck disable=SC2016
  local setup='
    set -euo pipefail
    root=$1 rustup=$2 net=$3 script=$4 cargo_env=$5
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
    mkdir -p "$root/root/.rustup"
    mount --bind "$rustup" "$root/root/.rustup"
    mount -o remount,bind,ro "$root/root/.rustup"
    if [[ $net == isolated ]]; then ip link set lo up; fi
    enter() {
      chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        ${FUZZ_SECONDS:+FUZZ_SECONDS=$FUZZ_SECONDS} $cargo_env \
        nice -n 19 /bin/bash -c "$script"
    }
    if [[ ${FRESH_INTERACTIVE:-} == 1 ]]; then enter; exit; fi
    # In the background and waited for: this shell stays PID 1 of the
    # namespace and reaps the orphans daemons leave.
    enter &
    wait $!
  '
  if [[ ${FRESH_INTERACTIVE:-} == 1 ]]; then
    FRESH_INTERACTIVE=1 unshare "${args[@]}" -- /bin/bash -c "$setup" in-root "$root" "$host_rustup" "$net" "$script" "${FRESH_CARGO_ENV:-}"
    return
  fi
  unshare "${args[@]}" -- /bin/bash -c "$setup" in-root "$root" "$host_rustup" "$net" "$script" "${FRESH_CARGO_ENV:-}" &
  ns_pid=$!
  local status=0
  wait "$ns_pid" || status=$?
  ns_pid=
  return "$status"
}

# run_phase NAME NET SCRIPT: in_root with the output kept in $logs/NAME.log
# and timed.
run_phase() {
  local name=$1 net=$2 script=$3 started=$SECONDS status=0 free_gb
  mkdir -p "$logs"
  free_gb=$(df -BG --output=avail "$root" | tail -n1 | tr -dc 0-9)
  ((free_gb >= ${FRESH_MIN_FREE_GB:-5})) || die "$name: only ${free_gb} GB free under $root"
  say "$name: running (log: $logs/$name.log)"
  in_root "$net" "$script" > >(tee "$logs/$name.log") 2>&1 || status=$?
  say "$name: exit $status after $((SECONDS - started))s"
  echo "$name exit=$status seconds=$((SECONDS - started)) at $(date -u +%FT%TZ)" >>"$logs/summary"
  return "$status"
}

phase_bootstrap() {
  command -v debootstrap >/dev/null || {
    say "installing debootstrap on this host (a tool of this proof only)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  mkdir -p "$(dirname "$root")"
  local free_gb
  free_gb=$(df -BG --output=avail "$(dirname "$root")" | tail -n1 | tr -dc 0-9)
  ((free_gb >= min_free_gb)) || die "only ${free_gb} GB free under $(dirname "$root"); the proof needs ${min_free_gb} GB (FRESH_MIN_FREE_GB)"
  local mirror security
  mirror=${FRESH_MIRROR:-$(host_mirror bookworm)}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=${FRESH_SECURITY_MIRROR:-$(host_mirror bookworm-security)}
  security=${security:-http://deb.debian.org/debian-security}
  if [[ ! -e $root/.debootstrap-complete ]]; then
    [[ -n $(mounts_under_root) ]] && die "mounts under $root: $(mounts_under_root | tr '\n' ' ')"
    is_ours_or_empty || die "$root exists and is not a root this script made; choose another FRESH_ROOT"
    rm -rf --one-file-system "$root"
    say "debootstrap bookworm (minbase) from $mirror into $root"
    nice -n 19 debootstrap --variant=minbase bookworm "$root" "$mirror"
    touch "$root/.debootstrap-complete"
  fi
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  # This host's network, not Debian's: name resolution, the egress proxy's CA,
  # the snapshot mirror's expired Valid-Until.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/hosts "$root/etc/hosts"
  mkdir -p "$root/usr/local/share/ca-certificates"
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  local conf
  for conf in /etc/apt/apt.conf.d/*; do
    grep -q Check-Valid-Until "$conf" 2>/dev/null && cp "$conf" "$root/etc/apt/apt.conf.d/"
  done
  # No package may start its daemon in the root: the apt step shares this
  # host's network (exit 101 = action forbidden, see invoke-rc.d(8)).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  # rustup's proxies (one binary dispatching on its name), as rustup-init
  # leaves them; the toolchains themselves are the bind-mounted ~/.rustup.
  [[ -n $host_rustup_bin ]] || die "rustup is not on PATH: the root borrows this host's Rust toolchain"
  [[ -d $host_rustup/toolchains ]] || die "no toolchains in $host_rustup"
  mkdir -p "$root/root/.cargo/bin" "$root/root/.rustup"
  local tool
  for tool in rustup cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb rust-lldb; do
    [[ -e $root/root/.cargo/bin/$tool ]] || cp "$(readlink -f "$host_rustup_bin")" "$root/root/.cargo/bin/$tool"
  done
  # The committed HEAD, as `git clone` gives a newcomer (never the host's
  # work tree, nor its target dir).
  if [[ ! -d $root$clone/.git ]]; then
    git clone -q "$repo" "$root$clone"
  else
    git -C "$root$clone" fetch -q origin HEAD
    git -C "$root$clone" checkout -q -f --detach FETCH_HEAD
  fi
  say "root ready: Debian $(cat "$root/etc/debian_version"), rampart at $(git -C "$root$clone" log -1 --format='%h %s' | cut -c1-72)"
}

phase_prereqs() {
  run_phase prereqs host '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends build-essential curl ca-certificates git >/dev/null
    update-ca-certificates >/dev/null
    echo "prereqs: $(cc --version | head -n1); $(curl --version | head -n1 | cut -d" " -f1-2); $(git --version)"
  '
}

# README command 1. The build (with downloads) shares the host's network; the
# server then runs in its own network namespace and is queried there.
phase_server() {
  run_phase server-build host "
    cd $clone
    cargo build --release -p rampart-cli
  "
  run_phase server isolated "
    set -euo pipefail
    cd $clone
    rm -rf rampart-data rampart-demo
    wait_for() { # URL [curl args]: up to 60 s
      local url=\$1; shift
      for _ in \$(seq 600); do curl -fsS -o /dev/null \"\$@\" \"\$url\" 2>/dev/null && return 0; sleep 0.1; done
      echo \"no answer from \$url\" >&2; return 1
    }
    # README: cargo run --release -p rampart-cli -- server
    cargo run --release -p rampart-cli -- server >server.log 2>&1 &
    server=\$!
    wait_for http://127.0.0.1:8080/healthz || { cat server.log; exit 1; }
    echo \"healthz: \$(curl -fsS http://127.0.0.1:8080/healthz)\"
    curl -fsS http://127.0.0.1:8080/metrics | grep -m3 '^rampart_'
    kill \$server; wait \$server || true
    # The README's offline tour: the demo origin and the server configured for it.
    cargo run --release -p rampart-cli -- demo >demo.log 2>&1 &
    demo=\$!
    for _ in \$(seq 600); do [[ -s rampart-demo/demo.toml ]] && break; sleep 0.1; done
    [[ -s rampart-demo/demo.toml ]] || { cat demo.log; exit 1; }
    cargo run --release -p rampart-cli -- server --config rampart-demo/demo.toml >server-demo.log 2>&1 &
    server=\$!
    wait_for http://127.0.0.1:8080/healthz || { cat server-demo.log; exit 1; }
    code=\$(curl -sS -x http://127.0.0.1:3128 http://demo.rampart.test:8480/ -o /dev/null -w '%{http_code}')
    echo \"proxied http://demo.rampart.test:8480/: \$code\"
    [[ \$code == 200 ]]
    echo \"intercepted https://demo.rampart.test:8443/report.txt:\"
    curl -fsS -x http://127.0.0.1:3128 --cacert rampart-data/ca.pem https://demo.rampart.test:8443/report.txt | head -n3
    sleep 0.5; echo \"access log: \$(tail -n1 rampart-data/access.log | cut -c1-160)\"
    kill \$server \$demo; wait \$server \$demo 2>/dev/null || true
    echo 'server: README command 1 works'
  "
}

# README command 2. install-test-deps.sh (apt, PyPI, cargo install) and the
# crate downloads share the host's network; the test run itself is isolated.
phase_tests() {
  if [[ ${FRESH_LEAN:-} == 1 ]]; then
    rm -rf "$root$clone/target/release"
    FRESH_CARGO_ENV="CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0 ${FRESH_CARGO_ENV:-}"
  fi
  run_phase install-test-deps host "
    cd $clone
    bash scripts/install-test-deps.sh
    cargo fetch
    for fuzz in crates/*/fuzz; do (cd \$fuzz && cargo fetch); done
  "
  run_phase nextest isolated "
    cd $clone
    cargo nextest run --workspace --profile ci
  "
  [[ ${FRESH_LEAN:-} == 1 ]] && rm -rf "$root$clone/target/debug"
  run_phase fuzz-smoke isolated "
    cd $clone
    scripts/fuzz-smoke.sh
  "
}

# `run 'COMMAND'`: one command in the root with the host's network (e.g. the
# README's first command before prereqs, to see what a bare Debian lacks).
phase_run() {
  run_phase "${FRESH_RUN_LOG:-run}" host "cd $clone && $run_command"
}

phase_shell() {
  FRESH_INTERACTIVE=1 in_root host 'cd /root/rampart 2>/dev/null; exec bash -i'
}

phase_remove() {
  [[ -d $root ]] || { say "$root does not exist"; return 0; }
  is_ours_or_empty || die "$root is not a root this script made; not deleting it"
  unmount_leftovers
  [[ -z $(mounts_under_root) ]] || die "still mounted under $root, not deleting: $(mounts_under_root | tr '\n' ' ')"
  rm -rf --one-file-system "$root"
  say "removed $root (logs kept in $logs)"
}

phases=("$@")
((${#phases[@]})) || phases=(bootstrap prereqs server tests)
if [[ ${phases[0]} == run ]]; then
  ((${#phases[@]} == 2)) || die "usage: $0 run 'COMMAND'"
  run_command=${phases[1]}
  phases=(run)
fi
for phase in "${phases[@]}"; do
  case $phase in
    bootstrap | prereqs | server | tests | run | shell | remove) "phase_$phase" ;;
    *) die "unknown phase '$phase' (bootstrap, prereqs, server, tests, shell, remove)" ;;
  esac
done
