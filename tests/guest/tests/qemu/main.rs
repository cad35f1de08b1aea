//! The QEMU tier: the copy-up probes and the agent on real Debian kernels (5.10,
//! 6.1, 6.12, 7.2) under QEMU (TCG). Each test boots a busybox initramfs holding
//! the static agent and this crate's helpers (src/bin) in one mode
//! (initramfs/modes), and checks what the guest printed on its console: the
//! workload's known copy-ups counted exactly (exact_counts), project quotas
//! (quota), a Concourse volume's renames (concourse), a recorded storm against
//! the shipped alerts (storm), and benchmarks run on demand (overhead, quota).
//!
//! Needs: root, qemu-system-x86_64, busybox-static, cpio, e2fsprogs
//! (scripts/test.sh installs them), the musl build of the agent and of this
//! crate's binaries (scripts/test.sh builds them), and the kernels (fetched
//! into .cache/kernels by tests/guest/fetch-kernel.sh).
//! OVERLAY_AGENT_QEMU_KERNELS narrows the matrix (e.g. "6.1").

mod common;
mod concourse;
mod exact_counts;
mod guest;
mod helpers;
mod overhead;
mod quota;
mod storm;
#[path = "../../../storms/mod.rs"]
mod storms;
