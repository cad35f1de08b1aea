# Mode `maps` of the QEMU test guests, sourced by /init (tests/guest/initramfs/init.sh,
# which has mounted A, B and C and defines scrape, ready, runs and
# kprobes); tests/guest checks the output.
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
