#!/usr/bin/env bash
# Builds g3proxy and g3fcgen (bytedance/g3) for the bench's `g3proxy` and
# `g3proxy-mitm` targets. Nothing of g3 is vendored into Rampart: pass the path
# of a checkout of https://github.com/bytedance/g3 (the bench was measured with
# g3proxy 1.13.0, g3fcgen 0.9.0).
#
#   bench/g3proxy-build.sh /path/to/g3
#
# Environment:
#   G3_TARGET_DIR=DIR   cargo target dir (default: <checkout>/target)
#   CARGO_BUILD_JOBS=N  passed through to cargo (the bench machine is shared:
#                       CARGO_BUILD_JOBS=1 nice -n 19 bench/g3proxy-build.sh ...)
#
# Needs Rust (the workspace's rust-version), and Debian's capnproto (g3's config
# structs are generated from Cap'n Proto schemas), libssl-dev and pkg-config
# (g3 links the system OpenSSL for its TLS client side even with rustls). The
# build leaves out the Lua and Python scripting, c-ares and QUIC (none is used
# by the bench) and uses rustls with ring.
#
# On success it prints the two binaries' paths; bench/run.sh finds them at
# G3PROXY_BIN / G3FCGEN_BIN (default: bench/.peers/g3/, where this script
# links them).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[g3proxy-build] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 PATH-TO-G3-CHECKOUT"
G3_DIR=$(cd "$1" && pwd) || die "no directory $1"
[[ -f $G3_DIR/g3proxy/Cargo.toml && -f $G3_DIR/g3fcgen/Cargo.toml ]] ||
    die "$G3_DIR is not a checkout of bytedance/g3 (no g3proxy/ and g3fcgen/)"

missing=()
command -v capnp >/dev/null 2>&1 || missing+=(capnproto)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
((${#missing[@]} == 0)) || die "missing Debian packages: apt-get install -y ${missing[*]}"
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"

TARGET_DIR=${G3_TARGET_DIR:-$G3_DIR/target}
log "building g3proxy $(sed -n 's/^version = "\(.*\)"/\1/p' "$G3_DIR/g3proxy/Cargo.toml" | head -n1)" \
    "and g3fcgen from $G3_DIR ($(git -C "$G3_DIR" describe --tags --always 2>/dev/null || echo 'no git'))" \
    "into $TARGET_DIR, jobs ${CARGO_BUILD_JOBS:-default}"
(
    cd "$G3_DIR"
    cargo build --release --locked --target-dir "$TARGET_DIR" \
        -p g3proxy -p g3fcgen --no-default-features --features g3proxy/rustls-ring
)

for b in g3proxy g3fcgen; do
    [[ -x $TARGET_DIR/release/$b ]] || die "cargo finished but $TARGET_DIR/release/$b is missing"
done
# Stable paths for bench/run.sh (bench/.peers is ignored by git).
mkdir -p "$BENCH_DIR/.peers/g3"
ln -sfn "$TARGET_DIR/release/g3proxy" "$BENCH_DIR/.peers/g3/g3proxy"
ln -sfn "$TARGET_DIR/release/g3fcgen" "$BENCH_DIR/.peers/g3/g3fcgen"
"$BENCH_DIR/.peers/g3/g3proxy" --version >&2
"$BENCH_DIR/.peers/g3/g3fcgen" --version >&2
echo "$BENCH_DIR/.peers/g3/g3proxy"
echo "$BENCH_DIR/.peers/g3/g3fcgen"
