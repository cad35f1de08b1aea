//! The labels that name a mount in every per-mount series (`mountpoint`,
//! `mntns`), rendered once per mount table instead of once per series at every
//! scrape. A table's mounts are kept in label order, so the per-mount families
//! come out sorted; each mount's two labels are kept as values (protobuf) and as
//! escaped text (`mountpoint="..",mntns=".."`, what the text format writes).
//!
//! At 10,000 mounts a scrape writes 240,000 series, 24 per mount: copying,
//! sorting and escaping the mount's labels for each of them was most of a
//! render (docs/performance.md). A collector holds a [`LabelCache`]: the labels
//! are built again only when discovery publishes a new mount table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::discovery::{Device, MountTable};
use crate::identity::MountView;
use crate::sync::LockExt;

/// One mount's `mountpoint` and `mntns` labels.
#[derive(Debug)]
pub struct Labelled {
    pub device: Device,
    pub mountpoint: String,
    pub mntns: String,
    /// Label order: equal for two mounts with equal labels (their other labels
    /// then decide, as when the labels were sorted as strings).
    pub(super) rank: u32,
    /// `mountpoint="<escaped>"`, then `,mntns="<id>"` unless `mntns` is empty.
    pub(super) text: String,
}

/// The mounts of one table, in label order.
#[derive(Debug, Default)]
pub struct MountLabels {
    entries: Vec<Labelled>,
    by_device: HashMap<Device, u32>,
}

impl MountLabels {
    pub fn new(table: &MountTable) -> MountLabels {
        let mut entries: Vec<Labelled> = table
            .mounts
            .values()
            .map(|m| {
                let (mountpoint, mntns) = (m.mountpoint_label(), m.mntns_label());
                let mut text = String::with_capacity(mountpoint.len() + mntns.len() + 24);
                text.push_str("mountpoint=\"");
                super::encode::text::escape_into(&mut text, &mountpoint, true);
                text.push('"');
                if super::written("mntns", &mntns) {
                    text.push_str(",mntns=\"");
                    super::encode::text::escape_into(&mut text, &mntns, true);
                    text.push('"');
                }
                Labelled { device: m.device, mountpoint, mntns, rank: 0, text }
            })
            .collect();
        entries.sort_unstable_by(|a, b| (&a.mountpoint, &a.mntns).cmp(&(&b.mountpoint, &b.mntns)));
        let mut rank = 0u32;
        for i in 1..entries.len() {
            let same = entries[i].mountpoint == entries[i - 1].mountpoint
                && entries[i].mntns == entries[i - 1].mntns;
            if !same {
                rank = super::offset(i);
            }
            entries[i].rank = rank;
        }
        let by_device = entries.iter().enumerate().map(|(i, e)| (e.device, super::offset(i))).collect();
        MountLabels { entries, by_device }
    }

    /// How many mounts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The mounts in label order, with their index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Labelled)> {
        self.entries.iter().enumerate().map(|(i, e)| (super::offset(i), e))
    }

    /// The index of a device's mount.
    pub fn index(&self, device: Device) -> Option<u32> {
        self.by_device.get(&device).copied()
    }

    pub(super) fn get(&self, index: u32) -> Option<&Labelled> {
        self.entries.get(index as usize)
    }
}

/// The labels of the last mount table the collectors saw (held weakly: the old
/// table is not kept alive by its labels). A clone shares the cache: the mount
/// and upper-dir collectors use one, so a table's labels are built and held
/// once (1.8 MB at 10,000 mounts).
#[derive(Default, Clone)]
pub struct LabelCache {
    last: Arc<Mutex<Option<Built>>>,
}

/// A view, and the labels built for its table.
type Built = (Weak<MountView>, Arc<MountLabels>);

impl LabelCache {
    /// The labels of `view`'s table: the cached ones when `view` is the one
    /// they were built for.
    pub fn get(&self, view: &Arc<MountView>) -> Arc<MountLabels> {
        let mut last = self.last.locked();
        if let Some((seen, labels)) = last.as_ref() {
            if Weak::ptr_eq(seen, &Arc::downgrade(view)) {
                return labels.clone();
            }
        }
        let labels = Arc::new(MountLabels::new(&view.table));
        *last = Some((Arc::downgrade(view), labels.clone()));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{group_by_superblock, mountinfo};
    use crate::metrics::Value;

    fn table(lines: &str) -> MountTable {
        MountTable {
            mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true, None),
            ..Default::default()
        }
    }

