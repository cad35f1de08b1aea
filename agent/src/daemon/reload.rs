//! SIGHUP: re-read the config file and the web config file, and apply every
//! key but the restart-only ones (`config::RESTART_ONLY`) to what runs.

use super::pipeline::{start_probes, stop_probes};
use super::Daemon;
use crate::config::Config;
use crate::probes;
use crate::server::web_config::WebConfigFile;
use crate::server::ServerState;
use crate::sync::RwLockExt;

impl Daemon<'_> {
    /// Re-reads both files; an invalid one is logged and the running one kept.
    pub(super) async fn reload(&mut self) {
        reload_web(&self.config, &self.http);
        let Some(path) = &self.cli.config else {
            tracing::info!("SIGHUP: no --config file to reload");
            return;
        };
        let mut new = match self.cli.effective_config() {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                return;
            }
        };
        let kept = new.keep_restart_only(&self.config);
        if !kept.is_empty() {
            tracing::warn!(keys = ?kept, "restart-only keys changed: they take effect at restart");
        }
        tracing::info!(file = %path.display(), "config reloaded");
        let old = std::mem::replace(&mut self.config, new);
        self.apply(&old).await;
    }

    /// What the running parts take from a new config; the rest (discovery
    /// filters, identity rules, scan intervals) is read from `self.config` anew.
    async fn apply(&mut self, old: &Config) {
        let (new, p) = (&self.config.ebpf, &self.pipeline);
        p.pool.reconfigure(&self.config.scan);
        *p.classic_histograms.write_now() = new.classic_histograms;
        match (old.ebpf.enabled, new.enabled) {
            (true, false) => {
                if let Some(probes) = self.copy_up_probes.take() {
                    stop_probes(probes, &p.probes);
                    tracing::info!("ebpf.enabled: false: copy-up probes detached");
                }
                *p.probes.status.write_now() = probes::ProbeStatus {
                    disabled: Some(probes::Disabled::DisabledByConfig),
                    ..Default::default()
                };
            }
            (false, true) => self.copy_up_probes = start_probes(&self.config, &p.probes).await,
            _ => {}
        }
        if new.per_mount_histograms != old.ebpf.per_mount_histograms {
            let on = new.per_mount_histograms;
            if let Some(probes) = self.copy_up_probes.as_mut() {
                match probes.set_per_mount_histograms(on) {
                    Ok(()) => p.probes.status.write_now().per_mount_histograms = on,
                    Err(e) => tracing::error!(error = %e, "cannot apply ebpf.per_mount_histograms"),
                }
            }
        }
    }
}

/// Re-reads the web config (rotated certificates, changed users); keeps the
/// running one when the file is invalid.
fn reload_web(config: &Config, state: &ServerState) {
    match WebConfigFile::from_file(config.web.config_file.as_deref()) {
        Ok(web) => state.set_web(web),
        Err(e) => tracing::error!(error = %e, "web config reload failed; keeping the running one"),
    }
}
