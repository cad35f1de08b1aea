//! Reading a whole hash map (per-CPU or shared) with BPF_MAP_LOOKUP_BATCH (Linux 5.6+): a
//! few syscalls per scrape instead of two per key (aya 0.13 iterates with
//! get_next_key + lookup). At 1000 mounts x 11 causes that is about 22,000
//! syscalls saved per scrape. Callers fall back to aya's iteration on error.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{IterableMap, MapData};
use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, per-CPU values) of a per-CPU hash map, in batches of `chunk` keys.
pub fn per_cpu_entries<K: Pod, V: Pod>(
    map: &impl IterableMap<K, aya::maps::PerCpuValues<V>>,
    chunk: usize,
) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    // Per-CPU values are laid out in slots rounded up to 8 bytes.
    batches(map.map(), cpus, std::mem::size_of::<V>().div_ceil(8) * 8, chunk)
}

/// Every (key, value) of a shared (not per-CPU) hash map, in batches of `chunk` keys.
pub fn entries<K: Pod, V: Pod>(map: &impl IterableMap<K, V>, chunk: usize) -> std::io::Result<Vec<(K, V)>> {
    let all = batches::<K, V>(map.map(), 1, std::mem::size_of::<V>(), chunk)?;
    Ok(all.into_iter().filter_map(|(k, mut v)| Some((k, v.pop()?))).collect())
}

/// `cpus` values of `slot` bytes per key.
fn batches<K: Pod, V: Pod>(
    data: &MapData,
    cpus: usize,
    slot: usize,
    chunk: usize,
) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let fd = data.fd().as_fd().as_raw_fd();
    let key_size = std::mem::size_of::<K>();
    let mut chunk = chunk.max(1);
    let mut out = Vec::new();
    // The hash map's batch cursor is a bucket index (u32); 8 bytes to be safe.
    let mut cursor = [0u8; 8];
    let mut next = [0u8; 8];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; key_size * chunk];
        let mut values = vec![0u8; slot * cpus * chunk];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the buffers outlive the call and hold `count` keys and values
        // of the sizes the kernel writes; attr is a valid bpf_attr prefix.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let done = if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The end: the last keys (if any) came with it.
                Some(libc::ENOENT) => true,
                // One bucket holds more keys than the buffer: retry larger.
                Some(libc::ENOSPC) if chunk < 1 << 20 => {
                    chunk *= 4;
                    continue;
                }
                _ => return Err(e),
            }
        } else {
            false
        };
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            let kb = &keys[i * key_size..(i + 1) * key_size];
            // SAFETY: K is Pod (any bit pattern valid); read_unaligned copies it.
            let k: K = unsafe { std::ptr::read_unaligned(kb.as_ptr() as *const K) };
            let per_cpu = (0..cpus)
                .map(|c| {
                    let at = (i * cpus + c) * slot;
                    // SAFETY: as above, within the values buffer.
                    unsafe { std::ptr::read_unaligned(values[at..at + slot].as_ptr() as *const V) }
                })
                .collect();
            out.push((k, per_cpu));
        }
        if done {
            return Ok(out);
        }
        cursor = next;
        first = false;
    }
}
