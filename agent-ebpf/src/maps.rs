//! Every map of the programs. Aggregation happens here, in the kernel: user space
//! reads the slots and maps when scraped; nothing is sent per event.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use overlay_agent_common::{
    CountKey, CountSlot, CountValue, HistKey, HistSlot, Inflight, ProcessKey, ProcessSlot, ProcessValue,
    COUNT_SLOTS, HIST_SLOTS, PROCESS_SLOTS, THREAD_SLOTS,
};

/// Settings a reload may change: [0] per-mount histogram keys (1) or not (0).
#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(1, 0);

/// The encoded system-call table (overlay_agent_common::syscall::encode) by
/// call number, written once by the agent.
#[map]
pub static SYSCALL_CAUSE: Array<u16> = Array::with_max_entries(overlay_agent_common::syscall::TABLE_SIZE, 0);

/// The per-thread state of the ovl_copy_up_one call in progress, at the
/// thread id's low bits. Keyed by thread: overlayfs refuses an overlay as upper
/// layer, so copy-ups do not nest on one thread.
#[map]
pub static THREADS: Array<Inflight> = Array::with_max_entries(THREAD_SLOTS, 0);

/// The same for a thread whose slot another thread's copy-up holds. LRU: an
/// entry of a thread gone is evicted, never leaked.
#[map]
pub static SPILL: LruHashMap<u32, Inflight> = LruHashMap::with_max_entries(4096, 0);

/// Copy-up counters by (device, cause, kind): this CPU's slots, then the
/// shared overflow (overlay_agent_common::COUNT_SLOTS has the scheme).
#[map]
pub static COUNT_SLOTS_MAP: PerCpuArray<CountSlot> = PerCpuArray::with_max_entries(COUNT_SLOTS, 0);
#[map]
pub static COUNTS: PerCpuHashMap<CountKey, CountValue> = PerCpuHashMap::with_max_entries(16384, 0);
/// Generations of released slots, at cpu x slots + slot (the agent sizes it
/// to the possible CPUs and writes it).
#[map]
pub static COUNT_DEAD: Array<u32> = Array::with_max_entries(COUNT_SLOTS, 0);

/// Native histograms (schema 3) of bytes and latency by (device or 0, cause,
/// bucket): this CPU's slots, then one shared hash map (atomic adds; its
/// memory does not grow with the CPUs). Preallocated (kprobe programs need it
/// on 5.10), 2^18 entries; past that, stat::MAP_FULL counts.
#[map]
pub static HIST_SLOTS_MAP: PerCpuArray<HistSlot> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);
#[map]
pub static HIST: HashMap<HistKey, u64> = HashMap::with_max_entries(HIST_ENTRIES, 0);
pub const HIST_ENTRIES: u32 = 1 << 18;
#[map]
pub static HIST_DEAD: Array<u32> = Array::with_max_entries(HIST_SLOTS, 0);

/// Copy-ups and data bytes by the comm of the thread that triggered them:
/// this CPU's slots, then an LRU map (past 4096 distinct names the least
/// recently active is dropped; the agent keeps its own running totals, so the
/// exported counters never go back).
#[map]
pub static PROCESS_SLOTS_MAP: PerCpuArray<ProcessSlot> = PerCpuArray::with_max_entries(PROCESS_SLOTS, 0);
#[map]
pub static PROCESSES: LruPerCpuHashMap<ProcessKey, ProcessValue> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Slow copy-ups for `overlay-agent trace` (only when trace_min_latency_ns is set).
#[map]
pub static TRACE: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Self-monitoring counters (see overlay_agent_common::stat).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(overlay_agent_common::stat::COUNT, 0);
