# Mode `agent` of the QEMU test guests, sourced by /init (tests/guest/initramfs/init.sh,
# which has mounted A, B and C and defines scrape, ready, runs and kprobes); tests/guest checks the output.
# D: io_uring copy-ups; E: 64 x 2 MiB for the parallel copy-ups (this mode only:
# the other modes need the guest's memory).
step /qemu-workload uring-prepare /t/d/lower || echo "=== PREPARE FAILED"
step /qemu-workload parallel-prepare /t/e/lower 64 || echo "=== PREPARE FAILED"
mount -t overlay overlay -o lowerdir=/t/d/lower,upperdir=/t/d/upper,workdir=/t/d/work /t/d/merged
mount -t overlay overlay -o lowerdir=/t/e/lower,upperdir=/t/e/upper,workdir=/t/e/work /t/e/merged

/overlay-agent --config /agent.yaml > /agent.log 2>&1 &
agent=$!
# An agent that never gets ready ends the mode here, with its log: every step
# below needs it, and their own waits would add up past the host's deadline.
if ! ready $agent; then
  echo "=== AGENT NOT READY"
  echo "=== AGENT LOG BEGIN"; cat /agent.log; echo "=== AGENT LOG END"
  return
fi
scrape | grep -q '^overlayfs_ebpf_enabled 1' || echo "=== PROBES OFF"
# The preflight on a kernel where everything works (exact_counts/preflight.rs).
timeout 300 /overlay-agent check --json > /check.json 2> /check.err
echo "=== CHECK EXIT $?"
echo "=== CHECK BEGIN"
cat /check.json
echo "=== CHECK END"
# What each fix would have avoided, on mounts made the way the fixes' rules read
# them (exact_counts/layers.rs), after the check (its table is A to E):
# U (/t/u/merged), the userxattr option of rootless mounts, tried with
# metacopy=on first (refused); two unprivileged Concourse volumes, over a plain
# lower and over an idmapped one (ext4 on a loop device, /t/x, idmapped at
# /t/i/lower). The workload prints each mount's answer (=== OUTCOME lines) and
# the host asserts it for the kernel: a refusal is checked, never skipped.
insmod /loop.ko || echo "=== INSMOD FAILED"
mkdir -p /t/x
dd if=/dev/zero of=/t/x.img bs=1024 count=2048 2> /dev/null
{ losetup /dev/loop0 /t/x.img && mke2fs /dev/loop0 > /dev/null && mount -t ext4 /dev/loop0 /t/x; } \
  || echo "=== PREPARE FAILED"
step /qemu-workload userxattr-mount /t/u || echo "=== PREPARE FAILED"
step /qemu-workload idmapped-mount /t || echo "=== PREPARE FAILED"
# The agent has every overlay under /t in its table before the copy-ups.
for mp in $(awk '$3 == "overlay" && $2 ~ /^\/t\// {print $2}' /proc/mounts); do
  i=0
  until scrape | grep -q "^overlayfs_mount_info{mountpoint=\"$mp\""; do
    i=$((i + 1)); [ $i -gt 300 ] && { echo "=== DISCOVERY TIMEOUT $mp"; break 2; }
    usleep 100000
  done
done
# A second, independent load of the programs: the live trace of every copy-up.
/overlay-agent trace --min-latency 0s > /trace.log 2> /trace.err &
tracer=$!
i=0
until grep -q '^TIME' /trace.log 2>/dev/null; do
  i=$((i + 1))
  { [ $i -gt 1200 ] || ! alive $tracer; } && { echo "=== TRACE NOT READY"; cat /trace.err; break; }
  usleep 100000
done
step /qemu-workload run /t/a/merged /t/b/merged /t/c/merged || echo "=== WORKLOAD FAILED"
step /qemu-workload userxattr-run /t/u/merged || echo "=== WORKLOAD FAILED"
step /qemu-workload idmapped-run /t || echo "=== WORKLOAD FAILED"
terminate $tracer INT TRACE
echo "=== TRACE EXIT $?"
echo "=== TRACE BEGIN"
cat /trace.log
echo "=== TRACE END"
echo "=== METRICS BEGIN"
scrape
echo "=== METRICS END"
# What explain makes of these figures (exact_counts/explain.rs): by default
# (fixes worth 1 s or 64 MiB) and with --all, each with its exit code.
for how in DEFAULT ALL; do
  flag=
  [ $how = ALL ] && flag=--all
  /overlay-agent explain $flag --url 127.0.0.1:9864 > /explain.txt 2> /explain.err
  echo "=== EXPLAIN $how EXIT $?"
  echo "=== EXPLAIN $how BEGIN"
  cat /explain.txt
  echo "=== EXPLAIN $how END"
  [ -s /explain.err ] && { echo "=== EXPLAIN $how STDERR"; cat /explain.err; }
