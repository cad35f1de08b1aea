//! Upper dirs built to hurt, hostile mountpoints, and a hung filesystem, against
//! the real binary on real mounts. docs/reliability.md lists every case.

mod common;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    config_for, grep, promtool_check, require_root, scrape_until, wait_for, Agent, Metrics, Overlay,
};
use rustix::fs::{FileType, Mode, OFlags};

/// A mountpoint as the agent labels it (invalid UTF-8 as `\xNN`); Metrics::get
/// escapes it as the exposition does. The exposition's literal text is checked
/// separately below.
fn mp_label(p: &Path) -> String {
    overlay_agent::discovery::path_label(p)
}

/// `depth` nested directories named `d`, created through directory fds (the
/// path is far longer than PATH_MAX).
fn nest(top: &Path, depth: usize) {
    let mut fd: OwnedFd =
        rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open top");
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).expect("mkdir");
        fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open d");
    }
}

/// `n` empty files in one directory.
fn many(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open");
    for i in 0..n {
        rustix::fs::mknodat(&fd, format!("{i}"), FileType::RegularFile, Mode::from_raw_mode(0o644), 0)
            .expect("mknod");
    }
}

/// Every kind of entry a container can leave, with names that break naive code.
fn zoo(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for name in [&b"new\nline"[..], b"quo\"te", b"back\\slash", b"bad\xff\xfeutf8", b"tab\there", b" "] {
        std::fs::write(dir.join(OsStr::from_bytes(name)), b"x").expect("odd name");
    }
    std::os::unix::fs::symlink("loop-b", dir.join("loop-a")).expect("symlink");
    std::os::unix::fs::symlink("loop-a", dir.join("loop-b")).expect("symlink");
    std::os::unix::fs::symlink("/", dir.join("to-root")).expect("symlink");
    std::os::unix::fs::symlink("..", dir.join("up")).expect("symlink");
    rustix::fs::mknodat(rustix::fs::CWD, dir.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o644), 0)
        .expect("mkfifo");
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("sock")).expect("socket");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o644),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod char");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("loop0"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o644),
        rustix::fs::makedev(7, 0),
    )
    .expect("mknod block");
    // A directory nobody may read (the agent as root reads it anyway).
    std::fs::create_dir(dir.join("locked")).expect("mkdir");
    std::fs::write(dir.join("locked/inside"), b"x").expect("write");
    std::fs::set_permissions(dir.join("locked"), std::os::unix::fs::PermissionsExt::from_mode(0o000))
        .expect("chmod");
}

fn sample(m: &Metrics, name: &str, mp: &str) -> Option<f64> {
    m.get(name, &[("mountpoint", mp)])
}

