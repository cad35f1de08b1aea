//! Checks the kernel table (overlay_agent::kernel::hooks) against the running
//! kernel's BTF, inside each QEMU guest (tests/guest, check `btf_table`):
//! prints `btf-check: ok ...` or one `btf-check: DRIFT kernel K: FUNCTION: ...`
//! line per difference, and exits 1 on any drift.

use std::path::Path;

use overlay_agent::kernel::{btf::KernelBtf, hooks};

fn main() {
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let Some(version) = overlay_agent::kernel::parse_version(&release) else {
        println!("btf-check: DRIFT kernel {release}: cannot parse the version");
        std::process::exit(1);
    };
    let btf = match KernelBtf::load(Path::new("/sys/kernel/btf")) {
        Ok(b) => b,
        Err(e) => {
            println!("btf-check: DRIFT kernel {release}: {e}");
            std::process::exit(1);
        }
    };
    let (checked, drifts) = hooks::check(&btf, &release, version);
    for d in &drifts {
        println!("btf-check: DRIFT {d}");
    }
    println!(
        "btf-check: {} kernel {release}: {} prototypes compared ({}), {} members; not compared (no overlay BTF): {}",
        if drifts.is_empty() { "ok" } else { "FAILED" },
        checked.functions.len(),
        checked.functions.join(" "),
        checked.members,
        if checked.unchecked.is_empty() { "none".to_string() } else { checked.unchecked.join(" ") },
    );
    std::process::exit(if drifts.is_empty() { 0 } else { 1 });
}
