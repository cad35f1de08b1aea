//! gzip for `/metrics`: whether a request's `Accept-Encoding` takes it
//! (`accepts`), and the compression itself (`compress`, at `LEVEL`).
//!
//! Prometheus always sends `Accept-Encoding: gzip`. The exposition's label
//! sets repeat, so it compresses many times over; the price is the agent's CPU,
//! once per render (render.rs shares one compression among the scrapes that
//! wait for the same render).

use std::io::Write as _;

use hyper::header::{HeaderMap, ACCEPT_ENCODING};

/// Level 1, the fastest. Measured with `cargo run --release --example
/// render-bench -- 10000 20` (one core, 2026-12-06): the 22.3 MiB text of
/// 10,000 mounts compresses in 23 ms to 1.04 MiB at level 1, in 73 ms to 0.93
/// MiB at level 2, 98 ms (0.90 MiB) at 3 and 197 ms (0.86 MiB) at 6; protobuf
/// (17.2 MiB) alike. miniz_oxide has a fast path of its own for level 1
/// (greedy, one probe): level 2 costs three times the CPU for 11% fewer bytes, and
/// a scrape's CPU is spent on every node at every scrape, while the bytes are
/// already a twentieth.
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

/// `body` as a gzip member at `level` (0-9).
pub fn compress(body: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    // Text compresses 10-20 times: a tenth of the input is a fair first guess.
    let out = Vec::with_capacity(body.len() / 10 + 64);
    let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(level.min(9)));
    e.write_all(body)?;
    e.finish()
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
        assert_eq!(
            compress(b"", LEVEL).map(|gz| gz.is_empty()).ok(),
            Some(false),
            "an empty body is a member too"
        );
    }
}
