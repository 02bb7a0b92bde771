//! Graph rewrites that keep a model's function (in evaluation mode) and make it cheaper: batch-norm
//! folding, removal of pass-through nodes, and the merges of linear chains that TLC leaves behind
//! (TLC.md, "Collapsing"), merged everywhere ([`collapse`]) or where a cost model says the merged
//! layer is faster ([`collapse_with`], [`cost`]). Each pass takes a [`Model`](crate::graph::Model)
//! and returns a new one; none knows an architecture.

pub mod collapse;
pub mod cost;
pub mod fold_bn;
pub mod merge;
pub mod prune;
pub mod rewrite;

pub use collapse::{collapse, collapse_with, priced_convs, DeadChannels, Decision, DecisionKind};
pub use cost::{ConvKind, CostEntry, CostModel, CostTable};
pub use fold_bn::fold_batch_norms;
pub use merge::{
    fold_residuals, merge_conv_chains, merge_layers, merge_linear_chains, merge_parallel_branches,
};
pub use prune::prune_dead_channels;
pub use rewrite::remove_passthrough;

#[cfg(test)]
mod tests;