done
# The same, as Prometheus asks for it with native histograms on (delimited
# protobuf), base64 on the console (tests/guest, exact_counts/protobuf.rs).
echo "=== PROTO BEGIN"
get -O - --header "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited" \
  http://127.0.0.1:9864/metrics | base64
echo "=== PROTO END"
# The kernel table (kernel::hooks) against this kernel's BTF.
step /qemu-btf-check
echo "=== BTF CHECK EXIT $?"
# Copy-ups issued through io_uring (mount D).
step /qemu-workload uring /t/d/merged || echo "=== URING FAILED"
echo "=== URING METRICS BEGIN"
scrape
echo "=== URING METRICS END"
# Overlay work that copies nothing up runs none of the agent's programs.
sysctl -w kernel.bpf_stats_enabled=1 > /dev/null
before=$(runs $agent)
step /qemu-workload churn /t/a/merged/churn 1000 || echo "=== CHURN FAILED"
echo "=== CHURN RUNS $(( $(runs $agent) - before ))"
sysctl -w kernel.bpf_stats_enabled=0 > /dev/null
# 64 processes copying up distinct 2 MiB files at once (mount E): every copy-up
# accounted for. Each program's runs during the storm, from the kernel's
# statistics (only the agent's programs are loaded now: the tracer has exited).
sysctl -w kernel.bpf_stats_enabled=1 > /dev/null
/qemu-bare-probe stats > /progs-before.txt
step /qemu-workload parallel /t/e/merged 64 || echo "=== PARALLEL FAILED"
/qemu-bare-probe stats > /progs-after.txt
sysctl -w kernel.bpf_stats_enabled=0 > /dev/null
while read -r _ name after _; do
  before=$(awk -v n="$name" '$2 == n {print $3}' /progs-before.txt)
  echo "=== PARALLEL PROG $name $((after - ${before:-0}))"
done < /progs-after.txt
echo "=== PARALLEL METRICS BEGIN"
scrape
echo "=== PARALLEL METRICS END"
# Mount E goes away: the agent deletes its map entries, and the node-wide
# histograms keep what it counted (tests/guest, exact_counts/histograms.rs).
umount /t/e/merged
i=0
while scrape | grep -q 'mountpoint="/t/e/merged"'; do
  i=$((i + 1)); [ $i -gt 600 ] && { echo "=== FORGET TIMEOUT"; break; }
  usleep 100000
done
echo "=== FORGOTTEN METRICS BEGIN"
scrape
echo "=== FORGOTTEN METRICS END"
echo "=== KPROBES RUNNING $(kprobes)"
terminate $agent TERM AGENT
echo "=== AGENT EXIT $?"
echo "=== AGENT LOG BEGIN"
cat /agent.log
echo "=== AGENT LOG END"
echo "=== KPROBES AFTER SIGTERM $(kprobes)"
# SIGKILL leaves nothing attached either, and a restart comes back clean.
/overlay-agent --config /agent.yaml > /agent2.log 2>&1 &
agent=$!
ready $agent || echo "=== RESTART NOT READY"
kill -KILL $agent
wait $agent
echo "=== KPROBES AFTER SIGKILL $(kprobes)"
/overlay-agent --config /agent.yaml > /agent3.log 2>&1 &
agent=$!
ready $agent || echo "=== RESTART NOT READY"
chown 4:4 /t/b/merged/restart.dat
echo "=== RESTART METRICS BEGIN"
scrape
echo "=== RESTART METRICS END"
terminate $agent TERM RESTART

# The documented minimal capabilities for the probes: CAP_BPF, CAP_PERFMON and
# (for RLIMIT_MEMLOCK before 5.11) CAP_SYS_RESOURCE, with perf_event_paranoid
# at most 2. Debian kernels boot with 3, where their perf_event_open patch
# wants CAP_SYS_ADMIN: first as booted (refused, and said so), then at 2.
caps_run() {
  /qemu-workload caps-exec bpf,perfmon,sys_resource -- /overlay-agent --config /agent.yaml > /agent-$1.log 2>&1 &
  agent=$!
  ready $agent || echo "=== $1 NOT READY"
  [ -n "$2" ] && chown 5:5 /t/b/merged/$2
  echo "=== $1 METRICS BEGIN"
  scrape
  echo "=== $1 METRICS END"
  terminate $agent TERM $1
  echo "=== $1 LOG BEGIN"
  cat /agent-$1.log
  echo "=== $1 LOG END"
}
echo "=== PERF_EVENT_PARANOID $(cat /proc/sys/kernel/perf_event_paranoid)"
caps_run CAPS_BOOTED ""
echo 2 > /proc/sys/kernel/perf_event_paranoid
caps_run CAPS caps.dat
