//! The guest's serial console as the host reads it: sections between
//! `=== NAME BEGIN` and `=== NAME END` markers, and `=== NAME VALUE` lines.

/// The text between `begin` and the next `end`.
pub fn section<'a>(console: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let start = console.find(begin)? + begin.len();
    let stop = console[start..].find(end)? + start;
    Some(&console[start..stop])
}

/// The scrape printed between `=== NAME METRICS BEGIN` and `=== NAME METRICS END`.
pub fn section_of<'a>(console: &'a str, name: &str) -> Option<&'a str> {
    section(console, &format!("=== {name} METRICS BEGIN\n"), &format!("=== {name} METRICS END"))
}

/// The value of the first `=== NAME VALUE` line, parsed.
pub fn marker_value<T: std::str::FromStr>(console: &str, name: &str) -> Option<T> {
    console.lines().find_map(|l| l.strip_prefix(&format!("=== {name} "))?.trim().parse().ok())
}
