# Benchmark variant of mode `quota` (sourced by modes/quota.sh when the
# initramfs holds /quota-bench: "MOUNTS FILES BIG"; tests/guest, quota.rs,
# quota_mode_cost); it powers the guest off itself:
# 1. KEP-1029-style: a quota readout against a walk and `du -s` on one upper dir of
#    BIG files, cold and warm;
# 2. MOUNTS overlays in Docker's layout (an id per layer dir), FILES new files
#    each: the agent's CPU over 60 s in quota mode against walking every 10 s.
read mounts files big < /quota-bench
q=/qemu-quota
mkdir -p /q/g/upper /q/g/work && $q setproj /q/g/upper 600 && $q setproj /q/g/work 600
t0=$(cut -d. -f1 /proc/uptime)
$q fill /q/g/upper $big
echo "=== FILL $big files in $(( $(cut -d. -f1 /proc/uptime) - t0 )) s"
echo "=== KEP $($q bench /q/g/upper /q/g/work 3)"
mkdir -p /q/lower && $q fill /q/lower 20
t0=$(cut -d. -f1 /proc/uptime)
i=0
while [ $i -lt $mounts ]; do
  d=/q/m/$i
  mkdir -p $d && $q setproj $d $((2000 + i)) && mkdir $d/diff $d/work $d/merged
  mount -t overlay overlay -o lowerdir=/q/lower,upperdir=$d/diff,workdir=$d/work $d/merged || echo "=== OVERLAY FAILED $d"
  i=$((i + 1))
done
$q spread /q/m $mounts $files
echo "=== MOUNTS $mounts x $files files in $(( $(cut -d. -f1 /proc/uptime) - t0 )) s"
common='web:
  listen_address: 127.0.0.1:9864
discovery:
  include_mountpoints: ["/q/m/.*"]
ebpf:
  enabled: false
log:
  level: warn'
printf '%s\nscan:\n  interval: 10s\n  quota_interval: 5s\n  classify_interval: 10m\n' "$common" > /bench-quota.yaml
printf '%s\nscan:\n  interval: 10s\n  quota: false\n' "$common" > /bench-walk.yaml
# The agent with no scans at all: what discovery and the process cost by themselves.
printf '%s\nscan:\n  enabled: false\n' "$common" > /bench-none.yaml
for mode in none quota walk; do
  /overlay-agent --config /bench-$mode.yaml > /bench-$mode.log 2>&1 &
  pid=$!
  i=0
  want=$mounts; [ $mode = none ] && want=0
  until scrape > /dev/null && [ "$(scrape | grep -c "^overlayfs_upper_usage_source_info.*source=\"$mode\"")" = $want ]; do
    i=$((i + 1)); [ $i -gt 6000 ] && { echo "=== BENCH NOT READY $mode"; break; }
    usleep 100000
  done
  # CPU ticks (utime + stime) over a 60 s window once every mount is measured.
  c0=$(awk '{print $14 + $15}' /proc/$pid/stat)
  u0=$(cut -d' ' -f1 /proc/uptime)
  sleep 60
  c1=$(awk '{print $14 + $15}' /proc/$pid/stat)
  u1=$(cut -d' ' -f1 /proc/uptime)
  now=$(date +%s)
  oldest=$(scrape | awk -v now=$now '/^overlayfs_upper_usage_timestamp_seconds/ {a = now - $2; if (a > m) m = a} END {printf "%.1f", m}')
  walks=$(scrape | awk '/^overlayfs_upper_scans_total/ {n += $2} END {print n + 0}')
  echo "=== COST $mode ticks $((c1 - c0)) hz $(getconf CLK_TCK 2>/dev/null || echo 100) window $u0 $u1 oldest_s $oldest walks $walks"
  kill -TERM $pid
  wait $pid
done
echo "=== DONE"
poweroff -f
