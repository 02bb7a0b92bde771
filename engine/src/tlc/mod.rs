//! TLC ("Till the Layers Collapse") over any model graph: find the activations that can go, score
//! them through the batch-norm statistics in front of them, decide which to remove, and linearize
//! them. The algorithm is `shared/TLC.md`; the driver that ranks by validation loss and fine-tunes
//! lives in `tlc-models`.
//!
//! Nothing here knows an architecture: candidates, their batch-norms and the convolutions that
//! produce them are found from node kinds and edges alone.

pub mod candidates;
pub mod linearize;
pub mod policy;
pub mod scores;

pub use candidates::{candidates, Candidate, ScoreSource};
pub use linearize::{linearize, ChannelMask, Linearized};
pub use policy::choose_removals;
pub use scores::{binary_entropy, error_likelihood, p_off, Calibration, ChannelStats, LayerScore};

#[cfg(test)]
mod tests;
