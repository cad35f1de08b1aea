//! The system call a copying thread is in: its cause, and for the calls that
//! set attributes (chown, chmod, utimes families) which argument holds what they
//! set, so that the programs can tell a no-op. Arch-neutral tables (the calls
//! and their arguments), then one table per arch: the call numbers and where
//! the saved user registers keep the call number and the arguments
//! ([`Abi`]). The agent writes the encoded table into the programs'
//! SYSCALL_CAUSE map and the register offsets (from BTF) into their config.
//!
//! Copy-ups outside a listed call (io_uring, kernel threads such as nfsd and
//! ksmbd, 32-bit callers) fall back on the copy-up's own open flags: `open`
//! when it has them, else `other`.

use super::cause::*;

/// Entries of the SYSCALL_CAUSE map: x86_64 numbers are below 512 (x32
/// calls are the same numbers with bit 30 set, masked off).
pub const TABLE_SIZE: u32 = 512;

/// What an attribute-setting call sets, and in which argument (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sets {
    Nothing,
    /// Owner and group: the uid in argument `n`, the gid in `n + 1` (-1: unchanged).
    Owner(u8),
    /// The permission bits in argument `n`.
    Mode(u8),
    /// Access and modification times, from user memory at argument `n`.
    Times(u8, TimeFormat),
}

/// How a utimes-family call passes its two times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// `struct utimbuf` (utime): actime, modtime in seconds.
    Utimbuf = 1,
    /// `struct timeval[2]` (utimes, futimesat): seconds and microseconds.
    Timeval = 2,
    /// `struct timespec[2]` (utimensat): seconds and nanoseconds, or UTIME_NOW / UTIME_OMIT.
    Timespec = 3,
}

/// One call: its name, the cause of its copy-ups, what it sets. OPEN means
/// "the open family": `open` when the copy-up carries open flags (the file
/// itself, opened for write), `create` when it does not (the parent of a file
/// created with O_CREAT or O_TMPFILE).
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub name: &'static str,
    pub cause: u8,
    pub sets: Sets,
}

const fn call(name: &'static str, cause: u8) -> Call {
    Call { name, cause, sets: Sets::Nothing }
}

const fn sets(name: &'static str, cause: u8, sets: Sets) -> Call {
    Call { name, cause, sets }
}

/// Every call the programs recognise (Linux's argument order, the same on every arch).
pub const CALLS: &[Call] = &[
    call("open", OPEN),
    call("ioctl", XATTR), // FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR: ovl_fileattr_set
    call("truncate", TRUNCATE),
    call("ftruncate", TRUNCATE),
    call("rename", RENAME),
    call("mkdir", CREATE),
    call("rmdir", REMOVE),
    call("creat", OPEN),
    call("link", LINK),
    call("unlink", REMOVE),
    call("symlink", CREATE),
    sets("chmod", CHMOD, Sets::Mode(1)),
    sets("fchmod", CHMOD, Sets::Mode(1)),
    sets("chown", CHOWN, Sets::Owner(1)),
    sets("fchown", CHOWN, Sets::Owner(1)),
    sets("lchown", CHOWN, Sets::Owner(1)),
    sets("utime", UTIMES, Sets::Times(1, TimeFormat::Utimbuf)),
    call("mknod", CREATE),
    call("setxattr", XATTR),
    call("lsetxattr", XATTR),
    call("fsetxattr", XATTR),
    call("removexattr", XATTR),
    call("lremovexattr", XATTR),
    call("fremovexattr", XATTR),
    sets("utimes", UTIMES, Sets::Times(1, TimeFormat::Timeval)),
    call("openat", OPEN),
    call("mkdirat", CREATE),
    call("mknodat", CREATE),
    sets("fchownat", CHOWN, Sets::Owner(2)),
    sets("futimesat", UTIMES, Sets::Times(2, TimeFormat::Timeval)),
    call("unlinkat", REMOVE),
    call("renameat", RENAME),
    call("linkat", LINK),
    call("symlinkat", CREATE),
    sets("fchmodat", CHMOD, Sets::Mode(2)),
    sets("utimensat", UTIMES, Sets::Times(2, TimeFormat::Timespec)),
    call("open_by_handle_at", OPEN),
    call("renameat2", RENAME),
    call("openat2", OPEN),
    sets("fchmodat2", CHMOD, Sets::Mode(2)),
    call("setxattrat", XATTR),
    call("removexattrat", XATTR),
];

