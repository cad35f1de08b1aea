"""What the benchmark scripts share: the repository and its release agent,
shell commands, free ports, a process's CPU seconds and resident memory,
percentiles, and the agent started on a free port, watching only the
benchmark's overlays."""
import os
import re
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# OVERLAY_AGENT_BIN: another build of the agent (the test command's smoke runs
# use its static release build).
AGENT = os.environ.get("OVERLAY_AGENT_BIN", os.path.join(ROOT, "target/release/overlay-agent"))
TICK = os.sysconf("SC_CLK_TCK")


def sh(*cmd, **kw):
    """Runs a command to completion; its stdout (raises on failure)."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def start_agent(base, config="", discovery="", include=None, agent=AGENT, name="agent", log=True):
    """Starts `AGENT serve` on a free loopback port watching only the overlays
    under `base` (or those whose mountpoint matches the regex `include`), with
    `discovery` lines added under discovery: and `config` (further sections)
    after it. The config is written to base/NAME.yaml, the agent's output to
    base/NAME.log (discarded with log=False). Returns the process and its
    host:port."""
    addr = f"127.0.0.1:{free_port()}"
    cfg = os.path.join(base, f"{name}.yaml")
    include = include or f"{re.escape(base)}/.*"
    with open(cfg, "w") as f:
        f.write(f"web:\n  listen_address: '{addr}'\n"
                f"discovery:\n  include_mountpoints: ['{include}']\n{discovery}{config}")
    out = open(os.path.join(base, f"{name}.log"), "w") if log else subprocess.DEVNULL
    return subprocess.Popen([agent, "--config", cfg, "serve"], stdout=out, stderr=out), addr


def detach_inherited_overlays(umount):
    """Inside a new private mount namespace (unshare --mount): makes every mount
    private, so nothing propagates back to the host, and detaches, with
    `umount(path)`, the copies of the overlays inherited from the host's
    namespace (other running tests'; the host's own are not touched), so that
    they are not kept alive by the namespace. Returns how many were detached."""
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    # Bytes: a mount point's name need not be UTF-8 (the hostile-name tests make
    # one ending in 0xff); mountinfo escapes space, tab, newline and backslash
    # as octal.
    with open("/proc/self/mountinfo", "rb") as f:
        inherited = [line.split(b" - ")[0].split()[4] for line in f
                     if line.split(b" - ")[-1].startswith(b"overlay ")]
    for m in reversed(inherited):
        path = os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda o: bytes([int(o.group(1), 8)]), m))
        try:
            umount(path)
        except OSError as e:
            print(f"(could not detach the inherited overlay {path!r}: {e})")
    return len(inherited)


def run_inside_private_namespace(script, inner_args, what, no_build):
    """Re-runs `script --inner INNER_ARGS` as PID 1 of a new private mount and PID
    namespace (`unshare`), after checking for root and, unless `no_build`,
    building the release agent; exits with its exit code. `what` names the
    benchmark in the error for a non-root user."""
    if os.geteuid() != 0:
        sys.exit(f"run as root: {what} mounts overlays (in a private namespace)")
    if not no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "overlay-agent"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cmd = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
           sys.executable, os.path.abspath(script), "--inner", *inner_args]
    sys.exit(subprocess.run(cmd).returncode)
