//! The layouts that overlay-agent and its eBPF programs agree on: map keys and
//! values, cause and kind codes, histogram buckets, and the run-time config the
//! agent writes before attaching (kernel struct offsets and argument positions
//! read from BTF, since Rust eBPF has no CO-RE relocations).
#![no_std]

/// The bytes of a NUL-padded kernel string (a comm, a file name) before its first
/// NUL: the whole buffer when it has none.
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

/// Why a copy-up happened: the overlayfs operation that triggered it.
pub mod cause {
    pub const OPEN: u8 = 0;
    pub const TRUNCATE: u8 = 1;
    pub const CHOWN: u8 = 2;
    pub const CHMOD: u8 = 3;
    pub const UTIMES: u8 = 4;
    pub const SETATTR: u8 = 5;
    pub const XATTR: u8 = 6;
    pub const LINK: u8 = 7;
    pub const RENAME: u8 = 8;
    pub const CREATE: u8 = 9;
    pub const REMOVE: u8 = 10;
    pub const OTHER: u8 = 11;
    pub const COUNT: usize = 12;
    pub const NAMES: [&str; COUNT] = [
        "open", "truncate", "chown", "chmod", "utimes", "setattr", "xattr", "link", "rename", "create",
        "remove", "other",
    ];

    /// The label value of cause code `c` (unknown codes are "other").
    pub fn name(c: u8) -> &'static str {
        match NAMES.get(c as usize) {
            Some(n) => n,
            None => "other",
        }
    }
}

/// What a copy-up copied.
pub mod kind {
    /// File data and metadata.
    pub const DATA: u8 = 0;
    /// Metadata only: metacopy, empty file, O_TRUNC open, symlink, special file.
    pub const METADATA: u8 = 1;
    pub const DIRECTORY: u8 = 2;
    /// The data of a file that an earlier copy-up copied metadata-only.
    pub const DEFERRED_DATA: u8 = 3;
    /// Neither data nor metadata was copied (a hard link's link-up, or a failure).
    pub const OTHER: u8 = 4;
    pub const COUNT: usize = 5;
    pub const NAMES: [&str; COUNT] = ["data", "metadata", "directory", "deferred_data", "other"];

    /// The label value of kind code `k` (unknown codes are "other").
    pub fn name(k: u8) -> &'static str {
        match NAMES.get(k as usize) {
            Some(n) => n,
            None => "other",
        }
    }
}

/// The cause of a copy-up from the system call the copying thread is in
/// (its saved user registers' `orig_ax`), for x86_64. The agent writes this
/// table into the programs' SYSCALL_CAUSE map (value: cause + 1, 0 = none).
/// Copy-ups outside a listed call (io_uring, kernel threads such as nfsd and
/// ksmbd, 32-bit callers) fall back on the copy-up's own open flags: `open`
/// when it has them, else `other`.
pub mod syscall {
    use super::cause::*;

    /// Entries of the SYSCALL_CAUSE map: x86_64 numbers are below 512 (x32
    /// calls are the same numbers with bit 30 set, masked off).
    pub const TABLE_SIZE: u32 = 512;
    /// `orig_ax` bit of the x32 ABI (__X32_SYSCALL_BIT).
    pub const X32_BIT: u64 = 0x4000_0000;
    /// `pt_regs.cs` of a 64-bit user task (__USER_CS); 32-bit tasks have 0x23.
    pub const USER_CS: u64 = 0x33;

