//! `overlay-agent trace`: a live line per copy-up slower than --min-latency, read
//! from the programs' ring buffer (like the bpftrace script of the copy-up story,
//! for every cause). Counting stays in the kernel; only these slow copy-ups are
//! sent to user space, and only while this command runs.

use std::io::Write;
use std::time::Duration;

use overlay_agent_common::{cause, kind, stat, TraceEvent};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::discovery::{self, Device, MountTable};
use crate::probes::{self, ProbeOptions};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("copy-up probes unavailable ({reason}): {0}", reason = .0.reason())]
    Unavailable(probes::Disabled),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn c_str(bytes: &[u8]) -> String {
    String::from_utf8_lossy(overlay_agent_common::until_nul(bytes)).into_owned()
}

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// One output line (public for tests).
pub fn format_event(ev: &TraceEvent, since_ns: u64, mountpoint: &str) -> String {
    let secs = ev.end_ns.saturating_sub(since_ns) as f64 / 1e9;
    format!(
        "{:<10.3} {:<8} {:<16} {:<32} {:<24} {:<9} {:<13} {:>12} {:>12.3}",
        secs,
        ev.pid,
        c_str(&ev.comm),
        mountpoint,
        c_str(&ev.name),
        cause::name(ev.cause),
        kind::name(ev.kind),
        ev.data_bytes,
        ev.latency_ns as f64 / 1e6,
    )
}

pub const HEADER: &str = "TIME(s)    PID      COMM             MOUNTPOINT                       FILE                     CAUSE     KIND                 BYTES  LATENCY(ms)";

pub async fn run(config: &Config, min_latency: Duration, out: &mut impl Write) -> Result<(), TraceError> {
    let opts = ProbeOptions { trace_min_latency: Some(min_latency), ..Default::default() };
    let (started, status) = tokio::task::spawn_blocking(move || probes::start(&opts))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let Some((mut probes, maps)) = started else {
        let d = status.disabled.unwrap_or(probes::Disabled::AttachFailed("no reason given".into()));
        return Err(TraceError::Unavailable(d));
    };
    let ring = probes
        .take_trace()
        .ok_or_else(|| std::io::Error::other("the eBPF object has no TRACE ring buffer"))?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as
    // long as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Mountpoints are all a trace line needs: discovery only, no identity.
    let discover = || discovery::discover(&config.discovery.procfs, |mp| config.mountpoint_selected(mp));
    let mut table: MountTable = discover().unwrap_or_default();
    let mut table_read = std::time::Instant::now();
    let since = monotonic_ns();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dropped = 0u64;
    writeln!(out, "{HEADER}")?;
    out.flush()?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if item.len() < std::mem::size_of::<TraceEvent>() {
                        continue;
                    }
                    // SAFETY: the programs write whole TraceEvents (repr(C), any bit
                    // pattern valid); read_unaligned copes with the ring's alignment.
                    let ev: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    let dev = Device::from_kernel(ev.dev);
                    // A new mount: re-read mountinfo, at most once a second (a storm on a
                    // mount the filters exclude must not re-read it per event).
                    if !table.mounts.contains_key(&dev) && table_read.elapsed() >= Duration::from_secs(1) {
                        table = discover().unwrap_or(table);
                        table_read = std::time::Instant::now();
                    }
                    let mp = table.label_of(dev);
                    writeln!(out, "{}", format_event(&ev, since, &mp))?;
                }
                out.flush()?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let now = maps.read().stats[stat::TRACE_DROPS as usize];
                if now > dropped {
                    writeln!(out, "# {} events dropped (ring buffer full)", now - dropped)?;
                    dropped = now;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    writeln!(out, "# trace stopped; {dropped} events dropped in all")?;
    out.flush()?;
    drop(probes);
    Ok(())
}