/// Where the saved user registers (`struct pt_regs`) keep a system call's
/// number and arguments, and how a 64-bit native caller is told from others.
/// Member names; the agent reads their offsets from BTF.
pub struct Abi {
    pub arch: &'static str,
    /// The call number.
    pub nr: &'static str,
    /// The arguments, in order: (member, index in it when it is an array).
    pub args: [(&'static str, u32); 6],
    /// A member whose value is `native` for a native 64-bit caller.
    pub native: (&'static str, u64),
    /// Bits of the call number to mask off (x32 calls on x86_64).
    pub nr_mask_off: u64,
    /// (name, number) of every call of [`CALLS`] this arch has.
    pub numbers: &'static [(&'static str, u32)],
}

/// x86_64: numbers from arch/x86/entry/syscalls/syscall_64.tbl; `cs` is
/// __USER_CS (0x33) for 64-bit tasks, 0x23 for 32-bit ones; x32 calls set
/// __X32_SYSCALL_BIT.
pub const X86_64: Abi = Abi {
    arch: "x86_64",
    nr: "orig_ax",
    args: [("di", 0), ("si", 0), ("dx", 0), ("r10", 0), ("r8", 0), ("r9", 0)],
    native: ("cs", 0x33),
    nr_mask_off: 0x4000_0000,
    numbers: &[
        ("open", 2),
        ("ioctl", 16),
        ("truncate", 76),
        ("ftruncate", 77),
        ("rename", 82),
        ("mkdir", 83),
        ("rmdir", 84),
        ("creat", 85),
        ("link", 86),
        ("unlink", 87),
        ("symlink", 88),
        ("chmod", 90),
        ("fchmod", 91),
        ("chown", 92),
        ("fchown", 93),
        ("lchown", 94),
        ("utime", 132),
        ("mknod", 133),
        ("setxattr", 188),
        ("lsetxattr", 189),
        ("fsetxattr", 190),
        ("removexattr", 197),
        ("lremovexattr", 198),
        ("fremovexattr", 199),
        ("utimes", 235),
        ("openat", 257),
        ("mkdirat", 258),
        ("mknodat", 259),
        ("fchownat", 260),
        ("futimesat", 261),
        ("unlinkat", 263),
        ("renameat", 264),
        ("linkat", 265),
        ("symlinkat", 266),
        ("fchmodat", 268),
        ("utimensat", 280),
        ("open_by_handle_at", 304),
        ("renameat2", 316),
        ("openat2", 437),
        ("fchmodat2", 452),
        ("setxattrat", 463),
        ("removexattrat", 466),
    ],
};

/// aarch64: numbers from include/uapi/asm-generic/unistd.h (with
/// __ARCH_WANT_RENAMEAT): no open, creat, chown, chmod, mkdir, link, utimes and
/// the like, only their `*at` forms. `syscallno` is an s32 (NO_SYSCALL is -1)
/// followed by 32 other bits (unused2, later pmr): masked off. `pstate`'s mode
/// bits (PSR_MODE_MASK 0x1f) are EL0t (0) for a 64-bit user task;
/// PSR_MODE32_BIT (0x10) marks a 32-bit (compat) task and kernel threads and
/// io_uring workers have EL1h (5). The condition flags above change with every
/// compare, so the programs compare the mode bits only (agent-ebpf syscall.rs,
/// `NATIVE_MASK`).
pub const AARCH64: Abi = Abi {
    arch: "aarch64",
    nr: "syscallno",
    args: [("regs", 0), ("regs", 1), ("regs", 2), ("regs", 3), ("regs", 4), ("regs", 5)],
    native: ("pstate", 0),
    nr_mask_off: 0,
    numbers: &[
        ("setxattr", 5),
        ("lsetxattr", 6),
        ("fsetxattr", 7),
        ("removexattr", 14),
        ("lremovexattr", 15),
        ("fremovexattr", 16),
        ("ioctl", 29),
        ("mknodat", 33),
        ("mkdirat", 34),
        ("unlinkat", 35),
        ("symlinkat", 36),
        ("linkat", 37),
        ("renameat", 38),
        ("truncate", 45),
        ("ftruncate", 46),
        ("fchmod", 52),
        ("fchmodat", 53),
        ("fchownat", 54),
        ("fchown", 55),
        ("openat", 56),
        ("utimensat", 88),
        ("open_by_handle_at", 265),
        ("renameat2", 276),
        ("openat2", 437),
        ("fchmodat2", 452),
        ("setxattrat", 463),
        ("removexattrat", 466),
    ],
};

/// The ABI of the arch this is built for (the agent's; the programs take
/// everything from the agent's config).
pub const NATIVE: Option<&Abi> = if cfg!(target_arch = "x86_64") {
    Some(&X86_64)
} else if cfg!(target_arch = "aarch64") {
    Some(&AARCH64)
} else {
    None
};

pub fn find(name: &str) -> Option<&'static Call> {
    CALLS.iter().find(|c| c.name.as_bytes() == name.as_bytes())
}

/// The SYSCALL_CAUSE value of a call (0: not in the table): bits 0-3 cause + 1,
/// 4-6 what it sets (1 owner, 2 mode, 3 times), 7-9 the argument, 10-11 the
/// time format.
pub const fn encode(c: &Call) -> u16 {
    let (what, arg, fmt) = match c.sets {
        Sets::Nothing => (0u16, 0u16, 0u16),
        Sets::Owner(a) => (1, a as u16, 0),
        Sets::Mode(a) => (2, a as u16, 0),
        Sets::Times(a, f) => (3, a as u16, f as u16),
    };
    (c.cause as u16 + 1) | what << 4 | arg << 7 | fmt << 10
}