    /// (name, x86_64 number from arch/x86/entry/syscalls/syscall_64.tbl, cause).
    /// OPEN means "the open family": `open` when the copy-up carries open flags
    /// (the file itself, opened for write), `create` when it does not (the
    /// parent of a file created with O_CREAT or O_TMPFILE).
    pub const X86_64: &[(&str, u32, u8)] = &[
        ("open", 2, OPEN),
        ("ioctl", 16, XATTR), // FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR: ovl_fileattr_set
        ("truncate", 76, TRUNCATE),
        ("ftruncate", 77, TRUNCATE),
        ("rename", 82, RENAME),
        ("mkdir", 83, CREATE),
        ("rmdir", 84, REMOVE),
        ("creat", 85, OPEN),
        ("link", 86, LINK),
        ("unlink", 87, REMOVE),
        ("symlink", 88, CREATE),
        ("chmod", 90, CHMOD),
        ("fchmod", 91, CHMOD),
        ("chown", 92, CHOWN),
        ("fchown", 93, CHOWN),
        ("lchown", 94, CHOWN),
        ("utime", 132, UTIMES),
        ("mknod", 133, CREATE),
        ("setxattr", 188, XATTR),
        ("lsetxattr", 189, XATTR),
        ("fsetxattr", 190, XATTR),
        ("removexattr", 197, XATTR),
        ("lremovexattr", 198, XATTR),
        ("fremovexattr", 199, XATTR),
        ("utimes", 235, UTIMES),
        ("openat", 257, OPEN),
        ("mkdirat", 258, CREATE),
        ("mknodat", 259, CREATE),
        ("fchownat", 260, CHOWN),
        ("futimesat", 261, UTIMES),
        ("unlinkat", 263, REMOVE),
        ("renameat", 264, RENAME),
        ("linkat", 265, LINK),
        ("symlinkat", 266, CREATE),
        ("fchmodat", 268, CHMOD),
        ("utimensat", 280, UTIMES),
        ("open_by_handle_at", 304, OPEN),
        ("renameat2", 316, RENAME),
        ("openat2", 437, OPEN),
        ("fchmodat2", 452, CHMOD),
        ("setxattrat", 463, XATTR),
        ("removexattrat", 466, XATTR),
    ];

    /// The cause of a copy-up in system call `entry` (the SYSCALL_CAUSE value,
    /// cause + 1, 0 for a call not in the table), given the copy-up's flags.
    #[inline(always)]
    pub const fn cause_of(entry: u8, flags: u32) -> u8 {
        match entry {
            0 if flags != 0 => OPEN,
            0 => OTHER,
            e if e - 1 == OPEN && flags == 0 => CREATE,
            e => e - 1,
        }
    }
}

/// Histograms: Prometheus native (exponential) buckets at schema 3, bucketed in
/// the kernel. Bucket `i` holds values in (2^((i-1)/8), 2^(i/8)] of the kernel's
/// unit; [`ZERO_BUCKET`] holds 0. The kernel's units are powers of two of the
/// base units, so its boundaries are the native histogram's own: bytes stay
/// bytes, latencies are counted in 2^-30 s ([`ns_to_latency_units`]). The sums
/// live in CountValue (data_bytes, latency_ns), which is updated anyway.
pub const HIST_SCHEMA: i32 = 3;
/// Buckets per power of two (2^HIST_SCHEMA).
pub const HIST_PER_OCTAVE: u32 = 1 << HIST_SCHEMA;
pub const HIST_BYTES: u8 = 0;
/// Latency in units of 2^-30 s (about 0.93 ns).
pub const HIST_LATENCY: u8 = 1;
/// log2 of the latency unit in seconds.
pub const LATENCY_UNIT_LOG2: i32 = -30;
/// The bucket code of the value 0 (indices of non-zero u64 values are 0..=512).
pub const ZERO_BUCKET: u16 = u16::MAX;

/// The native bucket index, in the base unit (bytes, seconds), of kernel bucket
/// `bucket` of histogram `hist`; None for [`ZERO_BUCKET`].
pub const fn native_index(hist: u8, bucket: u16) -> Option<i32> {
    if bucket == ZERO_BUCKET {
        None
    } else if hist == HIST_LATENCY {
        Some(bucket as i32 + LATENCY_UNIT_LOG2 * HIST_PER_OCTAVE as i32)
    } else {
        Some(bucket as i32)
    }
}

/// The classic (text format) buckets of histogram `hist`: upper bounds 2^lo ..
/// 2^hi of the base unit, every other power of two (a bucket every factor of 4),
/// all of them native bucket boundaries: (lo, hi).
pub const fn exported_buckets(hist: u8) -> (i32, i32) {
    if hist == HIST_BYTES {
        (10, 34) // 1 KiB .. 16 GiB
    } else {
        (-20, 6) // 2^-20 s (~0.95 us) .. 64 s
    }
}

/// A latency in nanoseconds as units of 2^-30 s, rounded down: ns * 2^30 / 1e9
/// without 128-bit arithmetic (q = ns / 1e9 whole seconds, r the rest; r << 30
/// fits in 64 bits since r < 2^30). Wraps only past 2^34 s (544 years).
#[inline(always)]
pub const fn ns_to_latency_units(ns: u64) -> u64 {
    const NS_PER_S: u64 = 1_000_000_000;
    let (q, r) = (ns / NS_PER_S, ns % NS_PER_S);
    (q << 30).wrapping_add((r << 30) / NS_PER_S)
}

