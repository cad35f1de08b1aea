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
# Under TCG the kernel may leave the TSC for hpet (an emulated MMIO read per
# bpf_ktime_get_ns): the in-program figures depend on it.
echo "=== CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
insmod /overlay.ko || echo "=== INSMOD FAILED"
mode=$(cat /mode)
# Quota mode: its own script (project quotas on a loop-mounted ext4 image).
[ "$mode" = quota ] && . /quota.sh

mount -t tmpfs tmpfs /t
for m in a b c d e; do mkdir -p /t/$m/lower /t/$m/upper /t/$m/work /t/$m/merged; done
/qemu-workload prepare /t/a/lower /t/b/lower /t/c/lower || echo "=== PREPARE FAILED"
if [ "$mode" = agent ]; then
  # D: io_uring copy-ups; E: 64 x 2 MiB for the parallel copy-ups (agent mode only:
  # the other modes need the guest's memory).
  /qemu-workload uring-prepare /t/d/lower || echo "=== PREPARE FAILED"
  /qemu-workload parallel-prepare /t/e/lower 64 || echo "=== PREPARE FAILED"
fi
mount -t overlay overlay -o lowerdir=/t/a/lower,upperdir=/t/a/upper,workdir=/t/a/work /t/a/merged
mount -t overlay overlay -o lowerdir=/t/b/lower,upperdir=/t/b/upper,workdir=/t/b/work /t/b/merged
mount -t overlay overlay -o lowerdir=/t/c/lower,upperdir=/t/c/upper,workdir=/t/c/work,metacopy=on /t/c/merged
if [ "$mode" = agent ]; then
  mount -t overlay overlay -o lowerdir=/t/d/lower,upperdir=/t/d/upper,workdir=/t/d/work /t/d/merged
  mount -t overlay overlay -o lowerdir=/t/e/lower,upperdir=/t/e/upper,workdir=/t/e/work /t/e/merged
fi

