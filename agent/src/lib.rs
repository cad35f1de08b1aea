//! overlay-agent: overlayfs mounts, upper-dir contents and copy-ups for Prometheus.
//!
//! Data flows one way: [`discovery`] (mountinfo -> `MountTable`) -> [`identity`]
//! (mounts -> `Inventory`, by device) -> [`scan`] (upper dirs -> `ScanResult`) ->
//! [`metrics`] (collectors joined by device) -> [`server`]. [`pattern`] holds value
//! types the config shares with the stages.
//! [`activity`] carries copy-up counts from the probes to the scan pool's order.
//! [`diagnosis`] turns copy-up figures and mount facts into what each fix would
//! have avoided; its rules table is a leaf that identity reads too.
//! [`daemon`] wires them together for the daemon and the one-shot commands.

pub mod activity;
pub mod caps;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod diagnosis;
pub mod discovery;
pub mod identity;
pub mod kernel;
pub mod memory;
pub mod metrics;
pub mod pattern;
pub mod probes;
pub mod rlimit;
pub mod scan;
pub mod server;
pub mod sync;
