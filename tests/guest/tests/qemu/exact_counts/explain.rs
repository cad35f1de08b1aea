//! `overlay-agent explain --url 127.0.0.1:9864` run in the guest right after
//! the main scrape (modes/agent.sh), by default and with `--all`, read back
//! from the console and saved to target/qemu-explain-ARCH-VERSION.txt.
//!
//! With `--all`, explain must list each mount the avoidable checks expect a
//! fix on (avoidable::expected: A, B, and layers.rs's mounts this kernel
//! took), with exactly those fixes, each with its data as explain prints
//! bytes, the setting for the mount's runtime and its runbook; the mount's
//! data and no-op copy-ups as counts.rs expects them; and exit 3. Whatever the
//! tables say: U (userxattr) is never advised metacopy or idmapped_mounts, the
//! volume over the idmapped lower never idmapped_mounts, and the plain volume
//! idmapped_mounts exactly where the kernel takes idmapped layers. Both runs
//! print what the agent's explain code makes of the main scrape on the host.

use std::collections::{BTreeMap, BTreeSet};

use overlay_agent::cmd::explain::{advice, exposition, model, render, Shown};

use super::layers::{self, IDMAPPED_VOLUME, PLAIN_VOLUME, USERXATTR};
use super::{avoidable, Guest};
use crate::guest::{marker_value, section};

/// The two runs: (console name, flags, what it shows).
const RUNS: [(&str, &str, Shown); 2] = [("DEFAULT", "", Shown::WorthAChange), ("ALL", "--all ", Shown::All)];

/// What one run printed: its exit code and stdout.
struct Run {
    exit: Option<i32>,
    out: String,
}

fn run(g: &Guest, name: &str) -> Option<Run> {
    let out =
        section(&g.console, &format!("=== EXPLAIN {name} BEGIN\n"), &format!("=== EXPLAIN {name} END"))?;
    Some(Run { exit: marker_value(&g.console, &format!("EXPLAIN {name} EXIT")), out: out.to_owned() })
}

/// Both runs as the closing note quotes them.
pub fn transcript(g: &Guest) -> String {
    let mut text = String::new();
    for (name, flags, _) in RUNS {
        let Some(r) = run(g, name) else { continue };
        let exit = r.exit.map_or_else(|| "?".to_owned(), |e| e.to_string());
        text.push_str(&format!(
            "kernel {} ({}): overlay-agent explain {flags}--url 127.0.0.1:9864 (exit {exit})\n{}\n",
            g.version,
            g.arch.debian(),
            r.out
        ));
    }
    text
}

/// Writes the transcript to target/qemu-explain-ARCH-VERSION.txt and prints it.
pub fn save(g: &Guest) {
    let text = transcript(g);
    let name = format!("qemu-explain-{}-{}.txt", g.arch.debian(), g.version);
    std::fs::write(crate::common::repo_root().join("target").join(name), &text).expect("write explain");
    eprint!("{text}");
}

pub fn check_explain(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let samples = match exposition::parse(&g.text, model::wanted) {
        Ok(s) => s,
        Err(e) => return vec![format!("the main scrape does not parse for explain: {e}")],
    };
    let overview = model::build(&samples);
    for (name, _, shown) in RUNS {
        let Some(r) = run(g, name) else {
            problems.push(format!("no EXPLAIN {name} output in the console"));
            continue;
        };
        let mut want = Vec::new();
        let fixes = render::report(&overview, "since the agent started", shown, &mut want).unwrap_or(false);
        let want = String::from_utf8_lossy(&want);
        let want_exit = if fixes { 3 } else { 0 };
        if r.exit != Some(want_exit) || r.out != want {
            problems.push(format!(
                "explain {name}: exit {:?} and\n{}\nwant exit {want_exit} and, from the main scrape,\n{want}",
                r.exit, r.out
            ));
        }
        if name == "ALL" {
            problems.extend(check_all(g, &r));
        }
    }
    problems
}

/// The --all report: the workloads and fixes the tables expect.
fn check_all(g: &Guest, r: &Run) -> Vec<String> {
    let mut problems = Vec::new();
    if r.exit != Some(3) {
        problems.push(format!("explain --all: exit {:?}, want 3 (fixes shown)", r.exit));
    }
    let mut want: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for (mp, fix, bytes) in avoidable::expected(g) {
        want.entry(mp).or_default().insert(fix, bytes);
    }
    let blocks = blocks(&r.out);
    let header = format!("{} workloads lost time to copy-ups that a fix avoids", want.len());
    if !r.out.starts_with(&header) {
        problems.push(format!("explain --all: want a first line '{header} ...':\n{}", r.out));
    }
    let named: BTreeSet<&str> = blocks.keys().copied().collect();
    let wanted: BTreeSet<&str> = want.keys().copied().collect();
    if named != wanted {
        problems.push(format!("explain --all names the mounts {named:?}, want {wanted:?}:\n{}", r.out));
    }
    for (mp, fixes) in &want {
        if let Some(block) = blocks.get(mp) {
            problems.extend(check_block(g, mp, fixes, block).into_iter().map(|p| format!("{mp}: {p}")));
        }
    }
    problems.extend(forbidden(g, &blocks));
    problems
}

