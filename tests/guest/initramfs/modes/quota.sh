# Mode `quota` of the QEMU guests (sourced by /init, tests/guest/initramfs/init.sh,
# which defines scrape; tests/guest, quota.rs, checks the output): an ext4 image
# made on the host (mkfs.ext4 -O quota,project), loop-mounted with project quota
# accounting; overlays on it with project ids set as Docker sets them (A: on the
# layer dir holding diff/ and work/), on the upper and work dirs (B), by the
# agent (C, H: scan.assign_project_ids; E refused: one file already has another
# id), by someone else (D), and one shared with the grandparent (F). H: copy-ups
# while the agent tags its trees must all succeed. I: no id, but whiteouts
# (device nodes, and the shared one in work/): refused. The agent reads bytes and
# inodes from the quota; its figures are printed next to a walk's (quota off).
# Modules the kernel has built in are not shipped (fetch-quota-modules.sh).
for m in loop quota_tree quota_v2; do
  [ -f /quota/$m.ko ] && { insmod /quota/$m.ko || echo "=== QUOTA INSMOD FAILED $m"; }
done
mkdir -p /q
i=0
until [ -b /dev/loop0 ] || [ $i -gt 100 ]; do i=$((i + 1)); usleep 50000; done
losetup /dev/loop0 /quota.img || echo "=== LOSETUP FAILED"
mount -t ext4 -o prjquota /dev/loop0 /q || mount -t ext4 /dev/loop0 /q || echo "=== QUOTA MOUNT FAILED"
grep ' /q ' /proc/mounts | sed 's/^/=== QUOTA FS /'
q=/qemu-quota
[ -f /quota-bench ] && . /modes/quota-bench.sh
mkdir -p /q/lower
$q fill /q/lower 200
ov() { mount -t overlay overlay -o lowerdir=/q/lower,upperdir=$1,workdir=$2 $3 || echo "=== OVERLAY FAILED $3"; }
# A: Docker's layout (a small file next to diff/ and work/, like its "link").
mkdir /q/a && $q setproj /q/a 100
mkdir /q/a/diff /q/a/work /q/a/merged && echo L5DJ3T > /q/a/link
ov /q/a/diff /q/a/work /q/a/merged
# B: the id on the upper and the work dir only.
mkdir -p /q/b/upper /q/b/work /q/b/merged
$q setproj /q/b/upper 200 && $q setproj /q/b/work 200
ov /q/b/upper /q/b/work /q/b/merged
# C: no id: the agent assigns one; E: no id, but one file has another id: refused
# (a rename of that file into the inheriting upper dir would fail with EXDEV).
for m in c d e; do mkdir -p /q/$m/upper /q/$m/work /q/$m/merged; done
ov /q/c/upper /q/c/work /q/c/merged
# D: someone else's id: the agent must leave it.
$q setproj /q/d/upper 300 && $q setproj /q/d/work 300
ov /q/d/upper /q/d/work /q/d/merged
echo foreign > /q/e/upper/foreign && $q setproj /q/e/upper/foreign 400
ov /q/e/upper /q/e/work /q/e/merged
# F: the id covers the grandparent too.
mkdir /q/f && $q setproj /q/f 500 && mkdir -p /q/f/l/upper /q/f/l/work /q/f/l/merged
ov /q/f/l/upper /q/f/l/work /q/f/l/merged
# H: no id, an upper dir with many files (the agent takes a while to tag them) and
# a lower layer of its own to copy up from while it does.
mkdir -p /q/h/lower /q/h/upper /q/h/work /q/h/merged
# (lower files under l/, a name the upper dir does not have: each append is a copy-up)
$q fill /q/h/lower/l 1500
$q fill /q/h/upper 6000
mount -t overlay overlay -o lowerdir=/q/h/lower,upperdir=/q/h/upper,workdir=/q/h/work /q/h/merged \
  || echo "=== OVERLAY FAILED /q/h/merged"
