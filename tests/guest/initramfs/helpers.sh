# Helpers of the QEMU test guests' modes, sourced by /init (tests/guest/initramfs/init.sh).
# The host runs them too, with short bounds (tests/guest, qemu/helpers.rs).
#
# Nothing here waits without bound: a hang prints a marker the host fails on
# ("=== SCRAPE TIMEOUT", "=== STEP TIMEOUT ...", "=== NAME DID NOT EXIT"), well
# before the host's 600 s.
# After one request got no answer in GET_TIMEOUT s, every later one fails at
# once ($HUNG), so that the loops around them end too. (busybox's wget -T
# crashes: timeout bounds it.)
AGENT_ADDR=${AGENT_ADDR:-127.0.0.1:9864}
GET_TIMEOUT=${GET_TIMEOUT:-60}
HUNG=${HUNG:-/hung}
EXIT_TENTHS=${EXIT_TENTHS:-600}

get() {
  [ -e "$HUNG" ] && return 1
  timeout "$GET_TIMEOUT" wget -q "$@"
  local rc=$?
  [ $rc = 143 ] && { echo "=== SCRAPE TIMEOUT" >&2; touch "$HUNG"; }
  return $rc
}
scrape() { get -O - "http://$AGENT_ADDR/metrics"; }
# alive PID: the process runs (an exited child is a zombie until waited for).
alive() { [ -r /proc/$1/stat ] && [ "$(awk '{print $3}' /proc/$1/stat 2>/dev/null)" != Z ]; }
# ready [PID]: the agent answers /readyz (at most 1200 tries, 100 ms apart);
# gives up at once after a request without answer, and, with PID, when that
# process has exited.
ready() {
  i=0
  until get -O /dev/null "http://$AGENT_ADDR/readyz"; do
    i=$((i + 1)); { [ $i -gt 1200 ] || [ -e "$HUNG" ]; } && return 1
    [ -n "$1" ] && ! alive $1 && return 1
    usleep 100000
  done
}
# terminate PID SIGNAL NAME: signals the process and waits for it, at most
# EXIT_TENTHS tenths of a second, then "=== NAME DID NOT EXIT" and SIGKILL.
# Returns its exit status.
terminate() {
  kill -$2 $1
  i=0
  while alive $1; do
    i=$((i + 1)); [ $i -gt "$EXIT_TENTHS" ] && { echo "=== $3 DID NOT EXIT"; kill -KILL $1; break; }
    usleep 100000
  done
  wait $1
}
# step COMMAND...: runs a step of a mode, at most STEP_TIMEOUT s (then
# "=== STEP TIMEOUT COMMAND..."). Returns its exit status (143 when cut).
step() {
  timeout "${STEP_TIMEOUT:-300}" "$@"
  local rc=$?
  [ $rc = 143 ] && echo "=== STEP TIMEOUT $*"
  return $rc
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
