//! Histograms: Prometheus native (exponential) buckets at schema 3, bucketed in
//! the kernel (see [`bucket`]).

/// Prometheus native (exponential) buckets at schema 3, bucketed in
/// the kernel. Bucket `i` holds values in (2^((i-1)/8), 2^(i/8)] of the kernel's
/// unit; [`ZERO_BUCKET`] holds 0. The kernel's units are powers of two of the
/// base units, so its boundaries are the native histogram's own: bytes stay
/// bytes, latencies are counted in 2^-30 s ([`ns_to_latency_units`]). The sums
/// live in CountValue (data_bytes, latency_ns), which is updated anyway.
pub const HIST_SCHEMA: i32 = 3;
/// Buckets per power of two (2^HIST_SCHEMA).
pub const HIST_PER_OCTAVE: u32 = 1 << HIST_SCHEMA;
pub const HIST_BYTES: u8 = 0;
/// Latency in units of 2^-30 s (about 0.93 ns).
pub const HIST_LATENCY: u8 = 1;
/// log2 of the latency unit in seconds.
pub const LATENCY_UNIT_LOG2: i32 = -30;
/// The bucket code of the value 0 (indices of non-zero u64 values are 0..=512).
pub const ZERO_BUCKET: u16 = u16::MAX;

/// The native bucket index, in the base unit (bytes, seconds), of kernel bucket
/// `bucket` of histogram `hist`; None for [`ZERO_BUCKET`].
pub const fn native_index(hist: u8, bucket: u16) -> Option<i32> {
    if bucket == ZERO_BUCKET {
        None
    } else if hist == HIST_LATENCY {
        Some(bucket as i32 + LATENCY_UNIT_LOG2 * HIST_PER_OCTAVE as i32)
    } else {
        Some(bucket as i32)
    }
}

/// The classic (text format) buckets of histogram `hist`: upper bounds 2^lo ..
/// 2^hi of the base unit, every other power of two (a bucket every factor of 4),
/// all of them native bucket boundaries: (lo, hi).
pub const fn exported_buckets(hist: u8) -> (i32, i32) {
    if hist == HIST_BYTES {
        (10, 34) // 1 KiB .. 16 GiB
    } else {
        (-20, 6) // 2^-20 s (~0.95 us) .. 64 s
    }
}

/// A latency in nanoseconds as units of 2^-30 s, rounded down: ns * 2^30 / 1e9
/// without 128-bit arithmetic (q = ns / 1e9 whole seconds, r the rest; r << 30
/// fits in 64 bits since r < 2^30). Wraps only past 2^34 s (544 years).
#[inline(always)]
pub const fn ns_to_latency_units(ns: u64) -> u64 {
    const NS_PER_S: u64 = 1_000_000_000;
    let (q, r) = (ns / NS_PER_S, ns % NS_PER_S);
    (q << 30).wrapping_add((r << 30) / NS_PER_S)
}

/// floor(2^(k/8) * 2^63) for k = 1..7: the boundaries inside one power of two,
/// for a mantissa normalised to 64 bits (irrational, so no value is equal).
const OCTAVE_BOUNDS: [u64; 7] = [
    0x8b95_c1e3_ea8b_d6e6,
    0x9837_f051_8db8_a96f,
    0xa5fe_d6a9_b151_38ea,
    0xb504_f333_f9de_6484,
    0xc567_2a11_5506_dadd,
    0xd744_fcca_d69d_6af4,
    0xeac0_c6e7_dd24_392e,
];

