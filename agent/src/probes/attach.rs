//! Loading and attaching one planned program: kprobes through aya, return
//! probes through tracefs with an explicit maxactive where tracefs is there
//! (`retprobe`), else through aya.

use std::os::fd::AsFd;
use std::path::PathBuf;

use aya::programs::KProbe;
use aya::Ebpf;

use super::plan::{Mechanism, Planned};
use super::status::{errno, AttachState};
use super::{chain, retprobe};

/// Loads and attaches programs; return probes go through tracefs with an
/// explicit maxactive where tracefs is there (retprobe.rs), else through aya.
pub(super) struct Attacher {
    loaded: Vec<&'static str>,
    tracefs: Option<PathBuf>,
    pub(super) returns: Vec<retprobe::Retprobe>,
}

impl Attacher {
    pub(super) fn new(tracefs_returns: bool) -> Attacher {
        let tracefs = if tracefs_returns { retprobe::tracefs() } else { None };
        if let Some(t) = &tracefs {
            retprobe::remove_stale(t);
        }
        Attacher { loaded: Vec::new(), tracefs, returns: Vec::new() }
    }

    pub(super) fn attach(&mut self, ebpf: &mut Ebpf, p: &Planned) -> AttachState {
        let mut state = AttachState {
            program: p.program,
            function: p.function,
            mechanism: p.mechanism,
            attached: false,
            error: None,
            errno: None,
            core: p.core,
            maxactive: None,
        };
        let Some(function) = p.function else {
            state.error = Some("no candidate function on this kernel (inlined or renamed)".into());
            return state;
        };
        let result = (|| -> Result<Option<u32>, (String, Option<i32>)> {
            let prog = ebpf
                .program_mut(p.program)
                .ok_or_else(|| (format!("program {} not in object", p.program), None))?;
            let kprobe: &mut KProbe = prog.try_into().map_err(|e| (chain(&e), errno(&e)))?;
            if !self.loaded.contains(&p.program) {
                kprobe.load().map_err(|e| (format!("load: {}", chain(&e)), errno(&e)))?;
                self.loaded.push(p.program);
            }
            if let (Mechanism::Kretprobe, Some(tracefs)) = (p.mechanism, &self.tracefs) {
                let fd = kprobe.fd().map_err(|e| (chain(&e), errno(&e)))?;
                match retprobe::Retprobe::attach(tracefs, p.program, function, fd.as_fd()) {
                    Ok(r) => {
                        self.returns.push(r);
                        return Ok(Some(retprobe::MAXACTIVE));
                    }
                    Err(e) => tracing::warn!(
                        program = p.program,
                        error = %e,
                        "tracefs return probe failed; using perf's (kernel default maxactive)"
                    ),
                }
            }
            kprobe.attach(function, 0).map_err(|e| (format!("attach: {}", chain(&e)), errno(&e)))?;
            Ok(None)
        })();
        match result {
            Ok(maxactive) => {
                state.attached = true;
                state.maxactive = maxactive;
            }
            Err((e, n)) => {
                tracing::debug!(program = p.program, function, error = %e, "probe not attached");
                state.error = Some(e);
                state.errno = n;
            }
        }
        state
    }
}
