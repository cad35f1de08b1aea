//! The text exposition format 0.0.4: what the prometheus crate's `gather()` and
//! `TextEncoder` printed (families sorted by name, samples by label values, the
//! same escaping and number formatting; the golden test holds it), written
//! straight from a `Family`. Classic histograms only: a kernel histogram is
//! written as its classic form, and left out without classic bounds.

use std::fmt::Write as _;

use prometheus::core::Collector as _;
use prometheus::proto::MetricType;
use prometheus::{Encoder, TextEncoder};

use super::append::{str as put, Writer};
use crate::metrics::{Family, HistSample, Row, Value};

/// The Content-Type of the text exposition format, as Prometheus 2 and 3 accept it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label value escaping of the text format: `\`, newline and `"`.
pub(in crate::metrics) fn escape_into(out: &mut String, v: &str, quote: bool) {
    if !v.contains(['\\', '\n', '"']) {
        put(out, v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes the families (sorted by name), then the process metrics.
pub(in crate::metrics) fn render(
    families: Vec<Family>,
    process: &prometheus::process_collector::ProcessCollector,
    hint: usize,
) -> Vec<u8> {
    let mut out = String::with_capacity(hint + hint / 8);
    for f in families {
        f.write_text(&mut out);
    }
    let mut buf = out.into_bytes();
    // process_* sort after overlayfs_*; TextEncoder only fails on an empty
    // family, which the process collector does not produce.
    if let Err(e) = TextEncoder::new().encode(&process.collect(), &mut buf) {
        tracing::error!(error = %e, "encoding the process metrics failed");
    }
    buf
}

impl Family {
    /// Appends HELP, TYPE and the samples in the text format (nothing when the
    /// family is empty; nothing for a native-only histogram).
    pub(in crate::metrics) fn write_text(mut self, out: &mut String) {
        let text = |r: &Row| match r.value {
            Value::Plain(_) => true,
            Value::Hist(i) => !matches!(self.hists.get(i as usize), Some(HistSample::Kernel(_, None)) | None),
        };
        if !self.rows.iter().any(text) {
            return;
        }
        self.sort();
        out.push_str("# HELP ");
        out.push_str(self.def.name);
        out.push(' ');
        escape_into(out, self.def.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(self.def.name);
        out.push(' ');
        out.push_str(match self.def.kind {
            MetricType::COUNTER => "counter",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "untyped",
            _ => "gauge",
        });
        out.push('\n');
        let mut line_values: Vec<&str> = Vec::with_capacity(self.def.labels.len());
        let names = self.own_labels();
        for row in &self.rows {
            line_values.clear();
            line_values.extend(self.own_values(row));
            let labels =
                Labels { mount: self.mount_of(row).map(|m| m.text.as_str()), names, values: &line_values };
            match &row.value {
                Value::Plain(v) => self.line(out, "", &labels, None, *v),
                Value::Hist(i) => match self.hists.get(*i as usize) {
                    Some(HistSample::Classic(buckets, count, sum)) => {
                        self.classic_lines(out, &labels, buckets, *count, *sum)
                    }
                    Some(HistSample::Kernel(h, Some(bounds))) => {
                        self.classic_lines(out, &labels, &h.classic(bounds), h.count, h.sum)
                    }
                    _ => {}
                },
            }
        }
    }

    fn classic_lines(
        &self,
        out: &mut String,
        labels: &Labels<'_>,
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        for (le, n) in buckets {
            self.line(out, "_bucket", labels, Some(("le", &le.to_string())), *n as f64);
        }
        self.line(out, "_bucket", labels, Some(("le", "+Inf")), count as f64);
        self.line(out, "_sum", labels, None, sum);
        self.line(out, "_count", labels, None, count as f64);
    }

    /// `name<suffix>{labels[,extra]} value\n`
    fn line(
        &self,
        out: &mut String,
        suffix: &str,
        labels: &Labels<'_>,
        extra: Option<(&str, &str)>,
        value: f64,
    ) {
        put(out, self.def.name);
        put(out, suffix);
        let mut sep = '{';
        if let Some(text) = labels.mount {
            out.push(sep);
            put(out, text);
            sep = ',';
        }
        for (n, v) in labels.names.iter().zip(labels.values).map(|(n, v)| (*n, *v)).chain(extra) {
            if !super::super::written(n, v) {
                continue;
            }
            out.push(sep);
            put(out, n);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
            sep = ',';
        }
        if sep == ',' {
            out.push('}');
        }
        // f64's Display, as the crate's encoder writes values; whole numbers
        // (most samples) through the integer formatter, which prints the same.
        if value.fract() == 0.0 && value.abs() < 9e15 && !(value == 0.0 && value.is_sign_negative()) {
            out.push(' ');
            put(out, itoa::Buffer::new().format(value as i64));
        } else {
            let _ = write!(Writer(out), " {value}");
        }
        out.push('\n');
    }
}

/// A row's labels as the text format writes them: its mount's, rendered once per
/// mount table (per-mount families), then its own.
struct Labels<'a> {
    mount: Option<&'a str>,
    names: &'a [&'static str],
    values: &'a [&'a str],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fixtures::{kernel_hist, samples, Ours, Sample, H};
    use crate::metrics::{Def, Exposition};

    /// The same samples as the prometheus crate's protobuf model.
    struct Theirs;
    impl prometheus::core::Collector for Theirs {
        fn desc(&self) -> Vec<&prometheus::core::Desc> {
            Vec::new()
        }
        fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
            use prometheus::proto::*;
            let label = |d: &Def, v: &[&str]| -> Vec<LabelPair> {
                d.labels
                    .iter()
                    .zip(v)
                    .map(|(n, v)| {
                        let mut lp = LabelPair::default();
                        lp.set_name(n.to_string());
                        lp.set_value(v.to_string());
                        lp
                    })
                    .collect()
            };
            let mut out: Vec<MetricFamily> = Vec::new();
            for s in samples() {
                let (d, m) = match s {
                    Sample::Plain(d, v, x) => {
                        let mut m = Metric::from_label(label(d, &v));
                        if d.kind == MetricType::COUNTER {
                            let mut c = Counter::default();
                            c.set_value(x);
                            m.set_counter(c);
                        } else {
                            let mut g = Gauge::default();
                            g.set_value(x);
                            m.set_gauge(g);
                        }
                        (d, m)
                    }
                    Sample::Hist(d, v, b, c, sum) => {
                        let mut h = Histogram::default();
                        h.set_sample_count(c);
                        h.set_sample_sum(sum);
                        h.set_bucket(
                            b.iter()
                                .map(|(le, n)| {
                                    let mut k = Bucket::default();
                                    k.set_upper_bound(*le);
                                    k.set_cumulative_count(*n);
                                    k
                                })
                                .collect(),
                        );
                        let mut m = Metric::from_label(label(d, &v));
                        m.set_histogram(h);
                        (d, m)
                    }
                };
                match out.iter_mut().find(|f| f.name() == d.name) {
                    Some(f) => f.mut_metric().push(m),
                    None => {
                        let mut f = MetricFamily::default();
                        f.set_name(d.name.to_owned());
                        f.set_help(d.help.to_owned());
                        f.set_field_type(d.kind);
                        f.set_metric(vec![m]);
                        out.push(f);
                    }
                }
            }
            out
        }
    }

    /// In the text format a kernel histogram is its classic form (the sums of
    /// its native buckets: native's classic_buckets_are_sums_of_native_ones).
    #[test]
    fn kernel_histograms_are_written_in_their_classic_form() {
        let h = kernel_hist();
        let mut f = Family::new(&H);
        f.add_kernel_histogram(&["x"], &h, Some(&[1.0, 4.0]));
        f.add_kernel_histogram(&["native-only"], &h, None);
        let mut out = String::new();
        f.write_text(&mut out);
        assert!(out.contains("t_seconds_bucket{c=\"x\",le=\"4\"} 17\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{c=\"x\",le=\"+Inf\"} 24\n"), "{out}");
        assert!(!out.contains("native-only"), "no text form without classic bounds: {out}");
    }

    /// Byte for byte what the prometheus crate's gather() + TextEncoder print for
    /// the same samples: names sorted, samples by label values, escaping of
    /// labels and help, number formatting, histogram buckets; empty families left out.
    #[test]
    fn text_matches_the_crate_encoder() {
        let e = Exposition::default();
        e.register(Box::new(Ours));
        let text = String::from_utf8(e.render()).expect("utf8");
        let ours = text.split("# HELP process_").next().unwrap_or("");
        let registry = prometheus::Registry::new();
        registry.register(Box::new(Theirs)).expect("register");
        let theirs = TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
        assert_eq!(ours, theirs);
        assert!(ours.contains("t_gauge{a=\"c\",b=\"negzero\"} -0\n"), "{ours}");
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
    }
}
