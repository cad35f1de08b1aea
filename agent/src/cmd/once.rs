//! `overlay-agent once`: discover, attach the probes (so the exposition shows the
//! eBPF state the daemon would have), scan every upper dir, print the exposition.

use std::io::Write;

use crate::config::Config;
use crate::daemon::pipeline::{start_probes_blocking, Pipeline};
use crate::daemon::AgentError;

pub fn run(config: &Config, out: &mut impl Write) -> Result<(), AgentError> {
    crate::caps::warn_if_missing();
    let p = Pipeline::new(config, None)?;
    p.rediscover(config, &crate::discovery::Dirty::all(), true)?;
    let probes = start_probes_blocking(config, &p.probes);
    p.schedule_scans(config);
    p.pool.wait_idle();
    let text = p.exposition.render();
    drop(probes);
    out.write_all(&text).map_err(|source| AgentError::Start { what: "output", source })
}
