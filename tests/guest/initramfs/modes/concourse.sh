# Mode `concourse` of the QEMU test guests, sourced by /init (tests/guest/initramfs/init.sh,
# which has mounted A, B and C and defines scrape, ready, runs and
# kprobes); tests/guest checks the output.
# A Concourse volume's life as baggageclaim lives it (tests/guest, concourse.rs),
# by a worker that runs in a container of its own: every mount, the chown and
# the unmount happen in the worker's private mount namespace (held by `w`),
# which the host's mount table does not show. Overlay mounted in
# init/<handle>, chowned there (6 data copy-ups counted by the probes), renamed
# to live/, then dead/. After each step the agent's /metrics is printed; the
# copy-ups must follow the handle, in the worker's namespace.
v=/t/w/volumes; o=/t/w/overlays
h=5c2f3e4d-1a2b-4c3d-8e9f-0a1b2c3d4e5f; p=1b0e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b
mkdir -p $v/init $v/live $v/dead $o/$h $o/work/$h $o/$p $v/live/$p/volume
for i in 1 2 3 4 5 6; do echo "file $i of the parent volume" > $o/$p/f$i; done
unshare -m --propagation private sleep 1000000 &
w=$!
until [ -e /proc/$w/ns/mnt ] && [ "$(readlink /proc/$w/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ]; do usleep 10000; done
echo "=== WORKER MNTNS $(readlink /proc/$w/ns/mnt)"
in_worker() { nsenter -t $w -m -- "$@"; }
in_worker mount --bind $o/$p $v/live/$p/volume
printf 'web:\n  listen_address: 127.0.0.1:9864\ndiscovery:\n  resync_interval: 5m\nscan:\n  interval: 1s\n' > /concourse.yaml
/overlay-agent --config /concourse.yaml > /agent.log 2>&1 &
agent=$!
ready $agent || echo "=== AGENT NOT READY"
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
in_worker mount -t overlay overlay -o lowerdir=$v/live/$p/volume,upperdir=$o/$h,workdir=$o/work/$h $v/init/$h/volume
echo false > $v/init/$h/privileged.json
at init
in_worker chown -R 4294967294:4294967294 $v/init/$h/volume
echo "=== INIT METRICS BEGIN"; scrape; echo "=== INIT METRICS END"
mv $v/init/$h $v/live/$h
at live
echo "=== LIVE METRICS BEGIN"; scrape; echo "=== LIVE METRICS END"
mv $v/live/$h $v/dead/$h
at dead
echo "=== DEAD METRICS BEGIN"; scrape; echo "=== DEAD METRICS END"
in_worker umount $v/dead/$h/volume
kill $w
terminate $agent TERM AGENT
echo "=== AGENT LOG BEGIN"; cat /agent.log; echo "=== AGENT LOG END"
