//! `userxattr-mount ROOT` and `userxattr-run MERGED`: an overlay with the
//! `userxattr` option, the one rootless mounts need (overlay's own xattrs in
//! user.overlay.*; Linux 5.11). ROOT/lower holds two files. The mount is tried
//! first with metacopy=on as well, which the kernel refuses together with
//! userxattr, then with userxattr alone; each answer is printed
//! (`=== OUTCOME`) and the host checks it against the kernel
//! (exact_counts/layers.rs), the refusal of a kernel without the option too.

use std::fs;
use std::os::unix::fs::chown;
use std::path::Path;

use crate::copy_ups::step;
use crate::files::{file, mount_overlay, mounted, outcome};

/// The lower files, chowned on the merged side: one data copy-up each.
pub const FILES: [(&str, usize); 2] = [("u1.dat", 22_000), ("u2.dat", 23_000)];

/// `userxattr-mount ROOT`: ROOT/{lower,upper,work,merged}, the lower files,
/// and the two mount attempts at ROOT/merged.
pub fn userxattr_mount(root: &Path) {
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    for (name, len) in FILES {
        file(&root.join("lower"), name, len);
    }
    let r = root.display();
    let options = format!("lowerdir={r}/lower,upperdir={r}/upper,workdir={r}/work,userxattr");
    let merged = root.join("merged");
    let conflicting = mount_overlay(&merged, &format!("{options},metacopy=on"));
    outcome("userxattr,metacopy=on", &conflicting);
    if conflicting.is_ok() {
        // Accepted against the rule (the host fails on the outcome): out of
        // the way of the attempt that counts.
        let _ = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty());
    }
    outcome("userxattr", &mount_overlay(&merged, &options));
}

/// `userxattr-run MERGED`: chowns each file to 6:6 where the mount came up; a
/// kernel that refused it has nothing there (the host asserts the refusal).
pub fn userxattr_run(merged: &Path) {
    if !mounted(merged) {
        println!("workload: no overlay at {} (refused): no copy-ups there", merged.display());
        return;
    }
    for (name, _) in FILES {
        step(&format!("chown {name} on the userxattr mount"), chown(merged.join(name), Some(6), Some(6)));
    }
}
