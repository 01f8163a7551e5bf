#!/usr/bin/env python3
"""Turn bench/run.sh's raw results (TSV) into Markdown tables of medians and ratios.

Input lines: scenario, metric, target, run, value, note (tab-separated).
A value of "fail" is a run that did not produce a figure (its note says why).
"""

import statistics
import sys
from collections import defaultdict

# metric -> (title, unit, higher_is_better, decimals)
METRICS = {
    "plain_rps": ("Plain HTTP, keep-alive, 1 KiB, 50 conns (wrk)", "req/s", True, 0),
    "https_rps": ("HTTPS through CONNECT, keep-alive, 1 KiB, 50 conns (oha)", "req/s", True, 0),
    "big_mbps": ("Download of the big object through CONNECT (curl)", "MB/s", True, 0),
    "p99_ms": ("p99 latency at 500 req/s, plain HTTP (oha -q 500)", "ms", False, 3),
    "p99_added_ms": ("Added p99 latency over direct at 500 req/s, plain HTTP", "ms", False, 3),
    "rss_rest_mib": ("RSS at rest", "MiB", False, 1),
    "rss_tunnel_kib": ("RSS per idle CONNECT tunnel (1,000 held)", "KiB", False, 1),
    "plain_cpu_us": ("  CPU per plain HTTP request (proxy process)", "µs", False, 1),
    "https_cpu_us": ("  CPU per HTTPS request through CONNECT (proxy process)", "µs", False, 1),
    "big_cpu_s_gb": ("  CPU per GB through a CONNECT tunnel (proxy process)", "s/GB", False, 2),
    "i_ka_cpu_us": ("  CPU per intercepted keep-alive request (proxy process)", "µs", False, 1),
    "i_new_cpu_us": ("  CPU per intercepted new-connection request (proxy process)", "µs", False, 1),
    "i_big_cpu_s_gb": ("  CPU per intercepted GB (proxy process)", "s/GB", False, 2),
    "i_rps_ka": ("Intercepted HTTPS, keep-alive, 1 KiB, 50 conns (oha)", "req/s", True, 0),
    "i_rps_new": ("Intercepted HTTPS, new TLS connection per request (oha)", "req/s", True, 0),
    "i_big_mbps": ("Intercepted download of the big object (curl)", "MB/s", True, 0),
    "i_p99_ms": ("p99 latency at 500 req/s, intercepted HTTPS", "ms", False, 3),
    "i_p99_added_ms": ("Added p99 latency over direct HTTPS at 500 req/s", "ms", False, 3),
    # The p99 rows above leave out the first second (bench/run.sh LAT_WARMUP);
    # these count every request, connection set-up included.
    "p99_full_ms": ("  p99 of the whole run, connection set-up included", "ms", False, 3),
    "i_p99_full_ms": ("  p99 of the whole run, connection set-up included", "ms", False, 3),
}

# (title, columns, column names, main peer, further peers with a ratio column, rows)
# g3proxy's "-log" targets log every request to a file, like Rampart (and
# Squid); the plain ones log nothing (`log: discard`). Issue 22's ratios are
# against the latter.
TABLES = [
    (
        "Forward proxy (issue 2)",
        ["direct", "squid", "tinyproxy", "mitmproxy", "g3proxy", "g3proxy-log", "rampart"],
        {"direct": "direct", "squid": "Squid", "tinyproxy": "tinyproxy",
         "mitmproxy": "mitmproxy", "g3proxy": "g3proxy", "g3proxy-log": "g3proxy logged",
         "rampart": "Rampart"},
        "squid",
        ["g3proxy", "g3proxy-log"],
        ["plain_rps", "plain_cpu_us", "https_rps", "https_cpu_us", "big_mbps",
         "big_cpu_s_gb", "p99_ms", "p99_added_ms", "p99_full_ms",
         "rss_rest_mib", "rss_tunnel_kib"],
    ),
    (
        "TLS interception (issue 3)",
        ["direct", "squid-bump", "mitmproxy-mitm", "g3proxy-mitm", "g3proxy-mitm-log", "rampart-mitm"],
        {"direct": "direct", "squid-bump": "Squid ssl_bump",
         "mitmproxy-mitm": "mitmproxy", "g3proxy-mitm": "g3proxy",
         "g3proxy-mitm-log": "g3proxy logged", "rampart-mitm": "Rampart"},
        "squid-bump",
        ["g3proxy-mitm", "g3proxy-mitm-log"],
        ["i_rps_ka", "i_ka_cpu_us", "i_rps_new", "i_new_cpu_us", "i_big_mbps",
         "i_big_cpu_s_gb", "i_p99_ms", "i_p99_added_ms", "i_p99_full_ms"],
    ),
]

