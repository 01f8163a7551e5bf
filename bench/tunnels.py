#!/usr/bin/env python3
"""Hold N idle CONNECT tunnels open through a proxy and measure the proxy's RSS.

Prints one JSON object: {"rest_kib", "held_kib", "ok", "failed", "per_tunnel_kib"}.
RSS is the sum of VmRSS over the proxy's process tree (Squid forks helpers,
mitmproxy is one process, tinyproxy uses threads), read from /proc.

Every wait is bounded: the whole run stops after --deadline seconds.
"""

import argparse
import asyncio
import json
import os
import sys
import time


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


def tree_rss_kib(root: int) -> int:
    total = 0
    stack = [root]
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
        stack.extend(children_of(pid))
    return total


async def open_tunnel(host: str, port: int, target: str, sem: asyncio.Semaphore, timeout: float):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except BaseException:
            writer.close()
            raise
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            writer.close()
            raise ConnectionError(f"CONNECT answered {head[:60]!r}")
        return writer


async def main_async(args) -> dict:
    host, port = args.proxy.rsplit(":", 1)
    rest = tree_rss_kib(args.pid)
    sem = asyncio.Semaphore(args.parallel)
    tasks = [
        asyncio.ensure_future(open_tunnel(host, int(port), args.target, sem, args.timeout))
        for _ in range(args.count)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    writers = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    # Let the proxy settle (buffers allocated lazily, helper processes spawned).
    await asyncio.sleep(args.settle)
    held = tree_rss_kib(args.pid)
    for w in writers:
        w.close()
    ok = len(writers)
    out = {
        "rest_kib": rest,
        "held_kib": held,
        "ok": ok,
        "failed": len(errors),
        "per_tunnel_kib": round((held - rest) / ok, 2) if ok else None,
    }
    if errors:
        out["first_error"] = repr(errors[0])[:200]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--proxy", required=True, help="HOST:PORT of the proxy")
    p.add_argument("--target", required=True, help="HOST:PORT to CONNECT to")
    p.add_argument("--pid", type=int, required=True, help="proxy's root process id")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=100, help="tunnels opened at once")
    p.add_argument("--timeout", type=float, default=10.0, help="per-tunnel timeout, s")
    p.add_argument("--settle", type=float, default=2.0, help="wait before measuring, s")
    p.add_argument("--deadline", type=float, default=90.0, help="whole run bound, s")
    args = p.parse_args()
    start = time.monotonic()
    try:
        out = asyncio.run(asyncio.wait_for(main_async(args), args.deadline))
    except asyncio.TimeoutError:
        out = {"error": f"deadline of {args.deadline}s exceeded"}
    out["seconds"] = round(time.monotonic() - start, 2)
    print(json.dumps(out))
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