/// floor(2^(k/8) * 2^63) for k = 1..7: the boundaries inside one power of two,
/// for a mantissa normalised to 64 bits (irrational, so no value is equal).
const OCTAVE_BOUNDS: [u64; 7] = [
    0x8b95_c1e3_ea8b_d6e6,
    0x9837_f051_8db8_a96f,
    0xa5fe_d6a9_b151_38ea,
    0xb504_f333_f9de_6484,
    0xc567_2a11_5506_dadd,
    0xd744_fcca_d69d_6af4,
    0xeac0_c6e7_dd24_392e,
];

/// The kernel bucket of a value: ceil(8 * log2(v)) computed exactly, or
/// [`ZERO_BUCKET`] for 0. e = floor(log2 v) from the leading zeros; a power of
/// two ends bucket 8e; otherwise the mantissa (v shifted so its top bit is bit
/// 63, exact) is compared with the seven boundaries of its octave. Bounded and
/// unrolled: a handful of instructions for the verifier, no loop.
#[inline(always)]
pub const fn bucket(v: u64) -> u16 {
    if v == 0 {
        return ZERO_BUCKET;
    }
    let e = 63 - v.leading_zeros();
    if v & (v - 1) == 0 {
        return (HIST_PER_OCTAVE * e) as u16;
    }
    let m = v << (63 - e);
    let b = &OCTAVE_BOUNDS;
    let above = (m > b[0]) as u32
        + (m > b[1]) as u32
        + (m > b[2]) as u32
        + (m > b[3]) as u32
        + (m > b[4]) as u32
        + (m > b[5]) as u32
        + (m > b[6]) as u32;
    (HIST_PER_OCTAVE * e + 1 + above) as u16
}

/// Counter key: overlay superblock device (kernel `s_dev`), cause, kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub dev: u32,
    pub cause: u8,
    pub kind: u8,
    pub _pad: [u8; 2],
}

/// Counter value (per CPU; user space sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountValue {
    /// Copy-ups that started (ovl_copy_up_start returned 0).
    pub copy_ups: u64,
    /// Bytes of file data the kernel was asked to copy.
    pub data_bytes: u64,
    /// Copy-ups whose ovl_copy_up_one returned an error.
    pub errors: u64,
    /// Sum of the copy-ups' latencies (the latency histogram's sum).
    pub latency_ns: u64,
}

/// Copy-ups by the process that triggered them, keyed by its comm (the thread
/// name, NUL-padded to 16 bytes). The agent keeps the top K in /metrics.
pub type ProcessKey = [u8; 16];

/// Per-process value (per CPU; user space sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessValue {
    pub copy_ups: u64,
    pub data_bytes: u64,
}

/// Histogram key (8 bytes, no padding). `dev` is 0 when per-mount histograms
/// are off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub dev: u32,
    pub cause: u8,
    pub hist: u8,
    /// [`bucket`] of the value: 0..=512, or [`ZERO_BUCKET`].
    pub bucket: u16,
}

const _: () = assert!(core::mem::size_of::<HistKey>() == 8 && core::mem::align_of::<HistKey>() == 4);

/// Run-time configuration, written by the agent into the CONFIG array before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    /// offsetof(struct dentry, d_sb)
    pub dentry_d_sb: u32,
    /// offsetof(struct dentry, d_inode)
    pub dentry_d_inode: u32,
    /// offsetof(struct super_block, s_dev)
    pub sb_s_dev: u32,
    /// offsetof(struct inode, i_mode)
    pub inode_i_mode: u32,
    /// Position (0-based) of the length among the data-copy function's arguments.
    pub copy_len_arg: u32,
    /// Key histograms by mount too (cardinality: mounts x causes x buckets).
    pub per_mount_histograms: u32,
    /// Non-zero once the agent has written this config; programs do nothing before.
    pub ready: u32,
    /// offsetof(struct dentry, d_name) + offsetof(struct qstr, name): the name pointer.
    pub dentry_name_ptr: u32,
    /// offsetof(struct task_struct, stack): the user registers sit at the top
    /// of that stack (kernels before 5.15, which lack bpf_task_pt_regs).
    pub task_stack: u32,
    /// THREAD_SIZE minus sizeof(struct pt_regs): where the registers start.
    pub stack_regs_offset: u32,
    /// offsetof(struct pt_regs, orig_ax): the system call number.
    pub regs_orig_ax: u32,
    /// offsetof(struct pt_regs, cs): 64-bit or 32-bit caller.
    pub regs_cs: u32,
    /// offsetof(struct ovl_inode, __upperdentry) - offsetof(struct ovl_inode,
    /// vfs_inode): the upper dentry, from the overlay inode's address.
    pub ovl_inode_upper: u32,
    /// Send an event to the TRACE ring buffer for copy-ups at least this slow;
    /// u64::MAX sends none (the daemon counts without events).
    pub trace_min_latency_ns: u64,
}

