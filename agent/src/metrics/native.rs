//! The kernel's native histogram: exponential (Prometheus native) buckets at a
//! schema plus a zero bucket, as the copy-up probes aggregate them, with its
//! normalisation (`normalise`) and its classic form (`classic`). The model
//! (`Family::add_kernel_histogram`) records it; both encoders write it.

/// A histogram as the kernel aggregates it: exponential (Prometheus native)
/// buckets at `schema` plus a zero bucket. Classic buckets are sums of these, so
/// their bounds must be bucket boundaries too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NativeHistogram {
    /// Native schema: 2^schema buckets per power of two.
    pub schema: i32,
    /// Observations of exactly 0 (the native zero bucket, threshold 0).
    pub zero_count: u64,
    /// (index, observations), ascending by index, not cumulative: index `i`
    /// holds values in (2^((i-1)/2^schema), 2^(i/2^schema)] of the base unit.
    pub buckets: Vec<(i32, u64)>,
    /// Observations in all: zero_count plus the buckets' counts.
    pub count: u64,
    /// Sum of the observations, in the base unit.
    pub sum: f64,
}

/// The native schemas Prometheus accepts (2^-4 .. 2^8 buckets per power of two):
/// it rejects a whole scrape with a histogram outside them.
pub const SCHEMAS: std::ops::RangeInclusive<i32> = -4..=8;

impl NativeHistogram {
    /// Buckets per power of two (a fraction for negative schemas).
    fn scale(schema: i32) -> f64 {
        2f64.powi(schema)
    }

    /// The index of the bucket whose upper boundary is `bound`, if it is one.
    pub fn boundary_index(schema: i32, bound: f64) -> Option<i32> {
        let i = bound.log2() * Self::scale(schema);
        let r = i.round();
        ((i - r).abs() < 1e-9 && r.is_finite()).then_some(r as i32)
    }

    /// Sorts the buckets by index, merges duplicate indices and derives the
    /// count from the zero bucket and the buckets. The kernel's per-CPU values
    /// are read while copy-ups update them, so the count read beside them can
    /// be off by the copy-ups in flight; Prometheus rejects a whole scrape whose
    /// native histogram's count differs from its buckets' ("3 observations found
    /// in buckets, but the Count field is 5"). The classic `+Inf` bucket and
    /// `_count` of the text form are this count too, so both formats agree.
    /// The sum is kept as read: nothing checks it against the buckets, and it
    /// stays within the in-flight copy-ups of the sum counter.
    pub fn normalise(&mut self) {
        self.buckets.sort_unstable_by_key(|b| b.0);
        self.buckets.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(next.1);
            }
            same
        });
        self.buckets.retain(|b| b.1 > 0);
        self.count = self.buckets.iter().fold(self.zero_count, |n, b| n.saturating_add(b.1));
    }

    /// Cumulative counts at `bounds`.
    ///
    /// Contract: `bounds` ascend and each is a native bucket boundary at this
    /// schema (`boundary_index` is `Some`), and the buckets are sorted
    /// (`normalise`). A bound that is not a boundary would split a bucket: it
    /// counts only up to the boundary below it, which debug builds (the tests)
    /// refuse with a panic.
    pub fn classic(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let scale = Self::scale(self.schema);
        let mut out = Vec::with_capacity(bounds.len());
        let (mut acc, mut next) = (self.zero_count, self.buckets.iter().peekable());
        for &le in bounds {
            let exact = Self::boundary_index(self.schema, le);
            debug_assert!(
                exact.is_some(),
                "classic bound {le} is not a native boundary at schema {}",
                self.schema
            );
            let top = exact.unwrap_or((le.log2() * scale).floor() as i32);
            while let Some((_, n)) = next.next_if(|(i, _)| *i <= top) {
                acc += n;
            }
            out.push((le, acc));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic form of the buckets (its text form: encode::text's
    /// kernel_histograms_are_written_in_their_classic_form).
    #[test]
    fn classic_buckets_are_sums_of_native_ones() {
        // schema 3: 8 buckets per power of two; index 8 ends at 2, index 16 at 4.
        let h = NativeHistogram {
            schema: 3,
            zero_count: 2,
            buckets: vec![(-1, 1), (0, 1), (1, 4), (8, 3), (9, 5), (16, 1), (40, 7)],
            count: 24,
            sum: 100.0,
        };
        assert_eq!(NativeHistogram::boundary_index(3, 2.0), Some(8));
        assert_eq!(NativeHistogram::boundary_index(3, 2f64.powf(-20.0)), Some(-160));
        assert_eq!(
            NativeHistogram::boundary_index(3, 1.024e-6),
            None,
            "2^10 ns is not a boundary in seconds"
        );
        let c = h.classic(&[0.5, 1.0, 2.0, 4.0, 16.0]);
        assert_eq!(c, vec![(0.5, 2), (1.0, 4), (2.0, 11), (4.0, 17), (16.0, 17)]);
    }

    #[test]
    #[should_panic(expected = "not a native boundary")]
    fn classic_bounds_must_be_boundaries() {
        let h = NativeHistogram { schema: 3, zero_count: 0, buckets: vec![(0, 1)], count: 1, sum: 1.0 };
        let _ = h.classic(&[1.024e-6]);
    }
}
