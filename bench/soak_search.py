#!/usr/bin/env python3
"""Console and API searches for bench/soak.sh, while the soak's load runs.

Every `--every` seconds one round of the reads an analyst makes, some of them at
the same time (`--parallel`), so the server's reader pools (the API's and the
console's) open and keep several readers and their page caches:

- through the API with the admin token: event searches with a query and a
  `since` span or a `from`/`to` range, the next page by cursor, one event by id,
  the alerts list;
- through the console with a session (one login at the start): the overview
  (24 h of hourly summaries), the events page with a query and a range, the
  alerts page, an event's page, a device timeline around now, and once every
  `--export-every` rounds the NDJSON export of the last 15 minutes (up to
  10,000 events).

With `--tail-bin`, `rampart events tail --server` (the real CLI, which polls the
API every 500 ms from the newest event time it has seen) follows every HTTP event
the whole time; at the end its ids are compared with the store's for the same
span: an event the tail missed or printed twice is a failure.

Every answer must be 200 (a console page also without an error paragraph, and
not a redirect to the login form); searches that must find events once traffic
has run for a minute (the soak's own hosts) must not come back empty. Each such
miss is a failure. Prints one JSON line of counters and latencies to stdout every
`--report` seconds, the last one after the final round.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time

import requests

# A search that must find events once the load has run this long (the store
# commits every few hundred milliseconds; this leaves a wide margin).
EXPECT_ROWS_AFTER_S = 60.0


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def percentile(sorted_values: list, p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Counters:
    """Per-kind ok/bad counts and latencies (ms), shared by the round's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: dict = {}

    def record(self, kind: str, ok: bool, ms, why: str = "") -> None:
        """ms None: a check, not a request (no latency)."""
        with self.lock:
            k = self.kinds.setdefault(kind, {"ok": 0, "bad": 0, "ms": []})
            k["ok" if ok else "bad"] += 1
            if ms is not None:
                k["ms"].append(ms)
        if not ok:
            print(f"{rfc3339(time.time())} {kind}: {why}", file=sys.stderr, flush=True)

    def snapshot(self) -> dict:
        with self.lock:
            out = {}
            every = []
            for name, k in sorted(self.kinds.items()):
                ms = sorted(k["ms"])
                every.extend(ms)
                out[name] = {
                    "ok": k["ok"],
                    "bad": k["bad"],
                    "p50_ms": round(percentile(ms, 50), 1),
                    "p95_ms": round(percentile(ms, 95), 1),
                    "max_ms": round(ms[-1], 1) if ms else 0.0,
                }
            every.sort()
            out["all"] = {
                "ok": sum(k["ok"] for k in self.kinds.values()),
                "bad": sum(k["bad"] for k in self.kinds.values()),
                "p50_ms": round(percentile(every, 50), 1),
                "p95_ms": round(percentile(every, 95), 1),
                "p99_ms": round(percentile(every, 99), 1),
                "max_ms": round(every[-1], 1) if every else 0.0,
            }
            return out


class Searcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.api.rstrip("/")
        with open(args.token_file, encoding="utf-8") as f:
            self.token = f.read().strip()
        self.user = args.console_user
        self.password = args.console_password
        self.hosts = args.expect_host
        self.started = time.monotonic()
        self.counters = Counters()
        self.local = threading.local()
        self.session_cookie = ""
        self.login()

    # --- plumbing -------------------------------------------------------------------
    def http(self) -> requests.Session:
        """One keep-alive session per thread, as a browser or script would hold."""
        s = getattr(self.local, "session", None)
        if s is None:
            s = requests.Session()
            self.local.session = s
        return s

    def login(self) -> None:
        s = requests.Session()
        r = s.get(f"{self.base}/login", timeout=30)
        csrf = s.cookies.get("rampart_login_csrf")
        if r.status_code != 200 or not csrf:
            raise SystemExit(f"console login form: status {r.status_code}, csrf cookie {csrf!r}")
        r = s.post(
            f"{self.base}/login",
            data={"username": self.user, "password": self.password, "csrf": csrf, "next": "/"},
            allow_redirects=False,
            timeout=30,
        )
        cookie = s.cookies.get("rampart_session")
        if r.status_code != 303 or not cookie:
            raise SystemExit(f"console login: status {r.status_code}, session cookie {cookie!r}: {r.text[:200]}")
        self.session_cookie = cookie

    def must_have_rows(self) -> bool:
        return time.monotonic() - self.started >= EXPECT_ROWS_AFTER_S

    def api(self, kind: str, path: str, params: dict, expect_rows: bool = False):
        """GET an API route with the admin token; returns the JSON answer or None."""
        t0 = time.monotonic()
        try:
            r = self.http().get(
                f"{self.base}{path}",
                params=params,
                headers={"Authorization": f"Bearer {self.token}"},
                allow_redirects=False,
                timeout=60,
            )
            body = r.content
            ms = 1000.0 * (time.monotonic() - t0)
        except requests.RequestException as e:
            self.counters.record(kind, False, 1000.0 * (time.monotonic() - t0), str(e))
            return None
        if r.status_code != 200:
            self.counters.record(kind, False, ms, f"status {r.status_code}: {body[:200]!r}")
            return None
        try:
            doc = json.loads(body)
        except ValueError as e:
            self.counters.record(kind, False, ms, f"not JSON: {e}")
            return None
        if expect_rows and self.must_have_rows() and not doc.get("events"):
            self.counters.record(kind, False, ms, f"no events for {params}")
            return doc
        self.counters.record(kind, True, ms)
        return doc

    def console(self, kind: str, path: str, params: dict, expect_rows: bool = False) -> str:
        """GET a console page with the session; returns the HTML, or '' on failure."""
        t0 = time.monotonic()
        try:
            r = self.http().get(
                f"{self.base}{path}",
                params=params,
                cookies={"rampart_session": self.session_cookie},
                allow_redirects=False,
                timeout=60,
            )
            text = r.text
            ms = 1000.0 * (time.monotonic() - t0)
        except requests.RequestException as e:
            self.counters.record(kind, False, 1000.0 * (time.monotonic() - t0), str(e))
            return ""
        if r.status_code != 200:
            self.counters.record(kind, False, ms, f"status {r.status_code} {r.headers.get('location', '')}")
            if r.status_code == 303:
                self.login()  # the session is gone: count it, then carry on
            return ""
        if path != "/events/export" and 'class="error"' in text:
            m = re.search(r'class="error"[^>]*>([^<]*)', text)
            self.counters.record(kind, False, ms, f"error on the page: {m.group(1) if m else '?'}")
            return ""
        if expect_rows and self.must_have_rows() and "<tbody>" in text and "<tbody></tbody>" in text:
            self.counters.record(kind, False, ms, f"an empty table for {params}")
            return ""
        if path == "/events/export" and expect_rows and self.must_have_rows() and not text.strip():
            self.counters.record(kind, False, ms, f"an empty export for {params}")
            return ""
        self.counters.record(kind, True, ms)
        return text

    # --- one round -------------------------------------------------------------------
    def round(self, n: int, pool: concurrent.futures.ThreadPoolExecutor, export: bool) -> None:
        now = time.time()
        host = self.hosts[n % len(self.hosts)]
        jobs = [
            lambda: self.api_search_and_follow(host),
            lambda: self.api("api_events_range", "/api/v1/events",
                             {"q": f'host = "{host}" and status = 200', "from": rfc3339(now - 600),
                              "to": rfc3339(now), "limit": 100}, expect_rows=True),
            lambda: self.api("api_events_blocked", "/api/v1/events",
                             {"q": "action = block", "since": "1h", "limit": 50}, expect_rows=True),
            lambda: self.api("api_events_big", "/api/v1/events",
                             {"q": "bytes_in > 1000000 and tls = decrypt", "since": "24h", "limit": 20},
                             expect_rows=True),
            lambda: self.api("api_events_like", "/api/v1/events",
                             {"q": 'url like "*/1k" and method = GET', "since": "15m", "limit": 200},
                             expect_rows=True),
            lambda: self.api("api_alerts", "/api/v1/alerts", {"since": "24h", "limit": 50}),
            lambda: self.console("console_overview", "/", {}),
            lambda: self.console_search_and_open(host),
            lambda: self.console("console_alerts", "/alerts", {"range": "24h"}),
            lambda: self.console("console_events_blocked", "/events",
                                 {"q": "action = block and category != gambling", "range": "1h"},
                                 expect_rows=True),
        ]
        if export:
            jobs.append(lambda: self.console("console_export", "/events/export",
                                             {"q": "type = http", "range": "15m", "format": "ndjson"},
                                             expect_rows=True))
        for f in [pool.submit(j) for j in jobs]:
            f.result()

    def api_search_and_follow(self, host: str) -> None:
        """A search, its next page by cursor, the first event by id and the
        timeline of its device (the console's device link)."""
        params = {"q": f'host = "{host}"', "since": "15m", "limit": 100}
        doc = self.api("api_events_search", "/api/v1/events", params, expect_rows=True)
        if not doc or not doc.get("events"):
            return
        if doc.get("next_cursor"):
            self.api("api_events_next_page", "/api/v1/events",
                     {**params, "cursor": doc["next_cursor"]}, expect_rows=True)
        first = doc["events"][0]
        uid = first.get("metadata", {}).get("uid")
        if uid:
            self.api("api_event_by_id", f"/api/v1/events/{uid}", {})
        # Gateway events without an agent name no device: the timeline query still
        # runs (an index lookup that finds nothing) under the source address.
        device = (first.get("device") or {}).get("uid") or (first.get("device") or {}).get("hostname")
        if not device:
            device = (first.get("src_endpoint") or {}).get("ip") or "127.0.0.1"
        self.console("console_timeline", "/timeline", {"device": device, "at": int(time.time() * 1000)})

    def console_search_and_open(self, host: str) -> None:
        html = self.console("console_events_search", "/events", {"q": f'host = "{host}"', "range": "1h"},
                            expect_rows=True)
        m = re.search(r'href="/events/([0-9a-fA-F-]{36})', html)
        if m:
            self.console("console_event", f"/events/{m.group(1)}", {})


