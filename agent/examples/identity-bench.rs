//! Cost of identifying the mounts of a busy node, in process: a fake root with N
//! podman containers (one containers.json) and N Docker overlay2 containers
//! (layerdb mounts and config.v2.json each), and a mount table of their 2N
//! overlays; `Resolver::inventory` (what every mountinfo change runs) timed.
//!
//!     cargo run --release --example identity-bench -- 200 20
//!
//! Prints p50 and max per inventory of the 2N mounts.

use std::time::Instant;

use overlay_agent::discovery::{group_by_superblock, mountinfo, MountTable};
use overlay_agent::identity::Resolver;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let hex = |kind: u8, i: usize| format!("{kind:02x}{i:062x}");
    let write = |p: String, s: String| {
        let p = r.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, s).expect("write");
    };
    let mut containers = Vec::new();
    let mut lines = String::new();
    for i in 0..n {
        let (id, layer) = (hex(1, i), hex(2, i));
        containers.push(serde_json::json!({
            "id": id, "names": [format!("web-{i}")], "layer": layer, "image": hex(3, 0),
            "metadata": serde_json::json!({"image-name": "localhost/web:1", "name": format!("web-{i}"), "created-at": 1}).to_string(),
            "created": "2026-12-01T00:00:00Z", "flags": {"MountLabel": "", "ProcessLabel": ""},
        }));
        lines.push_str(&format!(
            "{} 1 0:{} / /var/lib/containers/storage/overlay/{layer}/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/containers/storage/overlay/{layer}/diff,workdir=/w\n",
            1000 + i,
            1000 + i
        ));
        let (cid, mid) = (hex(4, i), hex(5, i));
        write(format!("/var/lib/docker/image/overlay2/layerdb/mounts/{cid}/mount-id"), mid.clone());
        write(
            format!("/var/lib/docker/containers/{cid}/config.v2.json"),
            format!(r#"{{"Name":"/db-{i}","State":{{}}}}"#),
        );
        lines.push_str(&format!(
            "{} 1 0:{} / /var/lib/docker/overlay2/{mid}/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/overlay2/{mid}/diff,workdir=/w\n",
            5000 + i,
            5000 + i
        ));
    }
    write(
        "/var/lib/containers/storage/overlay-containers/containers.json".into(),
        serde_json::Value::Array(containers).to_string(),
    );
    let table = MountTable {
        mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true, None),
        ..Default::default()
    };
    let resolver = Resolver::new(r, std::path::Path::new("/proc"), &[]);
    let mut times = Vec::new();
    let mut named = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let inv = resolver.inventory(&table, None);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        named = inv.iter().filter(|(_, i)| !i.container_name.is_empty()).count();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} mounts ({n} podman + {n} docker): inventory p50 {:.1} ms, max {:.1} ms, {named} named",
        table.mounts.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