/// A 1,000,000-entry directory, a 10,000-deep chain, every odd entry type and
/// name, a tree churning under the scan, a mountpoint whose path has a newline,
/// a quote, a backslash and invalid UTF-8, and a mount removed mid-scan: scans
/// finish with errors counted by reason, memory stays bounded, and /metrics
/// stays valid.
#[test]
fn upper_dirs_built_to_hurt() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    // tmpfs: a million inodes are cheap there and gone with the mount.
    common::run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=4g,nr_inodes=0", "tmpfs"]).arg(base));
    let _unmount = common::Bind(base.to_owned());

    let big = Overlay::new(&base.join("big"), "merged", "", |_| {});
    many(&big.upper.join("flat"), 1_000_000);
    let deep = Overlay::new(&base.join("deep"), "merged", "", |_| {});
    nest(&deep.upper, 10_000);
    // Layers at plain paths (they travel in the mount options); the mountpoint
    // itself holds a newline, quotes, a backslash and invalid UTF-8.
    let odd = Overlay::new(&base.join("odd"), "merged", "", |l| {
        std::fs::write(l.join("lower-file"), b"12345").expect("write");
    });
    zoo(&odd.upper.join("zoo"));
    let odd_mp_path = base.join(OsStr::from_bytes(b"odd\nmount \"q\" \\b \xff"));
    std::fs::create_dir_all(&odd_mp_path).expect("mkdir odd mountpoint");
    let _odd_bind = common::Bind::new(&odd.merged, &odd_mp_path);
    let mut odd = odd;
    odd.unmount(); // the superblock now lives only at the odd path
    let churn = Overlay::new(&base.join("churn"), "merged", "", |l| {
        for i in 0..200 {
            std::fs::write(l.join(format!("f{i}")), b"data").expect("write");
        }
    });
    let doomed = Overlay::new(&base.join("doomed"), "merged", "", |_| {});
    many(&doomed.upper.join("flat"), 300_000);

    // Something keeps renaming, deleting and copying up in `churn` meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = churn_in(churn.merged.clone(), stop.clone());

    let cfg = config_for(base, "");
    let agent = Agent::start(base, &["--config", cfg.to_str().expect("utf8")]);
    // The mount goes away while its 300,000-entry upper dir is probably being walked.
    let mut doomed = doomed;
    doomed.unmount();
    let (big_mp, deep_mp, odd_mp, churn_mp, doomed_mp) = (
        mp_label(&big.merged),
        mp_label(&deep.merged),
        mp_label(&odd_mp_path),
        mp_label(&churn.merged),
        mp_label(&doomed.merged),
    );
    let started = Instant::now();
    let m = wait_for("every upper dir scanned", Duration::from_secs(120), || {
        let m = agent.metrics();
        [&big_mp, &deep_mp, &odd_mp, &churn_mp]
            .iter()
            .all(|mp| sample(&m, "overlayfs_upper_scans_total", mp).is_some_and(|n| n >= 2.0))
            .then_some(m)
    });
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churner.join().expect("churner");

    promtool_check(&m.text);
    let entries =
        |mp: &str, kind: &str| m.get("overlayfs_upper_entries", &[("mountpoint", mp), ("kind", kind)]);
    assert_eq!(entries(&big_mp, "created"), Some(1_000_000.0), "every file of the flat directory");
    assert_eq!(sample(&m, "overlayfs_upper_inodes", &big_mp), Some(1_000_002.0));
    // 10,000 levels: the walk goes as deep as one path lookup allows (PATH_MAX)
    // and counts the rest as name_too_long, instead of failing or recursing.
    let deep_dirs = entries(&deep_mp, "dir").unwrap_or(0.0);
    let too_long =
        m.get("overlayfs_upper_scan_errors_total", &[("mountpoint", &deep_mp), ("reason", "name_too_long")]);
    assert!((2000.0..10_000.0).contains(&deep_dirs), "deep dirs seen: {deep_dirs}");
    assert!(too_long.is_some_and(|n| n >= 1.0), "name_too_long not reported: {too_long:?}");
    // The zoo: 6 odd names + inside/locked file, 4 symlinks, fifo, socket, 2 devices
    // are all plain entries; the copied-up file is one.
    assert_eq!(entries(&odd_mp, "created"), Some(15.0), "{}", grep(&m.text, &odd_mp));
    assert_eq!(entries(&odd_mp, "dir"), Some(2.0), "zoo and locked");
    // The label: escaped as the exposition format wants, invalid UTF-8 as \xNN.
    assert!(m.text.contains("odd\\nmount \\\"q\\\" \\\\b \\\\xff\""), "{}", grep(&m.text, "odd"));
    // Churn: entries changing under the walk are counted as vanished at worst.
    for (k, v) in &m.samples {
        if k.starts_with("overlayfs_upper_scan_errors_total") && k.contains(&churn_mp) {
            assert!(k.contains("reason=\"vanished\""), "unexpected churn error {k} {v}");
        }
    }
    assert!(
        !m.text.contains(&doomed_mp),
        "the unmounted overlay left its series:\n{}",
        grep(&m.text, &doomed_mp)
    );
    let rss = m.get("process_resident_memory_bytes", &[]).expect("rss") / (1 << 20) as f64;
    println!("hostile scans: 2 rounds in {:.1}s, agent RSS {rss:.1} MiB", elapsed.as_secs_f64());
    assert!(rss < 64.0, "RSS {rss:.1} MiB after scanning a million-entry directory");
    assert_eq!(common::http_get(&agent.addr, "/healthz").expect("healthz").status, 200);
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// A thread that renames, deletes and copies up in `merged` until `stop`.
fn churn_in(
    merged: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let d = merged.join(format!("dir{}", i % 7));
            let _ = std::fs::create_dir_all(d.join("sub"));
            let _ = std::fs::write(d.join("sub/file"), b"x");
            let _ = std::fs::rename(&d, merged.join(format!("moved{}", i % 5)));
            let _ = std::fs::remove_dir_all(merged.join(format!("moved{}", (i + 2) % 5)));
            let _ = std::os::unix::fs::chown(merged.join(format!("f{}", i % 200)), Some(1), Some(1));
            let _ = std::fs::remove_file(merged.join(format!("f{}", (i + 100) % 200)));
            i += 1;
        }
    })
}

