#!/usr/bin/env bash
# Runs every cargo-fuzz target of every crates/*/fuzz (every parser we own:
# policy, query language, TLS ClientHello, archives, isolation rules, store and
# spool decoding, the agent's request heads, ClientHello and /proc and netlink
# parsing, the gateway's tunnel metadata, client identity, upstream CONNECT
# replies and PROXY protocol headers) for a bounded time, so CI exercises the parsers with
# coverage-guided inputs on every change, not only when someone remembers to
# fuzz by hand.
#
# cargo-fuzz normally wants nightly for the sanitizer flags. With
# `--sanitizer none` it needs no unstable codegen flag, and RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept the `--cfg fuzzing` build cargo-fuzz does;
# libFuzzer's coverage instrumentation still runs, and a panic still fails.
#
#   FUZZ_SECONDS=15 scripts/fuzz-smoke.sh        # per target (default 10)
#   scripts/fuzz-smoke.sh parse_policy           # only the named targets
#
# Each fuzz crate is built once (one `cargo fuzz build` for all its targets)
# before its targets run; with ~15 targets the build of the six fuzz crates,
# not the fuzzing, is most of the run. 10 s a target keeps a full run within
# about ten minutes on two cores.
#
# The committed seed corpora are read, never written: new inputs go to a
# throwaway directory. A crashing input is kept in <crate>/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-10}
only=("$@")
command -v cargo-fuzz >/dev/null || {
  echo "fuzz-smoke: cargo-fuzz is not installed (cargo install --locked cargo-fuzz)" >&2
  exit 2
}
export RUSTC_BOOTSTRAP=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
started=$SECONDS
for fuzz_dir in crates/*/fuzz; do
  crate_dir=$(dirname "$fuzz_dir")
  targets=()
  for target in $(cd "$crate_dir" && cargo fuzz list); do
    if ((${#only[@]})) && [[ ! " ${only[*]} " == *" $target "* ]]; then
      continue
    fi
    targets+=("$target")
  done
  ((${#targets[@]})) || continue
  echo "fuzz-smoke: building $fuzz_dir (${targets[*]})" >&2
  if ! (cd "$crate_dir" && cargo fuzz build --sanitizer none 2>&1 | tail -n 25); then
    failed+=("${targets[@]/%/ (build)}")
    continue
  fi
  for target in "${targets[@]}"; do
    corpus=("$scratch/$target")
    mkdir -p "$scratch/$target"
    [[ -d "$fuzz_dir/corpus/$target" ]] && corpus+=("$PWD/$fuzz_dir/corpus/$target")
    echo "fuzz-smoke: $target ($crate_dir) for ${seconds}s" >&2
    if ! (cd "$crate_dir" && cargo fuzz run --sanitizer none "$target" "${corpus[@]}" -- \
      -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 25); then
      failed+=("$target")
    fi
  done
done
if ((${#failed[@]})); then
  echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in crates/*/fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz-smoke: every target ran ${seconds}s without a crash ($((SECONDS - started))s in all)" >&2
