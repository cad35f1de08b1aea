//! The Prometheus text exposition format (0.0.4), read as far as `explain` needs:
//! sample lines, their labels and values; comments, HELP and TYPE are skipped.
//!
//! Hand-written (about 80 lines): the crate that reads this format
//! (prometheus-parse) splits label values at every `,` and `=` and does not undo
//! escapes, and a mountpoint may hold commas, quotes, braces or newlines (the
//! agent escapes them; tests/hostile.rs mounts such paths).

use std::collections::BTreeMap;

/// A label set, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("exposition line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
}

/// The samples of `text` whose metric name `keep` accepts.
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what| ParseError { line: i + 1, what };
        let name_end = line.find(['{', ' ', '\t']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !keep(name) {
            continue;
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(after) => labels(after).map_err(err)?,
            None => (Labels::new(), &line[name_end..]),
        };
        let value = rest.split_whitespace().next().ok_or_else(|| err("no value"))?;
        let value = value.parse::<f64>().map_err(|_| err("value is not a number"))?;
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    Ok(samples)
}

/// The labels after `{` up to the closing `}`, and what follows it.
fn labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Labels::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let name = s[..eq].trim();
        let quoted = s[eq + 1..].trim_start().strip_prefix('"').ok_or("label value not quoted")?;
        let (value, rest) = quoted_value(quoted)?;
        labels.insert(name.to_owned(), value);
        s = rest;
    }
}

/// An escaped label value up to its closing quote, and what follows the quote.
fn quoted_value(s: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => value.push(other),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("label value not closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_commas_braces_and_inf() {
        let text = "# HELP x y\n# TYPE x counter\n\
            x{mountpoint=\"/a,b=\\\"c\\\"}\\\\d\\ne\",fix=\"metacopy\"} 1.5e3\n\
            x 2 1700000000000\ny{a=\"1\"} +Inf\n";
        let s = parse(text, |n| n == "x").expect("parses");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["mountpoint"], "/a,b=\"c\"}\\d\ne");
        assert_eq!(s[0].labels["fix"], "metacopy");
        assert_eq!(s[0].value, 1500.0);
        assert_eq!(s[1].value, 2.0);
        let y = parse(text, |n| n == "y").expect("parses");
        assert!(y[0].value.is_infinite());
    }

    #[test]
    fn broken_lines_are_errors() {
        assert_eq!(parse("x{a=\"1} 2\n", |_| true).map_err(|e| e.what), Err("label value not closed"));
        assert_eq!(parse("\nx{a=1} 2\n", |_| true).map_err(|e| e.line), Err(2));
        assert!(parse("x abc\n", |_| true).is_err());
        assert!(parse("x\n", |_| true).is_err());
    }
}
