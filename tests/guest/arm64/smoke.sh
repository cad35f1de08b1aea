#!/usr/bin/env bash
# smoke.sh VMLINUZ OVERLAY_KO BUSYBOX AGENT
# Boots a Debian arm64 kernel under qemu-system-aarch64 (TCG) with a tiny
# busybox initramfs and runs the static aarch64 agent there: `check --json`,
# `once`, then the daemon across one chown and one open-for-write copy-up on an
# overlay, and prints its copy-up metrics. Everything between "=== " markers is
# the guest's output; the exit code is QEMU's.
set -euo pipefail
vmlinuz=${1:?usage: smoke.sh VMLINUZ OVERLAY_KO BUSYBOX AGENT}
ko=${2:?} busybox=${3:?} agent=${4:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,t}
install -m 0755 "$busybox" "$root/bin/busybox"
install -m 0755 "$agent" "$root/overlay-agent"
cp "$ko" "$root/overlay.ko"
printf 'web:\n  listen_address: 127.0.0.1:9864\nlog:\n  level: debug\n' > "$root/agent.yaml"
for a in sh mount mkdir insmod wget grep cat echo poweroff sleep chown uname ip; do ln -s busybox "$root/bin/$a"; done
cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs t /t; ip link set lo up
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
insmod /overlay.ko || echo "=== INSMOD FAILED"
mkdir -p /t/lower /t/upper /t/work /t/merged
echo data > /t/lower/a; echo data > /t/lower/b
mount -t overlay overlay -o lowerdir=/t/lower,upperdir=/t/upper,workdir=/t/work /t/merged
echo "=== UNAME $(uname -r -m)"
echo "=== CHECK BEGIN"; /overlay-agent --config /agent.yaml check --json; echo "=== CHECK EXIT $?"
/overlay-agent --config /agent.yaml once > /tmp/once.txt 2> /tmp/once.err; echo "=== ONCE EXIT $?"
grep -E '^overlayfs_(mount_info|ebpf|build_info|scrape)' /tmp/once.txt; cat /tmp/once.err
echo "=== DAEMON"
/overlay-agent --config /agent.yaml > /tmp/agent.log 2>&1 &
i=0
until wget -q -O /dev/null http://127.0.0.1:9864/readyz; do
  i=$((i + 1)); [ $i -gt 600 ] && { echo "=== AGENT NOT READY"; break; }
  sleep 0.2
done
chown 1:1 /t/merged/a
echo more >> /t/merged/b
wget -q -O - http://127.0.0.1:9864/metrics | grep -E '^overlayfs_(ebpf|copy_up|probe)' 
echo "=== AGENT LOG"; cat /tmp/agent.log
echo "=== END"
poweroff -f
INIT
chmod 0755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/initrd"
timeout 600 qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 1 -m 512 -nographic -no-reboot \
  -kernel "$vmlinuz" -initrd "$work/initrd" -append "console=ttyAMA0 panic=-1 quiet"
