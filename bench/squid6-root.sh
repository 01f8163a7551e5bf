#!/usr/bin/env bash
# Builds a minimal Debian 13 (trixie) root holding `squid-openssl` (Squid 6.x)
# and installs wrappers that run it from there, for the intercepted Squid +
# c-icap + clamd peer of bench/inspect_peer.sh (issue 17).
#
# Why: Squid 5.7 (Debian 12's squid and squid-openssl, also in
# bookworm-backports) stalls a RESPMOD body for good once its 64 KiB buffer
# towards the ICAP service is full while the origin has more to send (Squid bug
# 5352, fixed upstream in Squid >= 6.10). On this host almost every ssl_bump +
# ICAP bulk download stalled (see
# bench/notes/31-issue-17-200-concurrent-downloads-the-squid-c-i.md). Debian 13 ships a fixed 6.x; installing
# it on the Debian 12 host would replace the `squid` the gateway's tests use, so
# it lives in its own root instead and the host's packages stay untouched.
#
# What it makes:
#   ROOT (/var/tmp/rampart-squid6-root): debootstrap --variant=minbase trixie,
#       then squid-openssl installed with a policy-rc.d that refuses every
#       service start (no daemon runs in the root; the bench starts Squid).
#   bench/.peers/squid6/in-root CMD ARGS...: runs CMD from the root in a
#       private mount namespace (unshare -m) with the host's network (same
#       network namespace: loopback is shared), /etc/hosts, /proc, /dev, and every
#       directory named in SQUID6_BIND (space-separated absolute paths, e.g. the
#       bench's work dir) bind-mounted at the same path, so the paths in
#       squid.conf mean the same inside and out. It execs, so the pid the
#       caller gets is the command's own pid (kill and CPU accounting work),
#       and the mounts vanish with the process.
#   bench/.peers/squid6/squid, .../security_file_certgen: in-root for the root's
#       /usr/sbin/squid and /usr/lib/squid/security_file_certgen. Squid runs
#       chrooted, so the helpers it starts (sslcrtd_program) are the root's.
#
# Idempotent: an existing root is kept (debootstrap skipped when the root has
# its apt), squid-openssl is installed only when missing, the wrappers are
# rewritten every time. SQUID6_ROOT and DEBIAN_MIRROR override the defaults.
# Size: about 350 MB (apt's caches are emptied). Needs root, debootstrap
# (apt-get install -y debootstrap), util-linux (unshare), network access to
# the mirror. Remove with: rm -rf /var/tmp/rampart-squid6-root bench/.peers/squid6
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
squid6_root=${SQUID6_ROOT:-/var/tmp/rampart-squid6-root}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
wrapper_dir="$here/.peers/squid6"

log() { echo "[squid6-root] $*" >&2; }
die() { echo "[squid6-root] error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
command -v unshare >/dev/null || die "unshare is missing: apt-get install -y util-linux"

# Runs a command inside the root with /proc and /dev mounted, in a private
# mount namespace so nothing stays mounted on the host if it fails.
in_root() {
    unshare -m --propagation private sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" "$@"' sh "$squid6_root" "$@"
}

if [ ! -x "$squid6_root/usr/bin/apt-get" ]; then
    log "debootstrap trixie into $squid6_root (a few minutes)"
    # A half-made root from an interrupted run is redone from scratch.
    rm -rf "$squid6_root"
    debootstrap --variant=minbase trixie "$squid6_root" "$mirror"
fi

# No service may start in the root: a postinst that would start Squid gets 101.
printf '#!/bin/sh\nexit 101\n' > "$squid6_root/usr/sbin/policy-rc.d"
chmod 755 "$squid6_root/usr/sbin/policy-rc.d"

# (Not `-x usr/sbin/squid`: it links to /etc/alternatives, which only resolves inside.)
if [ "$(in_root dpkg-query -W -f '${Status}' squid-openssl 2>/dev/null || true)" != "install ok installed" ]; then
    log "installing squid-openssl in the root"
    in_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends squid-openssl
    in_root apt-get clean
    rm -rf "$squid6_root/var/lib/apt/lists/"*
fi
# Read whole before matching: grep -q quitting early would fail the pipe (pipefail).
squid_build=$(in_root /usr/sbin/squid -v)
grep -q -- '--with-openssl' <<<"$squid_build" ||
    die "the root's squid is not built with OpenSSL (expected Debian's squid-openssl)"

mkdir -p "$wrapper_dir"
cat > "$wrapper_dir/in-root" <<EOF
#!/bin/sh
# Written by bench/squid6-root.sh: runs CMD from the trixie root $squid6_root
# with the host's network, /etc/hosts, /proc, /dev and the directories in \$SQUID6_BIND
# bind-mounted at the same paths. Execs: the caller's pid is CMD's pid.
[ \$# -gt 0 ] || { echo "usage: \$0 CMD [ARGS...]" >&2; exit 2; }
exec unshare -m --propagation private sh -c '
    root=\$1; shift
    mount -t proc proc "\$root/proc" || exit 1
    mount --rbind /dev "\$root/dev" || exit 1
    # Names as on the host: the bench origin is https://localhost:PORT, and the
    # hosts file of a fresh root may add ::1 for localhost, where nothing listens.
    mount --bind /etc/hosts "\$root/etc/hosts" || exit 1
    for dir in \${SQUID6_BIND:-}; do
        case "\$dir" in /*) ;; *) echo "SQUID6_BIND: \$dir is not an absolute path" >&2; exit 1 ;; esac
        mkdir -p "\$root\$dir" && mount --bind "\$dir" "\$root\$dir" || exit 1
    done
    exec chroot "\$root" "\$@"' sh "$squid6_root" "\$@"
EOF
printf '#!/bin/sh\nexec "$(dirname "$0")/in-root" /usr/sbin/squid "$@"\n' > "$wrapper_dir/squid"
printf '#!/bin/sh\nexec "$(dirname "$0")/in-root" /usr/lib/squid/security_file_certgen "$@"\n' > "$wrapper_dir/security_file_certgen"
chmod 755 "$wrapper_dir/in-root" "$wrapper_dir/squid" "$wrapper_dir/security_file_certgen"

log "ready: $("$wrapper_dir/squid" -v | head -n1) at $wrapper_dir/squid (root: $(du -sh "$squid6_root" | cut -f1))"
