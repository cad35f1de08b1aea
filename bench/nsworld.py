"""Mount namespaces for the namespace benchmarks, made as rootless runtimes
make them: user `nobody` runs `unshare --user --map-root-user --mount
--propagation private`, mounts a tmpfs on its own directory and an overlay on
that tmpfs (seen by its namespace only), then sleeps. More overlays are mounted
and unmounted inside a live namespace with `nsenter`. A namespace ends with its
one process. Also: reading which (mntns, mountpoint) pairs /metrics shows."""
import os
import re
import signal
import subprocess
import urllib.request

NOBODY = 65534

# $1: the namespace's own directory (a tmpfs goes on it), $2: the overlay's
# mountpoint relative to it (any bytes but NUL; made with mkdir -p).
NS_SCRIPT = r"""set -e
P=$1; M=$P/$2
mount -t tmpfs nsbench "$P"
mkdir "$P/l" "$P/u" "$P/w"
echo x > "$P/l/f"
mkdir -p "$M"
mount -t overlay overlay -o "lowerdir=$P/l,upperdir=$P/u,workdir=$P/w,userxattr" "$M"
echo ready
exec sleep 1000000
"""

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def hand_over(path):
    """Makes `path` a directory owned by nobody, its ancestors traversable."""
    os.makedirs(path, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    d = os.path.dirname(path)
    while d not in ("/", "/tmp", ""):
        os.chmod(d, os.stat(d).st_mode | 0o755)
        d = os.path.dirname(d)


class Namespace:
    """One user+mount namespace of nobody with one overlay at dir/rel."""

    def __init__(self, directory, rel="m0"):
        hand_over(directory)
        self.dir, self.mountpoint = directory, os.path.join(directory, rel)
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
             "unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
             "sh", "-c", NS_SCRIPT, "sh", directory, rel],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.mntns = None

    def wait_ready(self):
        """Waits for the script's `ready`; returns the namespace's inode."""
        line = self.proc.stdout.readline()
        self.proc.stdout.close()
        if line.strip() != b"ready":
            self.end()
            raise RuntimeError(f"namespace script failed: {line!r} {self.proc.stderr.read()!r}")
        self.proc.stderr.close()
        link = os.readlink(f"/proc/{self.proc.pid}/ns/mnt")
        self.mntns = link.removeprefix("mnt:[").removesuffix("]")
        return self.mntns

    def run(self, script):
        """Runs `script` (sh) as the namespace's root, inside it."""
        subprocess.run(["nsenter", "-t", str(self.proc.pid), "-U", "-m", "sh", "-c", script],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)

    def mount_extra(self, name):
        """One more overlay at dir/name (on the namespace's tmpfs); its path."""
        p, d = self.dir, os.path.join(self.dir, name)
        self.run(f"set -e; mkdir {d} {d}.u {d}.w; mount -t overlay overlay -o "
                 f"lowerdir={p}/l,upperdir={d}.u,workdir={d}.w,userxattr {d}")
        return d

    def umount(self, path):
        self.run(f"umount {path}")

    def end(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def start_all(directories, batch=50, rel=lambda d: "m0"):
    """Starts namespaces in batches (each batch's scripts run at once)."""
    out = []
    try:
        for i in range(0, len(directories), batch):
            group = [Namespace(d, rel(d)) for d in directories[i:i + batch]]
            out.extend(group)
            for ns in group:
                ns.wait_ready()
    except BaseException:
        end_all(out)
        raise
    return out


def end_all(namespaces):
    for ns in namespaces:
        try:
            ns.end()
        except Exception:  # noqa: BLE001 (cleanup goes on)
            pass


def unescape(value):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def scrape(addr, timeout=30):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=timeout) as r:
        return r.read().decode()


def series(body):
    """Every sample line of an exposition (comments left out)."""
    return [line for line in body.splitlines() if line and not line.startswith("#")]


def mounts(body):
    """{(mntns, mountpoint)} of the overlayfs_mount_info series."""
    out = set()
    for line in body.splitlines():
        if line.startswith("overlayfs_mount_info{"):
            labels = {k: unescape(v) for k, v in LABEL.findall(line[:line.rindex("}")])}
            out.add((labels.get("mntns", ""), labels.get("mountpoint")))
    return out


def mntns_of_series(body):
    """{mntns label value: number of series carrying it}."""
    out = {}
    for line in series(body):
        m = re.search(r'[{,]mntns="(\d+)"', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def metric(body, name):
    for line in series(body):
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
