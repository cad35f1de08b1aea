//! Quota mode as configured (`scan.quota*`, `scan.classify_interval`,
//! `scan.assign_project_ids`), with the counters and memory the scan threads share:
//! readings made and failed, and project-id assignments tried.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{assign, probe, AssignError, AssignMemo, QuotaTarget, Reading, Unavailable, Usage};
use crate::config::ScanConfig;
use crate::sync::LockExt;

/// Quota mode settings (`scan.quota*`, `scan.classify_interval`, `scan.assign_project_ids`).
#[derive(Debug)]
pub struct QuotaSettings {
    pub enabled: bool,
    pub interval: Duration,
    pub classify_interval: Duration,
    pub assign: Option<(u32, u32)>,
    /// Where the next assigned id search starts.
    next_id: Mutex<u32>,
    /// Failed assignments: retried after an hour, logged once per reason.
    assign_memo: Mutex<AssignMemo>,
    /// The agent's own mountinfo (block devices for quotactl before 5.14).
    pub mountinfo: PathBuf,
    /// Quota readings made, and those that failed.
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
}

impl QuotaSettings {
    pub fn new(config: &ScanConfig) -> Self {
        let assign = config.assign_project_ids.map(|r| (r.first, r.last));
        QuotaSettings {
            enabled: config.quota,
            interval: config.quota_interval,
            classify_interval: config.classify_interval,
            assign,
            next_id: Mutex::new(assign.map_or(0, |a| a.0)),
            assign_memo: Mutex::default(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            reads: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
        }
    }

    pub(in crate::scan) fn read_raw(&self, target: &QuotaTarget) -> Result<Reading, Unavailable> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        target.read_raw().inspect_err(|_| {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    pub(in crate::scan) fn read(&self, target: &QuotaTarget) -> Result<Usage, Unavailable> {
        self.read_raw(target).and_then(|r| target.usage(r))
    }

    /// Quota mode for one upper dir, assigning it an id first when configured.
    pub(in crate::scan) fn probe(
        &self,
        upper: &Path,
        work: Option<&Path>,
    ) -> Result<QuotaTarget, Unavailable> {
        if !self.enabled {
            return Err(Unavailable::Disabled);
        }
        match probe(upper, work, &self.mountinfo) {
            Err(Unavailable::NoProjectId)
                if self.assign.is_some() && self.assign_memo.locked().due(upper, Instant::now()) =>
            {
                let range = self.assign.unwrap_or_default();
                let assigned = assign(upper, work, &self.mountinfo, range, &mut self.next_id.locked());
                match assigned {
                    Ok(a) => {
                        self.assign_memo.locked().succeeded(upper);
                        tracing::info!(upper = %upper.display(), project_id = a.project_id, tagged = a.tagged, foreign = a.foreign, untaggable = a.untaggable, "assigned a project id (scan.assign_project_ids)")
                    }
                    // Every walk tries again (one quotactl): no warning per walk where quotas cannot work.
                    Err(e @ AssignError::Unavailable(_)) => {
                        tracing::debug!(upper = %upper.display(), error = %e, "no project id assigned")
                    }
                    // Tried again after ASSIGN_RETRY; logged once per upper dir and reason.
                    Err(e) => {
                        if self.assign_memo.locked().failed(upper, &e, Instant::now()) {
                            tracing::warn!(upper = %upper.display(), reason = e.kind(), error = %e, "no project id assigned (scan.assign_project_ids); tried again in an hour")
                        }
                    }
                }
                probe(upper, work, &self.mountinfo)
            }
            other => other,
        }
    }
}
