//! Test fixtures shared by the exposition's unit tests (model, text and
//! protobuf encoders): definitions, samples, collectors and a protobuf decoder.

use prometheus::proto::MetricType;

use super::encode::proto;
use super::{Collector, Def, Family, NativeHistogram};

pub(super) static G: Def = Def {
    name: "t_gauge",
    help: "A \\ help\nline with \"quotes\".",
    kind: MetricType::GAUGE,
    labels: &["a", "b"],
};
pub(super) static H: Def = Def { name: "t_seconds", help: "h", kind: MetricType::HISTOGRAM, labels: &["c"] };
pub(super) static N: Def = Def { name: "t_total", help: "n", kind: MetricType::COUNTER, labels: &[] };
pub(super) static E: Def = Def { name: "t_empty", help: "e", kind: MetricType::GAUGE, labels: &[] };

pub(super) enum Sample {
    Plain(&'static Def, Vec<&'static str>, f64),
    Hist(&'static Def, Vec<&'static str>, Vec<(f64, u64)>, u64, f64),
}

pub(super) fn samples() -> Vec<Sample> {
    use Sample::*;
    vec![
        Plain(&N, vec![], 7.0),
        Plain(&G, vec!["b\"q\\\nx", "2"], 1.5),
        Plain(&G, vec!["a", "z"], 2.0),
        Plain(&G, vec!["a", ""], 1e21),
        Plain(&G, vec!["c", "int"], 1234567.0),
        Plain(&G, vec!["c", "neg"], -3.0),
        Plain(&G, vec!["c", "negzero"], -0.0),
        Plain(&G, vec!["c", "frac"], 0.000123),
        Plain(&G, vec!["c", "big"], 9.1e15),
        Plain(&G, vec!["ab", "a"], 1.0),
        Hist(&H, vec!["x"], vec![(0.001, 1), (1.0, 3), (1024.0, 3)], 4, 2.25),
        Hist(&H, vec!["a\\"], vec![(1.024e-6, 0)], 0, 0.0),
    ]
}

pub(super) struct Ours;
impl Collector for Ours {
    fn collect(&self) -> Vec<Family> {
        let mut fams: Vec<Family> = vec![Family::new(&N), Family::new(&G), Family::new(&H), Family::new(&E)];
        for s in samples() {
            match s {
                Sample::Plain(d, v, x) => {
                    fams.iter_mut().find(|f| f.name() == d.name).expect("family").add(&v, x)
                }
                Sample::Hist(d, v, b, c, sum) => fams
                    .iter_mut()
                    .find(|f| f.name() == d.name)
                    .expect("family")
                    .add_histogram(&v, &b, c, sum),
            }
        }
        fams
    }
}

pub(super) static K: Def =
    Def { name: "t_kernel_seconds", help: "k", kind: MetricType::HISTOGRAM, labels: &["cause"] };

pub(super) fn kernel_hist() -> NativeHistogram {
    NativeHistogram {
        schema: 3,
        zero_count: 2,
        buckets: vec![(-1, 1), (0, 1), (1, 4), (8, 3), (9, 5), (16, 1), (40, 7)],
        count: 24,
        sum: 100.0,
    }
}

pub(super) struct WithKernel;
impl Collector for WithKernel {
    fn collect(&self) -> Vec<Family> {
        let mut f = Family::new(&K);
        f.add_kernel_histogram(&["write"], &kernel_hist(), Some(&[1.0, 4.0]));
        f.add_kernel_histogram(&["open"], &kernel_hist(), None);
        f.add_kernel_histogram(&["empty"], &NativeHistogram { schema: 3, ..Default::default() }, None);
        // Native only, all of them: no text form at all.
        let mut n = Family::new(&E);
        n.add_kernel_histogram(&[], &kernel_hist(), None);
        let mut o = Ours.collect();
        o.extend([f, n]);
        o
    }
}

pub(super) fn decode_all(mut buf: &[u8]) -> Vec<proto::MetricFamily> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(prost::Message::decode_length_delimited(&mut buf).expect("a delimited MetricFamily"));
    }
    out
}
