#!/usr/bin/env python3
"""Scan cost at node scale: many mounts, full walks against budgeted walks.

  sudo python3 bench/budget.py [--mounts 1000] [--entries 10000] [--budget 0.1] [--seconds 120]
  sudo python3 bench/budget.py --disk --cold --mounts 1000 --entries 1000   # on ext4, caches dropped
  sudo python3 bench/budget.py --refresh --mounts 1000 --entries 1000 --budget 0.01 --interval 10s [--before BIN]

Builds MOUNTS real overlay mounts whose upper dirs hold ENTRIES names each (dirs of
1,000 hard links to one file, on a tmpfs the benchmark mounts: ten million real files
would take this machine hours to create; a name costs the scan one stat either way),
then runs `overlay-agent serve` (scan.interval 60s, concurrency 2) twice. With --disk the
tree is built under /var/tmp (the root filesystem) instead, and --cold drops the page cache
before each run, so the first pass reads inodes and directories from disk:
- full: no budget; measured over SECONDS once the first pass over every mount is done;
- budgeted: scan.max_cpu = BUDGET; measured over SECONDS from the start.
It prints agent CPU-seconds per minute (all threads, /proc/PID/stat), the scan threads'
own CPU-seconds per minute (overlayfs_scan_cpu_seconds_total) against the budget, bytes
read from disk (/proc/PID/io read_bytes: tmpfs, so 0 unless something spills), how far
behind schedule the scans ran, and scans completed.

--refresh: how long a written mount's figures take to refresh under the budget. Once every
mount has been scanned, a new file is written through WRITES mounts at once: half of them the
mounts scanned most recently (the last of a round ordered by due time), half chosen at random;
it prints, per agent binary (the one built here, and --before, e.g. a build of an older
commit), the time from the write until each mount's overlayfs_upper_entries{kind="created"}
counts the file, and the CPU time of the scan-activity thread.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import AGENT, TICK, cpu_seconds, sh, start_agent as start_serve


def read_bytes(pid):
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=30) as r:
        return r.read().decode()


def value(text, name, default=0.0):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else default


def scanned_mounts(text):
    return len(re.findall(r"^overlayfs_upper_scans_total\{", text, re.M))


def build(base, mounts, entries):
    t0 = time.time()
    for i in range(mounts):
        d = os.path.join(base, f"m{i}")
        lower, upper, work, merged = (os.path.join(d, x) for x in ("lower", "upper", "work", "merged"))
        for x in (lower, upper, work, merged):
            os.makedirs(x)
        target = os.path.join(upper, "file")
        with open(target, "wb") as f:
            f.write(b"x" * 100)
        for j in range(entries - 1):
            sub = os.path.join(upper, f"d{j // 1000}")
            if j % 1000 == 0:
                os.mkdir(sub)
            os.link(target, os.path.join(sub, f"n{j}"))
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", merged)
    return time.time() - t0


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def start_agent(base, agent, scan_yaml):
    """Starts `agent serve` on the overlays under `base` with the given scan:
    section lines; returns the process, its address and its first scrape."""
    p, addr = start_serve(base, f"scan:\n{scan_yaml}", agent=agent)
    deadline = time.time() + 60
    while True:
        try:
            return p, addr, metrics(addr)
        except OSError:
            if time.time() >= deadline:
                p.terminate()
                raise AssertionError("agent did not come up")
            time.sleep(0.2)


def run(base, mounts, budget, seconds, steady, cold=False):
    if cold:
        drop_caches()
    scan = "  interval: 60s\n  concurrency: 2\n" + (f"  max_cpu: {budget}\n" if budget else "")
    p, addr, text = start_agent(base, AGENT, scan)
    try:
        t_start = time.time()
        first_pass = None
        if steady:
            while scanned_mounts(text) < mounts:
                time.sleep(0.5)
                text = metrics(addr)
            first_pass = time.time() - t_start
        t0, cpu0, io0 = time.time(), cpu_seconds(p.pid), read_bytes(p.pid)
        scan0 = value(metrics(addr), "overlayfs_scan_cpu_seconds_total")
        behind = 0.0
        end = t0 + seconds
        while time.time() < end:
            time.sleep(min(5, max(0.1, end - time.time())))
            text = metrics(addr)
            behind = max(behind, value(text, "overlayfs_scan_behind_schedule_seconds"))
        wall = time.time() - t0
        text = metrics(addr)
        scans = sum(float(v) for v in re.findall(r"^overlayfs_upper_scans_total\{[^}]*\} (\S+)$", text, re.M))
        return {
            "first_pass": first_pass,
            "cpu_per_min": (cpu_seconds(p.pid) - cpu0) / wall * 60,
            "scan_per_min": (value(text, "overlayfs_scan_cpu_seconds_total") - scan0) / wall * 60,
            "read": read_bytes(p.pid) - io0,
            "behind": behind,
            "scans": scans,
            "throttled": value(text, "overlayfs_scan_throttled_seconds_total"),
            "rss": int(open(f"/proc/{p.pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20,
        }
    finally:
        p.terminate()
        p.wait()


def series(text, name):
    """{frozenset of (label, value)}: value, for every sample of NAME."""
    out = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        out[labels] = float(m.group(2))
    return out


def per_mount(text, name, **extra):
    want = set(extra.items())
    return {dict(k)["mountpoint"]: v for k, v in series(text, name).items() if want <= set(k)}


def thread_cpu(pid, comm):
    total = 0.0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().strip() != comm:
                continue
            fields = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def refresh(base, mounts, budget, interval, agent, writes, round_no, wait):
    import random
    p, addr, text = start_agent(base, agent, f"  interval: {interval}\n  concurrency: 2\n  max_cpu: {budget}\n")
    chosen = {}
    try:
        t_start = time.time()
        while scanned_mounts(text) < mounts:
            time.sleep(1)
            text = metrics(addr)
        first_pass = time.time() - t_start
        stamps = per_mount(text, "overlayfs_upper_scan_timestamp_seconds")
        newest = sorted(stamps, key=stamps.get, reverse=True)[: writes // 2]
        rest = [mp for mp in stamps if mp not in newest]
        chosen = {mp: "last scanned" for mp in newest}
        chosen.update({mp: "random" for mp in random.Random(round_no).sample(rest, writes - len(newest))})
        created0 = per_mount(text, "overlayfs_upper_entries", kind="created")
        cpu0 = thread_cpu(p.pid, "scan-activity")
        t0 = time.time()
        for mp in chosen:
            with open(os.path.join(mp, "written-by-bench"), "w") as f:
                f.write("x")
        took = {}
        while len(took) < len(chosen) and time.time() < t0 + wait:
            time.sleep(0.5)
            created = per_mount(metrics(addr), "overlayfs_upper_entries", kind="created")
            for mp in chosen:
                if mp not in took and created.get(mp, 0) > created0.get(mp, 0):
                    took[mp] = time.time() - t0
        wall = time.time() - t0
        activity_cpu = thread_cpu(p.pid, "scan-activity") - cpu0
        text = metrics(addr)
        out = {"first_pass": first_pass, "activity_cpu_per_min": activity_cpu / wall * 60,
               "prioritized": value(text, re.escape('overlayfs_scan_prioritized_total{signal="upper_changed"}'), None)}
        for kind in ("last scanned", "random"):
            t = sorted(took.get(mp, float("inf")) for mp, k in chosen.items() if k == kind)
            out[kind] = t
        return out
    finally:
        p.terminate()
        p.wait()
        for mp in chosen:
            try:
                os.unlink(os.path.join(mp, "written-by-bench"))
            except OSError:
                pass


def refresh_table(args, base):
    agents = [("this build", AGENT)]
    if args.before:
        agents.insert(0, ("--before", args.before))
    results = [(name, refresh(base, args.mounts, args.budget, args.interval, path, args.writes, i, args.wait))
               for i, (name, path) in enumerate(agents)]
    fmt = lambda t: f"not in {args.wait} s" if t == float("inf") else f"{t:.1f} s"
    print()
    print(f"| {args.mounts} mounts x {args.entries:,} entries, max_cpu {args.budget}, interval {args.interval}, {args.writes} mounts written at once | "
          + " | ".join(n for n, _ in results) + " |")
    print("|---|" + "---|" * len(results))
    print("| first pass over every mount | " + " | ".join(f"{r['first_pass']:.0f} s" for _, r in results) + " |")
    for kind in ("last scanned", "random"):
        print(f"| written -> refreshed, {kind} mounts: median / max | "
              + " | ".join(f"{fmt(r[kind][len(r[kind]) // 2])} / {fmt(r[kind][-1])}" for _, r in results) + " |")
    print("| scan-activity thread CPU-seconds per minute | "
          + " | ".join("-" if r["prioritized"] is None else f"{r['activity_cpu_per_min']:.3f}" for _, r in results) + " |")
    print("| overlayfs_scan_prioritized_total{signal=\"upper_changed\"} | "
          + " | ".join("-" if r["prioritized"] is None else f"{r['prioritized']:.0f}" for _, r in results) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mounts", type=int, default=1000)
    ap.add_argument("--entries", type=int, default=10000)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--disk", action="store_true", help="build on /var/tmp, not on a tmpfs")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    ap.add_argument("--refresh", action="store_true", help="measure how fast written mounts refresh")
    ap.add_argument("--writes", type=int, default=10, help="--refresh: mounts written at once")
    ap.add_argument("--interval", default="60s", help="--refresh: scan.interval")
    ap.add_argument("--wait", type=int, default=300, help="--refresh: seconds to wait for the refreshes")
    ap.add_argument("--before", help="--refresh: another agent binary to compare with")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark mounts overlays")
    sh("cargo", "build", "--release", "--locked", "-p", "overlay-agent")
    base = tempfile.mkdtemp(prefix="ovl-budget-", dir="/var/tmp" if args.disk else None)
    if not args.disk:
        sh("mount", "-t", "tmpfs", "-o", "size=8g,nr_inodes=0", "tmpfs", base)
    where = sh("df", "--output=fstype", base).split()[-1]
    try:
        built = build(base, args.mounts, args.entries)
        print(f"{args.mounts} mounts x {args.entries} entries on {where} built in {built:.0f} s"
              f"{', page cache dropped before each run' if args.cold else ''}")
        if args.refresh:
            refresh_table(args, base)
            return
        full = run(base, args.mounts, None, args.seconds, steady=True, cold=args.cold)
        capped = run(base, args.mounts, args.budget, args.seconds, steady=False, cold=args.cold)
        per_min = args.budget * 60
        print()
        print(f"| {args.mounts} mounts x {args.entries:,} entries, scan.interval 60s, {args.seconds} s measured | full walks | budgeted (max_cpu {args.budget}) |")
        print("|---|---|---|")
        print(f"| first pass over every mount | {full['first_pass']:.1f} s | (not waited for) |")
        print(f"| agent CPU-seconds per minute (all threads) | {full['cpu_per_min']:.2f} | {capped['cpu_per_min']:.2f} |")
        print(f"| scan-thread CPU-seconds per minute | {full['scan_per_min']:.2f} | {capped['scan_per_min']:.2f} (budget {per_min:.2f}: {capped['scan_per_min'] / per_min:.0%}) |")
        print(f"| bytes read from disk | {full['read']:,} | {capped['read']:,} |")
        print(f"| most behind schedule | {full['behind']:.1f} s | {capped['behind']:.1f} s |")
        print(f"| scans completed (all mounts, since start) | {full['scans']:.0f} | {capped['scans']:.0f} |")
        print(f"| time throttled (scan threads, total) | {full['throttled']:.1f} s | {capped['throttled']:.1f} s |")
        print(f"| agent RSS at the end | {full['rss']:.0f} MiB | {capped['rss']:.0f} MiB |")
        if capped["throttled"] > 0:
            print(f"budget held within {abs(capped['scan_per_min'] / per_min - 1):.1%} (target 10%)")
        else:
            print("the budgeted run never reached its budget: make the tree larger or the budget smaller")
    finally:
        out = sh("mount")
        for line in out.splitlines():
            mp = line.split(" on ", 1)[1].split(" type ", 1)[0] if " on " in line else ""
            if mp.startswith(base + "/"):
                subprocess.run(["umount", "-l", mp])
        if not args.disk:
            subprocess.run(["umount", "-l", base])
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