/// A FUSE filesystem (bindfs) mounted over one upper dir's path, its daemon then
/// stopped: every call into it hangs. The scan of that upper dir times out and is
/// marked stale; the other mount keeps being measured by a replacement worker,
/// discovery still follows new mounts, scrapes answer at once; when the daemon
/// resumes, the stuck scan completes and the mount is fresh again.
#[test]
fn a_hung_filesystem_marks_one_mount_stale_and_blocks_nothing() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let ok = Overlay::new(&base.join("ok"), "merged", "", |l| common::write_file(&l.join("f"), 10));
    let hung = Overlay::new(&base.join("hung"), "merged", "", |l| common::write_file(&l.join("f"), 10));
    std::os::unix::fs::chown(hung.merged.join("f"), Some(3), Some(3)).expect("copy up");
    // bindfs over the upper dir's path: the agent's lookups go through FUSE.
    let src = base.join("fuse-src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let mut bindfs = bindfs_over(&src, &hung.upper);
    let cfg = config_for(base, "  timeout: 1s\n  concurrency: 1\n");
    let agent = Agent::start(base, &["--config", cfg.to_str().expect("utf8")]);
    let (ok_mp, hung_mp) = (mp_label(&ok.merged), mp_label(&hung.merged));
    scrape_until(&agent, "both scanned once", |m| {
        sample(m, "overlayfs_upper_scans_total", &hung_mp).is_some()
            && sample(m, "overlayfs_upper_scans_total", &ok_mp).is_some()
    });

    // Stop the FUSE daemon: the next scan of `hung` blocks in the kernel.
    let pid = rustix::process::Pid::from_raw(bindfs.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP bindfs");
    let resume = Resume(pid);
    let m = wait_for("the hung scan to be declared", Duration::from_secs(30), || {
        let m = agent.metrics();
        (sample(&m, "overlayfs_upper_scan_stale", &hung_mp) == Some(1.0)).then_some(m)
    });
    let timeouts =
        m.get("overlayfs_upper_scan_errors_total", &[("mountpoint", &hung_mp), ("reason", "timeout")]);
    assert_eq!(timeouts, Some(1.0), "{}", grep(&m.text, &hung_mp));
    assert!(agent.log().contains("stuck in a filesystem call"), "{}", agent.log());
    // The only worker is stuck: a replacement keeps scanning `ok`.
    let before = sample(&m, "overlayfs_upper_scans_total", &ok_mp).unwrap_or(0.0);
    scrape_until(&agent, "`ok` scanned again while `hung` is stuck", |m| {
        sample(m, "overlayfs_upper_scans_total", &ok_mp).is_some_and(|n| n >= before + 2.0)
    });
    // Discovery and scrapes go on: a new mount shows up, every scrape is quick.
    let late = Overlay::new(&base.join("late"), "merged", "", |_| {});
    let late_mp = mp_label(&late.merged);
    for _ in 0..20 {
        let t = Instant::now();
        let m = agent.metrics();
        assert!(t.elapsed() < Duration::from_secs(2), "a scrape took {:?}", t.elapsed());
        if sample(&m, "overlayfs_upper_scans_total", &late_mp).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    scrape_until(&agent, "the new mount measured", |m| {
        sample(m, "overlayfs_upper_scans_total", &late_mp).is_some()
    });
    assert_eq!(
        sample(&agent.metrics(), "overlayfs_upper_scan_stale", &hung_mp),
        Some(1.0),
        "still stale while the daemon is stopped"
    );

    // The daemon resumes: the stuck call returns, later scans are fresh again.
    drop(resume);
    scrape_until(&agent, "`hung` fresh again", |m| {
        sample(m, "overlayfs_upper_scan_stale", &hung_mp) == Some(0.0)
    });
    drop(agent);
    let _ = Command::new("umount").arg(&hung.upper).status();
    let _ = bindfs.kill();
    let _ = bindfs.wait();
}

/// bindfs of `src` over `upper`, in the foreground, once mounted. The upper dir
/// is not empty: libfuse 2 needs -o nonempty, libfuse 3 refuses it.
fn bindfs_over(src: &std::path::Path, upper: &std::path::Path) -> std::process::Child {
    let mounted = |bindfs: &mut std::process::Child| {
        wait_for("the FUSE mount", Duration::from_secs(10), || {
            if let Ok(Some(_)) = bindfs.try_wait() {
                return Some(false);
            }
            let mounts = common::mountinfo("/proc/self/mountinfo");
            mounts.contains(&format!(" {} ", upper.display())).then_some(true)
        })
    };
    let spawn = |extra: &[&str]| {
        Command::new("bindfs")
            .args(["-f", "--no-allow-other"])
            .args(extra)
            .arg(src)
            .arg(upper)
            .stderr(Stdio::null())
            .spawn()
            .expect("bindfs (the README's test command installs it)")
    };
    let mut bindfs = spawn(&["-o", "nonempty"]);
    if !mounted(&mut bindfs) {
        bindfs = spawn(&[]);
        assert!(mounted(&mut bindfs), "bindfs did not mount");
    }
    bindfs
}

/// Sends SIGCONT when dropped, so a failing test never leaves a stopped FUSE daemon.
struct Resume(rustix::process::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

/// Without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH an unreadable directory is
/// counted as permission_denied, and the rest of the tree is still measured.
#[test]
fn unreadable_dirs_are_counted_by_reason() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let ov = Overlay::new(&base.join("a"), "merged", "", |_| {});
    std::fs::create_dir(ov.upper.join("open")).expect("mkdir");
    std::fs::write(ov.upper.join("open/f"), b"x").expect("write");
    std::fs::create_dir(ov.upper.join("locked")).expect("mkdir");
    std::fs::write(ov.upper.join("locked/f"), b"x").expect("write");
    std::os::unix::fs::chown(ov.upper.join("locked"), Some(65534), Some(65534)).expect("chown");
    std::fs::set_permissions(ov.upper.join("locked"), std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let cfg = config_for(base, "");
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--inh-caps",
            "-dac_override,-dac_read_search",
        ])
        .arg(env!("CARGO_BIN_EXE_overlay-agent"))
        .args(["once", "--config", cfg.to_str().expect("utf8")])
        .output()
        .expect("setpriv (util-linux)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Metrics::parse(&String::from_utf8_lossy(&out.stdout));
    let mp = mp_label(&ov.merged);
    assert_eq!(
        m.get("overlayfs_upper_scan_errors_total", &[("mountpoint", &mp), ("reason", "permission_denied")]),
        Some(1.0)
    );
    assert_eq!(m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("kind", "created")]), Some(1.0));
    assert_eq!(m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("kind", "dir")]), Some(2.0));
}

