#!/usr/bin/env python3
"""Discovery across mount namespaces: N namespaces and 10 mount changes a second.

  sudo python3 bench/namespaces.py [--namespaces 1000] [--rate 10] [--seconds 60]
  sudo python3 bench/namespaces.py --smoke      # 20 namespaces, a few changes, no speed asserted

Each namespace is made by user nobody (`setpriv ... unshare --user --map-root-user
--mount --propagation private`, as rootless runtimes do) and holds one overlay on a
tmpfs only it sees (bench/nsworld.py). The release agent serves /metrics, watching
only the benchmark's mounts. Changes run at --rate a second, in turn: a new namespace
with its overlay, an overlay mounted in an existing namespace, one unmounted, a
namespace ended (the count stays N). Meanwhile /metrics is scraped back to back; a
change's latency runs from just before the command that makes it until the end of
the first scrape that shows it, so it is an upper bound, and the polling resolution
is one scrape's duration (printed).

Prints: setup time, scrape duration and size, the latency p50/p99/max of each kind
of change, agent CPU seconds per second idle (no scrapes), scraped back to back,
and scraped under the changes, and RSS. --smoke fails (exit 1) if any mount never
appears or never goes within 20 s; it asserts nothing about speed.
"""
import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AGENT, ROOT, cpu_seconds, pct, rss_mib, sh, start_agent  # noqa: E402
from nsworld import Namespace, end_all, metric, mounts, scrape, start_all  # noqa: E402

KINDS = ("new namespace", "mount in existing", "unmount", "namespace ended")


