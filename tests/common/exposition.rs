//! The tests' one parser of the Prometheus text exposition: every sample with
//! its labels unescaped, grouped by family with HELP and TYPE; `Metrics::get`,
//! which wants exactly one series to match; and `grep` and `close` for the
//! checks and their failure messages.

use std::collections::BTreeMap;

/// One sample line, `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `name{labels}` exactly as written.
    pub key: String,
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Named `name`, with every `(label, value)` pair given (and maybe more).
    /// As PromQL matches: `label=""` also matches a series without that label.
    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|(k, v)| self.label(k).unwrap_or("") == *v)
    }
}

/// One family as the text gives it: `# HELP`, `# TYPE`, then its samples.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub name: String,
    /// The HELP text, unescaped.
    pub help: String,
    /// The TYPE (`counter`, `gauge`, `histogram`, ...), empty without a TYPE line.
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// Samples of one exposition.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    /// Values keyed by `name{labels}` exactly as written.
    pub samples: BTreeMap<String, f64>,
    /// The families in the order written.
    pub families: Vec<Family>,
}

impl Metrics {
    /// Parses `text`; panics on a line that is not a comment or a sample.
    pub fn parse(text: &str) -> Metrics {
        let mut families: Vec<Family> = Vec::new();
        let mut help = None;
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("# HELP ") {
                help = Some(unescape(h.split_once(' ').map(|x| x.1).unwrap_or("")));
            } else if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                let help = help.take().unwrap_or_default();
                families.push(Family { name: name.to_owned(), help, kind: kind.to_owned(), samples: vec![] });
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let s = sample(line);
                match families.last_mut() {
                    Some(f) if f.kind.is_empty() || s.name.starts_with(&f.name) => f.samples.push(s),
                    _ => {
                        families.push(Family { name: s.name.clone(), samples: vec![s], ..Default::default() })
                    }
                }
            }
        }
        let samples = families.iter().flat_map(|f| &f.samples).map(|s| (s.key.clone(), s.value)).collect();
        Metrics { text: text.to_owned(), samples, families }
    }

    /// Every sample, in the order written.
    pub fn all(&self) -> impl Iterator<Item = &Sample> {
        self.families.iter().flat_map(|f| &f.samples)
    }

    /// The samples of `name` with every `(label, value)` pair given.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.all().filter(move |s| s.matches(name, labels))
    }

    /// The value of the one series of `name` with every `(label, value)` pair
    /// given; None when there is none. Panics when several match: give the
    /// labels that tell them apart.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<&Sample> = self.matching(name, labels).collect();
        match hits.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{name}{labels:?}: {} series match, want one (give the labels that tell them apart):\n{}",
                many.len(),
                many.iter().map(|s| s.key.as_str()).collect::<Vec<_>>().join("\n")
            ),
        }
    }

    /// How many series of `name` have every `(label, value)` pair given.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(name, labels).count()
    }

    /// Every labelled sample of `name` as (labels, value).
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.all()
            .filter(|s| s.name == name && !s.labels.is_empty())
            .map(|s| (s.labels.iter().cloned().collect(), s.value))
            .collect()
    }
}

/// `name{a="x",b="y"} value` as a Sample; panics on anything else.
pub fn sample(line: &str) -> Sample {
    let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
    let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
    let Some((name, rest)) = key.split_once('{') else {
        return Sample { key: key.to_owned(), name: key.to_owned(), labels: Vec::new(), value };
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("no closing brace in {line:?}"));
    while !rest.is_empty() {
        let (k, v) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
        let bytes = v.as_bytes();
        let mut end = 0;
        while bytes.get(end).is_some_and(|b| *b != b'"') {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        assert!(end < bytes.len(), "unterminated label value in {line:?}");
        labels.push((k.to_owned(), unescape(&v[..end])));
        rest = v[end + 1..].trim_start_matches(',');
    }
    Sample { key: key.to_owned(), name: name.to_owned(), labels, value }
}

/// Label value escaping of the text format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Undoes the text format's escaping (`\\`, `\n`, `\"`).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// The lines of `text` that contain `needle`, for failure messages.
pub fn grep(text: &str, needle: &str) -> String {
    text.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>().join("\n")
}

/// Relative float equality, for sums of the same figures added in different orders.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}
