//! The keys that take effect only at restart: the one table of them.
//!
//! A SIGHUP reload applies every other key at once. These keys configure
//! something built once at start (the listener, the scan threads, the quota
//! thread, the logger, the mountinfo watcher, the top-K process table): a reload
//! keeps their running values, logs that they changed, and they take effect at
//! the next start. README.md and config/overlay-agent.yaml name the same keys; a
//! unit test holds the three together.

use super::Config;

/// One restart-only key: its dotted name, and how to compare and keep it.
pub struct RestartOnly {
    pub key: &'static str,
    changed: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

macro_rules! restart_only {
    ($key:literal, $($field:ident).+) => {
        RestartOnly {
            key: $key,
            changed: |a, b| a.$($field).+ != b.$($field).+,
            keep: |new, running| new.$($field).+ = running.$($field).+.clone(),
        }
    };
}

/// Every key that takes effect only at restart.
pub static RESTART_ONLY: &[RestartOnly] = &[
    restart_only!("web.listen_address", web.listen_address),
    restart_only!("web.max_connections", web.max_connections),
    restart_only!("discovery.procfs", discovery.procfs),
    restart_only!("scan.concurrency", scan.concurrency),
    restart_only!("scan.quota", scan.quota),
    restart_only!("scan.quota_interval", scan.quota_interval),
    restart_only!("scan.classify_interval", scan.classify_interval),
    restart_only!("scan.assign_project_ids", scan.assign_project_ids),
    restart_only!("ebpf.top_processes", ebpf.top_processes),
    restart_only!("ebpf.top_processes_idle", ebpf.top_processes_idle),
    restart_only!("log.level", log.level),
    restart_only!("log.format", log.format),
];

impl Config {
    /// For a reload: keeps the running value of every restart-only key in `self`
    /// (the new config) and returns the keys whose value the file changed.
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for k in RESTART_ONLY {
            if (k.changed)(self, running) {
                changed.push(k.key);
                (k.keep)(self, running);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn keys() -> BTreeSet<&'static str> {
        RESTART_ONLY.iter().map(|k| k.key).collect()
    }

    /// The keys between the markers `restart-only keys:` and the end of that
    /// sentence (a `.`), written as `` `key` `` (README) or bare (YAML comment).
    fn named_in(file: &str) -> BTreeSet<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = text.replace("\n#", " ").replace('\n', " ");
        let start = text
            .find("Restart-only keys:")
            .unwrap_or_else(|| panic!("{file} has no 'Restart-only keys:' sentence"));
        let rest = &text[start + "Restart-only keys:".len()..];
        let sentence = &rest[..rest.find(". ").or_else(|| rest.find(".\n")).unwrap_or(rest.len())];
        sentence
            .split([',', ' '])
            .map(|w| w.trim_matches(|c: char| c == '`' || c == '.' || c.is_whitespace()))
            .filter(|w| w.contains('.') && !w.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn readme_and_example_config_name_the_restart_only_keys_of_the_code() {
        let code: BTreeSet<String> = keys().into_iter().map(str::to_owned).collect();
        assert_eq!(named_in("README.md"), code, "README.md");
        assert_eq!(named_in("config/overlay-agent.yaml"), code, "config/overlay-agent.yaml");
    }

    #[test]
    fn a_reload_keeps_restart_only_values_and_takes_the_others() {
        let running = Config::default();
        let mut new = Config::default();
        new.scan.concurrency = 7;
        new.scan.max_cpu = Some(0.5);
        new.ebpf.per_mount_histograms = false;
        new.log.level = super::super::LogLevel::Debug;
        new.scan.quota_interval = Duration::from_secs(9);
        let changed = new.keep_restart_only(&running);
        assert_eq!(changed, vec!["scan.concurrency", "scan.quota_interval", "log.level"]);
        assert_eq!(new.scan.concurrency, running.scan.concurrency);
        assert_eq!(new.scan.quota_interval, running.scan.quota_interval);
        assert_eq!(new.log, running.log);
        assert_eq!((new.scan.max_cpu, new.ebpf.per_mount_histograms), (Some(0.5), false));
        assert!(new.keep_restart_only(&running).is_empty(), "nothing left to keep");
    }
}