/// Per-thread state of one ovl_copy_up_one call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    pub start_ns: u64,
    /// The overlay dentry being copied up (for the trace stream's file name).
    pub dentry: u64,
    pub data_bytes: u64,
    pub dev: u32,
    pub cause: u8,
    pub is_dir: u8,
    pub copied_data: u8,
    /// The entry already had an upper dentry at ovl_copy_up_one's entry, so no
    /// full copy (and no metadata copy) runs: a deferred data copy or a link-up.
    pub had_upper: u8,
    /// Set when ovl_copy_up_end ran, i.e. the copy-up really started here.
    pub counted: u8,
    /// Set from ovl_copy_up_one's entry to its return. Entries are reused in
    /// place rather than deleted (cheaper); the LRU evicts those of dead threads.
    pub active: u8,
    pub _pad: [u8; 6],
}

/// One slow copy-up, for `overlay-agent trace` (never sent by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    /// CLOCK_MONOTONIC of the copy-up's end.
    pub end_ns: u64,
    pub latency_ns: u64,
    pub data_bytes: u64,
    pub pid: u32,
    pub tid: u32,
    pub dev: u32,
    pub cause: u8,
    pub kind: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; 16],
    /// The copied entry's name (last path component), NUL-terminated.
    pub name: [u8; 64],
}

/// Self-monitoring counters, an array indexed by these slots.
pub mod stat {
    /// ovl_copy_up_one entries seen.
    pub const ONE_ENTRIES: u32 = 0;
    /// ovl_copy_up_one returns seen (fewer than entries: missed kretprobes).
    pub const ONE_RETURNS: u32 = 1;
    /// Map updates that failed (map full).
    pub const MAP_FULL: u32 = 2;
    /// Kernel memory reads that failed.
    pub const READ_ERRORS: u32 = 3;
    /// Trace events dropped because the ring buffer was full.
    pub const TRACE_DROPS: u32 = 4;
    /// Events of the bare counting pair (benchmark floor only).
    pub const BARE: u32 = 5;
    pub const COUNT: u32 = 6;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::CountKey {}
    unsafe impl aya::Pod for super::CountValue {}
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::ProcessValue {}
    unsafe impl aya::Pod for super::ProgramConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_nul_stops_at_the_first_nul() {
        assert_eq!(until_nul(b"chown\0\0\0x"), b"chown");
        assert_eq!(until_nul(b"sixteen-bytes-xx"), b"sixteen-bytes-xx", "no NUL: the whole buffer");
        assert_eq!(until_nul(b"\0abc"), b"");
    }

    /// Exact reference: bucket i of v >= 1 is the i with 2^(i-1) < v^8 <= 2^i.
    fn exact(v: u64) -> u16 {
        use num_bigint::BigUint;
        let p = BigUint::from(v).pow(8);
        let i = (p.clone() - 1u32).bits() as u16; // 2^(i-1) <= p - 1 < 2^i
        assert!(p <= BigUint::from(1u32) << i && (i == 0 || p > BigUint::from(1u32) << (i - 1)));
        i
    }

    /// ceil(8 log2 v) in f64, where f64 is unambiguous (None within 1e-6 of a boundary).
    fn float(v: u64) -> Option<u16> {
        let x = 8.0 * (v as f64).log2();
        ((x - x.round()).abs() > 1e-6 || (v as f64) as u64 == v && v.is_power_of_two())
            .then(|| x.ceil() as u16)
    }

