//! The open-files limit. The agent raises its soft RLIMIT_NOFILE to the hard limit
//! at start, as Go programs (node_exporter, Prometheus) do since Go 1.19: each HTTP
//! connection is a descriptor, and the soft limit (often 1024) is a historical
//! default for select(2), which the agent does not use. The HTTP connection cap is
//! sized from the result (server::connection_cap).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What raising the limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// From the old soft limit to the new one (None: unlimited).
    To { from: Option<u64>, to: Option<u64> },
    /// Already at the hard limit.
    AlreadyMax(Option<u64>),
}

/// Raises the soft open-files limit to the hard limit.
pub fn raise_nofile() -> Result<Raised, std::io::Error> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(Raised::AlreadyMax(limit.current));
    }
    setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    Ok(Raised::To { from: limit.current, to: limit.maximum })
}

/// The soft open-files limit now; None when unlimited.
pub fn nofile() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raising works as any user (soft up to hard needs no privilege) and leaves
    /// the soft limit at the hard one.
    #[test]
    fn raises_the_soft_limit_to_the_hard_limit() {
        let before = getrlimit(Resource::Nofile);
        let r = raise_nofile().expect("raise");
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, before.maximum, "{r:?}");
        assert_eq!(nofile(), after.current);
        assert_eq!(raise_nofile().expect("again"), Raised::AlreadyMax(after.current));
    }
}