pub const SETS_OWNER: u16 = 1;
pub const SETS_MODE: u16 = 2;
pub const SETS_TIMES: u16 = 3;

/// What an encoded entry sets (0 nothing, [`SETS_OWNER`], [`SETS_MODE`], [`SETS_TIMES`]).
#[inline(always)]
pub const fn entry_sets(entry: u16) -> u16 {
    entry >> 4 & 7
}

/// The argument of an encoded entry that holds what it sets.
#[inline(always)]
pub const fn entry_arg(entry: u16) -> u32 {
    (entry >> 7 & 7) as u32
}

/// The [`TimeFormat`] code of an encoded utimes-family entry.
#[inline(always)]
pub const fn entry_time_format(entry: u16) -> u16 {
    entry >> 10 & 3
}

/// The cause of a copy-up in the call of encoded `entry` (0 for a call not in
/// the table), given the copy-up's open flags.
#[inline(always)]
pub const fn cause_of(entry: u16, flags: u32) -> u8 {
    let c = (entry & 15) as u8;
    match c {
        0 if flags != 0 => OPEN,
        0 => OTHER,
        c if c - 1 == OPEN && flags == 0 => CREATE,
        c => c - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> u16 {
        encode(find(name).expect("in the table"))
    }

    #[test]
    fn causes() {
        assert_eq!(cause_of(entry("fchownat"), 0), CHOWN);
        assert_eq!(cause_of(entry("truncate"), 1), TRUNCATE, "truncate(2) copies with O_WRONLY");
        assert_eq!(cause_of(entry("openat"), 0o1), OPEN, "the file opened for write");
        assert_eq!(cause_of(entry("openat"), 0), CREATE, "the parent of a created file");
        assert_eq!(cause_of(0, 0o1), OPEN, "io_uring or a kernel thread opening for write");
        assert_eq!(cause_of(0, 0), OTHER);
    }

    #[test]
    fn what_each_call_sets_and_where() {
        for (name, sets, arg) in [
            ("chown", SETS_OWNER, 1),
            ("lchown", SETS_OWNER, 1),
            ("fchown", SETS_OWNER, 1),
            ("fchownat", SETS_OWNER, 2),
            ("chmod", SETS_MODE, 1),
            ("fchmod", SETS_MODE, 1),
            ("fchmodat", SETS_MODE, 2),
            ("fchmodat2", SETS_MODE, 2),
            ("utime", SETS_TIMES, 1),
            ("utimes", SETS_TIMES, 1),
            ("futimesat", SETS_TIMES, 2),
            ("utimensat", SETS_TIMES, 2),
            ("openat", 0, 0),
        ] {
            let e = entry(name);
            assert_eq!((entry_sets(e), entry_arg(e)), (sets, arg), "{name}");
        }
        assert_eq!(entry_time_format(entry("utimensat")), TimeFormat::Timespec as u16);
        assert_eq!(entry_time_format(entry("utime")), TimeFormat::Utimbuf as u16);
    }

    #[test]
    fn every_number_names_a_known_call_once() {
        for abi in [&X86_64, &AARCH64] {
            for (i, (name, nr)) in abi.numbers.iter().enumerate() {
                assert!(find(name).is_some(), "{name} has a number but no entry in CALLS");
                assert!(*nr < TABLE_SIZE, "{name}");
                assert!(abi.numbers[..i].iter().all(|(n, x)| n != name && x != nr), "{name} listed twice");
            }
        }
        let abi = &X86_64;
        for c in CALLS {
            assert!((c.cause as usize) < COUNT, "{}", c.name);
            assert!(abi.numbers.iter().any(|(n, _)| n == &c.name), "{} has no x86_64 number", c.name);
        }
    }

    /// aarch64 lacks exactly the calls the generic table left out for their
    /// `*at` forms (asm-generic/unistd.h).
    #[test]
    fn aarch64_has_only_the_at_forms() {
        let missing = CALLS.iter().map(|c| c.name).filter(|n| !AARCH64.numbers.iter().any(|(m, _)| m == n));
        assert!(missing.eq([
            "open",
            "rename",
            "mkdir",
            "rmdir",
            "creat",
            "link",
            "unlink",
            "symlink",
            "chmod",
            "chown",
            "lchown",
            "utime",
            "mknod",
            "utimes",
            "futimesat"
        ]));
        for (name, nr) in
            [("openat", 56), ("fchownat", 54), ("fchmodat", 53), ("utimensat", 88), ("renameat2", 276)]
        {
            assert!(AARCH64.numbers.contains(&(name, nr)), "{name}");
        }
    }
}
