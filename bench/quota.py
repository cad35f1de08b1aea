#!/usr/bin/env python3
"""Project-quota mode against walking, in a QEMU guest (the build host's kernel has no quotas).

  sudo python3 bench/quota.py [--mounts 1000] [--files 20] [--big 100000] [--kernels 6.1]

Boots the guest of tests/guest (mode quota, benchmark variant initramfs/modes/quota-bench.sh) and
prints two markdown tables:
1. KEP-1029 style: one upper dir of BIG files (Docker's layout is not needed: ids on the upper
   and work dirs), a quota readout against the agent's walk and `du -s`, cold (caches dropped
   before each) and warm (median of 3);
2. MOUNTS overlays in Docker's layout (an id on each layer dir), FILES new files in each upper
   dir: the agent's CPU over 60 s with nothing scanned, in quota mode (quota every 5 s, walks
   every 10 min) and walking every 10 s, and the oldest bytes/inodes figure at the end.
Needs the static agent and helpers: cargo build --release --target x86_64-unknown-linux-musl
-p overlay-agent -p overlay-agent-guest-tests --bins (scripts/test.sh builds them).
The guest is TCG-emulated: absolute times are several times native ones; compare the columns.
"""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mounts", type=int, default=1000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--big", type=int, default=100000)
    ap.add_argument("--kernels", default="6.1")
    a = ap.parse_args()
    env = dict(os.environ, OVERLAY_AGENT_QUOTA_BENCH=f"{a.mounts} {a.files} {a.big}",
               OVERLAY_AGENT_QEMU_KERNELS=a.kernels)
    out = subprocess.run(
        ["cargo", "test", "-p", "overlay-agent-guest-tests", "--features", "qemu", "--test", "qemu",
         "--", "--ignored", "--nocapture", "quota_mode_cost"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stdout + out.stderr)
    kernel = None
    for line in out.stdout.splitlines():
        m = re.match(r"kernel (\S+)", line)
        if m:
            kernel = m.group(1)
            print(f"\n### kernel {kernel}\n")
        m = re.match(r"=== KEP (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", line)
        if m:
            n, cq, cw, cd, wq, ww, wd = map(int, m.groups())
            print(f"| {n:,} inodes | quota readout | agent walk | du -s |")
            print("|---|---|---|---|")
            print(f"| cold | {cq / 1000:.2f} ms | {cw / 1e6:.3f} s | {cd / 1e6:.3f} s |")
            print(f"| warm | {wq / 1000:.2f} ms | {ww / 1e6:.3f} s | {wd / 1e6:.3f} s |\n")
            print(f"| {a.mounts} mounts x {a.files} files, 60 s | agent CPU | share of one core | oldest bytes/inodes | walks |")
            print("|---|---|---|---|---|")
        m = re.match(r"=== COST (\w+) ticks (\d+) hz (\d+) window (\S+) (\S+) oldest_s (\S+) walks (\d+)", line)
        if m:
            mode, ticks, hz, u0, u1, oldest, walks = m.groups()
            cpu = int(ticks) / int(hz)
            window = float(u1) - float(u0)
            label = {"none": "no scans (baseline)", "quota": "quota mode", "walk": "walks every 10 s"}[mode]
            age = "-" if mode == "none" else f"{float(oldest):.1f} s"
            print(f"| {label} | {cpu:.2f} s | {100 * cpu / window:.2f}% | {age} | {walks} |")
        if line.startswith("=== ") and ("FAILED" in line or "NOT READY" in line):
            print(line)


if __name__ == "__main__":
    main()
