# Modes `bench` and `bpfstats` of the QEMU test guests, sourced by /init
# (tests/guest/initramfs/init.sh, which has mounted A, B and C and defines scrape,
# ready, runs and kprobes); tests/guest (overhead.rs) reads the
# output. bench: the timed storms, then the BPF statistics; bpfstats: the
# statistics only.
rounds="1 2 3 4 5 6 7"; churn_rounds="1 2 3 4 5"; stat_cfgs="bare agent bare agent bare agent bare agent bare agent"
[ "$mode" = bpfstats ] && { rounds=""; churn_rounds=""; }
# micro: the cost model (one program per operation), one storm.
[ "$mode" = micro ] && { rounds=""; churn_rounds=""; stat_cfgs="micro"; }
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
    bare|micro)
      /qemu-bare-probe $([ $1 = micro ] && echo micro) > /bare.log 2>&1 &
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
for cfg in $stat_cfgs; do
  fresh; start $cfg; uid=$((uid + 1))
  /qemu-workload storm /t/s/merged $uid > /dev/null
  runs=0; ns=0
  # Every loaded program is this configuration's (the previous one has exited).
  /qemu-bare-probe stats > /progs.txt
  while read -r _ name c t; do
    runs=$((runs + c)); ns=$((ns + t)); echo "=== PROG $cfg $name $c runs $t ns"
  done < /progs.txt
  [ $cfg = micro ] && cat /bare.log
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
[ "$mode" = micro ] && return
sysctl -w kernel.bpf_stats_enabled=1 > /dev/null
fresh; start agent
before=$(runs $pid)
/qemu-workload churn /t/s/merged/churn 12500 > /dev/null
echo "=== BENCH churnstats agent $(( $(runs $pid) - before )) runs 100000 ops"
stop
sysctl -w kernel.bpf_stats_enabled=0 > /dev/null