# The workload: waits until the agent starts tagging H (an id on the upper or the
# work dir), then copies up (appends to lower files) until the agent has logged
# H's assignment and 100 more; counts copy-ups during and after the assignment,
# and failures (EXDEV if the upper dir inherited an id the work dir lacked).
race() {
  i=0
  until [ "$($q getproj /q/h/work)" != 0 ] || [ "$($q getproj /q/h/upper)" != 0 ]; do
    i=$((i + 1)); [ $i -gt 20000 ] && { echo "=== RACE NEVER TAGGED"; return; }
  done
  during=0 after=0 failed=0 n=0
  for f in /q/h/merged/l/d*/f*; do
    echo x >> "$f" 2> /dev/null || failed=$((failed + 1))
    n=$((n + 1))
    if [ $after -gt 0 ]; then
      after=$((after + 1)); [ $after -gt 100 ] && break
    elif [ $((n % 10)) = 0 ] && grep -q 'assigned a project id.*/q/h/upper' /agent.log; then
      after=1
    else
      during=$((during + 1))
    fi
  done
  echo "=== RACE during $during after $after failed $failed copied $(ls /q/h/upper/l/d* | grep -c '^f')"
}
# Round 0 before the agent starts, but in C: the agent assigns C's id at its first
# walk, and whiteouts made before then (device nodes) could not be given the id.
# I: no id, but whiteouts from round 0: refused.
mkdir -p /q/i/upper /q/i/work /q/i/merged
ov /q/i/upper /q/i/work /q/i/merged
for m in a/merged b/merged d/merged f/l/merged i/merged; do
  $q work /q/$m 0 || echo "=== WORK FAILED $m 0"
done

/overlay-agent --config /agent-quota.yaml > /agent.log 2>&1 &
agent=$!
race > /race.out &
racer=$!
# Every mount measured once (source info for all eight).
i=0
until [ "$(scrape | grep -c '^overlayfs_upper_usage_source_info')" = 8 ]; do
  i=$((i + 1)); { [ $i -gt 1200 ] || ! alive $agent; } && { echo "=== AGENT NOT READY"; break; }
  usleep 100000
done
echo "=== QUOTA FIRST BEGIN"
scrape | grep '^overlayfs_upper_'
echo "=== QUOTA FIRST END"
wait $racer
cat /race.out
# Round 1 after the walk (the next walk is an hour away): copy-ups, also in C,
# whose upper and work dirs now have the agent's id (a copy-up moves a file from
# work/ to the upper dir: EXDEV if only one of them had the id).
for m in a/merged b/merged c/merged d/merged; do
  $q work /q/$m 1 || echo "=== WORK FAILED $m 1"
done
sync
t=$(date +%s)
# Quota readings after the round: every quota-mode mount read since $t + 1.
i=0
until [ "$(scrape | awk -v t=$t '/^overlayfs_upper_usage_timestamp_seconds/ && $2 > t + 1 {n++} END {print n + 0}')" -ge 8 ]; do
  i=$((i + 1)); [ $i -gt 600 ] && { echo "=== NO FRESH READINGS"; break; }
  usleep 100000
done
echo "=== QUOTA METRICS BEGIN"
scrape
echo "=== QUOTA METRICS END"
echo "=== WALK METRICS BEGIN"
/overlay-agent --config /agent-walk.yaml once 2> /walk.err
echo "=== WALK METRICS END"
echo "=== ASSIGN REFUSALS $(grep -c 'no project id assigned (scan' /agent.log)"
for p in a a/diff b/upper c/upper c/work d/upper d/work e/upper e/work e/upper/foreign f/l/upper h/upper h/work i/upper i/work; do
  echo "=== PROJECT $p $($q getproj /q/$p)"
done
# The readout against a walk and du -s, cold and warm (bench/quota.py sets the size).
terminate $agent TERM AGENT
echo "=== AGENT EXIT $?"
files=$(cat /bench-files 2>/dev/null || echo 2000)
mkdir -p /q/g/upper /q/g/work && $q setproj /q/g/upper 600 && $q setproj /q/g/work 600
$q fill /q/g/upper $files
echo "=== BENCH $($q bench /q/g/upper /q/g/work 5)"
echo "=== AGENT LOG BEGIN"
grep -v DEBUG /agent.log | tail -40
echo "=== AGENT LOG END"
for m in a/merged b/merged c/merged d/merged e/merged f/l/merged h/merged i/merged; do umount /q/$m; done
umount /q
