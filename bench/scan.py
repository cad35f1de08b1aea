#!/usr/bin/env python3
"""Upper-dir scan benchmark: overlay-agent's classified scan vs GNU du on the same tree.

Builds a real overlay whose upper dir holds N entries of every kind (copied-up files,
created files, whiteouts, opaque dirs, plain dirs), warms the cache, then alternates
`du -s` and `overlay-agent once` runs (a first walk: nothing cached) and prints
medians, the ratio and peak RSS. Then runs `overlay-agent serve` on the same tree and
times its warm rescans of the unchanged tree (the scan's own duration, from
overlayfs_upper_scan_duration_seconds, and its CPU time) against `du -s`.
Run as root:  python3 bench/scan.py [--entries 200000] [--runs 5]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AGENT, ROOT, sh, start_agent  # noqa: E402


def build_tree(base, entries):
    lower, upper, work, merged = (os.path.join(base, d) for d in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        os.makedirs(d)
    # Lower: files to copy up and to delete, in dirs of 1000.
    per_dir = 1000
    n_copy = entries * 3 // 10
    n_delete = entries // 10
    n_lower = n_copy + n_delete
    for i in range(n_lower):
        d = os.path.join(lower, f"d{i // per_dir}")
        if i % per_dir == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(b"x" * (i % 4096))
    for i in range(20):
        os.makedirs(os.path.join(lower, f"opaque{i}", "old"))
    # volatile: copy-ups skip their fsync, so a large tree builds in minutes; what
    # the upper dir holds (and so what is measured) is the same.
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir={lower},upperdir={upper},workdir={work},volatile", merged)
    # Copy-ups (chown), whiteouts (unlink), created files, opaque dirs.
    for i in range(n_copy):
        os.chown(os.path.join(merged, f"d{i // per_dir}", f"f{i}"), 1, 1)
    for i in range(n_copy, n_lower):
        os.unlink(os.path.join(merged, f"d{i // per_dir}", f"f{i}"))
    for i in range(20):
        shutil.rmtree(os.path.join(merged, f"opaque{i}"))
        os.makedirs(os.path.join(merged, f"opaque{i}"))
    n_new = max(0, entries - int(sh("du", "-s", "--inodes", upper).split()[0]))
    newdir = None
    for i in range(n_new):
        if i % per_dir == 0:
            newdir = os.path.join(merged, f"new{i // per_dir}")
            os.makedirs(newdir)
        with open(os.path.join(newdir, f"n{i}"), "wb") as f:
            f.write(b"y" * (i % 2048))
    return merged, upper


def timed(cmd):
    """(wall seconds, max RSS KiB, stdout) of one run, via GNU time."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], check=True, capture_output=True, text=True)
    wall, rss = out.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss), out.stdout


