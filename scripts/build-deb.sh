#!/bin/sh
# Build the rampart .deb with cargo-deb (docs/install.md).
#
#   scripts/build-deb.sh [--binary PATH] [--output DIR] [--fast]
#
# Without --binary it builds `rampart` in release mode first. With --binary it
# packages that file as it is (the .deb test packages the debug binary the test
# run already built). --fast compresses less (xz at a low level: about 6 s of
# CPU here instead of 35; cargo-deb's gzip is slower still). Either way it then
# writes the shell completions and man pages (`rampart package-assets`,
# generated from the same clap definitions as --help) and runs
# `cargo deb --no-build` on a staging target directory whose `release/` holds
# exactly that binary and those files: cargo-deb's `target/release/...` asset
# paths then name them, whatever profile built the binary. Needs cargo-deb
# (`cargo install cargo-deb --locked`).
set -eu

usage() {
	echo "usage: $0 [--binary PATH] [--output DIR] [--fast]" >&2
	exit 2
}

repo=$(cd "$(dirname "$0")/.." && pwd)
binary=
output="$repo/target/debian"
fast=
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
	--output) [ $# -ge 2 ] || usage; output=$2; shift 2 ;;
	--fast) fast=--fast; shift ;;
	*) usage ;;
	esac
done

if ! cargo deb --version >/dev/null 2>&1; then
	echo "$0: cargo-deb is missing: cargo install cargo-deb --locked" >&2
	exit 1
fi

cd "$repo"
target_dir=$(cargo metadata --format-version 1 --no-deps --offline |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ -z "$binary" ]; then
	cargo build --release --locked -p rampart-cli --bin rampart
	binary="$target_dir/release/rampart"
fi
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 1; }

stage=$(mktemp -d "$target_dir/deb-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
mkdir -p "$stage/release" "$output"
# A hard link costs nothing for a 500 MB debug binary; cargo-deb strips into a
# copy of its own, never in place.
ln "$binary" "$stage/release/rampart" 2>/dev/null || cp "$binary" "$stage/release/rampart"
"$stage/release/rampart" package-assets "$stage/release/package-assets"
# Debian's man pages are gzip-compressed, without a time stamp (reproducible).
gzip -9n "$stage/release/package-assets/man/"*.1

CARGO_TARGET_DIR="$stage" cargo deb -p rampart-cli --no-build --offline --strip --output "$output" $fast
