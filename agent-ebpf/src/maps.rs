//! Every map of the programs. Aggregation happens here, in the kernel: user space
//! reads COUNTS and HIST when scraped; nothing is sent per event.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use overlay_agent_common::{
    CountKey, CountValue, HistKey, Inflight, ProcessKey, ProcessValue, ProgramConfig,
};

/// Written once by the agent (offsets and argument positions from BTF).
#[map]
pub static CONFIG: Array<ProgramConfig> = Array::with_max_entries(1, 0);

/// The cause of a copy-up by system call number (overlay_agent_common::syscall),
/// written once by the agent.
#[map]
pub static SYSCALL_CAUSE: Array<u8> = Array::with_max_entries(overlay_agent_common::syscall::TABLE_SIZE, 0);

/// Copy-up counters by (device, cause, kind).
#[map]
pub static COUNTS: PerCpuHashMap<CountKey, CountValue> = PerCpuHashMap::with_max_entries(16384, 0);

/// Native histograms (schema 3) of bytes and latency by (device or 0, cause,
/// bucket): one entry per occupied bucket, shared by all CPUs (atomic adds).
/// Preallocated (kprobe programs need it on 5.10): 2^18 entries, about 11
/// occupied buckets per histogram at 1,000 mounts x 12 causes x 2 histograms
/// (docs/performance.md has the memory); past that, stat::MAP_FULL counts.
#[map]
pub static HIST: HashMap<HistKey, u64> = HashMap::with_max_entries(HIST_ENTRIES, 0);
pub const HIST_ENTRIES: u32 = 1 << 18;

/// Copy-ups and data bytes by the comm of the thread that triggered them. LRU:
/// past 4096 distinct names the least recently active is dropped (the agent keeps
/// its own running totals, so the exported counters never go back).
#[map]
pub static PROCESSES: LruPerCpuHashMap<ProcessKey, ProcessValue> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Slow copy-ups for `overlay-agent trace` (only when trace_min_latency_ns is set).
#[map]
pub static TRACE: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Self-monitoring counters (see overlay_agent_common::stat).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(overlay_agent_common::stat::COUNT, 0);

/// The ovl_copy_up_one call in progress, per thread. LRU: an entry whose return
/// probe was missed is evicted, never leaked. Keyed by thread id: overlayfs
/// refuses an overlay as upper layer, so copy-ups do not nest on one thread.
#[map]
pub static INFLIGHT: LruHashMap<u32, Inflight> = LruHashMap::with_max_entries(16384, 0);
