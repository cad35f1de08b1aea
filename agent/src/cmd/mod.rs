//! The one-shot commands beside the daemon (`serve` is [`crate::daemon`]):
//! [`once`] prints one exposition, [`mounts`] lists the overlay mounts, [`trace`]
//! prints copy-ups as they happen, [`check`] tells what works on this host,
//! [`explain`] turns copy-up figures into the fix that avoids them.

pub mod check;
pub mod explain;
pub mod mounts;
pub mod once;
pub mod trace;
