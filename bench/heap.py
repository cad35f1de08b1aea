#!/usr/bin/env python3
"""What holds the agent's heap at N mounts: the live heap by owner, from heaptrack.

  sudo python3 bench/heap.py [--count 10000] [--changes 6] [--scrapes 5]

Needs heaptrack (apt install heaptrack). Like mounts10k.py, it makes N overlay mounts
on a tmpfs inside a private mount and PID namespace, and starts the release agent
(eBPF off) watching them, here under heaptrack. Once every upper dir has been
scanned it scrapes `--scrapes` times, makes `--changes` mount changes (a mount and
its unmount, each followed by a scrape) and then kills the agent with SIGKILL: what
heaptrack then reports as leaked is what was live at that moment. It prints the
agent's RSS before the kill (heaptrack's own memory included) and the live heap
grouped by the agent's structure that allocated it (the innermost frame of the
agent's code in each allocation's backtrace), then the largest allocation sites
left in "other".

heaptrack slows every allocation: the first scans of 10,000 upper dirs take minutes,
and jobs can still wait in the scan queue when the agent is killed.
"""
import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AGENT, detach_inherited_overlays, rss_mib, run_inside_private_namespace, start_agent  # noqa: E402
from mounts10k import get, mount_one, sys_mount, sys_umount, wait  # noqa: E402

# (owner, regex on the innermost frame of the agent's code), first match wins.
OWNERS = [
    ("scan records: the store's table and records", r"ScanPool::schedule$|ScanRecord::new$|ScanPool::queue_scan$"),
    ("scan queue: its vector of waiting jobs", r"Queue::push$|queue::shrink$"),
    ("rescan caches: names per directory, copied-up inodes", r"scan_upper$|walk::|Walker|run_job$"),
    ("mountinfo lines kept per namespace", r"mountinfo::parse$|OverlayOptions::parse$|unescape_octal|NodeDiscovery::read$"),
    ("mount table: one Mount per superblock", r"group_by_superblock$|Tables::table$|path_label$"),
    ("mount labels, escaped once per table", r"MountLabels::new$|LabelCache::get$"),
    ("activity thread: a pass in flight", r"watch_activity$|check_activity$"),
]


def innermost(stack):
    """The innermost frame of the agent's code in a folded stack, without its hash."""
    ours = [f for f in stack.split(";") if f.startswith("overlay_agent::") or "overlay_agent.." in f]
    return re.sub(r"::h[0-9a-f]{16}$", "", ours[-1]) if ours else "(outside the agent's code)"


def live_by_owner(folded):
    owners, other = collections.Counter(), collections.Counter()
    for line in open(folded):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        n = int(n) if n.isdigit() else 0
        if n == 0:
            continue
        frame = innermost(stack)
        owner = next((o for o, rx in OWNERS if re.search(rx, frame)), None)
        if owner:
            owners[owner] += n
        else:
            other[frame] += n
    return owners, other


def profile(args, base):
    for i in range(args.count):
        m = mount_one(base, i)
        os.chown(os.path.join(m, "f"), 1, 1)  # one copy-up: an upper dir with a file
    data = os.path.join(base, "heap")
    wrapper = os.path.join(base, "under-heaptrack")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec heaptrack -o {data} {AGENT} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    agent, addr = start_agent(base, "ebpf:\n  enabled: false\n", agent=wrapper)
    url = f"http://{addr}/metrics"
    try:
        wait("every upper dir scanned", 3600,
             lambda: get(url, timeout=300).count(b"\noverlayfs_upper_scans_total{") >= args.count, period=1)
        pid = int(subprocess.check_output(["pgrep", "-n", "-f", f"^{re.escape(AGENT)} "]).split()[0])
        for _ in range(args.scrapes):
            get(url, timeout=300)
        for k in range(args.changes):
            m = mount_one(base, args.count + k)
            get(url, timeout=300)
            sys_umount(m)
            get(url, timeout=300)
        rss = rss_mib(pid)
        os.kill(pid, signal.SIGKILL)
    finally:
        agent.wait()
    return rss, next(os.path.join(base, f) for f in os.listdir(base) if f.startswith("heap."))


def inner(args):
    detach_inherited_overlays(sys_umount)
    base = tempfile.mkdtemp(prefix="ovlheap-", dir="/tmp")
    sys_mount("tmpfs", base, "tmpfs", "size=2g,nr_inodes=0")
    try:
        rss, data = profile(args, base)
        folded = os.path.join(base, "live.folded")
        subprocess.run(["heaptrack_print", "-f", data, "--print-leaks", "0", "--print-peaks", "0",
                        "--print-allocators", "0", "--print-temporary", "0",
                        "--flamegraph-cost-type", "leaked", "-F", folded],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        owners, other = live_by_owner(folded)
    finally:
        sys_umount(base)
        shutil.rmtree(base, ignore_errors=True)
    total = sum(owners.values()) + sum(other.values())
    print(f"\nlive heap of the agent at {args.count:,} mounts, {time.strftime('%Y-%m-%d')}, kernel "
          f"{os.uname().release}, after {args.scrapes} scrapes and {args.changes} mount changes; "
          f"RSS under heaptrack {rss:.1f} MiB\n")
    print("| owner | live | per mount |")
    print("|---|---|---|")
    for o, _ in OWNERS:
        print(f"| {o} | {owners[o] / 1e6:.1f} MB | {owners[o] / args.count:.0f} B |")
    print(f"| other | {sum(other.values()) / 1e6:.1f} MB | {sum(other.values()) / args.count:.0f} B |")
    print(f"| total | {total / 1e6:.1f} MB | {total / args.count:.0f} B |")
    print("\nlargest in other:", ", ".join(f"{f} {n / 1e6:.2f} MB" for f, n in other.most_common(6)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=6)
    ap.add_argument("--scrapes", type=int, default=5)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if args.inner:
        return inner(args)
    if not shutil.which("heaptrack"):
        sys.exit("heaptrack not found: apt install heaptrack")
    run_inside_private_namespace(__file__, ["--count", str(args.count), "--changes", str(args.changes),
                                            "--scrapes", str(args.scrapes)], "the heap profile", args.no_build)


if __name__ == "__main__":
    main()
