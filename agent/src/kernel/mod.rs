//! Facts about the running kernel that the probes depend on: struct offsets and
//! function argument positions from BTF, which functions exist (kallsyms), the
//! kernel version (only a fallback where a module has no BTF), and what the
//! kernel offers at all (`features`: kprobes, quota, overlayfs built in or a module).

pub mod btf;
pub mod features;
pub mod hooks;
pub mod symbols;

/// `major.minor` of the running kernel, from uname.
pub fn version() -> Option<(u32, u32)> {
    let uname = rustix::system::uname();
    parse_version(&uname.release().to_string_lossy())
}

pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions() {
        assert_eq!(super::parse_version("6.1.0-47-cloud-amd64"), Some((6, 1)));
        assert_eq!(super::parse_version("5.10.0-36-cloud-amd64"), Some((5, 10)));
        assert_eq!(super::parse_version("7.2.12+deb14-cloud-amd64"), Some((7, 2)));
        assert_eq!(super::parse_version("junk"), None);
    }
}
