//! gzip for `/metrics`: whether a request's `Accept-Encoding` takes it
//! (`accepts`), and the compression itself (`compress`, at `LEVEL`).
//!
//! Prometheus always sends `Accept-Encoding: gzip`. The exposition's label
//! sets repeat, so it compresses many times over; the price is the agent's CPU,
//! once per render (render.rs shares one compression among the scrapes that
//! wait for the same render).

use hyper::header::{HeaderMap, ACCEPT_ENCODING};

/// Level 1, the fastest. Measured with `cargo run --release --example
/// render-bench -- 10000 20` (one core, 2026-12-06): the 22.3 MiB text of
/// 10,000 mounts compresses in 23 ms to 1.04 MiB at level 1, in 73 ms to 0.93
/// MiB at level 2, 98 ms (0.90 MiB) at 3 and 197 ms (0.86 MiB) at 6; protobuf
/// (17.2 MiB) alike. miniz_oxide has a fast path of its own for level 1
/// (greedy, one probe): level 2 costs three times the CPU for 11% fewer bytes, and
/// a scrape's CPU is spent on every node at every scrape, while the bytes are
/// already a twentieth. Those are one thread's figures: a body that big is now
/// cut into pieces compressed at once (`compress`), 34 -> 16 ms at the median
/// of the same benchmark on two cores, for 0.5% more bytes.
pub const LEVEL: u32 = 1;

/// Whether the request's `Accept-Encoding` headers take gzip (RFC 9110, 12.5.3):
/// `gzip` (or its alias `x-gzip`) with a q value above 0, or else `*` with one,
/// and not below the q that the header gives `identity` (its own, or else
/// `*`'s) if it gives one: a client that asks for gzip, as every scraper does,
/// gets it unless it prefers no coding outright. No header, or an
/// empty one: identity. Codings are case-insensitive; a malformed q value
/// counts as 0. When neither is acceptable the answer is plain all the same.
pub fn accepts(headers: &HeaderMap) -> bool {
    let (mut gzip, mut identity, mut any) = (None::<f64>, None::<f64>, None::<f64>);
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f64;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse::<f64>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0);
                }
            }
            let slot = match coding.as_str() {
                "gzip" | "x-gzip" => &mut gzip,
                "identity" => &mut identity,
                "*" => &mut any,
                _ => continue,
            };
            // The same coding twice: its best q.
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    let gzip = gzip.or(any).unwrap_or(0.0);
    let identity = identity.or(any).unwrap_or(0.0);
    gzip > 0.0 && gzip >= identity
}

/// Bodies of at least this many bytes per thread are compressed in pieces, one
/// per thread (`compress`).
const PIECE: usize = 2 << 20;

/// At most this many threads compress one body.
const THREADS: usize = 4;

/// `body` as one gzip member at `level` (0-9). A big body (10,000 mounts: 22 MiB
/// of text) is cut into pieces deflated on their own threads at once, as pigz
/// does: each piece but the last ends on a byte boundary (a sync flush), so the
/// pieces joined are one deflate stream, under one header and one CRC-32. Each
/// piece starts without the previous one's 32 KiB window, a few hundred bytes
/// lost. Hand-written (about 50 lines) rather than the `gzp` crate, which brings
/// a thread pool and channels for what is a few scoped threads here.
pub fn compress(body: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(THREADS);
    compress_in(body, flate2::Compression::new(level.min(9)), (body.len() / PIECE).clamp(1, threads))
}

