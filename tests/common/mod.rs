//! Helpers shared by the overlay-agent package's integration tests: real
//! overlay mounts (unmounted on drop), the real agent binary (killed on drop), a
//! tiny HTTP client, the exposition parser, promtool, the protobuf decoder, and
//! readiness polling with deadlines. The guest tests (tests/guest) share the
//! modules that do not run this package's binary (see their common.rs).
#![allow(dead_code, unused_imports)]

mod agent;
mod exposition;
mod host;
mod http;
mod mounts;
mod namespaces;
mod oci;
mod promtool;
mod proto;
mod servers;

pub use agent::*;
pub use exposition::*;
pub use host::*;
pub use http::*;
pub use mounts::*;
pub use namespaces::*;
pub use oci::*;
pub use promtool::*;
pub use proto::*;
pub use servers::*;
