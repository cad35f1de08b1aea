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

/// The first line where the guest's own bounds cut a wait short (helpers.sh's
/// get, step and terminate): a request without answer within 60 s, a step cut
/// after 300 s, or a process that outlived its signal by 60 s. Every mode's
/// test fails on it.
pub fn hang(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        *l == "=== SCRAPE TIMEOUT"
            || l.starts_with("=== STEP TIMEOUT ")
            || (l.starts_with("=== ") && l.ends_with(" DID NOT EXIT"))
    })
}

#[test]
fn a_hang_is_found_and_a_name_in_a_section_is_not() {
    let console = "=== AGENT LOG BEGIN\nwhat DID NOT EXIT\n=== AGENT LOG END\n";
    assert_eq!(hang(console), None);
    assert_eq!(hang(&format!("{console}=== TRACE DID NOT EXIT\n")), Some("=== TRACE DID NOT EXIT"));
    assert_eq!(hang("x\n=== SCRAPE TIMEOUT\n"), Some("=== SCRAPE TIMEOUT"));
    let step = "=== STEP TIMEOUT /qemu-workload uring /t/d/merged";
    assert_eq!(hang(&format!("{console}{step}\n")), Some(step));
}
