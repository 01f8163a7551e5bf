#!/usr/bin/env python3
"""Mixed load for bench/soak.sh: plain HTTP, intercepted HTTPS, spliced tunnels,
blocked requests and 1 MiB downloads through one proxy, at a fixed total rate,
some on kept-alive sessions and some on a new connection each time.

Prints one JSON line of counters to stdout every `--report` seconds (the soak
script samples them beside the proxy's RSS and descriptors). Runs until killed
or `--seconds` have passed.
"""

import argparse
import json
import random
import sys
import threading
import time

import requests
import urllib3

urllib3.disable_warnings()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--plain", required=True, help="URL of a 1 KiB object over HTTP")
    ap.add_argument("--intercepted", required=True, help="HTTPS URL the proxy decrypts")
    ap.add_argument("--tunnel", required=True, help="HTTPS URL the proxy splices")
    ap.add_argument("--big", required=True, help="HTTPS URL of a 1 MiB object (intercepted)")
    ap.add_argument("--blocked", required=True, help="URL the policy blocks")
    ap.add_argument("--proxy-ca", required=True, help="the proxy's CA (intercepted URLs)")
    ap.add_argument("--origin-ca", required=True, help="the origin's CA (tunnelled URLs)")
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second in all")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--report", type=float, default=10.0)
    args = ap.parse_args()

    proxies = {"http": args.proxy, "https": args.proxy}
    # (weight, name, url, verify, expected status)
    kinds = [
        (40, "plain", args.plain, False, 200),
        (30, "intercepted", args.intercepted, args.proxy_ca, 200),
        (20, "tunnel", args.tunnel, args.origin_ca, 200),
        (5, "blocked", args.blocked, False, 403),
        (5, "big", args.big, args.proxy_ca, 200),
    ]
    weights = [k[0] for k in kinds]
    counts = {k[1]: {"ok": 0, "bad": 0} for k in kinds}
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds
    per_worker_interval = args.workers / args.rate

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        next_at = time.monotonic() + rng.random() * per_worker_interval
        while time.monotonic() < stop_at:
            _, name, url, verify, expected = rng.choices(kinds, weights)[0]
            # One request in five on a new connection (new TLS handshakes, new
            # tunnels, a new connection context in the proxy every time).
            if rng.random() < 0.2:
                session.close()
                session = requests.Session()
            ok = False
            try:
                r = session.get(url, proxies=proxies, verify=verify, timeout=30)
                ok = r.status_code == expected
                r.close()
            except requests.RequestException as e:
                print(f"{name}: {e}", file=sys.stderr)
            with lock:
                counts[name]["ok" if ok else "bad"] += 1
            next_at += per_worker_interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.workers)]
    for t in threads:
        t.start()
    while time.monotonic() < stop_at:
        time.sleep(min(args.report, max(0.0, stop_at - time.monotonic())))
        with lock:
            print(json.dumps({"t": time.time(), **counts}), flush=True)
    for t in threads:
        t.join(timeout=35)
    return 0


if __name__ == "__main__":
    sys.exit(main())
