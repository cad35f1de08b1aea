//! `caps-exec`: a command run with only some capabilities.

/// `caps-exec CAP,CAP,... -- CMD ARGS`: runs CMD (as root) with only the named
/// capabilities, like `setpriv --bounding-set`: every other one is dropped from the
/// bounding set, so the exec'd root process gets just these.
pub fn caps_exec(args: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    let names: [(&str, u32); 5] =
        [("dac_read_search", 2), ("sys_admin", 21), ("sys_resource", 24), ("perfmon", 38), ("bpf", 39)];
    let keep: Vec<u32> = args[0]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|n| names.iter().find(|(k, _)| *k == n).unwrap_or_else(|| panic!("unknown capability {n}")).1)
        .collect();
    for cap in 0..64u32 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability.
        if !keep.contains(&cap)
            && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
        {
            break;
        }
    }
    let cmd = &args[2..];
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    panic!("exec {}: {err}", cmd[0]);
}
