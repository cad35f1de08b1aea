//! Value types shared by the config and the stages it configures (a leaf: it
//! imports nothing from the crate).

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A path regex, anchored at both ends like Prometheus relabelling regexes;
/// `.` matches any character, newline included (a path may hold one). Used for
/// the mountpoint filters and the identity rules.
#[derive(Debug, Clone)]
pub struct PathRegex {
    source: String,
    regex: regex::Regex,
}

impl PathRegex {
    pub fn new(source: &str) -> Result<Self, String> {
        regex::Regex::new(&format!("(?s)^(?:{source})$"))
            .map(|regex| PathRegex { source: source.to_owned(), regex })
            .map_err(|e| {
                // regex errors are multi-line drawings; keep the final sentence.
                let e = e.to_string();
                let why = e.lines().last().unwrap_or("").trim_start_matches("error: ").to_owned();
                format!("invalid regex {source:?}: {why}")
            })
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for PathRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Compiled inside the visitor, so that the error carries the key's path and location.
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PathRegex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a regular expression")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PathRegex, E> {
                PathRegex::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_and_dot_matches_newline() {
        let r = PathRegex::new("/run/.*").expect("regex");
        assert!(r.is_match("/run/a\nb"));
        assert!(!r.is_match("/x/run/a"));
        assert_eq!(r.as_str(), "/run/.*");
        let e = PathRegex::new("(").expect_err("unclosed group");
        assert!(e.starts_with("invalid regex \"(\": ") && !e.contains('\n'), "{e}");
    }
}
