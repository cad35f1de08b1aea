//! The exposition formats' encoders: each writes the model's families
//! (`metrics::Family`, sorted by name) and the process metrics in its format.
//! `metrics::Format` says which one a scrape gets.

pub mod append;
pub mod proto;
pub mod text;