/// The workload blocks of a report by the mount each names (its title
/// `mount MP`, or its `mount: MP` line), as (mount, lines).
fn blocks(out: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut by_mount = BTreeMap::new();
    for block in out.split("\n\n").skip(1) {
        let lines: Vec<&str> = block.lines().collect();
        let title = lines.first().and_then(|l| l.strip_prefix("mount "));
        let line = lines.iter().find_map(|l| l.strip_prefix("  mount: "));
        if let Some(mp) = title.or(line) {
            by_mount.insert(mp, lines);
        }
    }
    by_mount
}

/// One mount's block: its data and no-op copy-ups, and its fixes with their
/// bytes, settings and runbooks.
fn check_block(g: &Guest, mp: &str, fixes: &BTreeMap<&str, f64>, block: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let text = block.join("\n");
    let data: f64 = g.expected_bytes().iter().filter(|e| e.0 == mp).map(|e| e.2).sum();
    let copied = format!(", {} copied; by cause: ", render::bytes(data));
    if !block.iter().any(|l| l.starts_with("  lost ") && l.contains(&copied)) {
        problems.push(format!("no '  lost ...{copied}...' line:\n{text}"));
    }
    let noop: Vec<String> = g
        .expected_noop()
        .iter()
        .filter(|e| e.0 == mp && e.2 > 0.0)
        .map(|e| (e.1, e.2))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(cause, n)| format!("{cause} {n}"))
        .collect();
    let noop_line = block.iter().find_map(|l| l.strip_prefix("  copy-ups that changed nothing: "));
    if noop_line != (!noop.is_empty()).then(|| noop.join(", ")).as_deref() {
        problems.push(format!("no-op copy-ups {noop_line:?}, want {noop:?}:\n{text}"));
    }
    let shown: BTreeSet<&str> =
        block.iter().filter_map(|l| l.strip_prefix("  fix ")?.split(':').next()).collect();
    if shown != fixes.keys().copied().collect() {
        problems.push(format!("fixes {shown:?}, want {:?}:\n{text}", fixes.keys()));
    }
    let runtime = runtime(g, mp);
    for (fix, bytes) in fixes {
        let Some(a) = advice::lookup(fix) else {
            problems.push(format!("explain has no advice for {fix}"));
            continue;
        };
        let saving = format!(" and {} of copying", render::bytes(*bytes));
        let line = block.iter().find(|l| l.starts_with(&format!("  fix {fix}: saves ")));
        if !line.is_some_and(|l| l.ends_with(&saving) && !l.contains("saves 0 ")) {
            problems.push(format!("fix {fix}: want 'saves <time> (<share>){saving}':\n{text}"));
        }
        for want in [format!("    do: {}", a.how_for(&runtime)), format!("    runbook: {}", a.runbook())] {
            if !block.contains(&want.as_str()) {
                problems.push(format!("fix {fix}: no line '{want}':\n{text}"));
            }
        }
    }
    problems
}

/// The `runtime` label of the mount's overlayfs_mount_info.
fn runtime(g: &Guest, mp: &str) -> String {
    g.m.series("overlayfs_mount_info")
        .into_iter()
        .find(|(l, _)| l.get("mountpoint").is_some_and(|m| m == mp))
        .and_then(|(l, _)| l.get("runtime").cloned())
        .unwrap_or_default()
}

/// The fixes' rules, whatever the tables say: no metacopy and no
/// idmapped_mounts on the userxattr mount (the kernel refuses the first, an
/// unprivileged owner cannot make the second); fuse_overlayfs there where the
/// kernel took the mount; no idmapped_mounts on the volume whose lower is
/// idmapped; idmapped_mounts on the plain volume exactly where the kernel
/// takes idmapped layers.
fn forbidden(g: &Guest, blocks: &BTreeMap<&str, Vec<&str>>) -> Vec<String> {
    let has = |mp: &str, fix: &str| {
        blocks.get(mp).is_some_and(|b| b.iter().any(|l| l.starts_with(&format!("  fix {fix}:"))))
    };
    let rules = [
        (USERXATTR, "metacopy", false),
        (USERXATTR, "idmapped_mounts", false),
        (USERXATTR, "fuse_overlayfs", layers::userxattr(g)),
        (IDMAPPED_VOLUME, "idmapped_mounts", false),
        (PLAIN_VOLUME, "idmapped_mounts", layers::idmapped_layers(g)),
    ];
    rules
        .into_iter()
        .filter(|(mp, fix, want)| has(mp, fix) != *want)
        .map(|(mp, fix, want)| format!("explain --all on {mp}: fix {fix} shown: {}, want {want}", !want))
        .collect()
}
