//! Which kernel functions exist, from /proc/kallsyms (names only: addresses may
//! read as zero without privileges, names do not).

use std::collections::HashSet;
use std::path::Path;

/// Text symbols of vmlinux and of the overlay module.
#[derive(Debug, Default, Clone)]
pub struct Symbols {
    names: HashSet<String>,
    /// Whether any symbol came from the `[overlay]` module.
    pub overlay_module: bool,
    /// Whether the kernel is built with KASAN (larger kernel stacks).
    pub kasan: bool,
}

impl Symbols {
    pub fn read(path: &Path) -> std::io::Result<Symbols> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Keeps the `ovl_*` text symbols; that is all the probes look up.
    pub fn parse(text: &str) -> Symbols {
        let mut s = Symbols::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(_addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            if !name.starts_with("ovl_") {
                s.kasan |= name == "kasan_init";
                continue;
            }
            if f.next() == Some("[overlay]") {
                s.overlay_module = true;
            }
            s.names.insert(name.to_owned());
        }
        s
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether overlayfs is there at all (built in or module loaded).
    pub fn has_overlay(&self) -> bool {
        self.has("ovl_copy_up_one")
    }

    /// The first of `candidates` that exists.
    pub fn first<'a>(&self, candidates: &[&'a str]) -> Option<&'a str> {
        candidates.iter().copied().find(|c| self.has(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_module_and_builtin_symbols() {
        let s = Symbols::parse(
            "ffffffffc0a01000 t ovl_copy_up_one\t[overlay]\n\
             ffffffffc0a02000 t ovl_copy_up_data.isra.0\t[overlay]\n\
             ffffffff81000000 T _stext\n\
             0000000000000000 d ovl_fs_type\t[overlay]\n",
        );
        assert!(s.has_overlay() && s.overlay_module);
        assert!(!s.has("ovl_copy_up_data"), "clones are not the function");
        assert!(!s.has("ovl_fs_type"), "data symbols are not probe targets");
        assert_eq!(s.first(&["ovl_copy_up_file", "ovl_copy_up_one"]), Some("ovl_copy_up_one"));
        let builtin = Symbols::parse("0000000000000000 t ovl_copy_up_one\n");
        assert!(builtin.has_overlay() && !builtin.overlay_module);
    }
}