class Tail:
    """`rampart events tail QUERY --server` as a child, its JSON lines counted."""

    QUERY = "type = http"

    def __init__(self, binary: str, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.started_ms = int(time.time() * 1000)
        self.ids: list = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [binary, "events", "tail", self.QUERY, "--last", "0", "--format", "json", "--server", base],
            env={**os.environ, "RAMPART_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                uid = json.loads(line).get("id")
            except ValueError:
                uid = None
            with self.lock:
                self.ids.append(uid)

    def finish(self, counters: Counters) -> dict:
        """Stops the tail once the store has caught up, and compares its ids with
        the store's over [start + 5 s, stop - 5 s] (the edges are racy by nature)."""
        time.sleep(5)
        alive = self.proc.poll() is None
        stopped_ms = int(time.time() * 1000)
        time.sleep(2)
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.reader.join(timeout=10)
        lo, hi = self.started_ms + 5000, stopped_ms - 5000
        stored = set()
        cursor = None
        session = requests.Session()
        while True:
            params = {"q": self.QUERY, "from": rfc3339(lo / 1000), "to": rfc3339(hi / 1000), "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = session.get(f"{self.base}/api/v1/events", params=params,
                            headers={"Authorization": f"Bearer {self.token}"}, timeout=120)
            if r.status_code != 200:
                counters.record("tail_check", False, None, f"listing the store: status {r.status_code}")
                return {"printed": len(self.ids), "error": f"status {r.status_code}"}
            doc = r.json()
            stored.update(e["metadata"]["uid"] for e in doc["events"] if lo <= e["time"] < hi)
            cursor = doc.get("next_cursor")
            if not cursor:
                break
        with self.lock:
            printed = list(self.ids)
        seen = set(printed)
        missed = stored - seen
        twice = len(printed) - len(seen)
        ok = alive and not missed and not twice and bool(stored)
        why = (f"tail {'ran' if alive else 'EXITED: ' + err.strip()[-300:]}; "
               f"{len(missed)} of {len(stored)} stored events missed, {twice} printed twice")
        counters.record("tail_check", ok, None, why)
        return {"printed": len(printed), "stored_in_span": len(stored), "missed": len(missed),
                "printed_twice": twice, "alive_to_the_end": alive,
                "missed_sample": sorted(missed)[:5]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True, help="http://127.0.0.1:PORT (the server's API listener)")
    ap.add_argument("--token-file", required=True, help="DATA_DIR/admin.token")
    ap.add_argument("--console-user", required=True)
    ap.add_argument("--console-password", required=True)
    ap.add_argument("--expect-host", action="append", required=True,
                    help="a destination host the load uses (searched for; must have events)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between rounds")
    ap.add_argument("--parallel", type=int, default=4, help="requests of a round at the same time")
    ap.add_argument("--export-every", type=int, default=6, help="an NDJSON export every N rounds (0: none)")
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--report", type=float, default=10.0)
    ap.add_argument("--tail-bin", help="the rampart binary: follow the events with `rampart events tail --server`")
    args = ap.parse_args()

    searcher = Searcher(args)
    tail = Tail(args.tail_bin, searcher.base, searcher.token) if args.tail_bin else None
    stop_at = time.monotonic() + args.seconds
    next_round = time.monotonic()
    next_report = time.monotonic() + args.report
    rounds = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        while time.monotonic() < stop_at:
            searcher.round(rounds, pool,
                           export=args.export_every > 0 and rounds % args.export_every == args.export_every - 1)
            rounds += 1
            next_round += args.every
            while True:
                now = time.monotonic()
                if now >= next_report:
                    print(json.dumps({"t": time.time(), "rounds": rounds, **searcher.counters.snapshot()}), flush=True)
                    next_report += args.report
                if now >= next_round or now >= stop_at:
                    break
                time.sleep(min(next_round, next_report, stop_at) - now)
            if time.monotonic() > next_round + args.every:
                next_round = time.monotonic()  # a round ran long: do not bunch up
    extra = {"tail": tail.finish(searcher.counters)} if tail else {}
    print(json.dumps({"t": time.time(), "rounds": rounds, **extra, **searcher.counters.snapshot()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
