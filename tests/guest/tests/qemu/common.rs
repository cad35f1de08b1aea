//! The helpers this crate shares with the agent's integration tests
//! (tests/common): all but those that run the agent binary on this host.
#![allow(dead_code, unused_imports)]

#[path = "../../../common/exposition.rs"]
mod exposition;
#[path = "../../../common/host.rs"]
mod host;
#[path = "../../../common/promtool.rs"]
mod promtool;
#[path = "../../../common/proto.rs"]
mod proto;

pub use exposition::*;
pub use host::*;
pub use promtool::*;
pub use proto::*;