fn compress_in(body: &[u8], level: flate2::Compression, pieces: usize) -> std::io::Result<Vec<u8>> {
    let size = body.len().div_ceil(pieces.max(1)).max(1);
    let parts: Vec<&[u8]> = if body.is_empty() { vec![body] } else { body.chunks(size).collect() };
    let last = parts.len() - 1;
    let deflated: Vec<std::io::Result<Vec<u8>>> = match parts.as_slice() {
        [one] => vec![deflate(one, level, true)],
        _ => std::thread::scope(|s| {
            let running: Vec<_> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| s.spawn(move || deflate(p, level, i == last)))
                .collect();
            let joined = running.into_iter().map(|t| t.join());
            joined
                .map(|r| r.unwrap_or_else(|_| Err(std::io::Error::other("a deflate thread panicked"))))
                .collect()
        }),
    };
    let mut crc = flate2::Crc::new();
    crc.update(body);
    // RFC 1952: magic, deflate, no flags, no time, no extra flags, OS unknown.
    let mut out = Vec::with_capacity(body.len() / 10 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    for d in deflated {
        out.extend_from_slice(&d?);
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    Ok(out)
}

/// One piece as raw deflate: ended by a sync flush, or finished if `last`.
fn deflate(piece: &[u8], level: flate2::Compression, last: bool) -> std::io::Result<Vec<u8>> {
    use flate2::{FlushCompress, Status};
    let mut c = flate2::Compress::new(level, false);
    let mut out = Vec::with_capacity(piece.len() / 10 + 64);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let read = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
        let status = c.compress_vec(piece.get(read..).unwrap_or(&[]), &mut out, flush)?;
        let all_in = usize::try_from(c.total_in()).unwrap_or(usize::MAX) >= piece.len();
        // A flush is complete when it returns with room left in the output.
        let done = if last { status == Status::StreamEnd } else { all_in && out.len() < out.capacity() };
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use hyper::header::HeaderValue;

    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn negotiation() {
        let yes = [
            "gzip",
            "GZIP",
            // Go's net/http, and so Prometheus.
            "gzip",
            "deflate, gzip;q=1.0, *;q=0.5",
            "br;q=1, gzip;q=0.001",
            "x-gzip",
            "*",
            "*;q=0.3",
            "gzip ; q=0.8, identity;q=0.8",
            "identity;q=0, gzip;q=0.1",
            "gzip;q=0, gzip;q=0.5",
            "gzip;q=0.5, *;q=0.4",
        ];
        for v in yes {
            assert!(accepts(&with(&[v])), "{v:?} takes gzip");
        }
        let no = [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip; Q=0",
            "gzip;q=0, *",
            "*;q=0",
            "gzip;q=0.5, identity",
            "gzip;q=2",
            "gzip;q=abc",
            "gzip;q=-1",
            "gzipx, xgzip",
            "*;q=0.5, identity;q=1",
            "gzip;q=0.5, *",
        ];
        for v in no {
            assert!(!accepts(&with(&[v])), "{v:?} does not take gzip");
        }
        assert!(!accepts(&HeaderMap::new()), "no header: identity");
        assert!(accepts(&with(&["identity;q=0.5", "gzip"])), "two header lines are one list");
        assert!(!accepts(&with(&["gzip;q=0", "br"])), "two header lines are one list");
    }

    /// The compression decompresses to the input, at every level.
    #[test]
    fn round_trip() {
        let body: Vec<u8> =
            (0..20_000).flat_map(|i| format!("m{{i=\"{}\"}} {i}\n", i % 97).into_bytes()).collect();
        for level in [0, 1, 3, 9, 42] {
            let gz = compress(&body, level).expect("compress");
            assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip member");
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).expect("decompress");
            assert_eq!(back, body, "level {level}");
            if level > 0 {
                assert!(gz.len() < body.len() / 4, "level {level}: {} of {}", gz.len(), body.len());
            }
        }
        for pieces in [2, 3, 7] {
            let gz = compress_in(&body, flate2::Compression::new(LEVEL), pieces).expect("compress");
            let mut back = Vec::new();
            let mut d = flate2::read::GzDecoder::new(&gz[..]);
            d.read_to_end(&mut back).expect("one member, decompressed whole");
            assert_eq!(back, body, "{pieces} pieces");
            assert!(d.header().is_some(), "{pieces} pieces: one header");
            assert!(gz.len() < body.len() / 4, "{pieces} pieces: {} of {}", gz.len(), body.len());
            // gzip(1) checks the CRC and length too.
            let mut gunzip = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("gzip(1)");
            let mut stdin = gunzip.stdin.take().expect("stdin");
            let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &gz));
            let out = gunzip.wait_with_output().expect("gzip -dc");
            writer.join().expect("writer").expect("write");
            assert!(out.status.success() && out.stdout == body, "{pieces} pieces: gzip -dc");
        }
        assert_eq!(
            compress(b"", LEVEL).map(|gz| gz.is_empty()).ok(),
            Some(false),
            "an empty body is a member too"
        );
    }
}
