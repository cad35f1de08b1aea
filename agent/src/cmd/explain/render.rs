//! The text people read: per workload, the time lost, the bytes, the causes,
//! and each fix with its saving, its setting, its caveats and its runbook; one
//! calm line when there is nothing to fix.

use std::io::{self, Write};

use super::advice;
use super::model::{Overview, Workload, AVOIDABLE_BYTES, AVOIDABLE_SECONDS, BYTES, NOOP, SECONDS};

/// A fix is shown when it would have saved at least this much time...
pub const MIN_SECONDS: f64 = 1.0;
/// ... or this much copied data (64 MiB).
pub const MIN_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// Which fixes are worth showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shown {
    /// Those that would have saved at least [`MIN_SECONDS`] or [`MIN_BYTES`].
    #[default]
    WorthAChange,
    /// Every fix that would have avoided anything (`--all`).
    All,
}

impl Shown {
    fn worth_it(self, seconds: f64, bytes: f64) -> bool {
        match self {
            Shown::WorthAChange => seconds >= MIN_SECONDS || bytes >= MIN_BYTES,
            Shown::All => seconds > 0.0 || bytes > 0.0,
        }
    }
}

/// The fixes of `w` worth showing, largest saving first.
fn fixes(w: &Workload, shown: Shown) -> Vec<(&str, f64, f64)> {
    let mut names: Vec<&str> = w.by(AVOIDABLE_SECONDS).chain(w.by(AVOIDABLE_BYTES)).map(|(k, _)| k).collect();
    names.sort_unstable();
    names.dedup();
    let mut out: Vec<_> = names
        .into_iter()
        .map(|f| (f, w.get(AVOIDABLE_SECONDS, f), w.get(AVOIDABLE_BYTES, f)))
        .filter(|(_, s, b)| shown.worth_it(*s, *b))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    out
}

/// Seconds: "420 µs", "3.4 ms", "340 ms", "4.2 s", "125 s" (never "0 ms"
/// for a time that is not zero).
pub fn seconds(s: f64) -> String {
    match s {
        s if s >= 100.0 => format!("{s:.0} s"),
        s if s >= 1.0 => format!("{s:.1} s"),
        s if s >= 0.01 => format!("{:.0} ms", s * 1000.0),
        s if s >= 0.001 => format!("{:.1} ms", s * 1000.0),
        s if s > 0.0 => format!("{:.0} µs", s * 1e6),
        _ => "0 ms".to_owned(),
    }
}

/// Bytes in binary units: "512 B", "3.2 GiB".
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024.0 {
        return format!("{b:.0} B");
    }
    let mut v = b / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!(" ({:.0}%)", (100.0 * part / whole).min(100.0))
    } else {
        String::new()
    }
}

/// Writes the report; returns whether any fix was worth showing.
pub fn report(o: &Overview, period: &str, shown: Shown, out: &mut impl Write) -> io::Result<bool> {
    let listed: Vec<_> = o.workloads.iter().filter(|w| !fixes(w, shown).is_empty()).collect();
    if listed.is_empty() {
        writeln!(out, "{}", calm(o, period))?;
        return Ok(false);
    }
    let noun = if listed.len() == 1 { "workload" } else { "workloads" };
    writeln!(out, "{} {noun} lost time to copy-ups that a fix avoids ({period}).", listed.len())?;
    for w in listed {
        writeln!(out)?;
        workload(w, shown, out)?;
    }
    Ok(true)
}

fn calm(o: &Overview, period: &str) -> String {
    let mounts = format!("{} overlay mount{}", o.mounts, if o.mounts == 1 { "" } else { "s" });
    if !o.probes_off.is_empty() {
        let why: Vec<_> = o.probes_off.iter().map(String::as_str).collect();
        return format!(
            "Nothing to fix: {mounts}; copy-ups are not counted on this host ({}), overlay-agent check tells more.",
            why.join(", ")
        );
    }
    // The best single fix: one copy-up can be avoidable by two fixes, so their
    // savings do not add up (their sum can exceed the time lost).
    let best = o.workloads.iter().map(Workload::best_saving).fold(0.0, f64::max);
    let lost = seconds(o.total(SECONDS));
    if best > 0.0 {
        format!(
            "Nothing to fix: {mounts}, {lost} in copy-ups {period}; the best fix would save {}, under the {} \
             worth a change.",
            seconds(best),
            seconds(MIN_SECONDS)
        )
    } else {
        format!("Nothing to fix: {mounts}, {lost} in copy-ups {period}, none avoidable.")
    }
}

fn workload(w: &Workload, shown: Shown, out: &mut impl Write) -> io::Result<()> {
    let image = if w.image.is_empty() { String::new() } else { format!(", image {}", w.image) };
    writeln!(out, "{}{image}", w.title)?;
    let lost = w.total(SECONDS);
    let mut causes: Vec<_> = w.by(SECONDS).collect();
    causes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let causes: Vec<_> = causes.iter().map(|(c, s)| format!("{c} {}", seconds(*s))).collect();
    writeln!(
        out,
        "  lost {} in copy-ups, {} copied; by cause: {}",
        seconds(lost),
        bytes(w.total(BYTES)),
        causes.join(", ")
    )?;
    let noop: Vec<_> = w.by(NOOP).map(|(c, n)| format!("{c} {n:.0}")).collect();
    if !noop.is_empty() {
        writeln!(out, "  copy-ups that changed nothing: {}", noop.join(", "))?;
    }
    let mounts: Vec<_> = w.mounts.iter().map(String::as_str).collect();
    if !w.title.starts_with("mount ") {
        writeln!(out, "  mount{}: {}", if mounts.len() == 1 { "" } else { "s" }, mounts.join(", "))?;
    }
    for (fix, s, b) in fixes(w, shown) {
        let data = if b > 0.0 { format!(" and {} of copying", bytes(b)) } else { String::new() };
        writeln!(out, "  fix {fix}: saves {}{}{data}", seconds(s), percent(s, lost))?;
        let Some(a) = advice::lookup(fix) else {
            writeln!(out, "    (this build of overlay-agent has no advice for {fix})")?;
            continue;
        };
        writeln!(out, "    {}", a.title)?;
        writeln!(out, "    do: {}", a.how_for(&w.runtime))?;
        for caveat in a.caveats_for(&w.runtime, &w.facts) {
            writeln!(out, "    do not when {caveat}")?;
        }
        writeln!(out, "    runbook: {}", a.runbook())?;
    }
    Ok(())
}
