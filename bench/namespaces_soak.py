#!/usr/bin/env python3
"""Mount namespace churn soak: namespaces with hostile mountpoint names created and
ended continuously under a serving agent; nothing may leak.

  sudo python3 bench/namespaces_soak.py --minutes 10 [--live 100] [--rate 5]

Keeps --live namespaces of user nobody (bench/nsworld.py), each with one overlay
whose mountpoint has a hostile name (spaces and tabs, quotes, backslashes and a
literal `\\040`, a newline, unicode, commas and colons, a path of about 3,000
bytes), and replaces the oldest with a new one --rate times a second. Every new
overlay must appear in /metrics with its exact mountpoint (within 20 s), and every
ended namespace's series must go: each scrape is checked for series whose mntns
belongs to a namespace ended more than --grace seconds ago. Prints RSS and series
count at the start (--live namespaces up), every minute, and at the end (the same
number of namespaces up, all of them new), then ends every namespace and checks
that no mntns series is left. Exits 1 on a stale series, a missing or misnamed
mount, or the agent's end.
"""
import argparse
import collections
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AGENT, ROOT, rss_mib, sh, start_agent  # noqa: E402
from nsworld import Namespace, end_all, mntns_of_series, mounts, scrape, series  # noqa: E402

HOSTILE = [
    "with space/and\ttab",
    "quote\"double'single",
    "back\\slash\\040not-a-space",
    "new\nline",
    "ünïcødé-容器-🙂",
    "comma,colon:equals=",
    "/".join(["d" * 200] * 15),
]


def hostile(serial):
    return f"{serial}-{HOSTILE[serial % len(HOSTILE)]}"


def state(addr):
    body = scrape(addr)
    return body, len(series(body)), mntns_of_series(body)


def soak(args, base):
    agent, addr = start_agent(base, discovery="")
    live, ended, serial = collections.deque(), {}, 0
    failures, reused = [], []

    def fail(msg):
        failures.append(msg)
        print("FAIL:", msg, flush=True)

    def start_one():
        nonlocal serial
        serial += 1
        ns = Namespace(os.path.join(base, f"ns{serial}"), hostile(serial))
        if ns.wait_ready() in ended:  # the kernel reuses a freed namespace's inode number
            reused.append(ended.pop(ns.mntns))
            print(f"namespace inode {ns.mntns} reused by a new namespace", flush=True)
        live.append(ns)

    def all_shown(timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            seen = mounts(scrape(addr))
            if all((ns.mntns, ns.mountpoint) in seen for ns in live):
                return
            time.sleep(0.1)
        got = {m for m in mounts(scrape(addr)) if m[0] in {ns.mntns for ns in live}}
        missing = [ns.mountpoint for ns in live if (ns.mntns, ns.mountpoint) not in got]
        fail(f"mounts not shown with their exact mountpoint: {missing[:3]!r}; shown: {sorted(got)[:3]!r}")

    try:
        for _ in range(args.live):
            start_one()
        all_shown()
        _, n0, _ = state(addr)
        rss0 = rss_mib(agent.pid)
        print(f"start: {args.live} namespaces, {n0} series, RSS {rss0:.1f} MiB", flush=True)
        t0 = last = time.time()
        while time.time() - t0 < args.minutes * 60 and not failures:
            old = live.popleft()
            old.end()
            ended[old.mntns] = time.time()
            start_one()
            time.sleep(1 / args.rate)
            _, n, by_ns = state(addr)
            stale = [m for m in by_ns if m in ended and time.time() - ended[m] > args.grace]
            if stale:
                fail(f"series of namespaces ended over {args.grace} s ago: {stale[:5]}")
            if agent.poll() is not None:
                fail(f"the agent ended ({agent.returncode})")
            if time.time() - last >= 60:
                last = time.time()
                print(f"{(last - t0) / 60:4.1f} min: {serial} namespaces made, {n} series, "
                      f"RSS {rss_mib(agent.pid):.1f} MiB", flush=True)
        all_shown()
        time.sleep(args.grace)
        _, n1, by_ns = state(addr)
        print(f"end: {args.live} namespaces ({serial} made in all, {len(reused)} reused an ended one's inode), {n1} series, "
              f"RSS {rss_mib(agent.pid):.1f} MiB (start: {n0} series, RSS {rss0:.1f} MiB)")
        if n1 != n0:
            fail(f"series count {n0} at the start, {n1} at the end, with as many namespaces")
        end_all(live)
        for ns in live:
            ended[ns.mntns] = time.time()
        time.sleep(args.grace)
        _, n2, by_ns = state(addr)
        print(f"all ended: {n2} series, mntns series left {sum(by_ns.values())}, "
              f"RSS {rss_mib(agent.pid):.1f} MiB")
        if by_ns:
            fail(f"mntns series left after every namespace ended: {by_ns}")
    finally:
        end_all(live)
        agent.send_signal(signal.SIGTERM)
        agent.wait()
    if failures:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--live", type=int, default=100, help="namespaces up at once")
    ap.add_argument("--rate", type=float, default=5.0, help="namespaces replaced a second (at most)")
    ap.add_argument("--grace", type=float, default=2.0, help="seconds a series may outlive its namespace")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the agent reads other users' namespaces)")
    if not args.no_build:
        sh("cargo", "build", "--release", "-p", "overlay-agent", "--locked", cwd=ROOT)
    if not os.path.exists(AGENT):
        sys.exit(f"no {AGENT}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    base = tempfile.mkdtemp(prefix="nssoak-")
    try:
        soak(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
