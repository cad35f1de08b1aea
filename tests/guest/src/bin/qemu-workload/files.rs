//! Files of known sizes in the lower layers, and paths and return codes for
//! the raw system calls.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// `len` bytes at `dir/name` (parents made as needed).
pub fn file(dir: &Path, name: &str, len: usize) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    File::create(&p).and_then(|mut f| f.write_all(&vec![b'o'; len])).expect("write lower file");
}

/// A libc return code as a Result.
pub fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}
