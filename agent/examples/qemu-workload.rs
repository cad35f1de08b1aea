//! The copy-up workload run inside the QEMU guests (tests/qemu.rs).
//!
//! `qemu-workload prepare LOWER_A LOWER_B LOWER_C`: fills the lower layers.
//! `qemu-workload run MERGED_A MERGED_B MERGED_C`: one operation per file, each
//! with a known copy-up outcome (cause, kind, bytes), listed in EXPECTED below and
//! asserted by the host from the agent's /metrics. Uses the exact syscalls:
//! busybox `truncate` is open+ftruncate (cause open), not truncate(2).
//! `qemu-workload uring MERGED_D`: copy-ups issued through io_uring.
//! `qemu-workload churn DIR N`: overlay work that copies nothing up.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

fn file(dir: &Path, name: &str, len: usize) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    File::create(&p).and_then(|mut f| f.write_all(&vec![b'o'; len])).expect("write lower file");
}

fn prepare(a: &Path, b: &Path, c: &Path) {
    for (name, len) in [
        ("chown.dat", 10_000),
        ("chmod.dat", 20_000),
        ("trunc.dat", 30_000),
        ("append.dat", 40_000),
        ("otrunc.dat", 50_000),
        ("utimes.dat", 6_000),
        ("xattr.dat", 7_000),
        ("link.dat", 8_000),
        ("rename.dat", 9_000),
        ("shared.dat", 11_000),
        ("d1/d2/keep", 1),
        ("r1/r2/gone", 1),
    ] {
        file(a, name, len);
    }
    file(b, "other.dat", 12_000);
    file(b, "restart.dat", 14_000);
    file(b, "caps.dat", 15_000);
    file(c, "meta.dat", 13_000);
}

/// A minimal io_uring (raw system calls: one submission at a time), enough to
/// issue openat and renameat the way an io_uring program does.
mod uring {
    use std::sync::atomic::{AtomicU32, Ordering};

    const SETUP: libc::c_long = 425;
    const ENTER: libc::c_long = 426;
    pub const OP_OPENAT: u8 = 18;
    pub const OP_RENAMEAT: u8 = 35;

    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        // io_sqring_offsets
        sq_head: u32,
        sq_tail: u32,
        sq_ring_mask: u32,
        sq_ring_entries: u32,
        sq_flags: u32,
        sq_dropped: u32,
        sq_array: u32,
        sq_resv1: u32,
        sq_user_addr: u64,
        // io_cqring_offsets
        cq_head: u32,
        cq_tail: u32,
        cq_ring_mask: u32,
        cq_ring_entries: u32,
        cq_overflow: u32,
        cq_cqes: u32,
        cq_flags: u32,
        cq_resv1: u32,
        cq_user_addr: u64,
    }

    /// struct io_uring_sqe (64 bytes), the fields openat and renameat use.
    #[repr(C)]
    #[derive(Default)]
    pub struct Sqe {
        pub opcode: u8,
        pub flags: u8,
        pub ioprio: u16,
        pub fd: i32,
        pub off_or_addr2: u64,
        pub addr: u64,
        pub len: u32,
        pub op_flags: u32,
        pub user_data: u64,
        pub pad: [u64; 3],
    }

    fn map(fd: i32, len: usize, off: i64) -> std::io::Result<*mut u8> {
        // SAFETY: a shared mapping of the ring fd at a documented offset.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(p as *mut u8)
        }
    }

    /// Submits one SQE on a fresh ring, waits for it, returns its result.
    pub fn run_one(sqe: Sqe) -> std::io::Result<i32> {
        let mut p = Params::default();
        // SAFETY: io_uring_setup with a valid params struct.
        let fd = unsafe { libc::syscall(SETUP, 1u32, &mut p as *mut Params) } as i32;
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sq_len = p.sq_array as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_cqes as usize + p.cq_entries as usize * 16;
        let sq = map(fd, sq_len, 0)?;
        let cq = map(fd, cq_len, 0x800_0000)?;
        let sqes = map(fd, p.sq_entries as usize * 64, 0x1000_0000)?;
        // SAFETY: offsets within the mappings the kernel described.
        unsafe {
            std::ptr::write(sqes as *mut Sqe, sqe);
            let tail = &*(sq.add(p.sq_tail as usize) as *const AtomicU32);
            let mask = *(sq.add(p.sq_ring_mask as usize) as *const u32);
            let t = tail.load(Ordering::Acquire);
            *(sq.add(p.sq_array as usize + ((t & mask) as usize) * 4) as *mut u32) = 0;
            tail.store(t + 1, Ordering::Release);
            let rc = libc::syscall(ENTER, fd, 1u32, 1u32, 1u32, std::ptr::null::<u8>(), 0usize);
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let head = &*(cq.add(p.cq_head as usize) as *const AtomicU32);
            let cmask = *(cq.add(p.cq_ring_mask as usize) as *const u32);
            let h = head.load(Ordering::Acquire);
            let cqe = cq.add(p.cq_cqes as usize + ((h & cmask) as usize) * 16);
            let res = *(cqe.add(8) as *const i32);
            head.store(h + 1, Ordering::Release);
            libc::close(fd);
            Ok(res)
        }
    }
}

