# Mode `storm` of the QEMU test guests, sourced by /init (tests/guest/initramfs/init.sh,
# which has mounted A, B and C and defines scrape, ready, runs and
# kprobes); tests/guest checks the output.
# Recorded storms (tests/guest, storm.rs): the agent is
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
  i=$((i + 1)); { [ $i -gt 600 ] || ! alive $agent; } && { echo "=== AGENT NOT READY"; break; }
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
terminate $agent TERM AGENT
echo "=== AGENT EXIT $?"
echo "=== AGENT LOG BEGIN"
tail -20 /agent.log
echo "=== AGENT LOG END"