scrape() { wget -q -O - http://127.0.0.1:9864/metrics; }
ready() {
  i=0
  until wget -q -O /dev/null http://127.0.0.1:9864/readyz; do
    i=$((i + 1)); [ $i -gt 1200 ] && return 1
    usleep 100000
  done
}
# Program runs of process $1's eBPF programs (kernel.bpf_stats_enabled on).
runs() {
  n=0
  for f in /proc/$1/fdinfo/*; do
    c=$(awk '/^run_cnt:/ {print $2}' $f)
    [ -n "$c" ] && n=$((n + c))
  done
  echo $n
}
# Overlay kprobes registered in the kernel (kprobe and kretprobe lines).
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# A tracefs return probe whose perf event is closed stays defined but DISABLED.
kprobes() { grep ' ovl_' /sys/kernel/debug/kprobes/list 2>/dev/null | grep -vc DISABLED; }
# The agent's return-probe events defined in tracefs.
retprobe_events() { grep -c overlay_agent /sys/kernel/tracing/kprobe_events 2>/dev/null; }

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
  # The same, as Prometheus asks for it with native histograms on (delimited
  # protobuf), base64 on the console (tests/qemu.rs, check_protobuf).
  echo "=== PROTO BEGIN"
  wget -q -O - --header "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited" \
    http://127.0.0.1:9864/metrics | base64
  echo "=== PROTO END"
  # The kernel table (kernel::hooks) against this kernel's BTF.
  /qemu-btf-check
  echo "=== BTF CHECK EXIT $?"
  # Copy-ups issued through io_uring (mount D).
  /qemu-workload uring /t/d/merged || echo "=== URING FAILED"
  echo "=== URING METRICS BEGIN"
  scrape
  echo "=== URING METRICS END"
  # Overlay work that copies nothing up runs none of the agent's programs.
  sysctl -w kernel.bpf_stats_enabled=1 > /dev/null
  before=$(runs $agent)
  /qemu-workload churn /t/a/merged/churn 1000 || echo "=== CHURN FAILED"
  echo "=== CHURN RUNS $(( $(runs $agent) - before ))"
  sysctl -w kernel.bpf_stats_enabled=0 > /dev/null
  # 64 processes copying up distinct 2 MiB files at once (mount E): no return lost.
  # For comparison, an ftrace kretprobe with the kernel's default maxactive for
  # 2 CPUs (max(10, 2 x CPUs) = 10) on the same function counts its own misses.
  tr=/sys/kernel/tracing
  echo 'r10:cmp/default_maxactive ovl_copy_up_one' >> $tr/kprobe_events
  echo 1 > $tr/events/cmp/default_maxactive/enable
  /qemu-workload parallel /t/e/merged 64 || echo "=== PARALLEL FAILED"
  echo 0 > $tr/events/cmp/default_maxactive/enable
  echo "=== DEFAULT MAXACTIVE $(grep default_maxactive $tr/kprobe_profile)"
  echo '-:cmp/default_maxactive' >> $tr/kprobe_events
  echo "=== PARALLEL METRICS BEGIN"
  scrape
  echo "=== PARALLEL METRICS END"
  # Mount E goes away: the agent deletes its map entries, and the node-wide
  # histograms keep what it counted (tests/qemu.rs, check_forgotten_mount).
  umount /t/e/merged
  i=0
  while scrape | grep -q 'mountpoint="/t/e/merged"'; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "=== FORGET TIMEOUT"; break; }
    usleep 100000
  done
  echo "=== FORGOTTEN METRICS BEGIN"
  scrape
  echo "=== FORGOTTEN METRICS END"
  echo "=== RETPROBE EVENTS RUNNING $(retprobe_events)"
  echo "=== AGENT RETPROBE $(grep one_exit_ $tr/kprobe_profile)"
  echo "=== KPROBES RUNNING $(kprobes)"
  kill -TERM $agent
  wait $agent
  echo "=== AGENT EXIT $?"
  echo "=== AGENT LOG BEGIN"
  cat /agent.log
  echo "=== AGENT LOG END"
  echo "=== KPROBES AFTER SIGTERM $(kprobes)"
  # SIGKILL leaves nothing attached either, and a restart comes back clean.
  /overlay-agent --config /agent.yaml > /agent2.log 2>&1 &
  agent=$!
  ready || echo "=== RESTART NOT READY"
  kill -KILL $agent
  wait $agent
  echo "=== KPROBES AFTER SIGKILL $(kprobes)"
  /overlay-agent --config /agent.yaml > /agent3.log 2>&1 &
  agent=$!
  ready || echo "=== RESTART NOT READY"
  chown 4:4 /t/b/merged/restart.dat
  echo "=== RESTART METRICS BEGIN"
  scrape
  echo "=== RESTART METRICS END"
  kill -TERM $agent
  wait $agent
  # The SIGKILLed agent's event was removed by the restart, the restart's own on exit.
  echo "=== RETPROBE EVENTS AFTER RESTART $(retprobe_events)"

  # The documented minimal capabilities for the probes: CAP_BPF, CAP_PERFMON and
  # (for RLIMIT_MEMLOCK before 5.11) CAP_SYS_RESOURCE, with perf_event_paranoid
  # at most 2. Debian kernels boot with 3, where their perf_event_open patch
  # wants CAP_SYS_ADMIN: first as booted (refused, and said so), then at 2.
  caps_run() {
    /qemu-workload caps-exec bpf,perfmon,sys_resource -- /overlay-agent --config /agent.yaml > /agent-$1.log 2>&1 &
    agent=$!
    ready || echo "=== $1 NOT READY"
    [ -n "$2" ] && chown 5:5 /t/b/merged/$2
    echo "=== $1 METRICS BEGIN"
    scrape
    echo "=== $1 METRICS END"
    kill -TERM $agent
    wait $agent
    echo "=== $1 LOG BEGIN"
    cat /agent-$1.log
    echo "=== $1 LOG END"
  }
  echo "=== PERF_EVENT_PARANOID $(cat /proc/sys/kernel/perf_event_paranoid)"
  caps_run CAPS_BOOTED ""
  echo 2 > /proc/sys/kernel/perf_event_paranoid
  caps_run CAPS caps.dat
fi
# bench: the timed storms, then the BPF statistics; bpfstats: the statistics only.
if [ "$mode" = bench ] || [ "$mode" = bpfstats ]; then
  rounds="1 2 3 4 5 6 7"; churn_rounds="1 2 3 4 5"
  [ "$mode" = bpfstats ] && { rounds=""; churn_rounds=""; }
  # Copy-up storm: lchown of every entry of a fresh overlay over 10,000 lower
  # files (each a data copy-up), with no probes, the bare counting pair, and the
  # agent; then the same storm on a plain tmpfs tree (no overlay), without and
  # with the agent. Rounds alternate the configurations.
  n=10000
  mkdir -p /t/s/lower /t/plain
  /qemu-workload tree /t/s/lower $n
  /qemu-workload tree /t/plain $n
  fresh() {
    umount /t/s/merged 2>/dev/null
    rm -rf /t/s/upper /t/s/work
    mkdir -p /t/s/upper /t/s/work /t/s/merged
    mount -t overlay overlay -o lowerdir=/t/s/lower,upperdir=/t/s/upper,workdir=/t/s/work /t/s/merged
  }
  start() {
    pid=
    case $1 in
      bare)
        /qemu-bare-probe > /bare.log 2>&1 &
        pid=$!
        until grep -q attached /bare.log; do usleep 50000; done ;;
      agent)
        /overlay-agent --config /agent-bench.yaml > /agent.log 2>&1 &
        pid=$!
        until wget -q -O - http://127.0.0.1:9864/metrics 2>/dev/null | grep -q '^overlayfs_ebpf_enabled 1'; do usleep 50000; done ;;
    esac
  }
  stop() { [ -n "$pid" ] && { kill -TERM $pid; wait $pid; }; }
  uid=100
  for round in $rounds; do
    for cfg in none bare agent; do
      fresh; start $cfg; uid=$((uid + 1))
      echo "=== BENCH overlay $cfg $(/qemu-workload storm /t/s/merged $uid)"
      stop
    done
    for cfg in none agent; do
      start $cfg; uid=$((uid + 1))
      echo "=== BENCH plain $cfg $(/qemu-workload storm /t/plain $uid 3)"
      stop
    done
  done
  # One more storm per probe set with the kernel's BPF run-time statistics on
  # (not timed: the statistics cost time themselves): how much of the added
  # cost is spent inside the programs, and how much in the kprobe mechanism.
  # Five alternating rounds: a busy host preempts the vCPUs inside programs,
  # which inflates single figures; the test takes the medians.
  sysctl -w kernel.bpf_stats_enabled=1 > /dev/null
  for cfg in bare agent bare agent bare agent bare agent bare agent; do
    fresh; start $cfg; uid=$((uid + 1))
    /qemu-workload storm /t/s/merged $uid > /dev/null
    runs=0; ns=0
    for f in /proc/$pid/fdinfo/*; do
      c=$(awk '/^run_cnt:/ {print $2}' $f); t=$(awk '/^run_time_ns:/ {print $2}' $f)
      [ -n "$c" ] && { runs=$((runs + c)); ns=$((ns + t)); echo "=== PROG $cfg fd ${f##*/} $c runs $t ns"; }
    done
    echo "=== BENCH bpfstats $cfg $runs runs $ns ns"
    stop
  done
  # Overlay work that copies nothing up: 100,000 operations (12,500 rounds of
  # create, write, chown, chmod, rename, link, unlink, unlink) on upper-only
  # files, with no probes and with the agent, alternating; then once more with
  # the BPF statistics on, for the agent's program runs.
  sysctl -w kernel.bpf_stats_enabled=0 > /dev/null
  for round in $churn_rounds; do
    for cfg in none agent; do
      fresh; start $cfg
      echo "=== BENCH churn $cfg $(/qemu-workload churn /t/s/merged/churn 12500)"
      stop
    done
  done
  sysctl -w kernel.bpf_stats_enabled=1 > /dev/null
  fresh; start agent
  before=$(runs $pid)
  /qemu-workload churn /t/s/merged/churn 12500 > /dev/null
  echo "=== BENCH churnstats agent $(( $(runs $pid) - before )) runs 100000 ops"
  stop
  sysctl -w kernel.bpf_stats_enabled=0 > /dev/null
fi
if [ "$mode" = maps ]; then
  # Cost of reading the eBPF maps per scrape: 1000 overlays, one copy-up of
  # every cause on each (about 11,000 COUNTS keys and 22,000 HIST keys), scraped
  # with eBPF off and on, in text and in protobuf; the maps' memlock.
  n=1000
  i=0
  while [ $i -lt $n ]; do
    d=/t/m/$i
    mkdir -p $d/lower $d/upper $d/work $d/merged
    /qemu-workload causes-prepare $d/lower
    mount -t overlay overlay -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work $d/merged
    i=$((i + 1))
  done
  # off: eBPF off; on: the defaults (per-mount histograms, classic buckets on
  # the node-wide ones); all: classic buckets per mount too.
  for cfg in off on all; do
    printf 'web:\n  listen_address: 127.0.0.1:9864\nscan:\n  enabled: false\nebpf:\n  enabled: %s\n' \
      "$([ $cfg = off ] && echo false || echo true)" > /maps.yaml
    [ $cfg = all ] && echo '  classic_histograms: all' >> /maps.yaml
    /overlay-agent --config /maps.yaml > /agent.log 2>&1 &
    pid=$!
    ready || { echo "=== MAPS ebpf-$cfg agent not ready: $(tail -2 /agent.log)"; continue; }
    if [ $cfg != off ]; then
      i=0
      while [ $i -lt $n ]; do
        d=/t/m/$i
        if [ $cfg = all ]; then
          # A fresh upper layer: the round before copied everything up.
          umount $d/merged && rm -rf $d/upper $d/work && mkdir $d/upper $d/work
          mount -t overlay overlay -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work $d/merged
        fi
        /qemu-workload causes-run $d/merged
        i=$((i + 1))
      done
      # Kernel memory of each map (memlock, as the kernel charges it).
      total=0
      for f in /proc/$pid/fdinfo/*; do
        grep -q '^map_type:' $f || continue
        echo "=== MAPS map $(awk '/^(map_type|key_size|value_size|max_entries|memlock):/ {printf "%s %s ", $1, $2}' $f)"
        total=$((total + $(awk '/^memlock:/ {print $2}' $f)))
      done
      echo "=== MAPS memlock total $total bytes, $(grep -c ^processor /proc/cpuinfo) cpus"
    fi
    echo "=== MAPS ebpf-$cfg $(/qemu-workload scrape 127.0.0.1:9864 50)"
    echo "=== MAPS ebpf-$cfg protobuf $(/qemu-workload scrape 127.0.0.1:9864 50 proto)"
    wget -q -O - http://127.0.0.1:9864/metrics | grep -c '^overlayfs_copy_up_total' | sed 's/^/=== MAPS copy_up_total series /'
    wget -q -O - http://127.0.0.1:9864/metrics | grep -E '^overlayfs_ebpf_(enabled|disabled_info|map_full_total)' | sed 's/^/=== MAPS /'
    tail -3 /agent.log | sed 's/^/=== MAPS log: /'
    kill -TERM $pid
    wait $pid
  done
fi
if [ "$mode" = concourse ]; then
  # A Concourse volume's life as baggageclaim lives it (tests/qemu.rs):
  # overlay mounted in init/<handle>, chowned there (6 data copy-ups counted by
  # the probes), renamed to live/, then dead/. After each step the agent's
  # /metrics is printed; the copy-ups must follow the handle.
  v=/t/w/volumes; o=/t/w/overlays
  h=5c2f3e4d-1a2b-4c3d-8e9f-0a1b2c3d4e5f; p=1b0e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b
  mkdir -p $v/init $v/live $v/dead $o/$h $o/work/$h $o/$p $v/live/$p/volume
  for i in 1 2 3 4 5 6; do echo "file $i of the parent volume" > $o/$p/f$i; done
  mount --bind $o/$p $v/live/$p/volume
  printf 'web:\n  listen_address: 127.0.0.1:9864\ndiscovery:\n  resync_interval: 5m\nscan:\n  interval: 1s\n' > /concourse.yaml
  /overlay-agent --config /concourse.yaml > /agent.log 2>&1 &
  agent=$!
  ready || echo "=== AGENT NOT READY"
  scrape | grep -q '^overlayfs_ebpf_enabled 1' || echo "=== PROBES OFF"
  # Waits until the volume's mount_info names the state's mountpoint and the handle.
  at() {
    i=0
    until scrape | grep -q "^overlayfs_mount_info{mountpoint=\"$v/$1/$h/volume\".*container_id=\"$h\".*privileged=\"false\""; do
      i=$((i + 1)); [ $i -gt 300 ] && { echo "=== CONCOURSE TIMEOUT $1"; return 1; }
      usleep 100000
    done
  }
  mkdir -p $v/init/$h/volume
  mount -t overlay overlay -o lowerdir=$v/live/$p/volume,upperdir=$o/$h,workdir=$o/work/$h $v/init/$h/volume
  echo false > $v/init/$h/privileged.json
  at init
  chown -R 4294967294:4294967294 $v/init/$h/volume
  echo "=== INIT METRICS BEGIN"; scrape; echo "=== INIT METRICS END"
  mv $v/init/$h $v/live/$h
  at live
  echo "=== LIVE METRICS BEGIN"; scrape; echo "=== LIVE METRICS END"
  mv $v/live/$h $v/dead/$h
  at dead
  echo "=== DEAD METRICS BEGIN"; scrape; echo "=== DEAD METRICS END"
  umount $v/dead/$h/volume
  kill -TERM $agent
  wait $agent
  echo "=== AGENT LOG BEGIN"; cat /agent.log; echo "=== AGENT LOG END"
fi
if [ "$mode" = storm ]; then
  # Recorded storms (tests/qemu.rs, rules_fire_on_a_recorded_storm): the agent is
  # scraped every second (qemu-workload record) through steady background traffic
  # (10 mounts, 2 chowns/s each, 30 s), then real busybox `chown -R`s: 4 at
  # once, each over $n files of $size bytes of one fresh overlay, in rounds until
  # the storm has blocked 16 s (below), 32 quiet seconds with the storm volume
  # still mounted, and a chown of one 272 MiB file, recorded for 16 s more. One chown -R of 10,000 16 KiB files blocked
  # 5.5 s in 9.4 s here (TCG); 4 at once on 2 vCPUs block about 2 s a second.
  n=4000; size=12288
  printf 'web:\n  listen_address: 127.0.0.1:9864\nscan:\n  interval: 5s\n' > /storm.yaml
  steady=
  for i in 0 1 2 3 4 5 6 7 8 9; do
    d=/t/q/$i
    mkdir -p $d/lower $d/upper $d/work $d/merged
    /qemu-workload tree $d/lower 60 4096
    mount -t overlay overlay -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work $d/merged
    steady="$steady $d/merged"
  done
  # The storm's lower layer: 12 trees of $n names, each tree's names hard links
  # to one file (index=off: every name is copied up on its own), so that up to
  # 3 rounds of 4 trees fit in the guest (this mode boots with 2 GiB).
  mkdir -p /t/s/lower /t/s/upper /t/s/work /t/s/merged
  for k in 1 2 3 4 5 6 7 8 9 10 11 12; do /qemu-workload links /t/s/lower/p$k $n $size; done
  mount -t overlay overlay -o lowerdir=/t/s/lower,upperdir=/t/s/upper,workdir=/t/s/work,index=off /t/s/merged
  /overlay-agent --config /storm.yaml > /agent.log 2>&1 &
  agent=$!
  i=0
  until /qemu-workload scrape 127.0.0.1:9864 1 > /dev/null 2>&1 && grep -q 'copy-up probes attached' /agent.log; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "=== AGENT NOT READY"; break; }
    usleep 100000
  done
  echo steady > /phase
  /qemu-workload record 127.0.0.1:9864 1000 /phase > /scrapes.txt &
  recorder=$!
  sleep 2
  /qemu-workload steady 30 2 $steady || echo "=== STEADY FAILED"
  echo storm > /phase
  # The storm: 4 chown -R at once over 4 fresh trees of the same mount, and again
  # over the next 4 until it has blocked at least $want s in all (at most 3
  # rounds, 48,000 copy-ups). One round blocked 3.4 to 20.8 s: TCG's speed follows
  # the host's load.
  want=16
  round=0
  series='overlayfs_copy_up_seconds_total{mountpoint="/t/s/merged",cause="chown"}'
  t0=$(cut -d' ' -f1 /proc/uptime)
  while :; do
    pids=
    for k in 1 2 3 4; do chown -R 1000:1000 /t/s/merged/p$((round * 4 + k)) & pids="$pids $!"; done
    for p in $pids; do wait $p || echo "=== STORM FAILED"; done
    round=$((round + 1))
    blocked=$(/qemu-workload metric 127.0.0.1:9864 "$series")
    awk "BEGIN { exit !($blocked < $want && $round < 3) }" || break
  done
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "=== STORM 4 x chown -R of $n files of $size bytes, $round rounds, $blocked s blocked: $t0 to $t1 (uptime, s)"
  echo after > /phase
  # The volume stays mounted a while, as a task's volume does: a storm can be
  # over within one 15 s scrape interval (11 s on an idle host), and a mount
  # gone before any scrape saw it cannot raise anything.
  sleep 32
  # Then one huge copy-up: the storm's overlay removed (its memory back), a chown
  # of one 272 MiB file (over the 256 MiB of OverlayfsHugeCopyUp) on a fresh one.
  # (/t is a tmpfs of half the RAM: let it hold the file twice.)
  umount /t/s/merged && rm -rf /t/s
  mount -o remount,size=800m /t
  mkdir -p /t/h/lower /t/h/upper /t/h/work /t/h/merged
  dd if=/dev/zero of=/t/h/lower/big bs=1048576 count=272 2> /dev/null || echo "=== HUGE FAILED"
  mount -t overlay overlay -o lowerdir=/t/h/lower,upperdir=/t/h/upper,workdir=/t/h/work /t/h/merged
  echo huge > /phase
  t0=$(cut -d' ' -f1 /proc/uptime)
  chown 1000:1000 /t/h/merged/big || echo "=== HUGE FAILED"
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "=== HUGE chown of one 272 MiB file: $t0 to $t1 (uptime, s)"
  # Long enough for a scrape every 15 s (the capture is also checked so) to see it.
  sleep 16
  echo stop > /phase
  wait $recorder
  echo "=== STORM SCRAPES BEGIN"
  cat /scrapes.txt
  echo "=== STORM SCRAPES END"
  kill -TERM $agent
  wait $agent
  echo "=== AGENT EXIT $?"
  echo "=== AGENT LOG BEGIN"
  tail -20 /agent.log
  echo "=== AGENT LOG END"
fi
echo "=== DONE"
poweroff -f