def scrape(addr):
    import urllib.request
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text, name):
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def cpu_timed(cmd):
    """(wall seconds, user+system CPU seconds) of one run, via GNU time."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %U %S", *cmd], check=True, capture_output=True, text=True)
    wall, user, system = out.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system)


def rescans(agent, base, merged, upper, runs, interval):
    """Runs `serve` and, after each of its scans, one `du -s` (so the two never
    overlap). Returns the first scan's duration, the rescans' durations and CPU
    seconds, du's wall and CPU seconds, and the directories read and cached."""
    p, addr = start_agent(base, f"scan:\n  concurrency: 1\n  interval: {interval}s\n  idle_priority: false\n",
                          include=re.escape(merged), agent=agent, name="serve")
    try:
        durations, cpus, du_wall, du_cpu = [], [], [], []
        last_n, last_cpu, text = 0, 0.0, ""
        deadline = time.time() + 600 + runs * interval * 2
        while len(durations) < runs + 1 and time.time() < deadline:
            time.sleep(0.02)
            try:
                text = scrape(addr)
            except OSError:
                continue
            n = metric(text, "overlayfs_upper_scans_total") or 0
            if n > last_n:
                cpu = metric(text, "overlayfs_scan_cpu_seconds_total") or 0.0
                durations.append(metric(text, "overlayfs_upper_scan_duration_seconds"))
                cpus.append(cpu - last_cpu)
                last_n, last_cpu = n, cpu
                w, c = cpu_timed(["du", "-s", upper])
                du_wall.append(w)
                du_cpu.append(c)
        assert len(durations) == runs + 1, "the agent did not rescan in time"
        read = metric(text, r'overlayfs_scan_dirs_total\{how="read"\}')
        cached = metric(text, r'overlayfs_scan_dirs_total\{how="cached"\}')
        return (durations[0], cpus[0]), durations[1:], cpus[1:], du_wall, du_cpu, read, cached
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark mounts an overlay")
    sh("cargo", "build", "--release", "--locked", "-p", "overlay-agent", cwd=ROOT)
    agent = AGENT
    base = tempfile.mkdtemp(prefix="ovl-bench-")
    merged = None
    try:
        t0 = time.time()
        merged, upper = build_tree(base, args.entries)
        inodes = int(sh("du", "-s", "--inodes", upper).split()[0])
        print(f"tree: {inodes} inodes in {upper} (built in {time.time() - t0:.1f}s)")
        cfg = os.path.join(base, "bench.yaml")
        with open(cfg, "w") as f:
            f.write(f"discovery:\n  include_mountpoints: ['{re.escape(merged)}']\nscan:\n  concurrency: 1\n  idle_priority: false\n")
        sh("du", "-s", upper)  # warm the cache
        du_t, agent_wall, agent_scan, agent_rss, du_rss = [], [], [], [], []
        for _ in range(args.runs):
            w, r, _ = timed(["du", "-s", upper])
            du_t.append(w)
            du_rss.append(r)
            w, r, out = timed([agent, "--config", cfg, "once"])
            m = re.search(r"^overlayfs_upper_scan_duration_seconds\{[^}]*\} (\S+)$", out, re.M)
            e = re.search(r'^overlayfs_upper_inodes\{[^}]*\} (\S+)$', out, re.M)
            assert m and e, "no scan result in the agent's output"
            assert int(float(e.group(1))) == inodes, f"agent counted {e.group(1)} inodes, du {inodes}"
            agent_wall.append(w)
            agent_scan.append(float(m.group(1)))
            agent_rss.append(r)
        med = statistics.median
        ratio = med(agent_wall) / med(du_t) if med(du_t) > 0 else float("nan")
        print()
        print(f"| measure (median of {args.runs}, warm cache) | du -s | overlay-agent once |")
        print("|---|---|---|")
        print(f"| wall time | {med(du_t):.3f} s | {med(agent_wall):.3f} s (scan alone {med(agent_scan):.3f} s) |")
        print(f"| entries per second | {inodes / max(med(du_t), 1e-9):,.0f} | {inodes / max(med(agent_wall), 1e-9):,.0f} |")
        print(f"| peak RSS | {max(du_rss) / 1024:.1f} MiB | {max(agent_rss) / 1024:.1f} MiB |")
        print()
        print(f"ratio agent/du (wall): {ratio:.2f}  (target <= 1.00)")
        print(f"agent peak RSS: {max(agent_rss) / 1024:.1f} MiB  (target < 50 MiB)")
        interval = int(2 * med(du_t)) + 2
        first, again, cpus, du_wall, du_cpu, read, cached = rescans(agent, base, merged, upper, args.runs, interval)
        print()
        print(f"| warm rescan of the unchanged tree (median of {args.runs}, du run after each scan) | overlay-agent | du -s | ratio |")
        print("|---|---|---|---|")
        print(f"| first scan in serve (nothing cached), wall | {first[0]:.3f} s | {med(du_wall):.3f} s | {first[0] / med(du_wall):.2f}x |")
        print(f"| first scan in serve, CPU (user+system) | {first[1]:.3f} s | {med(du_cpu):.3f} s | {first[1] / med(du_cpu):.2f}x |")
        print(f"| rescan, wall | {med(again):.3f} s | {med(du_wall):.3f} s | {med(again) / med(du_wall):.2f}x |")
        print(f"| rescan, CPU (user+system) | {med(cpus):.3f} s | {med(du_cpu):.3f} s | {med(cpus) / med(du_cpu):.2f}x |")
        print(f"directories over all scans: {read:.0f} read, {cached:.0f} from the cache")
        print(f"rescan ratio agent/du (wall): {med(again) / med(du_wall):.2f}  (target <= 0.80)")
    finally:
        if merged:
            subprocess.run(["umount", merged])
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