/// `uring MERGED`: an io_uring openat for write of a lower file (16,000 bytes:
/// cause open, from the copy-up's flags) and an io_uring renameat of another
/// (17,000 bytes, 5.11+: cause other, no system call says rename).
fn uring_ops(m: &Path) {
    let path = cpath(&m.join("uring.dat"));
    let sqe = uring::Sqe {
        opcode: uring::OP_OPENAT,
        fd: libc::AT_FDCWD,
        addr: path.as_ptr() as u64,
        op_flags: libc::O_WRONLY as u32,
        ..Default::default()
    };
    match uring::run_one(sqe) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: the fd io_uring opened for us.
            unsafe { libc::close(fd) };
            println!("workload: io_uring openat: ok");
        }
        other => {
            println!("workload: io_uring openat: FAILED: {other:?}");
            std::process::exit(1);
        }
    }
    let (from, to) = (cpath(&m.join("uring-mv.dat")), cpath(&m.join("uring-moved.dat")));
    let sqe = uring::Sqe {
        opcode: uring::OP_RENAMEAT,
        fd: libc::AT_FDCWD,
        addr: from.as_ptr() as u64,
        len: libc::AT_FDCWD as u32,
        off_or_addr2: to.as_ptr() as u64,
        ..Default::default()
    };
    match uring::run_one(sqe) {
        Ok(0) => println!("workload: io_uring renameat: ok"),
        Ok(e) if e == -libc::EINVAL => println!("workload: io_uring renameat: unsupported"),
        other => {
            println!("workload: io_uring renameat: FAILED: {other:?}");
            std::process::exit(1);
        }
    }
}

/// `parallel-prepare LOWER N`: N lower files of 2 MiB.
fn parallel_prepare(lower: &Path, n: usize) {
    for i in 0..n {
        file(lower, &format!("p{i}.dat"), 2 << 20);
    }
}

/// `parallel MERGED N`: N processes, released at once, each appending to its
/// own lower file: N concurrent data copy-ups of 2 MiB.
fn parallel(m: &Path, n: usize) {
    use std::process::{Command, Stdio};
    let me = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(&me)
                .arg("append-one")
                .arg(m.join(format!("p{i}.dat")))
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    // Release them all: each waits for its stdin to close.
    for c in &mut children {
        drop(c.stdin.take());
    }
    let failed = children.iter_mut().map(|c| c.wait().is_ok_and(|s| s.success())).filter(|ok| !ok).count();
    if failed > 0 {
        println!("workload: parallel: FAILED: {failed} of {n} processes");
        std::process::exit(1);
    }
    println!("workload: parallel {n}: ok");
}

/// `append-one FILE`: waits for stdin to close, then appends one byte.
fn append_one(f: &Path) {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut buf);
    OpenOptions::new().append(true).open(f).and_then(|mut f| f.write_all(b"+")).expect("append");
}

/// `churn DIR N`: N rounds of 8 operations (create, write, chown, chmod,
/// rename, link, unlink, unlink) on files that exist only in the upper layer (DIR is a directory
/// created on the merged mount): overlay work that copies nothing up.
fn churn(dir: &Path, n: usize) {
    fs::create_dir_all(dir).expect("mkdir churn dir");
    let start = std::time::Instant::now();
    for i in 0..n {
        let (a, b, c) = (dir.join(format!("f{i}")), dir.join(format!("g{i}")), dir.join(format!("h{i}")));
        File::create(&a).and_then(|mut f| f.write_all(b"x")).expect("create");
        chown(&a, Some(7), Some(7)).expect("chown");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::rename(&a, &b).expect("rename");
        fs::hard_link(&b, &c).expect("link");
        fs::remove_file(&b).expect("unlink");
        fs::remove_file(&c).expect("unlink");
    }
    println!("churn {} ops {:.6} s", n * 8, start.elapsed().as_secs_f64());
}

