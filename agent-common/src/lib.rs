//! The layouts that overlay-agent and its eBPF programs agree on: map keys and
//! values, the per-CPU slots and the per-thread state, cause and kind codes,
//! histogram buckets ([`hist`]), the system-call table ([`syscall`]), the
//! no-op rules ([`noop`]), and the run-time config the agent gives the programs
//! at load (kernel struct offsets and argument positions read from BTF, since
//! Rust eBPF has no CO-RE relocations).
#![no_std]

pub mod hist;
pub mod noop;
pub mod syscall;

pub use hist::*;

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

/// Counter key: overlay superblock device (kernel `s_dev`), cause, kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub dev: u32,
    pub cause: u8,
    pub kind: u8,
    pub _pad: [u8; 2],
}

impl CountKey {
    /// The key as one word (the padding is always zero).
    #[inline(always)]
    pub const fn word(&self) -> u64 {
        self.dev as u64 | (self.cause as u64) << 32 | (self.kind as u64) << 40
    }
}

/// Counter value: one struct per key, updated once per copy-up (per CPU; user
/// space sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountValue {
    /// Copy-ups that started (ovl_copy_up_start returned 0).
    pub copy_ups: u64,
    /// Bytes of file data the kernel was asked to copy.
    pub data_bytes: u64,
    /// Copy-ups that failed (see the copy-up program for how it is told).
    pub errors: u64,
    /// Sum of the copy-ups' latencies (the latency histogram's sum).
    pub latency_ns: u64,
    /// Copy-ups by a chown, chmod or utimes that set what the file had.
    pub noop: u64,
}

impl CountValue {
    #[inline(always)]
    pub fn add(&mut self, o: &CountValue) {
        self.copy_ups += o.copy_ups;
        self.data_bytes += o.data_bytes;
        self.errors += o.errors;
        self.latency_ns += o.latency_ns;
        self.noop += o.noop;
    }
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub dev: u32,
    pub cause: u8,
    pub hist: u8,
    /// [`bucket`] of the value: 0..=512, or [`ZERO_BUCKET`].
    pub bucket: u16,
}

impl HistKey {
    #[inline(always)]
    pub const fn word(&self) -> u64 {
        self.dev as u64 | (self.cause as u64) << 32 | (self.hist as u64) << 40 | (self.bucket as u64) << 48
    }
}

const _: () = assert!(core::mem::size_of::<HistKey>() == 8 && core::mem::align_of::<HistKey>() == 4);

/// Per-CPU aggregation. Each CPU keeps the keys it counts in direct-mapped
/// slots of a per-CPU array (the slot from a hash of the key: an array
/// lookup, no hash-map lookup); a key whose slot another key holds goes to the
/// shared hash map (COUNTS, HIST, PROCESSES). Slots are cumulative, never
/// moved: user space sums slots and maps by key. A slot of a forgotten device
/// is released by generation: the agent writes the slot's `gen` into the
/// DEAD array at (cpu, slot); the next copy-up landing there starts it afresh
/// with `gen + 1`, and until then the agent skips it.
pub const COUNT_SLOTS: u32 = 256;
pub const HIST_SLOTS: u32 = 1024;
pub const PROCESS_SLOTS: u32 = 256;

/// The slot of a key word: the top bits of a multiplicative hash of the word
/// with its halves folded (so that every field reaches the top bits).
#[inline(always)]
pub const fn slot_of(word: u64, slots: u32) -> u32 {
    ((word ^ word >> 32).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32 & (slots - 1)
}

/// The key word of a comm (its two halves folded).
#[inline(always)]
pub const fn comm_word(c: &ProcessKey) -> u64 {
    let lo = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let hi = u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]);
    lo ^ hi.rotate_left(29)
}

/// A COUNT_SLOTS entry; free while `gen` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountSlot {
    pub key: CountKey,
    pub gen: u32,
    pub _pad: u32,
    pub value: CountValue,
}

/// A HIST_SLOTS entry; free while `gen` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistSlot {
    pub key: HistKey,
    pub gen: u32,
    pub _pad: u32,
    pub count: u64,
}

/// A PROCESS_SLOTS entry; free while `value.copy_ups` is 0 (never released:
/// a comm outlives no mount).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSlot {
    pub comm: ProcessKey,
    pub value: ProcessValue,
}

/// Per-thread state of one ovl_copy_up_one call, in the THREADS array at the
/// thread id's low bits (tagged with the thread id; a slot another thread's
/// copy-up holds sends this one to the spill map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    pub start_ns: u64,
    /// The overlay inode (dentry->d_inode).
    pub inode: u64,
    pub data_bytes: u64,
    pub dev: u32,
    pub tid: u32,
    /// ovl_copy_up_one's open flags.
    pub flags: u32,
    /// [`state`] bits.
    pub state: u32,
}

