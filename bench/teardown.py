#!/usr/bin/env python3
"""Teardown benchmark: failed unmounts per 1,000 cycles, and how long the agent
holds a filesystem after its overlay is unmounted.

The issue's cycle, with the agent scanning every second: a tmpfs holds a tree of
tens of thousands of files; each cycle bind-mounts it as the upper dir's own
filesystem (as a volume per job is), mounts an overlay over it, waits a random
time, unmounts the overlay, and at once the upper dir's filesystem. An unmount
that fails ("target is busy") is counted and retried every millisecond until it
succeeds. After each overlay unmount the agent's descriptors and threads' working
directories (/proc/PID/fd/*, /proc/PID/task/*/cwd) are stat'ed every millisecond
until none is on the tmpfs, while the upper dir's filesystem is unmounted: the
gap from the overlay's unmount to the last one seen, in the cycles whose unmount
came during a scan.

Run as root, once per agent build:
  python3 bench/teardown.py [--agent target/release/overlay-agent] [--cycles 1000] [--max-cpu 0.05]
  python3 bench/teardown.py --smoke    # 20 cycles over an 8,410-entry tree, in seconds

It prints figures and asserts nothing about their speed; it exits 1 after
printing them if any unmount failed.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AGENT, pct, sh, start_agent  # noqa: E402


def populate(root, top=40, sub=40, files=20):
    """top x sub directories of `files` one-byte files: 33,640 entries by default
    (top=10: 8,410)."""
    n = 0
    for t in range(top):
        for s in range(sub):
            d = os.path.join(root, f"t{t}", f"s{s}")
            os.makedirs(d)
            for f in range(files):
                with open(os.path.join(d, f"f{f}"), "wb") as fh:
                    fh.write(b"x")
            n += 1 + files
        n += 1
    return n


def holds(pid, dev):
    """Whether process `pid` has a descriptor or a thread's cwd on device `dev`."""
    paths = [f"/proc/{pid}/task/{t}/cwd" for t in os.listdir(f"/proc/{pid}/task")]
    paths += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    for p in paths:
        try:
            if os.stat(p).st_dev == dev:
                return True
        except OSError:
            pass
    return False


def watch(pid, dev, out):
    """Polls every millisecond until `pid` holds nothing on `dev`; appends the
    last time it still did (nothing when it held nothing at the first look)."""
    while holds(pid, dev):
        out[:] = [time.monotonic()]
        time.sleep(0.001)


def umount(path):
    return subprocess.run(["umount", path], capture_output=True).returncode == 0


def wait_ready(addr, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://{addr}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the agent did not become ready")


def metric(addr, name):
    body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def run(args):
    base = tempfile.mkdtemp(prefix="teardown-")
    store, t, lower, merged = (os.path.join(base, d) for d in ("store", "T", "lower", "merged"))
    for d in (store, t, lower, merged):
        os.makedirs(d)
    sh("mount", "-t", "tmpfs", "-o", "size=1g,nr_inodes=400k", "tmpfs", store)
    entries = populate(os.path.join(store, "tree", "upper"), top=args.top)
    os.makedirs(os.path.join(store, "tree", "work"))
    dev = os.stat(store).st_dev
    budget = f"  max_cpu: {args.max_cpu}\n" if args.max_cpu else ""
    agent, addr = start_agent(base, agent=args.agent, discovery="  resync_interval: 1s\n",
                              config=f"scan:\n  interval: 1s\n{budget}")
    rng = random.Random(args.seed)
    failed, overlapped, gaps, retry = 0, 0, [], []
    try:
        wait_ready(addr)
        opts = f"lowerdir={lower},upperdir={t}/upper,workdir={t}/work"
        for _ in range(args.cycles):
            sh("mount", "--bind", os.path.join(store, "tree"), t)
            sh("mount", "-t", "overlay", "overlay", "-o", opts, merged)
            time.sleep(rng.uniform(0, args.dwell_ms / 1000))
            in_flight = holds(agent.pid, dev)
            overlapped += in_flight
            sh("umount", merged)
            gone = time.monotonic()
            last = []
            watcher = threading.Thread(target=watch, args=(agent.pid, dev, last))
            watcher.start()
            if not umount(t):
                failed += 1
                while not umount(t):
                    time.sleep(0.001)
                retry.append(time.monotonic() - gone)
            watcher.join()
            if in_flight:
                gaps.append(last[0] - gone if last else 0.0)
        cancelled = metric(addr, "overlayfs_scan_cancelled_total")
    finally:
        agent.kill()
        agent.wait()
        for p in (merged, t, store):
            subprocess.run(["umount", "-l", p], capture_output=True)
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print(f"agent: {args.agent}")
    print(f"upper dir: {entries} entries on its own filesystem; dwell 0-{args.dwell_ms} ms; seed {args.seed}; "
          f"scan.max_cpu {args.max_cpu or 'unset'}")
    print(f"cycles: {args.cycles}, with a scan in flight at the unmount: {overlapped}")
    print(f"failed unmounts of the upper dir's filesystem: {failed} "
          f"({failed * 1000 / args.cycles:.1f} per 1,000 cycles)")
    if retry:
        print(f"  a failed unmount succeeded on retry after: p50 {ms(pct(retry, 50))}, max {ms(max(retry))}")
    if gaps:
        print(f"gap from the overlay's unmount to the agent's last descriptor or cwd on the filesystem, "
              f"over the {len(gaps)} cycles with a scan in flight (0: none seen at the first look, within "
              f"about a millisecond): p50 {ms(pct(gaps, 50))}, p99 {ms(pct(gaps, 99))}, max {ms(max(gaps))}; "
              f"{sum(g > 0 for g in gaps)} cycles above 0")
    print(f"overlayfs_scan_cancelled_total: {cancelled:.0f}")
    if failed:
        # Figures first; then the run fails: the agent was in a user's way.
        raise SystemExit(f"FAIL: {failed} unmounts of the upper dir's filesystem failed")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", default=AGENT)
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--dwell-ms", type=int, default=300)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--max-cpu", type=float, help="scan.max_cpu (a budget stretches the walks)")
    p.add_argument("--top", type=int, default=40, help="top-level directories of the tree (841 entries each)")
    p.add_argument("--smoke", action="store_true", help="a quick run: 20 cycles, --top 10")
    args = p.parse_args()
    if args.smoke:
        args.cycles, args.top = min(args.cycles, 20), min(args.top, 10)
    run(args)


if __name__ == "__main__":
    main()