/// Without CAP_SYS_ADMIN the kernel hides trusted.* xattrs: a copied-up file then
/// counts as created, and the agent says so at start. With it, as copied up.
#[test]
fn without_cap_sys_admin_copied_up_files_count_as_created_and_the_agent_warns() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let ov = Overlay::new(&base.join("a"), "merged", "", |l| common::write_file(&l.join("f"), 100));
    std::os::unix::fs::chown(ov.merged.join("f"), Some(7), Some(7)).expect("copy up");
    let cfg = config_for(base, "");
    let once = |drop_caps: bool| {
        let mut cmd = Command::new("setpriv");
        if drop_caps {
            cmd.args(["--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]);
        }
        let out = cmd
            .arg(env!("CARGO_BIN_EXE_overlay-agent"))
            .args(["once", "--config", cfg.to_str().expect("utf8")])
            .output()
            .expect("setpriv (util-linux)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            Metrics::parse(&String::from_utf8_lossy(&out.stdout)),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mp = mp_label(&ov.merged);
    let kind = |m: &Metrics, k: &str| m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("kind", k)]);
    let (with, log) = once(false);
    assert_eq!((kind(&with, "copied_up"), kind(&with, "created")), (Some(1.0), Some(0.0)), "{log}");
    let (without, log) = once(true);
    assert_eq!((kind(&without, "copied_up"), kind(&without, "created")), (Some(0.0), Some(1.0)));
    assert!(log.contains("no CAP_SYS_ADMIN"), "no warning: {log}");
}
