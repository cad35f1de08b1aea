#!/usr/bin/env python3
"""Mount churn soak: --mounts overlays under a serving agent for --minutes, one of them
replaced (unmounted, and a new one mounted at a new path) every --replace-every
seconds, /metrics scraped every --scrape-every seconds.

  sudo python3 bench/mounts_soak.py [--mounts 1000] [--minutes 30] [--replace-every 0.2]
                                    [--scrape-every 1] [--no-build] [--agent PATH]

Real overlay mounts on tmpfs layers, made with mount(2) inside a private mount and PID
namespace (unshare, as bench/mounts10k.py does, whose mount helpers it uses). Each new
overlay gets a path never used before, so a series left behind by an unmounted overlay
shows as a stale series.

Every scrape compares the mountpoints of `overlayfs_mount_info` with the overlays
mounted at that moment, and every series carrying a `mountpoint` label with them: a
difference is a mismatch only when the same mountpoint differs at two consecutive
scrapes (one change may be in flight). It also records the lag from each mount(2) /
umount2(2) to the end of the first scrape that shows it, and the agent's RSS (VmRSS)
and CPU seconds.

Prints per minute: RSS, series, CPU s/s, scrape p50/p99, replacements, mismatches,
max lag; then a table per --table-every minutes; at the end: RSS after minute 1, RSS at
the end, their ratio (flat = within 10%), max RSS, stale series at the end (after the
churn stops and the agent has had 2 s), replacements. It prints figures; it is not a
timed test: it exits 1 only if stale series remain at the end, a mount never appeared,
or the agent ended.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AGENT, cpu_seconds, detach_inherited_overlays, pct, rss_mib, run_inside_private_namespace, start_agent  # noqa: E402
from mounts10k import get, mount_one, sys_mount, sys_umount, wait  # noqa: E402

MOUNTPOINT = re.compile(r'[{,]mountpoint="((?:[^"\\]|\\.)*)"')


def parse(body):
    """(the mountpoints of overlayfs_mount_info, {mountpoint: series carrying it},
    number of series) of an exposition."""
    info, by_mp, n = set(), {}, 0
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        n += 1
        m = MOUNTPOINT.search(line)
        if m:
            mp = m.group(1)
            by_mp[mp] = by_mp.get(mp, 0) + 1
            if line.startswith("overlayfs_mount_info{"):
                info.add(mp)
    return info, by_mp, n


class Soak:
    def __init__(self, args, base, agent, url):
        self.args, self.base, self.agent, self.url = args, base, agent, url
        self.serial = 0
        self.live = []          # mountpoints, oldest first
        self.pending = {}       # mountpoint -> (time of the change, "mount" | "umount")
        self.appeared = set()
        self.made = set()
        self.prev_diff = set()
        self.replacements = 0
        self.lags = []
        self.samples = []       # (t, rss MiB, cpu s, scrape s, series, persistent mismatches, lag max)

    def new_mount(self):
        m = mount_one(self.base, self.serial)
        self.serial += 1
        os.chown(os.path.join(m, "f"), 1, 1)  # one copy-up: an upper dir with a file
        self.live.append(m)
        self.made.add(m)
        self.pending[m] = (time.perf_counter(), "mount")

    def replace_one(self):
        old = self.live.pop(0)
        sys_umount(old)
        self.pending[old] = (time.perf_counter(), "umount")
        shutil.rmtree(os.path.dirname(old), ignore_errors=True)
        self.new_mount()
        self.replacements += 1

    def scrape(self):
        """One scrape, checked against the overlays mounted now (nothing changes during it)."""
        mounted = set(self.live)
        t0 = time.perf_counter()
        body = get(self.url)
        t1 = time.perf_counter()
        info, by_mp, n = parse(body)
        ours = {mp for mp in by_mp if mp.startswith(self.base + "/")}
        self.appeared |= info
        diff = (info ^ mounted) | (ours - mounted)
        persistent = diff & self.prev_diff
        self.prev_diff = diff
        lag_max = 0.0
        for mp, (tc, kind) in list(self.pending.items()):
            shown = mp in info if kind == "mount" else mp not in ours
            if shown:
                lag = t1 - tc
                self.lags.append(lag)
                lag_max = max(lag_max, lag)
                del self.pending[mp]
        self.samples.append((t1, rss_mib(self.agent.pid), cpu_seconds(self.agent.pid), t1 - t0, n,
                             len(persistent), lag_max))
        return info, ours, mounted, n, by_mp

    def run(self):
        a = self.args
        start = time.perf_counter()
        end = start + a.minutes * 60
        next_replace, next_scrape = start + a.replace_every, start + a.scrape_every
        next_minute, minute = start + 60, 0
        self.scrape()
        print("minute | RSS MiB | series | CPU s/s | scrape p50 / p99 ms | replacements | mismatches | max lag ms",
              flush=True)
        while True:
            now = time.perf_counter()
            if self.agent.poll() is not None:
                sys.exit(f"FAIL: the agent ended (exit {self.agent.returncode})")
            if now >= next_minute:
                minute += 1
                self.print_minute(minute, next_minute - 60, next_minute)
                next_minute += 60
                if now >= end:
                    break
            if now >= next_scrape:
                self.scrape()
                next_scrape += a.scrape_every
            elif now >= next_replace and now < end:
                self.replace_one()
                next_replace += a.replace_every
            else:
                time.sleep(max(0.0, min(next_scrape, next_replace, next_minute) - time.perf_counter()))

    def window(self, t0, t1):
        return [s for s in self.samples if t0 <= s[0] < t1]

    def figures(self, t0, t1):
        w = self.window(t0, t1)
        before = [s for s in self.samples if s[0] < t0]
        first = before[-1] if before else w[0]
        last = w[-1]
        return {"rss": last[1], "rss_max": max(s[1] for s in w), "series": last[4],
                "cpu": (last[2] - first[2]) / (last[0] - first[0]),
                "p50": pct([s[3] for s in w], 50) * 1e3, "p99": pct([s[3] for s in w], 99) * 1e3,
                "mismatches": sum(s[5] for s in w), "lag": max(s[6] for s in w) * 1e3}

    def print_minute(self, minute, t0, t1):
        f = self.figures(t0, t1)
        self.replacements_at = getattr(self, "replacements_at", [0])
        reps = self.replacements - self.replacements_at[-1]
        self.replacements_at.append(self.replacements)
        print(f"{minute:6d} | {f['rss']:7.1f} | {f['series']:6d} | {f['cpu']:7.3f} | "
              f"{f['p50']:8.1f} / {f['p99']:6.1f}  | {reps:12d} | {f['mismatches']:10d} | {f['lag']:10.0f}",
              flush=True)


def inner(args):
    assert os.getpid() == 1, "run inside the namespace"
    n = detach_inherited_overlays(sys_umount)
    if n:
        print(f"(detached {n} overlay mounts inherited from the host's namespace)")
    base = tempfile.mkdtemp(prefix="ovlsoak-", dir="/tmp")
    sys_mount("tmpfs", base, "tmpfs", "size=1g,nr_inodes=0")
    agent = None
    try:
        load0 = os.getloadavg()
        agent, addr = start_agent(base, agent=args.agent)
        url = f"http://{addr}/metrics"
        wait("/readyz", 120, lambda: urllib.request.urlopen(f"http://{addr}/readyz", timeout=5).status == 200)
        ebpf = re.search(rb"\noverlayfs_ebpf_enabled (\S+)", get(url))
        print(f"agent {args.agent}, eBPF enabled: {ebpf.group(1).decode() if ebpf else 'not reported'}")
        soak = Soak(args, base, agent, url)
        t0 = time.perf_counter()
        for _ in range(args.mounts):
            soak.new_mount()
        print(f"{args.mounts} overlays mounted in {time.perf_counter() - t0:.1f} s; waiting until all are shown")
        wait("every overlay shown", 300, lambda: soak.scrape()[0] >= set(soak.live), period=0.5)
        soak.samples.clear()
        soak.lags.clear()
        soak.prev_diff = set()
        soak.run()
        w = list(soak.samples)
        lags = list(soak.lags)
        total = soak.figures(w[0][0], w[-1][0] + 1)

        # The end: the churn has stopped; the agent gets 2 s, then the last scrape.
        last_change = time.perf_counter()
        time.sleep(2)
        info, ours, mounted, series, by_mp = soak.scrape()
        stale = sorted(ours - mounted)
        missing = sorted(mounted - info)
        stale_series = sum(by_mp[mp] for mp in stale)
        never = sorted(soak.made - soak.appeared)
        load1 = os.getloadavg()
        after1 = [s for s in w if s[0] >= w[0][0] + 60]
        rss1 = after1[0][1] if after1 else w[0][1]
        rss_end = w[-1][1]
        print(f"\n{args.mounts:,} overlay mounts for {args.minutes} min, one replaced every "
              f"{args.replace_every} s, a scrape every {args.scrape_every} s; {time.strftime('%Y-%m-%d')}, "
              f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average "
              f"{' / '.join(f'{x:.1f}' for x in load0)} at the start, "
              f"{' / '.join(f'{x:.1f}' for x in load1)} at the end (1 / 5 / 15 min)\n")
        step = args.table_every
        print("| minutes | RSS at the end | RSS max | series | agent CPU | scrape p50 / p99 | replacements "
              "| mismatches (2 scrapes) | max lag |")
        print("|---|---|---|---|---|---|---|---|---|")
        reps = soak.replacements_at
        for k in range(0, args.minutes, step):
            k1 = min(k + step, args.minutes)
            f = soak.figures(w[0][0] + k * 60, w[0][0] + k1 * 60)
            print(f"| {k}-{k1} | {f['rss']:.1f} MiB | {f['rss_max']:.1f} MiB | {f['series']:,} | {f['cpu']:.3f} s/s "
                  f"| {f['p50']:.1f} / {f['p99']:.1f} ms | {reps[k1] - reps[k]:,} | {f['mismatches']} "
                  f"| {f['lag']:.0f} ms |")
        ratio = rss_end / rss1
        print(f"\nRSS after minute 1: {rss1:.1f} MiB; at the end: {rss_end:.1f} MiB; ratio {ratio:.3f} "
              f"({'flat: within 10%' if abs(ratio - 1) <= 0.10 else 'NOT flat: more than 10% apart'}); "
              f"max {max(s[1] for s in w):.1f} MiB")
        print(f"replacements: {soak.replacements:,} ({soak.replacements / (args.minutes * 60):.2f}/s; "
              f"{soak.serial:,} overlays mounted in all); scrapes: {len(w):,}, p50 {total['p50']:.1f} ms, "
              f"p99 {total['p99']:.1f} ms, max {max(s[3] for s in w) * 1e3:.1f} ms; agent CPU {total['cpu']:.3f} s/s")
        print(f"lag from mount/unmount to the first scrape showing it: p50 {pct(lags, 50) * 1e3:.0f} ms, "
              f"p99 {pct(lags, 99) * 1e3:.0f} ms, max {max(lags) * 1e3:.0f} ms "
              f"({len(lags):,} changes, the scrape included); mismatches persisting over 2 scrapes: {total['mismatches']}")
        print(f"at the end ({time.perf_counter() - last_change:.1f} s after the last change): {series:,} series, "
              f"stale mountpoints {len(stale)} ({stale_series} series), mounted but not shown {len(missing)}, "
              f"overlays never shown {len(never)}")
        failed = False
        if stale:
            print("FAIL: stale series remain:", stale[:5])
            failed = True
        if never:
            print("FAIL: overlays never shown:", never[:5])
            failed = True
        print("FAIL" if failed else "OK: no stale series, every overlay shown")
        return 1 if failed else 0
    finally:
        if agent:
            agent.terminate()
            agent.wait()
        sys_umount(base)  # detaches every overlay below it as well
        shutil.rmtree(base, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mounts", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--replace-every", type=float, default=0.2, help="seconds between replacements")
    ap.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes")
    ap.add_argument("--table-every", type=int, default=5, help="minutes per row of the final table")
    ap.add_argument("--agent", default=AGENT, help="the agent binary (default: the release build)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        sys.exit(inner(args))
    run_inside_private_namespace(__file__, [
        "--agent", os.path.abspath(args.agent),
        "--mounts", str(args.mounts), "--minutes", str(args.minutes), "--replace-every", str(args.replace_every),
        "--scrape-every", str(args.scrape_every), "--table-every", str(args.table_every)], "the soak", args.no_build)


if __name__ == "__main__":
    main()
