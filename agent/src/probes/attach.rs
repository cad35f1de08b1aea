//! Loading and attaching one planned program (kprobes through aya).

use aya::programs::KProbe;
use aya::Ebpf;

use super::chain;
use super::plan::Planned;
use super::status::{errno, AttachState};

/// Loads and attaches programs, each program loaded once.
#[derive(Default)]
pub(super) struct Attacher {
    loaded: Vec<&'static str>,
}

impl Attacher {
    pub(super) fn attach(&mut self, ebpf: &mut Ebpf, p: &Planned) -> AttachState {
        let mut state = AttachState {
            program: p.program,
            function: p.function,
            mechanism: p.mechanism,
            attached: false,
            error: None,
            errno: None,
            core: p.core,
        };
        let Some(function) = p.function else {
            state.error = Some("no candidate function on this kernel (inlined or renamed)".into());
            return state;
        };
        let result = (|| -> Result<(), (String, Option<i32>)> {
            let prog = ebpf
                .program_mut(p.program)
                .ok_or_else(|| (format!("program {} not in object", p.program), None))?;
            let kprobe: &mut KProbe = prog.try_into().map_err(|e| (chain(&e), errno(&e)))?;
            if !self.loaded.contains(&p.program) {
                kprobe.load().map_err(|e| (format!("load: {}", chain(&e)), errno(&e)))?;
                self.loaded.push(p.program);
            }
            kprobe.attach(function, 0).map_err(|e| (format!("attach: {}", chain(&e)), errno(&e)))?;
            Ok(())
        })();
        match result {
            Ok(()) => state.attached = true,
            Err((e, n)) => {
                tracing::debug!(program = p.program, function, error = %e, "probe not attached");
                state.error = Some(e);
                state.errno = n;
            }
        }
        state
    }
}
