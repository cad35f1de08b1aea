#!/bin/busybox sh
# /init of the QEMU test guests (tests/qemu.rs): load overlay, make three
# overlays on tmpfs (A plain, B plain, C metacopy=on), start the agent, run the
# workload, print the agent's /metrics between markers, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up
echo "=== KERNEL $(uname -r)"
insmod /overlay.ko || echo "=== INSMOD FAILED"
mode=$(cat /mode)

mount -t tmpfs tmpfs /t
for m in a b c; do mkdir -p /t/$m/lower /t/$m/upper /t/$m/work /t/$m/merged; done
/qemu-workload prepare /t/a/lower /t/b/lower /t/c/lower || echo "=== PREPARE FAILED"
mount -t overlay overlay -o lowerdir=/t/a/lower,upperdir=/t/a/upper,workdir=/t/a/work /t/a/merged
mount -t overlay overlay -o lowerdir=/t/b/lower,upperdir=/t/b/upper,workdir=/t/b/work /t/b/merged
mount -t overlay overlay -o lowerdir=/t/c/lower,upperdir=/t/c/upper,workdir=/t/c/work,metacopy=on /t/c/merged

scrape() { wget -q -O - http://127.0.0.1:9864/metrics; }

if [ "$mode" = agent ]; then
  /overlay-agent --config /agent.yaml > /agent.log 2>&1 &
  agent=$!
  i=0
  until wget -q -O /dev/null http://127.0.0.1:9864/readyz; do
    i=$((i + 1)); [ $i -gt 1200 ] && { echo "=== AGENT NOT READY"; break; }
    usleep 100000
  done
  scrape | grep -q '^overlayfs_ebpf_enabled 1' || echo "=== PROBES OFF"
  # A second, independent load of the programs: the live trace of every copy-up.
  /overlay-agent trace --min-latency 0s > /trace.log 2> /trace.err &
  tracer=$!
  i=0
  until grep -q '^TIME' /trace.log 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 1200 ] && { echo "=== TRACE NOT READY"; cat /trace.err; break; }
    usleep 100000
  done
  /qemu-workload run /t/a/merged /t/b/merged /t/c/merged || echo "=== WORKLOAD FAILED"
  kill -INT $tracer
  wait $tracer
  echo "=== TRACE EXIT $?"
  echo "=== TRACE BEGIN"
  cat /trace.log
  echo "=== TRACE END"
  echo "=== METRICS BEGIN"
  scrape
  echo "=== METRICS END"
  kill -TERM $agent
  wait $agent
  echo "=== AGENT EXIT $?"
  echo "=== AGENT LOG BEGIN"
  cat /agent.log
  echo "=== AGENT LOG END"
fi
echo "=== DONE"
poweroff -f
