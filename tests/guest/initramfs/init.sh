#!/bin/busybox sh
# /init of the QEMU test guests (tests/guest): the common setup (proc, sys, dev,
# tracefs, loopback, the overlay module; for every mode but quota, three
# overlays on tmpfs: A plain, B plain, C metacopy=on), the helpers the modes
# share (helpers.sh: scrape, ready, terminate, runs; kprobes here), then the
# mode's script (/modes/MODE.sh, MODE from /mode), which prints its results
# between markers; then power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up
echo "=== KERNEL $(uname -r)"
# Under TCG the kernel may leave the TSC for hpet (an emulated MMIO read per
# bpf_ktime_get_ns): the in-program figures depend on it.
echo "=== CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
insmod /overlay.ko || echo "=== INSMOD FAILED"
mode=$(cat /mode)

# Quota mode makes its own filesystems (project quotas on a loop-mounted ext4 image).
if [ "$mode" != quota ]; then
  mount -t tmpfs tmpfs /t
  for m in a b c d e; do mkdir -p /t/$m/lower /t/$m/upper /t/$m/work /t/$m/merged; done
  /qemu-workload prepare /t/a/lower /t/b/lower /t/c/lower || echo "=== PREPARE FAILED"
  mount -t overlay overlay -o lowerdir=/t/a/lower,upperdir=/t/a/upper,workdir=/t/a/work /t/a/merged
  mount -t overlay overlay -o lowerdir=/t/b/lower,upperdir=/t/b/upper,workdir=/t/b/work /t/b/merged
  mount -t overlay overlay -o lowerdir=/t/c/lower,upperdir=/t/c/upper,workdir=/t/c/work,metacopy=on /t/c/merged
fi

. /helpers.sh
# Overlay kprobes registered in the kernel (kprobe and kretprobe lines).
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
kprobes() { grep ' ovl_' /sys/kernel/debug/kprobes/list 2>/dev/null | grep -vc DISABLED; }

# bpfstats is bench without the timed storms.
script=/modes/$mode.sh
[ "$mode" = bpfstats ] || [ "$mode" = micro ] && script=/modes/bench.sh
if [ -f "$script" ]; then . "$script"; else echo "=== NO MODE $mode"; fi
echo "=== DONE"
poweroff -f