    fn check(v: u64) {
        let b = bucket(v);
        assert_eq!(b, exact(v), "v = {v}");
        if let Some(f) = float(v) {
            assert_eq!(b, f, "f64 disagrees at v = {v}");
        }
    }

    #[test]
    fn octave_bounds_are_floors_of_roots_of_two() {
        use num_bigint::BigUint;
        for (k, t) in OCTAVE_BOUNDS.iter().enumerate() {
            let k = k as u32 + 1;
            let two = BigUint::from(1u32) << (504 + k); // (2^(63 + k/8))^8
            assert!(BigUint::from(*t).pow(8) < two && BigUint::from(*t + 1).pow(8) > two, "k = {k}");
        }
    }

    #[test]
    fn buckets_are_native_schema_3_boundaries() {
        assert_eq!(bucket(0), ZERO_BUCKET);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 8);
        assert_eq!(bucket(3), 13, "log2(3) = 1.585: ceil(12.68)");
        assert_eq!(bucket(4096), 96);
        assert_eq!(bucket(4097), 97);
        assert_eq!(bucket(u64::MAX), 512);
        // Every value up to 2^20, then around every power of two and every boundary.
        for v in 1..=1u64 << 20 {
            check(v);
        }
        for e in 0..64u32 {
            let p = 1u64 << e;
            for v in [p.wrapping_sub(1), p, p + 1, p.wrapping_add(2), p | (p >> 1)] {
                if v != 0 {
                    check(v);
                }
            }
            for t in OCTAVE_BOUNDS {
                // The boundary's neighbours in this octave: t >> (63 - e) and the next integer.
                let below = t >> (63 - e);
                for v in [below.saturating_sub(1), below, below + 1, below + 2] {
                    if v != 0 {
                        check(v);
                    }
                }
            }
        }
        check(u64::MAX);
        check(u64::MAX - 1);
        // A pseudo-random sweep over the whole range.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check((x >> (x % 64)).max(1));
        }
    }

    #[test]
    fn latency_units_are_2_to_the_minus_30_seconds() {
        assert_eq!(ns_to_latency_units(0), 0);
        assert_eq!(ns_to_latency_units(1), 1, "1 ns = 1.07 units");
        assert_eq!(ns_to_latency_units(1_000_000_000), 1 << 30);
        assert_eq!(ns_to_latency_units(1_500_000_000), 3 << 29);
        for ns in [1u64, 999, 1_000, 123_456_789, 999_999_999, 7_000_000_001, 86_400_000_000_000] {
            let want = (u128::from(ns) << 30) / 1_000_000_000;
            assert_eq!(u128::from(ns_to_latency_units(ns)), want, "{ns} ns");
        }
        // One second ends native bucket 0 in seconds.
        assert_eq!(native_index(HIST_LATENCY, bucket(ns_to_latency_units(1_000_000_000))), Some(0));
        assert_eq!(native_index(HIST_LATENCY, bucket(1)), Some(-240));
        assert_eq!(native_index(HIST_BYTES, bucket(1024)), Some(80));
        assert_eq!(native_index(HIST_LATENCY, ZERO_BUCKET), None);
    }

    #[test]
    fn syscall_causes() {
        use syscall::cause_of;
        let entry =
            |name: &str| syscall::X86_64.iter().find(|e| e.0 == name).map(|e| e.2 + 1).expect("in the table");
        assert_eq!(cause_of(entry("fchownat"), 0), cause::CHOWN);
        assert_eq!(cause_of(entry("truncate"), 1), cause::TRUNCATE, "truncate(2) copies with O_WRONLY");
        assert_eq!(cause_of(entry("openat"), 0o1), cause::OPEN, "the file opened for write");
        assert_eq!(cause_of(entry("openat"), 0), cause::CREATE, "the parent of a created file");
        assert_eq!(cause_of(0, 0o1), cause::OPEN, "io_uring or a kernel thread opening for write");
        assert_eq!(cause_of(0, 0), cause::OTHER);
        for (name, nr, c) in syscall::X86_64 {
            assert!(*nr < syscall::TABLE_SIZE && (*c as usize) < cause::COUNT, "{name}");
        }
        let mut nrs: [u32; 64] = [0; 64];
        for (i, e) in syscall::X86_64.iter().enumerate() {
            assert!(!nrs[..i].contains(&e.1), "{} listed twice", e.0);
            nrs[i] = e.1;
        }
    }
}
