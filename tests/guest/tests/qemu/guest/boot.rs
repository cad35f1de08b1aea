//! Boots a kernel and its initramfs under QEMU (TCG) and waits for it to power off.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::arch::Arch;

/// OVERLAY_AGENT_QEMU_ICOUNT=SHIFT: the guest's clocks advance by 2^SHIFT ns per
/// instruction executed instead of with the host's time (QEMU `-icount`, one
/// vCPU). In-program times (bpf_stats) then count the
/// guest instructions run, whatever the host's load: the benchmarks' steady
/// measure. Unset: real time, as a native machine runs.
fn icount() -> Vec<String> {
    match std::env::var("OVERLAY_AGENT_QEMU_ICOUNT") {
        Ok(shift) if !shift.is_empty() => vec!["-icount".into(), format!("shift={shift},sleep=off")],
        _ => Vec::new(),
    }
}

fn default_smp() -> &'static str {
    if icount().is_empty() {
        "2"
    } else {
        "1"
    }
}

/// Boots the kernel under TCG and returns the serial console output.
pub fn boot(arch: Arch, kernel: &Path, initrd: &Path, log: &Path, memory_mib: u32) -> String {
    let out = std::fs::File::create(log).expect("create console log");
    let (qemu, machine, cmdline) = arch.qemu();
    let mut child = Command::new(qemu)
        .args(machine)
        .args(["-nographic", "-no-reboot"])
        // OVERLAY_AGENT_QEMU_SMP: more vCPUs for the benchmarks (how per-CPU maps scale).
        // Under -icount a second vCPU never comes up (QEMU 7.2): one vCPU there.
        .args(["-smp", &std::env::var("OVERLAY_AGENT_QEMU_SMP").unwrap_or_else(|_| default_smp().into())])
        .args(["-m", &memory_mib.to_string()])
        .args(icount())
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{qemu}: {e} (scripts/test.sh installs qemu-system-x86 and qemu-system-arm)")
        });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The console file stays on the machine that ran the test: its
            // tail goes into the failure, so a CI log shows where the guest stood.
            panic!(
                "guest did not power off within 600 s; console: {}; its last lines:\n{}",
                log.display(),
                console_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The last `n` lines of the console log (lossy: a guest may print any byte).
fn console_tail(log: &Path, n: usize) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn the_tail_is_the_last_lines_even_when_not_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("console.log");
    std::fs::write(&log, b"one\ntwo \xff\nthree\n").expect("write");
    assert_eq!(console_tail(&log, 2), "two \u{fffd}\nthree");
    assert_eq!(console_tail(&log, 9), "one\ntwo \u{fffd}\nthree");
}
