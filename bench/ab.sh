#!/usr/bin/env bash
# A/B of Rampart builds in one run: bench/run.sh's own scenarios (same origin,
# same Rampart configuration, same pinning: proxy on BENCH_PROXY_CPU, load and
# origin on BENCH_LOAD_CPU) run once per build per round, the builds taking
# turns round after round (A B, B A, A B, ...), so a burst of load on this
# shared host lands on every build alike and a drift favours none.
#
#   bench/ab.sh OLD_BIN NEW_BIN                   labels "old" and "new"
#   bench/ab.sh old=/var/tmp/ab-bins/old new=target/release/rampart rules=target/release/rampart@rules.toml
#
# An argument is BIN or LABEL=BIN[@TOML_FILE]: TOML_FILE's text is appended to
# that build's configuration (after BENCH_RAMPART_TOML, which all builds get),
# e.g. a `[policy]` table, so one binary can appear twice with two configurations.
# The first argument is the baseline: every ratio is LABEL / baseline.
#
# Environment: BENCH_AB_ROUNDS (rounds, each build once per round; 4),
# BENCH_AB_SCENARIOS (run.sh scenarios; "plain intercept"), BENCH_INTERCEPT
# (run.sh's intercept measures; "keepalive new bulk"), BENCH_DURATION (s per
# load loop; 8), BENCH_BIG_SIZE (bulk object; 1G), BENCH_RAMPART_TOML (all builds),
# BENCH_KEEP=1 (keep every round's run.sh output under bench/out/ab-*/rounds).
#
# Output: the Markdown table on stdout (medians of the rounds, each round's
# figures, LABEL / baseline of the medians and the range of the per-round
# ratios, the no-proxy "direct" figures of every round as a noise control, the
# load average at the start, at each round and at the end); progress on stderr;
# everything also in bench/out/ab-<UTC time>/.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_NAME=ab
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools "run bench/setup.sh" python3

