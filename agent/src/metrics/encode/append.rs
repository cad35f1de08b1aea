//! Appending short byte strings without a call to the C library's `memcpy`.
//!
//! A render of 10,000 mounts appends a few million pieces of a few to a hundred
//! bytes (names, label names and values, a mount's rendered labels, numbers).
//! The shipped static binary links musl, whose x86_64 `memcpy` aligns byte by
//! byte, then runs `rep movsq`: slow to start, so slow for short copies. Here a
//! piece of up to [`INLINE_MAX`] bytes is moved in 16-byte loads and stores
//! (the last one overlapping), or two overlapping 8- or 4-byte ones, or bytes;
//! longer ones go to `extend_from_slice`. docs/performance.md ("The shipped
//! static binary and musl") has the figures. Hand-written: no crate offers it,
//! and `extend_from_slice` is what it replaces (the tests check every length
//! against it).

/// The longest piece moved inline: a mount's rendered labels fit.
pub const INLINE_MAX: usize = 256;

/// Appends `b` to `out`.
#[inline(always)]
pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n > INLINE_MAX || n == 0 {
        out.extend_from_slice(b);
        return;
    }
    out.reserve(n);
    // SAFETY: n bytes are reserved past len, and every store lands in
    // [len, len + n); every load reads within b (n >= the width of its move).
    unsafe {
        let len = out.len();
        let dst = out.as_mut_ptr().add(len);
        let src = b.as_ptr();
        if n >= 16 {
            let mut i = 0;
            while i + 16 < n {
                dst.add(i).cast::<u128>().write_unaligned(src.add(i).cast::<u128>().read_unaligned());
                i += 16;
            }
            dst.add(n - 16).cast::<u128>().write_unaligned(src.add(n - 16).cast::<u128>().read_unaligned());
        } else if n >= 8 {
            dst.cast::<u64>().write_unaligned(src.cast::<u64>().read_unaligned());
            dst.add(n - 8).cast::<u64>().write_unaligned(src.add(n - 8).cast::<u64>().read_unaligned());
        } else if n >= 4 {
            dst.cast::<u32>().write_unaligned(src.cast::<u32>().read_unaligned());
            dst.add(n - 4).cast::<u32>().write_unaligned(src.add(n - 4).cast::<u32>().read_unaligned());
        } else {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(len + n);
    }
}

/// Appends `s` to `out`.
#[inline(always)]
pub fn str(out: &mut String, s: &str) {
    // SAFETY: the bytes appended are a whole &str, so `out` stays UTF-8.
    bytes(unsafe { out.as_mut_vec() }, s.as_bytes());
}

/// A `fmt::Write` into a `String` through [`str`]: `core::fmt` writes a number
/// in several short pieces.
pub struct Writer<'a>(pub &'a mut String);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        str(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    /// Every length from 0 to past [`INLINE_MAX`] (both sides of each move's
    /// width), ASCII and multi-byte UTF-8, onto strings of every alignment: the
    /// same bytes as `push_str`.
    #[test]
    fn appends_exactly_what_push_str_does() {
        let ascii: String = (0..INLINE_MAX + 40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let wide = "é€😀ü".repeat(30);
        for source in [ascii.as_str(), wide.as_str()] {
            for end in (0..=source.len()).filter(|&i| source.is_char_boundary(i)) {
                let piece = &source[..end];
                for before in 0..9 {
                    let mut ours = "x".repeat(before);
                    let mut theirs = ours.clone();
                    super::str(&mut ours, piece);
                    theirs.push_str(piece);
                    assert_eq!(ours, theirs, "{} bytes after {before}", piece.len());
                }
            }
        }
    }

    use super::INLINE_MAX;

    #[test]
    fn the_writer_prints_what_display_does() {
        for v in [0.1f64, -2.5e-7, 1.7e308, f64::NAN, f64::NEG_INFINITY, 1234567.890625] {
            let mut ours = String::from("v");
            let _ = write!(super::Writer(&mut ours), " {v}");
            assert_eq!(ours, format!("v {v}"));
        }
    }
}
