//! What each fix would have avoided: per mount, the copy-ups a fix removes and
//! their bytes and time, from the copy-up counters by cause and kind and the
//! mount and kernel facts ([`avoidable`]); every rule with its source in one
//! table ([`rules`]). Pure: the metrics feed it figures and facts.

pub mod avoidable;
pub mod rules;

pub use avoidable::{avoidable, Figures, Fix, MountFacts, Saving};
