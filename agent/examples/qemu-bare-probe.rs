//! Attaches only the bare counting kprobe+kretprobe pair on ovl_copy_up_one and
//! waits to be killed: the floor of the probe-overhead benchmark (tests/qemu.rs).
//! The kernel detaches the probes when the process exits.

fn main() {
    match overlay_agent::probes::attach_bare() {
        Ok(_probes) => {
            println!("bare probes attached");
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("bare probes: {e}");
            std::process::exit(1);
        }
    }
}