fn step(what: &str, r: std::io::Result<()>) {
    match r {
        Ok(()) => println!("workload: {what}: ok"),
        Err(e) => {
            println!("workload: {what}: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// A libc return code as a Result.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

fn run(a: &Path, b: &Path, c: &Path) {
    step("chown", chown(a.join("chown.dat"), Some(1), Some(1)));
    step("chmod", fs::set_permissions(a.join("chmod.dat"), fs::Permissions::from_mode(0o600)));
    // SAFETY: a valid NUL-terminated path.
    step("truncate(2)", check(unsafe { libc::truncate(cpath(&a.join("trunc.dat")).as_ptr(), 5) }));
    step(
        "append",
        OpenOptions::new().append(true).open(a.join("append.dat")).and_then(|mut f| f.write_all(b"+")),
    );
    step("open O_TRUNC", OpenOptions::new().write(true).truncate(true).open(a.join("otrunc.dat")).map(drop));
    step("utimes", {
        let times = [libc::timespec { tv_sec: 1, tv_nsec: 0 }, libc::timespec { tv_sec: 2, tv_nsec: 0 }];
        // SAFETY: valid path and a two-element timespec array.
        check(unsafe {
            libc::utimensat(libc::AT_FDCWD, cpath(&a.join("utimes.dat")).as_ptr(), times.as_ptr(), 0)
        })
    });
    step(
        "setxattr",
        rustix::fs::setxattr(a.join("xattr.dat"), "trusted.test", b"1", rustix::fs::XattrFlags::empty())
            .map_err(std::io::Error::from),
    );
    step("link", fs::hard_link(a.join("link.dat"), a.join("link2.dat")));
    step("rename", fs::rename(a.join("rename.dat"), a.join("renamed.dat")));
    step("create in d1/d2", File::create(a.join("d1/d2/new")).map(drop));
    step("unlink in r1/r2", fs::remove_file(a.join("r1/r2/gone")));
    step("8 concurrent writers", {
        let barrier = Arc::new(Barrier::new(8));
        let shared = a.join("shared.dat");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    OpenOptions::new().append(true).open(&shared).and_then(|mut f| f.write_all(b"w"))
                })
            })
            .collect();
        threads.into_iter().try_for_each(|t| t.join().unwrap_or_else(|_| Err(std::io::Error::other("panic"))))
    });
    // On a thread with its own comm: a second actor for overlayfs_copy_up_process_total.
    step("chown on mount B by thread actor-b", {
        let other = b.join("other.dat");
        std::thread::Builder::new()
            .name("actor-b".into())
            .spawn(move || chown(other, Some(2), Some(2)))
            .and_then(|t| t.join().unwrap_or_else(|_| Err(std::io::Error::other("panic"))))
    });
    step("chown on metacopy mount C", chown(c.join("meta.dat"), Some(3), Some(3)));
    step(
        "append on mount C (deferred data)",
        OpenOptions::new().append(true).open(c.join("meta.dat")).and_then(|mut f| f.write_all(b"+")),
    );
}

/// `storm DIR UID [PASSES]`: lchown every entry below DIR (a `chown -R`), PASSES
/// times (default 1), print the entries and the time.
fn storm(dir: &Path, uid: u32, passes: u32) {
    let start = std::time::Instant::now();
    let mut n = 0u64;
    let mut stack: Vec<_> = (0..passes).map(|_| dir.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).expect("lchown");
            n += 1;
            if e.file_type().expect("file type").is_dir() {
                stack.push(p);
            }
        }
    }
    println!("storm {n} entries {:.6} s", start.elapsed().as_secs_f64());
}

/// `tree DIR N [SIZE]`: N files of SIZE bytes (default 100) in directories of 100.
fn tree(dir: &Path, n: usize, size: usize) {
    for i in 0..n {
        file(dir, &format!("d{}/f{i}", i / 100), size);
    }
}

