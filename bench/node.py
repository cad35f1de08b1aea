#!/usr/bin/env python3
"""Node-scale benchmarks for overlay-agent (issue: benchmark suite), printing markdown.

  sudo python3 bench/node.py [--only scan,scrape,churn] [--runs N]

1. scan:   upper dirs of 10k, 100k and 1M entries: the agent's classified scan vs
           `du -s` and vs `du -s` + `find | wc -l`, warm and cold cache.
2. scrape: 10, 100 and 1000 real overlay mounts: /metrics latency p50/p99, bytes,
           CPU per scrape and RSS, in text and in protobuf, beside node_exporter's filesystem collector told to
           include overlay mounts.
3. churn:  50 mounts created and 50 destroyed per second for 60 s while scraping
           every 100 ms: lag until a mount's series appears and leaves, leaks, RSS.
The copy-up probe overhead is measured in QEMU: see docs/ebpf.md#overhead.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan  # noqa: E402  (build_tree, timed)
from common import AGENT, ROOT, cpu_seconds, free_port, pct, rss_mib, sh, start_agent as start_serve  # noqa: E402


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


# What Prometheus 3.5 sends with native histograms on: the agent answers in protobuf.
PROTOBUF_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,"
                   "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")


def get(url, timeout=10, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def wait_http(url, what, timeout=60, accept=lambda body: True):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            body = get(url)
            if accept(body):
                return body
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


# ---------------------------------------------------------------- 1. scan
def bench_scan(runs, sizes):
    print("\n### Upper-dir scan (one upper dir, medians of %d runs)\n" % runs)
    print("| entries | cache | du -s | du -s + find \\| wc -l | overlay-agent once | agent/du | agent entries/s |")
    print("|---|---|---|---|---|---|---|")
    cold_ok = drop_caches()
    results = []
    for n in sizes:
        base = tempfile.mkdtemp(prefix="ovl-scan-")
        merged = None
        try:
            merged, upper = scan.build_tree(base, n)
            inodes = int(sh("du", "-s", "--inodes", upper).split()[0])
            cfg = os.path.join(base, "bench.yaml")
            with open(cfg, "w") as f:
                f.write(f"discovery:\n  include_mountpoints: ['{re.escape(merged)}']\nscan:\n  concurrency: 1\n")
            for cache in ("warm", "cold"):
                if cache == "cold" and not cold_ok:
                    continue
                du_t, duf_t, ag_t = [], [], []
                for _ in range(runs):
                    if cache == "cold":
                        drop_caches()
                    du_t.append(scan.timed(["du", "-s", upper])[0])
                    if cache == "cold":
                        drop_caches()
                    t0 = time.time()
                    subprocess.run(f"du -s '{upper}' >/dev/null && find '{upper}' | wc -l >/dev/null", shell=True, check=True)
                    duf_t.append(time.time() - t0)
                    if cache == "cold":
                        drop_caches()
                    ag_t.append(scan.timed([AGENT, "--config", cfg, "once"])[0])
                du, duf, ag = statistics.median(du_t), statistics.median(duf_t), statistics.median(ag_t)
                print(f"| {inodes:,} | {cache} | {du:.3f} s | {duf:.3f} s | {ag:.3f} s | {ag / du:.2f} | {inodes / ag:,.0f} |", flush=True)
                results.append((n, cache, inodes / ag))
        finally:
            if merged:
                subprocess.run(["umount", merged])
            shutil.rmtree(base, ignore_errors=True)
    if not cold_ok:
        print("\n(cold cache not measured: /proc/sys/vm/drop_caches is not writable here)")
    warm = [r for r in results if r[1] == "warm"]
    if len(warm) > 1:
        print(f"\nGrowth: entries/s from {warm[0][0]:,} to {warm[-1][0]:,} entries: "
              f"{warm[0][2]:,.0f} -> {warm[-1][2]:,.0f} (constant entries/s = linear cost)")


# ---------------------------------------------------------------- 2. scrape
def mount_overlay(d, lower_file=False):
    """Creates d/{lower,upper,work,merged}, mounts the overlay, returns merged."""
    for sub in ("lower", "upper", "work", "merged"):
        os.makedirs(os.path.join(d, sub))
    if lower_file:
        with open(os.path.join(d, "lower", "f"), "w") as f:
            f.write("x")
    m = os.path.join(d, "merged")
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work", m)
    return m


def start_agent(base):
    """Starts the release agent watching only mounts under base; returns (process, /metrics URL)."""
    agent, addr = start_serve(base, log=False)
    return agent, f"http://{addr}/metrics"


def make_mounts(base, n):
    mounts = []
    for i in range(n):
        m = mount_overlay(os.path.join(base, f"m{i}"), lower_file=True)
        os.chown(os.path.join(m, "f"), 1, 1)
        mounts.append(m)
    return mounts


def scrape_stats(url, pid, requests=200, accept=None):
    lat, size = [], 0
    cpu0 = cpu_seconds(pid)
    for _ in range(requests):
        t0 = time.perf_counter()
        body = get(url, accept=accept)
        lat.append(time.perf_counter() - t0)
        size = len(body)
    cpu = (cpu_seconds(pid) - cpu0) / requests
    return pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, size, cpu * 1e3, rss_mib(pid)


def bench_scrape(counts):
    print("\n### Scrape cost (200 sequential scrapes per row)\n")
    print("| mounts | exporter | p50 | p99 | response | CPU per scrape | RSS |")
    print("|---|---|---|---|---|---|---|")
    ne = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    for n in counts:
        base = tempfile.mkdtemp(prefix="ovl-scrape-")
        mounts = []
        procs = []
        try:
            mounts = make_mounts(base, n)
            agent, url = start_agent(base)
            procs.append(agent)
            wait_http(url, "all mounts scanned", 120,
                      lambda b: len(re.findall(rb"^overlayfs_upper_scans_total\{", b, re.M)) >= n)
            p50, p99, size, cpu, rss = scrape_stats(url, agent.pid)
            print(f"| {n} | overlay-agent | {p50:.2f} ms | {p99:.2f} ms | {size / 1024:.0f} KiB | {cpu:.2f} ms | {rss:.1f} MiB |", flush=True)
            p50, p99, size, cpu, rss = scrape_stats(url, agent.pid, accept=PROTOBUF_ACCEPT)
            print(f"| {n} | overlay-agent, protobuf | {p50:.2f} ms | {p99:.2f} ms | {size / 1024:.0f} KiB | {cpu:.2f} ms | {rss:.1f} MiB |", flush=True)
            if ne:
                nport = free_port()
                node = subprocess.Popen([ne, f"--web.listen-address=127.0.0.1:{nport}", "--collector.disable-defaults",
                                         "--collector.filesystem", "--collector.filesystem.fs-types-exclude=^$",
                                         # RE2 has no lookahead: exclude nothing; the host's few other
                                         # filesystems come on top of the N overlays.
                                         "--collector.filesystem.mount-points-exclude=^$"],
                                        stderr=subprocess.DEVNULL)
                procs.append(node)
                nurl = f"http://127.0.0.1:{nport}/metrics"
                wait_http(nurl, "node_exporter", 30)
                p50, p99, size, cpu, rss = scrape_stats(nurl, node.pid)
                print(f"| {n} | node_exporter (filesystem, overlay included) | {p50:.2f} ms | {p99:.2f} ms | {size / 1024:.0f} KiB | {cpu:.2f} ms | {rss:.1f} MiB |", flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.wait()
            for m in mounts:
                subprocess.run(["umount", m])
            shutil.rmtree(base, ignore_errors=True)
    if not ne:
        print("\n(node_exporter not installed: apt-get install prometheus-node-exporter)")


# ---------------------------------------------------------------- 3. churn
def bench_churn(rate=50, seconds=60, lifetime=2.0):
    print(f"\n### Mount churn ({rate} mounts created and {rate} destroyed per second for {seconds} s, scrapes every 100 ms)\n")
    base = tempfile.mkdtemp(prefix="ovl-churn-")
    agent, url = start_agent(base)
    wait_http(url, "agent", 30)
    mounted, unmounted, seen_first, seen_last = {}, {}, {}, {}
    stop = threading.Event()
    rss = []
    series_counts = []

    def scraper():
        while not stop.is_set():
            t = time.time()
            try:
                body = get(url).decode()
            except OSError:
                continue
            present = set(re.findall(r'^overlayfs_mount_info\{mountpoint="([^"]+)"', body, re.M))
            series_counts.append(len(body.splitlines()))
            for m in present:
                seen_first.setdefault(m, t)
                seen_last[m] = t
            rss.append(rss_mib(agent.pid))
            time.sleep(max(0, 0.1 - (time.time() - t)))

    th = threading.Thread(target=scraper)
    th.start()
    live = []
    i = 0
    t_end = time.time() + seconds
    try:
        while time.time() < t_end:
            tick = time.time()
            for _ in range(rate):
                m = mount_overlay(os.path.join(base, f"c{i}"))
                i += 1
                mounted[m] = time.time()
                live.append(m)
            while live and time.time() - mounted[live[0]] > lifetime:
                m = live.pop(0)
                sh("umount", m)
                unmounted[m] = time.time()
            time.sleep(max(0, 1 - (time.time() - tick)))
        for m in live:
            sh("umount", m)
            unmounted[m] = time.time()
        time.sleep(3)
    finally:
        stop.set()
        th.join()
    final = get(url).decode()
    leaked = len(re.findall(r"^overlayfs_mount_info\{", final, re.M))
    agent.terminate()
    agent.wait()
    appear = [seen_first[m] - t for m, t in mounted.items() if m in seen_first]
    never_seen = len(mounted) - len(appear)
    print("| measure | value |")
    print("|---|---|")
    print(f"| mounts created / destroyed | {len(mounted)} / {len(unmounted)} |")
    print(f"| mount -> series appears, p50 / p99 | {pct(appear, 50) * 1e3:.0f} ms / {pct(appear, 99) * 1e3:.0f} ms |")
    # A series leaves between its last sighting and the next scrape; the scrape
    # after the unmount is at most 100 ms later, so this bounds the lag.
    gone = [seen_last[m] - unmounted[m] for m in unmounted if m in seen_last]
    print(f"| unmount -> series gone (last scrape still showing it, after the unmount), p50 / p99 | {max(0, pct(gone, 50)) * 1e3:.0f} ms / {max(0, pct(gone, 99)) * 1e3:.0f} ms (+ <=100 ms scrape period) |")
    print(f"| mounts never seen (lived {lifetime:.0f} s) | {never_seen} |")
    print(f"| mount series left after all unmounts | {leaked} |")
    print(f"| RSS first / last 10 % of scrapes | {statistics.mean(rss[:max(1, len(rss) // 10)]):.1f} / {statistics.mean(rss[-max(1, len(rss) // 10):]):.1f} MiB |")
    shutil.rmtree(base, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="scan,scrape,churn")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--mounts", default="10,100,1000")
    ap.add_argument("--churn-seconds", type=int, default=60)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmarks mount overlays")
    sh("cargo", "build", "--release", "--locked", "-p", "overlay-agent", cwd=ROOT)
    print(f"overlay-agent benchmarks, {time.strftime('%Y-%m-%d')}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    only = args.only.split(",")
    if "scan" in only:
        bench_scan(args.runs, [int(s) for s in args.sizes.split(",")])
    if "scrape" in only:
        bench_scrape([int(s) for s in args.mounts.split(",")])
    if "churn" in only:
        bench_churn(seconds=args.churn_seconds)


if __name__ == "__main__":
    main()
