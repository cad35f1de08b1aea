//! Collector for the agent's build: `overlayfs_agent_build_info`, the version
//! this binary was built as.

use prometheus::proto::MetricType;

use super::{Collector, Def, Family};

static BUILD: Def = Def {
    name: "overlayfs_agent_build_info",
    help: "overlay-agent build metadata; always 1.",
    kind: MetricType::GAUGE,
    labels: &["version"],
};

pub struct BuildInfoCollector;

impl Collector for BuildInfoCollector {
    fn collect(&self) -> Vec<Family> {
        let mut build = Family::new(&BUILD);
        build.add(&[env!("CARGO_PKG_VERSION")], 1.0);
        vec![build]
    }
}