    /// Mounts come in label order (as strings with a NUL between the two
    /// labels would sort), with their labels escaped for the text format.
    #[test]
    fn mounts_are_in_label_order_with_escaped_text() {
        let t = table(concat!(
            "1 2 0:51 / /b rw - overlay overlay rw,upperdir=/u1,workdir=/w1\n",
            "2 2 0:52 / /a\\134\"x rw - overlay overlay rw,upperdir=/u2,workdir=/w2\n",
            "3 2 0:53 / /a rw - overlay overlay rw,upperdir=/u3,workdir=/w3\n",
        ));
        let labels = MountLabels::new(&t);
        let order: Vec<_> = labels.iter().map(|(_, e)| e.mountpoint.as_str()).collect();
        assert_eq!(order, ["/a", "/a\\\"x", "/b"]);
        let (i, e) = labels.iter().nth(1).expect("second");
        assert_eq!(e.text, r#"mountpoint="/a\\\"x""#);
        assert_eq!(labels.index(Device { major: 0, minor: 52 }), Some(i));
        assert_eq!(labels.index(Device { major: 9, minor: 9 }), None);
        let ranks: Vec<_> = labels.iter().map(|(_, e)| e.rank).collect();
        assert_eq!(ranks, [0, 1, 2]);
    }

    static G: crate::metrics::Def = crate::metrics::Def {
        name: "t_per_mount",
        help: "h",
        kind: prometheus::proto::MetricType::GAUGE,
        labels: &["mountpoint", "mntns", "kind"],
    };

    /// A per-mount family writes exactly what a plain family given the same
    /// label values writes, in both formats: hostile mountpoints (quote,
    /// backslash, newline), one path in two namespaces, two mounts on one path
    /// in one namespace, rows added out of order.
    #[test]
    fn per_mount_families_write_what_plain_ones_do() {
        let (mut lines, _) = mountinfo::parse(
            concat!(
                "1 2 0:51 / /b rw - overlay overlay rw,upperdir=/u1,workdir=/w1\n",
                "2 2 0:52 / /a\\134\"x\\012y rw - overlay overlay rw,upperdir=/u2,workdir=/w2\n",
                "3 2 0:53 / /b rw - overlay overlay rw,upperdir=/u3,workdir=/w3\n",
                "4 2 0:54 / /b rw - overlay overlay rw,upperdir=/u4,workdir=/w4\n",
                "5 2 0:55 / /a rw - overlay overlay rw,upperdir=/u5,workdir=/w5\n",
            )
            .as_bytes(),
        );
        let ns = crate::discovery::MountNs { id: crate::discovery::NsId(4026532175), pid: 1 };
        lines[2].namespace = Some(ns);
        let t = MountTable { mounts: group_by_superblock(lines, |_| true, None), ..Default::default() };
        let labels = Arc::new(MountLabels::new(&t));
        let mut ours = crate::metrics::Family::per_mount(&G, &labels);
        let mut plain = crate::metrics::Family::new(&G);
        for (n, m) in t.mounts.values().rev().enumerate() {
            for kind in ["z", "a\"q", "m"] {
                let i = labels.index(m.device).expect("indexed");
                ours.add_for_mount(i, &[kind], n as f64 + 0.5);
                plain.add(&[&m.mountpoint_label(), &m.mntns_label(), kind], n as f64 + 0.5);
            }
        }
        let text = |f: crate::metrics::Family| {
            let mut out = String::new();
            f.write_text(&mut out);
            out
        };
        let proto = |f: crate::metrics::Family| {
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            f.write_proto(&mut out, &mut scratch);
            out
        };
        let again = |f: &crate::metrics::Family| {
            let mut g = crate::metrics::Family::per_mount(&G, &labels);
            let mut p = crate::metrics::Family::new(&G);
            for row in &f.rows {
                let v: Vec<&str> = f.values(row).collect();
                let Value::Plain(x) = row.value else { continue };
                g.add_for_mount(row.mount, &v[2..], x);
                p.add(&v, x);
            }
            (g, p)
        };
        let (ours2, plain2) = again(&ours);
        let written = text(ours);
        assert_eq!(written, text(plain));
        assert!(
            written.contains("t_per_mount{mountpoint=\"/a\\\\\\\"x\\ny\",kind=\"a\\\"q\"} "),
            "{written}"
        );
        assert!(
            written.contains("t_per_mount{mountpoint=\"/b\",mntns=\"4026532175\",kind=\"m\"} "),
            "{written}"
        );
        assert_eq!(written.lines().count(), 2 + 15);
        assert_eq!(proto(ours2), proto(plain2));
    }

    /// A new view builds new labels; the same view reuses them, through every
    /// clone of the cache (the mount and upper-dir collectors hold one each).
    #[test]
    fn labels_are_built_once_per_view() {
        let cache = LabelCache::default();
        let view = Arc::new(MountView {
            table: table("1 2 0:51 / /m rw - overlay overlay rw,upperdir=/u,workdir=/w\n"),
            ..Default::default()
        });
        let (a, b) = (cache.get(&view), cache.clone().get(&view));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &LabelCache::default().get(&view)), "an unrelated cache builds its own");
        let other = Arc::new(MountView { table: table(""), ..Default::default() });
        assert_eq!(cache.get(&other).iter().count(), 0);
    }
}