class Poller(threading.Thread):
    """Scrapes back to back; settles each awaited change at the first scrape
    that shows it: {kind: [latency s]}, and scrape durations."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr, self.lock, self.stop = addr, threading.Lock(), threading.Event()
        self.pending, self.latency, self.durations = {}, {k: [] for k in KINDS}, []
        self.errors, self.failed = [], []

    def expect(self, kind, t0, check):
        """check(set of (mntns, mountpoint)) is true once the change shows."""
        key = object()
        with self.lock:
            self.pending[key] = (kind, t0, check)
        return key

    def shown(self, key):
        with self.lock:
            return key not in self.pending

    def run(self):
        while not self.stop.is_set():
            t = time.time()
            try:
                seen = mounts(scrape(self.addr))
            except OSError as e:
                self.errors.append(f"{e!r}")
                continue
            end = time.time()
            self.durations.append(end - t)
            with self.lock:
                for key, (kind, t0, check) in list(self.pending.items()):
                    if check(seen):
                        self.latency[kind].append(end - t0)
                        del self.pending[key]
                    elif end - t0 > 20:
                        print(f"FAIL: {kind} not shown in /metrics after 20 s", flush=True)
                        self.failed.append(kind)
                        del self.pending[key]


class Churn:
    """The changes, in turn, at `rate` a second, on the live namespaces."""

    def __init__(self, base, live, poller):
        self.base, self.live, self.poller = base, live, poller
        self.extra, self.serial, self.new = {}, 0, {}

    def settled(self):
        """Namespaces whose overlay has been seen, without an extra mount."""
        return [n for n in self.live if n not in self.extra and self.poller.shown(self.new.get(n))]

    def step(self, kind):
        self.serial += 1
        p = self.poller
        if kind == "new namespace":
            t0 = time.time()
            ns = Namespace(os.path.join(self.base, f"new{self.serial}"))
            mntns = ns.wait_ready()
            self.live.append(ns)
            self.new[ns] = p.expect(kind, t0, lambda s, k=(mntns, ns.mountpoint): k in s)
        elif kind == "mount in existing":
            ns = random.choice(self.settled())
            t0 = time.time()
            path = ns.mount_extra(f"x{self.serial}")
            self.extra[ns] = (path, p.expect(kind, t0, lambda s, k=(ns.mntns, path): k in s))
        elif kind == "unmount":
            done = [n for n, (_, key) in self.extra.items() if p.shown(key)]
            if not done:
                return
            ns = random.choice(done)
            path, _ = self.extra.pop(ns)
            t0 = time.time()
            ns.umount(path)
            p.expect(kind, t0, lambda s, k=(ns.mntns, path): k not in s)
        elif kind == "namespace ended":
            ns = random.choice(self.settled())
            self.live.remove(ns)
            t0 = time.time()
            ns.end()
            # By (namespace, mountpoint): the kernel reuses a freed namespace's
            # inode number, so a new namespace may carry the ended one's id.
            p.expect(kind, t0, lambda s, k=(ns.mntns, ns.mountpoint): k not in s)

    def run(self, rate, seconds):
        start = time.time()
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, start + i / rate - time.time()))
            self.step(KINDS[i % len(KINDS)])


def cpu_rate(pid, seconds):
    c, t = cpu_seconds(pid), time.time()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c) / (time.time() - t)


def wait_until(what, timeout, f):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if f():
                return
        except OSError:  # not listening yet, or 503 before the first mount table
            pass
        time.sleep(0.05)
    sys.exit(f"FAIL: timed out after {timeout} s waiting for {what}")


def bench(args, base):
    agent, addr = start_agent(base, discovery="")
    live = []
    try:
        t = time.time()
        live.extend(start_all([os.path.join(base, f"ns{i}") for i in range(args.namespaces)]))
        made = time.time() - t
        want = {(ns.mntns, ns.mountpoint) for ns in live}
        wait_until("every namespace's overlay", 60, lambda: want <= mounts(scrape(addr)))
        shown = time.time() - t
        body = scrape(addr)
        print(f"namespaces {args.namespaces}: made in {made:.1f} s, all in /metrics {shown:.1f} s "
              f"after the first was started; agent counts "
              f"{metric(body, 'overlayfs_discovery_namespaces'):.0f} namespaces")
        print(f"scrape: {len(body) / 1e6:.2f} MB, {len(body.splitlines())} lines")
        time.sleep(2)
        idle = cpu_rate(agent.pid, args.idle)
        print(f"idle ({args.idle} s, no scrapes, no changes): CPU {idle:.4f} s/s, "
              f"RSS {rss_mib(agent.pid):.1f} MiB")
        poller = Poller(addr)
        poller.start()
        scraped = cpu_rate(agent.pid, args.idle)
        n0 = len(poller.durations)
        print(f"scraped back to back, no changes ({args.idle} s): CPU {scraped:.4f} s/s, "
              f"scrape p50 {pct(poller.durations, 50) * 1e3:.1f} ms, p99 "
              f"{pct(poller.durations, 99) * 1e3:.1f} ms ({n0} scrapes)")
        churn = Churn(base, live, poller)
        c, t = cpu_seconds(agent.pid), time.time()
        churn.run(args.rate, args.seconds)
        wait_until("every change shown", 25, lambda: not poller.pending)
        busy = (cpu_seconds(agent.pid) - c) / (time.time() - t)
        poller.stop.set()
        poller.join()
        d = poller.durations[n0:]
        print(f"changes {args.rate}/s for {args.seconds} s, scraped back to back: CPU {busy:.4f} s/s, "
              f"RSS {rss_mib(agent.pid):.1f} MiB; polling resolution (scrape p50/p99) "
              f"{pct(d, 50) * 1e3:.1f}/{pct(d, 99) * 1e3:.1f} ms")
        for kind in KINDS:
            v = poller.latency[kind]
            print(f"  {kind:18s} n={len(v):4d}  p50 {pct(v, 50) * 1e3:7.1f} ms  "
                  f"p99 {pct(v, 99) * 1e3:7.1f} ms  max {max(v, default=0) * 1e3:7.1f} ms")
        if poller.errors:
            print(f"scrape errors: {len(poller.errors)}, first {poller.errors[0]}")
        if poller.failed:
            sys.exit(f"FAIL: never shown: {poller.failed}")
        if agent.poll() is not None:
            sys.exit(f"FAIL: the agent ended ({agent.returncode})")
    finally:
        end_all(live)
        if agent.poll() is not None:
            print(f"the agent ended ({agent.returncode}); its log: {base}.agent.log")
        agent.send_signal(signal.SIGTERM)
        agent.wait()
        shutil.copy(os.path.join(base, "agent.log"), base + ".agent.log")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--namespaces", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0, help="changes a second")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the changes run")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of each CPU measurement")
    ap.add_argument("--smoke", action="store_true", help="20 namespaces, 4 s of changes")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.namespaces, args.seconds, args.idle = 20, 4.0, 2.0
    if os.geteuid() != 0:
        sys.exit("run as root (the agent reads other users' namespaces; nsenter)")
    if not args.no_build:
        sh("cargo", "build", "--release", "-p", "overlay-agent", "--locked", cwd=ROOT)
    if not os.path.exists(AGENT):
        sys.exit(f"no {AGENT}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    base = tempfile.mkdtemp(prefix="nsbench-")
    try:
        bench(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
