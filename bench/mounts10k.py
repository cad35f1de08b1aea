#!/usr/bin/env python3
"""10,000 overlay mounts: discovery, scrape cost, RSS and series lag, beside node_exporter.

  sudo python3 bench/mounts10k.py [--counts 1000,3000,10000] [--scrapes 100] [--changes 20]
                                  [--gzip] [--gzip-counts 1000,10000]

Needs prometheus-node-exporter from apt for the comparison (skipped when missing).

Real overlay mounts on cheap tmpfs layers, made with mount(2), inside a private mount
and PID namespace that the script creates (unshare --mount --pid --fork --mount-proc):
10,000 mounts in the host's namespace would slow every process there that reads
mountinfo. /proc inside shows the namespace, so the agent (which reads
/proc/1/mountinfo) and node_exporter (/proc/1/mounts) see exactly these mounts. When
the script ends, the namespace dies and the kernel unmounts everything in it.

Per mount count it prints: time to read the first mount table (start -> /readyz 200),
scrape p50/p99 and size, CPU per scrape, agent RSS, the lag from mount(2) /
umount2(2) to the mount's series appearing / leaving in /metrics, the agent's CPU per
mount change without scrapes, and node_exporter's filesystem collector with overlay
included, scraped the same way.

With --gzip, at the counts of --gzip-counts: scrapes with and without
`Accept-Encoding: gzip` (what Prometheus sends), in alternating batches of 10 so
that both see the same host load: response bytes, p50/p99 and the agent's CPU per
scrape in each encoding (the gzip bodies are checked to decompress to an exposition).

The README's test command runs it as a smoke run (100 mounts, a few scrapes and
changes, on the static build): it fails when a mount's series never appear or never
leave, or a gzip answer is not an exposition; it asserts nothing about a figure.
"""
import argparse
import ctypes
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_seconds, detach_inherited_overlays, free_port, pct, rss_mib, run_inside_private_namespace, start_agent  # noqa: E402
libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def sys_mount(src, target, fstype, opts):
    if libc.mount(src.encode(), target.encode(), fstype.encode(), 0, opts.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


def sys_umount(target):
    if libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount {target}: {os.strerror(e)}")


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def get_gzip(url, timeout=30):
    """GET with `Accept-Encoding: gzip`, as Prometheus does: the body as sent (compressed)."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if r.headers.get("Content-Encoding") != "gzip":
            sys.exit(f"asked for gzip, got Content-Encoding {r.headers.get('Content-Encoding')!r}")
        return r.read()


def wait(what, timeout, f, period=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = f()
            if v:
                return v
        except OSError:
            pass
        time.sleep(period)
    sys.exit(f"timed out after {timeout} s waiting for {what}")


def mount_one(base, i):
    d = os.path.join(base, f"m{i}")
    os.makedirs(os.path.join(d, "l"))
    for sub in ("u", "w", "merged"):
        os.mkdir(os.path.join(d, sub))
    with open(os.path.join(d, "l", "f"), "w") as f:
        f.write("x")
    m = os.path.join(d, "merged")
    sys_mount("overlay", m, "overlay", f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w")
    return m


def scrape_stats(url, pid, n):
    lat, size = [], 0
    cpu0 = cpu_seconds(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        body = get(url)
        lat.append(time.perf_counter() - t0)
        size = len(body)
    return {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "max": max(lat) * 1e3, "size": size,
            "cpu": (cpu_seconds(pid) - cpu0) / n * 1e3, "rss": rss_mib(pid)}


def gzip_stats(url, pid, n, batch=10):
    """n scrapes plain and n with gzip, in alternating batches: per encoding, latency
    p50/p99, response bytes and the agent's CPU per scrape."""
    lat, size, cpu = {"identity": [], "gzip": []}, {}, {"identity": 0.0, "gzip": 0.0}
    if b"\n# TYPE overlayfs_mount_info gauge" not in gzip.decompress(get_gzip(url)):
        sys.exit("the gzip body is no exposition")
    for _ in range(0, n, batch):
        for enc, fetch in (("identity", get), ("gzip", get_gzip)):
            cpu0 = cpu_seconds(pid)
            for _ in range(batch):
                t0 = time.perf_counter()
                size[enc] = len(fetch(url))
                lat[enc].append(time.perf_counter() - t0)
            cpu[enc] += cpu_seconds(pid) - cpu0
    return {enc: {"p50": pct(v, 50) * 1e3, "p99": pct(v, 99) * 1e3, "size": size[enc],
                  "cpu": cpu[enc] / len(v) * 1e3} for enc, v in lat.items()}


def lag(url, base, count, changes):
    """mount(2) -> first scrape that shows the mount; umount2(2) -> first scrape without it.
    Each figure is until the end of that scrape (an upper bound), and the scrape itself
    is included (tens of ms at 10,000 mounts)."""
    appear, gone = [], []
    for k in range(changes):
        t0 = time.perf_counter()
        m = mount_one(base, count + k)
        needle = f'mountpoint="{m}"'.encode()
        wait("the new mount's series", 30, lambda: needle in get(url), period=0)
        appear.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sys_umount(m)
        wait("the mount's series to leave", 30, lambda: needle not in get(url), period=0)
        gone.append(time.perf_counter() - t0)
    return appear, gone


def change_cost(pid, base, start, changes):
    """The agent's CPU per mount change (one mount, later its unmount), no scrapes."""
    time.sleep(2)
    cpu0 = cpu_seconds(pid)
    for k in range(changes):
        m = mount_one(base, start + k)
        time.sleep(0.5)
        sys_umount(m)
        time.sleep(0.5)
    time.sleep(1)
    return (cpu_seconds(pid) - cpu0) / (2 * changes) * 1e3


def run_count(count, args):
    base = tempfile.mkdtemp(prefix="ovl10k-", dir="/tmp")
    sys_mount("tmpfs", base, "tmpfs", "size=2g,nr_inodes=0")
    procs = []
    row = {"count": count}
    try:
        t0 = time.perf_counter()
        for i in range(count):
            m = mount_one(base, i)
            os.chown(os.path.join(m, "f"), 1, 1)  # one copy-up: an upper dir with a file
        row["mount_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        agent, addr = start_agent(base, "ebpf:\n  enabled: false\n", discovery="  resync_interval: 30s\n")
        url = f"http://{addr}"
        procs.append(agent)
        wait("/readyz", 120, lambda: urllib.request.urlopen(url + "/readyz", timeout=5).status == 200, period=0.01)
        row["ready_s"] = time.perf_counter() - t0
        wait("every upper dir scanned", 600,
             lambda: get(url + "/metrics").count(b"\noverlayfs_upper_scans_total{") >= count, period=0.5)
        row["scanned_s"] = time.perf_counter() - t0
        # Idle: no scrapes, no mount changes. What the agent does then must not
        # grow with the mounts (its periodic work: the census, the scan schedule).
        cpu0 = cpu_seconds(agent.pid)
        time.sleep(args.idle)
        row["idle_cpu"] = (cpu_seconds(agent.pid) - cpu0) / args.idle * 1e3
        row["agent"] = scrape_stats(url + "/metrics", agent.pid, args.scrapes)
        if args.gzip and str(count) in args.gzip_counts.split(","):
            row["gzip"] = gzip_stats(url + "/metrics", agent.pid, args.scrapes)
        appear, gone = lag(url + "/metrics", base, count, args.changes)
        row["appear"] = (pct(appear, 50) * 1e3, pct(appear, 99) * 1e3)
        row["gone"] = (pct(gone, 50) * 1e3, pct(gone, 99) * 1e3)
        row["change_cpu"] = change_cost(agent.pid, base, count + args.changes, args.changes)
        row["agent_rss_end"] = rss_mib(agent.pid)

        ne = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if ne:
            nport = free_port()
            node = subprocess.Popen([ne, f"--web.listen-address=127.0.0.1:{nport}", "--collector.disable-defaults",
                                     "--collector.filesystem", "--collector.filesystem.fs-types-exclude=^$",
                                     "--collector.filesystem.mount-points-exclude=^$"], stderr=subprocess.DEVNULL)
            procs.append(node)
            nurl = f"http://127.0.0.1:{nport}/metrics"
            wait("node_exporter", 60, lambda: get(nurl))
            row["node"] = scrape_stats(nurl, node.pid, args.node_scrapes)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        sys_umount(base)  # detaches every overlay below it as well
        shutil.rmtree(base, ignore_errors=True)
    return row


def report(rows):
    print("| mounts | exporter | p50 | p99 | max | response | CPU per scrape | RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name, key in (("overlay-agent", "agent"), ("node_exporter (filesystem, overlay included)", "node")):
            s = r.get(key)
            if s:
                print(f"| {r['count']:,} | {name} | {s['p50']:.1f} ms | {s['p99']:.1f} ms | {s['max']:.1f} ms | "
                      f"{s['size'] / 1048576:.2f} MiB | {s['cpu']:.1f} ms | {s['rss']:.1f} MiB |")
    print()
    print("| mounts | mount(2) x N | start -> /readyz (first mount table) | start -> all scanned | "
          "idle CPU per second | mount -> series, p50 / p99 | unmount -> series gone, p50 / p99 | "
          "agent CPU per mount change | RSS at the end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['count']:,} | {r['mount_s']:.1f} s | {r['ready_s'] * 1e3:.0f} ms | {r['scanned_s']:.1f} s | "
              f"{r['idle_cpu']:.1f} ms | {r['appear'][0]:.0f} / {r['appear'][1]:.0f} ms | {r['gone'][0]:.0f} / {r['gone'][1]:.0f} ms | "
              f"{r['change_cpu']:.1f} ms | {r['agent_rss_end']:.1f} MiB |")
    if any("gzip" in r for r in rows):
        print("\n| mounts | Accept-Encoding | response | p50 | p99 | agent CPU per scrape |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            for enc, what in (("identity", "none (plain)"), ("gzip", "gzip")):
                s = r.get("gzip", {}).get(enc)
                if s:
                    print(f"| {r['count']:,} | {what} | {s['size'] / 1048576:.2f} MiB | {s['p50']:.1f} ms | "
                          f"{s['p99']:.1f} ms | {s['cpu']:.1f} ms |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        k = b["count"] / a["count"]
        print(f"\nGrowth from {a['count']:,} to {b['count']:,} mounts (x{k:.0f}; linear = x{k:.0f}):")
        for what, f in (("scrape p50", lambda r: r["agent"]["p50"]), ("CPU per scrape", lambda r: r["agent"]["cpu"]),
                        ("response", lambda r: r["agent"]["size"]), ("first mount table", lambda r: r["ready_s"]),
                        ("CPU per mount change", lambda r: r["change_cpu"]),
                        ("RSS", lambda r: r["agent"]["rss"])):
            print(f"- {what}: x{f(b) / f(a):.1f}")


def inner(args):
    assert os.getpid() == 1, "run inside the namespace"
    # Private mounts, and the host's other overlays (other running tests') detached
    # from this namespace's copy: both exporters see only the benchmark's mounts.
    detached = detach_inherited_overlays(sys_umount)
    if detached:
        print(f"(detached {detached} overlay mounts inherited from the host's namespace)")
    rows = [run_count(int(c), args) for c in args.counts.split(",")]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\noverlay-agent with 1k-10k mounts, {time.strftime('%Y-%m-%d')}, kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, {args.scrapes} sequential scrapes per agent row ({args.node_scrapes} for "
          f"node_exporter), {args.changes} mount changes, load average {load} "
          f"(1 / 5 / 15 min) at the end\n")
    report(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,3000,10000")
    ap.add_argument("--scrapes", type=int, default=100)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--node-scrapes", type=int, default=20, help="node_exporter takes seconds per scrape at 10k")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--idle", type=float, default=10.0,
                    help="seconds of the idle CPU measurement (no scrapes, no changes) after the first scans")
    ap.add_argument("--gzip", action="store_true", help="also scrape with and without Accept-Encoding: gzip")
    ap.add_argument("--gzip-counts", default="1000,10000", help="the mount counts of the gzip comparison")
    args = ap.parse_args()
    if args.inner:
        return inner(args)
    run_inside_private_namespace(__file__, [
        "--counts", args.counts, "--scrapes", str(args.scrapes), "--changes", str(args.changes),
        "--node-scrapes", str(args.node_scrapes), "--idle", str(args.idle), "--gzip-counts", args.gzip_counts,
        *(["--gzip"] if args.gzip else [])], "the benchmark", args.no_build)


if __name__ == "__main__":
    main()
