//! The layouts that overlay-agent and its eBPF programs agree on: map keys and
//! values, cause and kind codes, histogram buckets, and the run-time config the
//! agent writes before attaching (kernel struct offsets and argument positions
//! read from BTF, since Rust eBPF has no CO-RE relocations).
#![no_std]

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
}

/// Which eBPF hook set a per-thread cause, so that only its own return clears it.
pub mod owner {
    pub const SETATTR: u8 = 1;
    pub const XATTR: u8 = 2;
    pub const LINK: u8 = 3;
    pub const RENAME: u8 = 4;
    pub const CREATE: u8 = 5;
    pub const REMOVE: u8 = 6;
}

/// `struct iattr.ia_valid` bits (include/linux/fs.h; stable since 2.6).
pub mod attr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
}

/// The cause of a setattr copy-up from `ia_valid`. chown also sets kill-suid
/// bits that look like a mode change, so owner bits are tested first.
pub const fn setattr_cause(ia_valid: u32) -> u8 {
    if ia_valid & (attr::UID | attr::GID) != 0 {
        cause::CHOWN
    } else if ia_valid & attr::SIZE != 0 {
        cause::TRUNCATE
    } else if ia_valid & attr::MODE != 0 {
        cause::CHMOD
    } else if ia_valid & (attr::ATIME | attr::MTIME) != 0 {
        cause::UTIMES
    } else {
        cause::SETATTR
    }
}

/// Histogram buckets: bucket `b` holds values in (2^(b-1), 2^b]; bucket 0 holds 0 and 1.
/// The sums live in CountValue (data_bytes, latency_ns), which is updated anyway.
pub const HIST_BUCKETS: u32 = 48;
pub const HIST_BYTES: u8 = 0;
pub const HIST_LATENCY_NS: u8 = 1;

/// The bucket of a value: ceil(log2(v)), capped at the last bucket.
#[inline(always)]
pub const fn bucket(v: u64) -> u8 {
    let b = if v <= 1 { 0 } else { 64 - (v - 1).leading_zeros() };
    if b >= HIST_BUCKETS {
        (HIST_BUCKETS - 1) as u8
    } else {
        b as u8
    }
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

/// Histogram key. `dev` is 0 unless per-mount histograms are enabled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub dev: u32,
    pub cause: u8,
    pub hist: u8,
    pub bucket: u8,
    pub _pad: u8,
}

/// Run-time configuration, written by the agent into the CONFIG array before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// offsetof(struct dentry, d_sb)
    pub dentry_d_sb: u32,
    /// offsetof(struct dentry, d_inode)
    pub dentry_d_inode: u32,
    /// offsetof(struct super_block, s_dev)
    pub sb_s_dev: u32,
    /// offsetof(struct inode, i_mode)
    pub inode_i_mode: u32,
    /// Position (0-based) of `struct iattr *` among ovl_setattr's arguments.
    pub setattr_iattr_arg: u32,
    /// Position (0-based) of the length among the data-copy function's arguments.
    pub copy_len_arg: u32,
    /// Key histograms by mount too (cardinality: mounts x causes x buckets).
    pub per_mount_histograms: u32,
    /// Non-zero once the agent has written this config; programs do nothing before.
    pub ready: u32,
    /// offsetof(struct dentry, d_name) + offsetof(struct qstr, name): the name pointer.
    pub dentry_name_ptr: u32,
    pub _pad: u32,
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
    pub copied_meta: u8,
    /// Set when ovl_copy_up_end ran, i.e. the copy-up really started here.
    pub counted: u8,
    /// Set from ovl_copy_up_one's entry to its return. Entries are reused in
    /// place rather than deleted (cheaper); the LRU evicts those of dead threads.
    pub active: u8,
    pub _pad: [u8; 6],
}

/// Per-thread cause set by an operation's entry hook, cleared by its return
/// (owner 0: no operation running; the entry is kept for reuse).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadCause {
    pub cause: u8,
    pub owner: u8,
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
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_powers_of_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4096), 12);
        assert_eq!(bucket(4097), 13);
        assert_eq!(bucket(u64::MAX), (HIST_BUCKETS - 1) as u8);
    }

    #[test]
    fn setattr_causes() {
        // chown(2) passes ATTR_UID|ATTR_GID plus kill-suid/mode bits.
        assert_eq!(setattr_cause(attr::UID | attr::GID | attr::MODE | 0x1800), cause::CHOWN);
        assert_eq!(setattr_cause(attr::SIZE | 0x40), cause::TRUNCATE);
        assert_eq!(setattr_cause(attr::MODE | 0x40), cause::CHMOD);
        assert_eq!(setattr_cause(attr::ATIME | attr::MTIME | 0x40 | 0x80 | 0x100), cause::UTIMES);
        assert_eq!(setattr_cause(0x40), cause::SETATTR);
    }
}
