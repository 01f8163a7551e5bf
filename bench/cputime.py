#!/usr/bin/env python3
"""Print the CPU seconds (user + system) used so far by a process and its live
descendants, from /proc. The harness reads it before and after a load loop:
CPU per request does not depend on what else the machine is running, unlike
requests per second.

usage: cputime.py PID
"""

import os
import sys

TICKS = os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    # The command name may contain spaces: fields start after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICKS


def tree_cpu_seconds(root: int) -> float:
    total = 0.0
    stack, seen = [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += cpu_seconds(pid)
        stack.extend(children_of(pid))
    return total


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(f"{tree_cpu_seconds(int(sys.argv[1])):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