/// [`Inflight::state`] bits.
pub mod state {
    /// From ovl_copy_up_one's entry to ovl_copy_up_end.
    pub const ACTIVE: u32 = 1;
    /// The entry had an upper dentry at ovl_copy_up_one's entry: no full
    /// copy runs, only a deferred data copy or a link-up.
    pub const HAD_UPPER: u32 = 2;
    /// The data copy ran with a length above 0.
    pub const COPIED_DATA: u32 = 4;
}

/// Entries of the THREADS array (a power of two).
pub const THREAD_SLOTS: u32 = 1 << 14;

/// Run-time configuration: kernel offsets from BTF and the agent's choices,
/// given to the programs at load as a read-only global (frozen: the verifier
/// treats every field as a constant, so offsets index the stack and BTF
/// pointers, and the branches of unused options are dropped). Offsets are in
/// bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    /// d_name + qstr.name: the name pointer (trace only).
    pub dentry_name_ptr: u32,
    pub sb_s_dev: u32,
    pub inode_i_mode: u32,
    pub inode_i_uid: u32,
    pub inode_i_gid: u32,
    /// Seconds and nanoseconds of atime, then of mtime (nanoseconds read as 32 bits).
    pub inode_times: [u32; 4],
    /// ovl_inode.__upperdentry - ovl_inode.vfs_inode.
    pub ovl_upper: u32,
    /// ovl_inode.vfs_inode - ovl_inode.flags: how far before the VFS inode the flags are.
    pub ovl_flags_back: u32,
    /// Bit of OVL_UPPERDATA in ovl_inode.flags.
    pub upperdata_bit: u32,
    /// Position (0-based) of the length among the data-copy function's arguments.
    pub copy_len_arg: u32,
    /// task_struct.stack (kernels before 5.15, which lack bpf_task_pt_regs).
    pub task_stack: u32,
    /// THREAD_SIZE minus sizeof(struct pt_regs): where the user registers start.
    pub stack_regs_offset: u32,
    /// pt_regs members of the [`syscall::Abi`]: the call number, the native-caller test, the arguments.
    pub regs_nr: u32,
    pub regs_native: u32,
    pub regs_args: [u32; 6],
    pub task_real_cred: u32,
    pub task_comm: u32,
    pub cred_user_ns: u32,
    pub userns_level: u32,
    /// user_namespace.uid_map and .gid_map, then uid_gid_map.extent.
    pub userns_uid_map: u32,
    pub userns_gid_map: u32,
    pub idmap_extent: u32,
    pub _pad: u32,
    /// The native-caller member's value for a native caller.
    pub native_value: u64,
    /// Bits of the call number to mask off.
    pub nr_mask_off: u64,
    /// Send an event to the TRACE ring buffer for copy-ups at least this slow;
    /// u64::MAX sends none (the daemon counts without events).
    pub trace_min_latency_ns: u64,
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
    pub noop: u8,
    pub _pad: u8,
    pub comm: [u8; 16],
    /// The copied entry's name (last path component), NUL-terminated.
    pub name: [u8; 64],
}

/// Self-monitoring counters, an array indexed by these slots.
pub mod stat {
    /// ovl_copy_up_one entries seen.
    pub const ONE_ENTRIES: u32 = 0;
    /// Copy-ups whose per-thread slot another thread held (the spill map took them).
    pub const SPILLS: u32 = 1;
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
    unsafe impl aya::Pod for super::CountSlot {}
    unsafe impl aya::Pod for super::HistSlot {}
    unsafe impl aya::Pod for super::ProcessSlot {}
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

    #[test]
    fn key_words_are_injective_and_slots_spread() {
        let a = CountKey { dev: 40, cause: cause::CHOWN, kind: kind::DATA, _pad: [0; 2] };
        let b = CountKey { dev: 40, cause: cause::CHOWN, kind: kind::METADATA, _pad: [0; 2] };
        assert_ne!(a.word(), b.word());
        let h = HistKey { dev: 40, cause: 2, hist: HIST_LATENCY, bucket: ZERO_BUCKET };
        assert_eq!(h.word() >> 48, ZERO_BUCKET as u64);
        // 1,000 consecutive devices x 4 causes land in most of 256 slots.
        let mut used = [false; COUNT_SLOTS as usize];
        for dev in 40..1040u32 {
            for c in 0..4 {
                let k = CountKey { dev, cause: c, kind: 0, _pad: [0; 2] };
                used[slot_of(k.word(), COUNT_SLOTS) as usize] = true;
            }
        }
        assert!(used.iter().filter(|u| **u).count() > 240);
        // One storm's latency buckets (consecutive) take distinct slots.
        let slots: [u32; 16] = core::array::from_fn(|i| {
            slot_of(HistKey { dev: 41, cause: 2, hist: 1, bucket: 100 + i as u16 }.word(), HIST_SLOTS)
        });
        for i in 0..16 {
            assert!(!slots[..i].contains(&slots[i]), "{slots:?}");
        }
        assert_ne!(comm_word(b"qemu-workload\0\0\0"), comm_word(b"qemu-workloae\0\0\0"));
    }
}
