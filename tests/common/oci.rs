//! OCI image archives (what podman save and podman manifest push write).

use std::path::Path;
use std::process::Command;

/// The platforms of the manifest list in an OCI archive (its index, one level down).
pub fn list_platforms(archive: &Path) -> Vec<String> {
    let read = |name: &str| -> serde_json::Value {
        let out = Command::new("tar").arg("-xOf").arg(archive).arg(name).output().expect("tar");
        assert!(out.status.success(), "{name} not in {}", archive.display());
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let index = read("index.json");
    let digest = index["manifests"][0]["digest"].as_str().expect("a manifest list").replace(':', "/");
    let list = read(&format!("blobs/{digest}"));
    let mut out: Vec<String> = list["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    out.sort();
    out
}
