//! The copy-up workload run inside the QEMU guests (tests/guest: the host's
//! checks, initramfs/modes/*.sh: the calls), one subcommand per job:
//!
//! `qemu-workload prepare LOWER_A LOWER_B LOWER_C`: fills the lower layers.
//! `qemu-workload run MERGED_A MERGED_B MERGED_C`: one operation per file, each
//! with a known copy-up outcome (cause, kind, bytes), listed in EXPECTED in the
//! host's checks and asserted from the agent's /metrics. Uses the exact syscalls:
//! busybox `truncate` is open+ftruncate (cause open), not truncate(2).
//! `qemu-workload uring MERGED_D`: copy-ups issued through io_uring.
//! `qemu-workload userxattr-mount ROOT` and `userxattr-run MERGED`: a userxattr
//! mount (userxattr.rs); `idmapped-mount T` and `idmapped-run T`: volumes over
//! a plain and an idmapped lower (idmapped.rs). Each mount attempt's answer is
//! printed for the host to assert.
//! `qemu-workload churn DIR N`: overlay work that copies nothing up.
//! The others (parallel, storm, tree, links, steady, record, scrape, metric,
//! causes-*, caps-exec) are documented in their modules.

mod caps;
mod copy_ups;
mod files;
mod idmapped;
mod load;
mod parallel;
mod scrape;
mod uring;
mod userxattr;

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("caps-exec") => caps::caps_exec(&args[2..]),
        Some("userxattr-mount") => return userxattr::userxattr_mount(Path::new(&args[2])),
        Some("userxattr-run") => return userxattr::userxattr_run(Path::new(&args[2])),
        Some("idmapped-mount") => return idmapped::idmapped_mount(Path::new(&args[2])),
        Some("idmapped-run") => return idmapped::idmapped_run(Path::new(&args[2])),
        Some("uring") => return uring::uring_ops(Path::new(&args[2])),
        Some("uring-prepare") => {
            files::file(Path::new(&args[2]), "uring.dat", 16_000);
            return files::file(Path::new(&args[2]), "uring-mv.dat", 17_000);
        }
        Some("parallel-prepare") => {
            return parallel::parallel_prepare(Path::new(&args[2]), args[3].parse().expect("count"))
        }
        Some("parallel") => return parallel::parallel(Path::new(&args[2]), args[3].parse().expect("count")),
        Some("append-one") => return parallel::append_one(Path::new(&args[2])),
        Some("churn") => return load::churn(Path::new(&args[2]), args[3].parse().expect("count")),
        Some("causes-prepare") => return copy_ups::causes_prepare(Path::new(&args[2])),
        Some("causes-run") => return copy_ups::causes_run(Path::new(&args[2])),
        Some("scrape") => {
            return scrape::scrape(
                &args[2],
                args[3].parse().expect("count"),
                args.get(4).is_some_and(|a| a == "proto"),
            )
        }
        Some("metric") => return scrape::metric(&args[2], &args[3]),
        Some("storm") => {
            let passes = args.get(4).map(|p| p.parse().expect("passes")).unwrap_or(1);
            return load::storm(Path::new(&args[2]), args[3].parse().expect("uid"), passes);
        }
        Some("tree") => {
            let size = args.get(4).map(|s| s.parse().expect("size")).unwrap_or(100);
            return load::tree(Path::new(&args[2]), args[3].parse().expect("count"), size);
        }
        Some("links") => {
            return load::links(
                Path::new(&args[2]),
                args[3].parse().expect("count"),
                args[4].parse().expect("size"),
            );
        }
        Some("steady") => {
            let mounts: Vec<&Path> = args[4..].iter().map(Path::new).collect();
            return load::steady(args[2].parse().expect("seconds"), args[3].parse().expect("rate"), &mounts);
        }
        Some("record") => {
            return scrape::record(&args[2], args[3].parse().expect("interval ms"), Path::new(&args[4]));
        }
        _ => {}
    }
    let dirs: Vec<&Path> = args.iter().skip(2).map(Path::new).collect();
    match (args.get(1).map(String::as_str), dirs.as_slice()) {
        (Some("prepare"), [a, b, c]) => copy_ups::prepare(a, b, c),
        (Some("run"), [a, b, c]) => copy_ups::run(a, b, c),
        _ => {
            eprintln!("usage: qemu-workload prepare|run A B C");
            std::process::exit(2);
        }
    }
}