(($# >= 2)) || die "usage: bench/ab.sh OLD_BIN NEW_BIN | LABEL=BIN[@TOML_FILE]... (at least two)"

LABELS=() BINS=() TOMLS=()
default_labels=(old new)
i=0
for spec in "$@"; do
    label=${default_labels[$i]:-build$((i + 1))}
    i=$((i + 1))
    if [[ $spec == *=* ]]; then
        label=${spec%%=*}
        spec=${spec#*=}
    fi
    bin=${spec%%@*}
    toml=""
    if [[ $spec == *@* ]]; then
        toml=${spec#*@}
        [[ -r $toml ]] || die "$label: no TOML file at $toml"
    fi
    [[ -x $bin ]] || die "$label: no Rampart binary at $bin"
    [[ $label =~ ^[A-Za-z0-9_.-]+$ ]] || die "label '$label': letters, digits, _ . - only"
    LABELS+=("$label")
    BINS+=("$(realpath "$bin")")
    TOMLS+=("$toml")
done

ROUNDS=${BENCH_AB_ROUNDS:-4}
SCENARIOS=${BENCH_AB_SCENARIOS:-plain intercept}
export BENCH_INTERCEPT=${BENCH_INTERCEPT:-keepalive new bulk}
export BENCH_DURATION=${BENCH_DURATION:-8}
export BENCH_BIG_SIZE=${BENCH_BIG_SIZE:-1G}
SHARED_TOML=${BENCH_RAMPART_TOML:-}

OUT="$BENCH_DIR/out/ab-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT/rounds"
: >"$OUT/results.tsv"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "builds: $(for i in "${!LABELS[@]}"; do printf '%s=%s%s ' "${LABELS[$i]}" "${BINS[$i]}" "${TOMLS[$i]:+@${TOMLS[$i]}}"; done)"
log "$ROUNDS rounds of: bench/run.sh $SCENARIOS (intercept: $BENCH_INTERCEPT; ${BENCH_DURATION} s loops, bulk $BENCH_BIG_SIZE); out: $OUT"

# one_run ROUND INDEX: run.sh once for build INDEX; its results.tsv rows go to
# $OUT/results.tsv with the label and the round in front.
one_run() {
    local r=$1 i=$2 label=${LABELS[$2]} extra=$SHARED_TOML
    [[ -n ${TOMLS[$i]} ]] && extra+=$'\n'"$(cat "${TOMLS[$i]}")"
    local log_file="$OUT/rounds/$r-$label.log" load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    log "round $r: $label (load average $load)"
    # run.sh reads its knobs from the environment; one run per call, Rampart only.
    if ! RAMPART_BIN=${BINS[$i]} BENCH_PEERS=rampart BENCH_RUNS=1 BENCH_RAMPART_TOML=$extra \
        bash "$BENCH_DIR/run.sh" $SCENARIOS >"$OUT/rounds/$r-$label.md" 2>"$log_file"; then
        tail -n 20 "$log_file" >&2
        die "bench/run.sh failed for $label in round $r (log: $log_file)"
    fi
    local run_out
    run_out=$(sed -n 's/.*raw figures and table in //p' "$log_file" | tail -n 1)
    [[ -n $run_out && -r $run_out/results.tsv ]] || die "no results from bench/run.sh for $label in round $r (log: $log_file)"
    awk -v l="$label" -v r="$r" -v load="$load" 'BEGIN { OFS = "\t" } { print l, r, load, $0 }' \
        "$run_out/results.tsv" >>"$OUT/results.tsv"
    mv "$run_out" "$OUT/rounds/$r-$label"
}

for r in $(seq "$ROUNDS"); do
    # Odd rounds in argument order, even rounds reversed (A B, B A, ...).
    order=("${!LABELS[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#LABELS[@]} - 1; i >= 0; i--)); do order+=("$i"); done
    fi
    for i in "${order[@]}"; do one_run "$r" "$i"; done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$OUT/results.tsv" "$LOAD_START" "$LOAD_END" "${LABELS[@]}" <<'EOF' | tee "$OUT/table.md"
import statistics, sys

path, load_start, load_end, *labels = sys.argv[1:]
base = labels[0]
# label, round, load, scenario, metric, target, run, value, note
rows = [l.split("\t") for l in open(path).read().splitlines() if l.strip()]

FIGURES = [  # (metric, what, unit, lower is better)
    ("plain_rps", "plain HTTP keep-alive", "req/s", False),
    ("plain_cpu_us", "plain HTTP keep-alive", "CPU µs/req", True),
    ("https_rps", "CONNECT tunnel (spliced) keep-alive", "req/s", False),
    ("https_cpu_us", "CONNECT tunnel (spliced) keep-alive", "CPU µs/req", True),
    ("big_mbps", "CONNECT tunnel (spliced) bulk", "MB/s", False),
    ("big_cpu_s_gb", "CONNECT tunnel (spliced) bulk", "CPU s/GB", True),
    ("i_rps_ka", "intercepted keep-alive", "req/s", False),
    ("i_ka_cpu_us", "intercepted keep-alive", "CPU µs/req", True),
    ("i_rps_new", "intercepted, new connection per request", "req/s", False),
    ("i_new_cpu_us", "intercepted, new connection per request", "CPU µs/req", True),
    ("i_big_mbps", "intercepted bulk", "MB/s", False),
    ("i_big_cpu_s_gb", "intercepted bulk", "CPU s/GB", True),
    ("i_p99_ms", "intercepted p99 at 500 req/s", "ms", True),
    ("p99_ms", "plain HTTP p99 at 500 req/s", "ms", True),
]


def values(label, metric, direct):
    out = {}
    for l, r, _load, _s, m, t, _run, v, *note in rows:
        if l == label and m == metric and (t == "direct") == direct:
            try:
                out[int(r)] = float(v)
            except ValueError:
                out[int(r)] = None  # "fail": shown, never counted
    return out


def fmt(v):
    if v is None:
        return "fail"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def table(direct):
    head = "| figure | " + " | ".join(f"{l} (median)" for l in labels)
    head += "".join(f" | {l} / {base} (rounds)" for l in labels[1:]) + " | rounds: " + "; ".join(labels) + " |"
    print(head)
    print("|---" * (2 * len(labels) + 1) + "|")
    for metric, what, unit, _lower in FIGURES:
        per = {l: values(l, metric, direct) for l in labels}
        if not any(per.values()):
            continue
        med = {}
        for l in labels:
            ok = [v for v in per[l].values() if v is not None]
            med[l] = statistics.median(ok) if ok else None
        cells = [fmt(med[l]) for l in labels]
        for l in labels[1:]:
            if med[l] is None or not med[base]:
                cells.append("–")
                continue
            pair = [per[l][r] / per[base][r] for r in per[l]
                    if per[l][r] is not None and per[base].get(r)]
            rng = f" ({min(pair):.3f}–{max(pair):.3f})" if pair else ""
            cells.append(f"**{med[l] / med[base]:.3f}**{rng}")
        rounds = "; ".join(" / ".join(fmt(per[l][r]) for r in sorted(per[l])) for l in labels)
        print(f"| {what}, {unit} | " + " | ".join(cells) + f" | {rounds} |")


loads = sorted({(int(r), l, load) for l, r, load, *_ in rows})
print(f"load average at start {load_start}, at end {load_end}; at each run: "
      + ", ".join(f"{r}-{l} {load.split()[0]}" for r, l, load in loads) + "\n")
print("Rampart (the proxy's process tree: CPU is user + system over the requests or bytes served):\n")
table(direct=False)
print("\nNoise control: the same loads straight to the origin (no proxy) in each build's runs:\n")
table(direct=True)
EOF
log "table and every round's figures in $OUT"
if [[ ${BENCH_KEEP:-0} != 1 ]]; then
    rm -rf "$OUT/rounds"
fi