# (metric, rampart target, kind, reference, bound, text)
TARGETS = [
    ("plain_rps", "rampart", "ratio", "squid", 2.8, "plain HTTP req/s ≥ 2.8 × Squid"),
    ("plain_rps", "rampart", "ratio", "direct", 0.85, "plain HTTP req/s ≥ 0.85 × direct"),
    ("https_rps", "rampart", "ratio", "squid", 1.05, "CONNECT keep-alive HTTPS req/s ≥ 1.05 × Squid"),
    ("big_mbps", "rampart", "ratio", "squid", 1.05, "CONNECT bulk download MB/s ≥ 1.05 × Squid"),
    ("p99_added_ms", "rampart", "max", None, 0.15, "added p99 at 500 req/s ≤ 0.15 ms over direct"),
    ("rss_rest_mib", "rampart", "max", None, 20.0, "RSS at rest ≤ 20 MiB"),
    ("rss_tunnel_kib", "rampart", "max", None, 16.0, "≤ 16 KiB per idle CONNECT tunnel"),
    ("i_rps_ka", "rampart-mitm", "ratio", "squid-bump", 2.4, "intercepted keep-alive req/s ≥ 2.4 × Squid ssl_bump"),
    ("i_rps_ka", "rampart-mitm", "ratio", "direct", 0.85, "intercepted keep-alive req/s ≥ 0.85 × direct"),
    ("i_rps_new", "rampart-mitm", "ratio", "squid-bump", 5.0, "intercepted new-connection req/s ≥ 5 × Squid ssl_bump"),
    ("i_big_mbps", "rampart-mitm", "ratio", "squid-bump", 2.6, "intercepted bulk MB/s ≥ 2.6 × Squid ssl_bump"),
    ("i_p99_added_ms", "rampart-mitm", "max", None, 0.30, "intercepted p99 at 500 req/s ≤ 0.30 ms (read as added over direct HTTPS)"),
    # Issue 22: against g3proxy with `log: discard`, Rampart logging everything.
    ("plain_cpu_us", "rampart", "ratio_max", "g3proxy", 0.9, "plain HTTP CPU per request ≤ 0.9 × g3proxy (issue 22)"),
    ("plain_rps", "rampart", "ratio", "g3proxy", 1.05, "plain HTTP req/s ≥ 1.05 × g3proxy (issue 22)"),
    ("i_ka_cpu_us", "rampart-mitm", "ratio_max", "g3proxy-mitm", 0.85, "intercepted keep-alive CPU per request ≤ 0.85 × g3proxy (issue 22)"),
    ("i_rps_new", "rampart-mitm", "ratio", "g3proxy-mitm", 1.5, "intercepted new-connection req/s ≥ 1.5 × g3proxy (issue 22)"),
    ("i_big_mbps", "rampart-mitm", "ratio", "g3proxy-mitm", 1.0, "intercepted bulk MB/s ≥ 1.0 × g3proxy (issue 22)"),
    ("i_big_cpu_s_gb", "rampart-mitm", "ratio_max", "g3proxy-mitm", 0.8, "intercepted CPU per GB ≤ 0.8 × g3proxy (issue 22)"),
    ("i_p99_ms", "rampart-mitm", "ratio_max", "g3proxy-mitm", 1.0, "intercepted p99 at 500 req/s ≤ g3proxy's (issue 22)"),
]


def load(path):
    values = defaultdict(list)  # (metric, target) -> [float]
    notes = defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 5:
                continue
            _scenario, metric, target, _run, value = parts[:5]
            note = parts[5] if len(parts) > 5 else ""
            if value == "fail":
                notes[(metric, target)].append(note or "failed")
                continue
            try:
                values[(metric, target)].append(float(value))
            except ValueError:
                notes[(metric, target)].append(f"bad value {value!r}")
            if note:
                notes[(metric, target)].append(note)
    return values, notes


def medians(values):
    return {k: statistics.median(v) for k, v in values.items() if v}


def derive(med, values):
    """Added latency = a target's p99 minus direct's median p99."""
    for base, added in (("p99_ms", "p99_added_ms"), ("i_p99_ms", "i_p99_added_ms")):
        direct = med.get((base, "direct"))
        if direct is None:
            continue
        for (metric, target), v in list(med.items()):
            if metric == base and target != "direct":
                med[(added, target)] = v - direct
                values[(added, target)] = [x - direct for x in values[(base, target)]]