/// `links DIR N SIZE`: one file of SIZE bytes (`DIR/.data`) and N hard links to it
/// laid out as `tree` lays out its files. With index=off, overlayfs copies up each
/// name on its own: N copy-ups of SIZE bytes, for the lower layer's memory of one.
fn links(dir: &Path, n: usize, size: usize) {
    file(dir, ".data", size);
    let data = dir.join(".data");
    for i in 0..n {
        let d = dir.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        let f = d.join(format!("f{i}"));
        std::fs::hard_link(&data, &f).unwrap_or_else(|e| panic!("link {}: {e}", f.display()));
    }
}

/// `steady SECS RATE MERGED...`: RATE chowns per second on each mount for SECS
/// seconds (background copy-up traffic), on the files `tree` made.
fn steady(secs: u64, rate: u64, mounts: &[&Path]) {
    let start = std::time::Instant::now();
    let ticks = secs * rate;
    for t in 0..ticks {
        for m in mounts {
            let f = m.join(format!("d{}/f{t}", t / 100));
            chown(&f, Some(7), Some(7)).unwrap_or_else(|e| panic!("chown {}: {e}", f.display()));
        }
        let next = std::time::Duration::from_micros((t + 1) * 1_000_000 / rate);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    println!("steady {} copy-ups {:.3} s", ticks * mounts.len() as u64, start.elapsed().as_secs_f64());
}

/// `record HOST:PORT INTERVAL_MS PHASE_FILE`: scrapes /metrics every interval
/// until PHASE_FILE says `stop`, printing each scrape's copy-up samples and
/// overlayfs_ebpf_enabled after a `=== SCRAPE <ms since start> <phase>` header (the input of
/// scripts/scrapes-to-promtool). A tick missed by a slow scrape is skipped.
fn record(addr: &str, interval_ms: u64, phase_file: &Path) {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let phase = fs::read_to_string(phase_file).unwrap_or_default().trim().to_owned();
        if phase == "stop" {
            break;
        }
        let at = start.elapsed().as_millis();
        let mut body = String::new();
        let got = std::net::TcpStream::connect(addr).and_then(|mut s| {
            write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            s.read_to_string(&mut body)
        });
        if got.is_ok() {
            writeln!(out, "=== SCRAPE {at} {phase}").expect("stdout");
            for l in body
                .lines()
                .filter(|l| l.starts_with("overlayfs_copy_up") || l.starts_with("overlayfs_ebpf_enabled"))
            {
                writeln!(out, "{l}").expect("stdout");
            }
        }
        let next_tick = start.elapsed().as_millis() as u64 / interval_ms + 1;
        let next = std::time::Duration::from_millis(next_tick * interval_ms);
        std::thread::sleep(next.saturating_sub(start.elapsed()));
    }
    out.flush().expect("stdout");
}

/// `causes-prepare LOWER`: one lower file or directory per copy-up cause.
fn causes_prepare(lower: &Path) {
    for name in [
        "chown", "chmod", "trunc", "append", "otrunc", "utimes", "xattr", "link", "rename", "d/new", "r/gone",
    ] {
        file(lower, name, 100);
    }
}

/// `causes-run MERGED`: one copy-up per cause on a mount prepared as above.
fn causes_run(m: &Path) {
    let times = [libc::timespec { tv_sec: 1, tv_nsec: 0 }, libc::timespec { tv_sec: 2, tv_nsec: 0 }];
    let results = [
        chown(m.join("chown"), Some(1), Some(1)),
        fs::set_permissions(m.join("chmod"), fs::Permissions::from_mode(0o600)),
        // SAFETY: valid NUL-terminated paths and a two-element timespec array.
        check(unsafe { libc::truncate(cpath(&m.join("trunc")).as_ptr(), 1) }),
        OpenOptions::new().append(true).open(m.join("append")).map(drop),
        OpenOptions::new().write(true).truncate(true).open(m.join("otrunc")).map(drop),
        check(unsafe {
            libc::utimensat(libc::AT_FDCWD, cpath(&m.join("utimes")).as_ptr(), times.as_ptr(), 0)
        }),
        rustix::fs::setxattr(m.join("xattr"), "trusted.test", b"1", rustix::fs::XattrFlags::empty())
            .map_err(std::io::Error::from),
        fs::hard_link(m.join("link"), m.join("link2")),
        fs::rename(m.join("rename"), m.join("renamed")),
        File::create(m.join("d/new2")).map(drop),
        fs::remove_file(m.join("r/gone")),
    ];
    for r in results {
        r.expect("copy-up operation");
    }
}

