//! `overlay-agent mounts`: the mount table as a table or as JSON, the JSON with
//! each mount's identity.

use std::io::{self, Write};

use crate::discovery::{path_label, LayerPath, Mount, MountTable};
use crate::identity::{Holder, Inventory};

fn notable_options(m: &Mount) -> String {
    let o = &m.options;
    let mut v: Vec<String> = Vec::new();
    if m.read_only || o.upper.is_none() {
        v.push("ro".into());
    }
    for (k, val) in [("metacopy", o.metacopy), ("index", o.index), ("nfs_export", o.nfs_export)] {
        if let Some(b) = val {
            v.push(format!("{k}={}", if b { "on" } else { "off" }));
        }
    }
    for (k, val) in
        [("redirect_dir", &o.redirect_dir), ("xino", &o.xino), ("uuid", &o.uuid), ("verity", &o.verity)]
    {
        if let Some(s) = val {
            v.push(format!("{k}={s}"));
        }
    }
    if o.is_volatile() {
        v.push("volatile".into());
    }
    if o.userxattr {
        v.push("userxattr".into());
    }
    if o.relative_paths() > 0 {
        v.push(format!("relative_paths={}", o.relative_paths()));
    }
    v.join(",")
}

/// Who holds a namespace, in one cell: `docker:0a3be5681276 (dockerd, uid 0)`,
/// `pod default/ci-runner`, or the process alone.
fn held_by(h: &Holder) -> String {
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let who = match (h.pod_name.is_empty(), h.runtime.is_empty(), h.container_id.is_empty()) {
        (false, _, _) => format!("pod {}/{} ", h.pod_namespace, h.pod_name),
        (true, false, false) => format!("{}:{} ", h.runtime, short(&h.container_id)),
        (true, true, false) => format!("container {} ", short(&h.container_id)),
        (true, false, true) => format!("{} ", h.runtime),
        (true, true, true) => String::new(),
    };
    format!("{who}({}, uid {})", h.process, h.uid)
}

/// Table cells escape tab, newline and backslash the way mountinfo does.
fn cell(s: String) -> String {
    s.replace('\\', "\\134").replace('\t', "\\011").replace('\n', "\\012")
}

pub fn mounts(
    table: &MountTable,
    identities: &Inventory,
    json: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    if json {
        let list: Vec<serde_json::Value> = table
            .mounts
            .values()
            .map(|m| {
                serde_json::json!({
                    "mount_id": m.mount_id,
                    "device": m.device.to_string(),
                    "mountpoint": m.mountpoint_label(),
                    "mntns": m.namespace.map(|n| n.id),
                    "mntns_holder": identities.holder(m),
                    "other_mountpoints": m.other_mountpoints.iter().map(|p| path_label(p)).collect::<Vec<_>>(),
                    "upperdir": m.options.upper.as_ref().map(LayerPath::label),
                    "workdir": m.options.work.as_ref().map(LayerPath::label),
                    "lower_layers": m.options.lower.len(),
                    "identity": identities.get(&m.device),
                    "options": m.options,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &list)?;
        return writeln!(out);
    }
    writeln!(out, "MOUNT_ID\tDEVICE\tMNTNS\tHELD_BY\tMOUNTPOINT\tUPPERDIR\tWORKDIR\tLOWER\tOPTIONS")?;
    for m in table.mounts.values() {
        let dash = || "-".to_owned();
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            m.mount_id,
            m.device,
            m.namespace.map_or_else(dash, |n| n.id.to_string()),
            cell(identities.holder(m).map_or_else(dash, held_by)),
            cell(m.mountpoint_label()),
            cell(m.options.upper.as_ref().map(LayerPath::label).unwrap_or_else(dash)),
            cell(m.options.work.as_ref().map(LayerPath::label).unwrap_or_else(dash)),
            m.options.lower.len(),
            notable_options(m),
        )?;
    }
    Ok(())
}