/// The kernel bucket of a value: ceil(8 * log2(v)) computed exactly, or
/// [`ZERO_BUCKET`] for 0. e = floor(log2 v) from the leading zeros; a power of
/// two ends bucket 8e; otherwise the mantissa (v shifted so its top bit is bit
/// 63, exact) is compared with the seven boundaries of its octave. Bounded and
/// unrolled: a handful of instructions for the verifier, no loop.
#[inline(always)]
pub const fn bucket(v: u64) -> u16 {
    if v == 0 {
        return ZERO_BUCKET;
    }
    let e = 63 - v.leading_zeros();
    if v & (v - 1) == 0 {
        return (HIST_PER_OCTAVE * e) as u16;
    }
    let m = v << (63 - e);
    let b = &OCTAVE_BOUNDS;
    let above = (m > b[0]) as u32
        + (m > b[1]) as u32
        + (m > b[2]) as u32
        + (m > b[3]) as u32
        + (m > b[4]) as u32
        + (m > b[5]) as u32
        + (m > b[6]) as u32;
    (HIST_PER_OCTAVE * e + 1 + above) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact reference: bucket i of v >= 1 is the i with 2^(i-1) < v^8 <= 2^i.
    fn exact(v: u64) -> u16 {
        use num_bigint::BigUint;
        let p = BigUint::from(v).pow(8);
        let i = (p.clone() - 1u32).bits() as u16; // 2^(i-1) <= p - 1 < 2^i
        assert!(p <= BigUint::from(1u32) << i && (i == 0 || p > BigUint::from(1u32) << (i - 1)));
        i
    }

    /// ceil(8 log2 v) in f64, where f64 is unambiguous (None within 1e-6 of a boundary).
    fn float(v: u64) -> Option<u16> {
        let x = 8.0 * (v as f64).log2();
        ((x - x.round()).abs() > 1e-6 || (v as f64) as u64 == v && v.is_power_of_two())
            .then(|| x.ceil() as u16)
    }

    fn check(v: u64) {
        let b = bucket(v);
        assert_eq!(b, exact(v), "v = {v}");
        if let Some(f) = float(v) {
            assert_eq!(b, f, "f64 disagrees at v = {v}");
        }
    }

    #[test]
    fn octave_bounds_are_floors_of_roots_of_two() {
        use num_bigint::BigUint;
        for (k, t) in OCTAVE_BOUNDS.iter().enumerate() {
            let k = k as u32 + 1;
            let two = BigUint::from(1u32) << (504 + k); // (2^(63 + k/8))^8
            assert!(BigUint::from(*t).pow(8) < two && BigUint::from(*t + 1).pow(8) > two, "k = {k}");
        }
    }

    #[test]
    fn buckets_are_native_schema_3_boundaries() {
        assert_eq!(bucket(0), ZERO_BUCKET);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 8);
        assert_eq!(bucket(3), 13, "log2(3) = 1.585: ceil(12.68)");
        assert_eq!(bucket(4096), 96);
        assert_eq!(bucket(4097), 97);
        assert_eq!(bucket(u64::MAX), 512);
        // Every value up to 2^20, then around every power of two and every boundary.
        for v in 1..=1u64 << 20 {
            check(v);
        }
        for e in 0..64u32 {
            let p = 1u64 << e;
            for v in [p.wrapping_sub(1), p, p + 1, p.wrapping_add(2), p | (p >> 1)] {
                if v != 0 {
                    check(v);
                }
            }
            for t in OCTAVE_BOUNDS {
                // The boundary's neighbours in this octave: t >> (63 - e) and the next integer.
                let below = t >> (63 - e);
                for v in [below.saturating_sub(1), below, below + 1, below + 2] {
                    if v != 0 {
                        check(v);
                    }
                }
            }
        }
        check(u64::MAX);
        check(u64::MAX - 1);
        // A pseudo-random sweep over the whole range.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check((x >> (x % 64)).max(1));
        }
    }

    #[test]
    fn latency_units_are_2_to_the_minus_30_seconds() {
        assert_eq!(ns_to_latency_units(0), 0);
        assert_eq!(ns_to_latency_units(1), 1, "1 ns = 1.07 units");
        assert_eq!(ns_to_latency_units(1_000_000_000), 1 << 30);
        assert_eq!(ns_to_latency_units(1_500_000_000), 3 << 29);
        for ns in [1u64, 999, 1_000, 123_456_789, 999_999_999, 7_000_000_001, 86_400_000_000_000] {
            let want = (u128::from(ns) << 30) / 1_000_000_000;
            assert_eq!(u128::from(ns_to_latency_units(ns)), want, "{ns} ns");
        }
        // One second ends native bucket 0 in seconds.
        assert_eq!(native_index(HIST_LATENCY, bucket(ns_to_latency_units(1_000_000_000))), Some(0));
        assert_eq!(native_index(HIST_LATENCY, bucket(1)), Some(-240));
        assert_eq!(native_index(HIST_BYTES, bucket(1024)), Some(80));
        assert_eq!(native_index(HIST_LATENCY, ZERO_BUCKET), None);
    }
}