/// `scrape HOST:PORT N [proto]`: N GETs of /metrics (in the text format, or
/// with `proto` asking for delimited protobuf as Prometheus does); prints p50 and
/// p99 latency and the size (headers included).
fn scrape(addr: &str, n: usize, proto: bool) {
    use std::io::Read;
    let mut lat = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let accept = if proto {
            "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited\r\n"
        } else {
            ""
        };
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").expect("request");
        let mut body = Vec::new();
        s.read_to_end(&mut body).expect("response");
        lat.push(t.elapsed().as_secs_f64());
        size = body.len();
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] * 1e3;
    println!("scrape {n} p50 {:.2} ms p99 {:.2} ms bytes {size}", p(0.5), p(0.99));
}

/// `metric HOST:PORT SERIES`: prints the value of one series (its name and labels
/// exactly as the exposition writes them, e.g.
/// `overlayfs_copy_up_seconds_total{mountpoint="/t/s/merged",cause="chown"}`), 0
/// when the agent does not export it.
fn metric(addr: &str, series: &str) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    let value =
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' '))).unwrap_or("0");
    println!("{value}");
}

/// `caps-exec CAP,CAP,... -- CMD ARGS`: runs CMD (as root) with only the named
/// capabilities, like `setpriv --bounding-set`: every other one is dropped from the
/// bounding set, so the exec'd root process gets just these.
fn caps_exec(args: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    let names: [(&str, u32); 5] =
        [("dac_read_search", 2), ("sys_admin", 21), ("sys_resource", 24), ("perfmon", 38), ("bpf", 39)];
    let keep: Vec<u32> = args[0]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|n| names.iter().find(|(k, _)| *k == n).unwrap_or_else(|| panic!("unknown capability {n}")).1)
        .collect();
    for cap in 0..64u32 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability.
        if !keep.contains(&cap)
            && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
        {
            break;
        }
    }
    let cmd = &args[2..];
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    panic!("exec {}: {err}", cmd[0]);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("caps-exec") => caps_exec(&args[2..]),
        Some("uring") => return uring_ops(Path::new(&args[2])),
        Some("uring-prepare") => {
            file(Path::new(&args[2]), "uring.dat", 16_000);
            return file(Path::new(&args[2]), "uring-mv.dat", 17_000);
        }
        Some("parallel-prepare") => {
            return parallel_prepare(Path::new(&args[2]), args[3].parse().expect("count"))
        }
        Some("parallel") => return parallel(Path::new(&args[2]), args[3].parse().expect("count")),
        Some("append-one") => return append_one(Path::new(&args[2])),
        Some("churn") => return churn(Path::new(&args[2]), args[3].parse().expect("count")),
        Some("causes-prepare") => return causes_prepare(Path::new(&args[2])),
        Some("causes-run") => return causes_run(Path::new(&args[2])),
        Some("scrape") => {
            return scrape(
                &args[2],
                args[3].parse().expect("count"),
                args.get(4).is_some_and(|a| a == "proto"),
            )
        }
        Some("metric") => return metric(&args[2], &args[3]),
        Some("storm") => {
            let passes = args.get(4).map(|p| p.parse().expect("passes")).unwrap_or(1);
            return storm(Path::new(&args[2]), args[3].parse().expect("uid"), passes);
        }
        Some("tree") => {
            let size = args.get(4).map(|s| s.parse().expect("size")).unwrap_or(100);
            return tree(Path::new(&args[2]), args[3].parse().expect("count"), size);
        }
        Some("links") => {
            return links(
                Path::new(&args[2]),
                args[3].parse().expect("count"),
                args[4].parse().expect("size"),
            );
        }
        Some("steady") => {
            let mounts: Vec<&Path> = args[4..].iter().map(Path::new).collect();
            return steady(args[2].parse().expect("seconds"), args[3].parse().expect("rate"), &mounts);
        }
        Some("record") => {
            return record(&args[2], args[3].parse().expect("interval ms"), Path::new(&args[4]));
        }
        _ => {}
    }
    let dirs: Vec<&Path> = args.iter().skip(2).map(Path::new).collect();
    match (args.get(1).map(String::as_str), dirs.as_slice()) {
        (Some("prepare"), [a, b, c]) => prepare(a, b, c),
        (Some("run"), [a, b, c]) => run(a, b, c),
        _ => {
            eprintln!("usage: qemu-workload prepare|run A B C");
            std::process::exit(2);
        }
    }
}