def fmt(v, decimals):
    if v is None:
        return "—"
    return f"{v:,.{decimals}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def render(values, notes, ran_targets):
    med = medians(values)
    derive(med, values)
    out = []
    with_figures = {k[1] for k in med} | {k[1] for k in notes}
    for title, cols, names, main_peer, extra_refs, rows in TABLES:
        if not any(m in {k[0] for k in med} for m in rows):
            continue
        rampart = cols[-1]
        # Peers left out of this run (BENCH_PEERS) get no column.
        cols = [c for c in cols if c in ("direct", rampart) or c in with_figures or c in ran_targets]
        peers = [c for c in cols if c not in ("direct", rampart)]
        refs = [main_peer] + [p for p in extra_refs if p in cols]
        out.append(f"### {title}\n")
        head = ["Metric", "unit"] + [names[c] for c in cols]
        head += [f"Rampart / {names[p]}" for p in refs] + ["Rampart / best peer", "Rampart / direct"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for m in rows:
            if not any((m, c) in med for c in cols):
                continue
            mtitle, unit, higher, dec = METRICS[m]
            cells = [mtitle, unit]
            for c in cols:
                v = med.get((m, c))
                if v is None:
                    if c == rampart and c not in ran_targets:
                        cells.append("pending")
                    elif any("does not intercept" in n for n in notes.get((m, c), [])):
                        cells.append("pending (no interception yet)")
                    elif notes.get((m, c)):
                        cells.append("fail")
                    else:
                        cells.append("—")
                else:
                    cells.append(fmt(v, dec))
            r = med.get((m, rampart))
            peer_vals = [med[(m, p)] for p in peers if (m, p) in med]
            best = (max(peer_vals) if higher else min(peer_vals)) if peer_vals else None
            if m.endswith("added_ms"):
                # Ratios of differences mean little; the target is absolute.
                cells += ["—"] * (len(refs) + 2)
            else:
                for ref in [med.get((m, p)) for p in refs] + [best, med.get((m, "direct"))]:
                    q = ratio(r, ref)
                    cells.append("—" if q is None else f"{q:.2f}×")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out.append("Ratios are Rampart's figure over the other one's: above 1 is better for "
                   "req/s and MB/s, below 1 is better for latency, memory and CPU. CPU rows are "
                   "the proxy's own user+system time (all its processes) divided by the requests "
                   "or bytes it served: unlike req/s they hardly depend on what else the machine runs.")
        out.append("")

    out.append("### Targets\n")
    out.append("| Target | Rampart | Met? | Margin |")
    out.append("|---|---|---|---|")
    for m, tgt, kind, ref, bound, text in TARGETS:
        r = med.get((m, tgt))
        if r is None:
            base = m.replace("_added", "")  # added latency derives from p99
            measured = any(k[0] in (m, base) for k in list(med) + list(notes))
            if not measured:
                state = "not run"
            elif tgt not in ran_targets:
                state = "pending"
            elif any("does not intercept" in n for n in notes.get((base, tgt), [])):
                state = "pending (Rampart does not intercept yet)"
            else:
                state = "no figure"
            out.append(f"| {text} | — | {state} | — |")
            continue
        dec = METRICS[m][3]
        if kind in ("ratio", "ratio_max"):
            refv = med.get((m, ref))
            q = ratio(r, refv)
            if refv is None and not notes.get((m, ref)):
                continue  # that peer was not in this run
            if q is None:
                out.append(f"| {text} | {fmt(r, dec)} | no reference | — |")
                continue
            # "ratio": at least bound × the reference; "ratio_max": at most.
            met = q >= bound if kind == "ratio" else q <= bound
            margin = (q / bound - 1) * 100 if kind == "ratio" else (1 - q / bound) * 100
            out.append(f"| {text} | {q:.2f}× | {'yes' if met else 'NO'} | {margin:+.0f} % |")
        else:
            met = r <= bound
            margin = (bound - r) / bound * 100
            out.append(f"| {text} | {fmt(r, max(dec, 2))} | {'yes' if met else 'NO'} | {margin:+.0f} % headroom |")
    out.append("")

    problems = [(k, v) for k, v in sorted(notes.items()) if v]
    if problems:
        out.append("### Notes from the runs\n")
        for (m, t), ns in problems:
            uniq = sorted(set(ns))
            out.append(f"- {m} / {t}: " + "; ".join(uniq[:3]))
        out.append("")
    spread = []
    for (m, t), vs in sorted(values.items()):
        if len(vs) >= 2 and not m.endswith("added_ms"):
            lo, hi = min(vs), max(vs)
            md = statistics.median(vs)
            if md and (hi - lo) / abs(md) > 0.15:
                spread.append(f"{m} / {t}: runs {', '.join(fmt(v, METRICS[m][3]) for v in vs)}")
    if spread:
        out.append("Runs spread by more than 15 % around the median (noisy machine?):\n")
        out.extend(f"- {s}" for s in spread)
        out.append("")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        print("usage: report.py RESULTS.tsv [TARGETS_RUN...]", file=sys.stderr)
        return 2
    values, notes = load(sys.argv[1])
    ran = set(sys.argv[2:])
    print(render(values, notes, ran))
    return 0


if __name__ == "__main__":
    sys.exit(main())
