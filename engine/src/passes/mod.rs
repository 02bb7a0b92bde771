//! Graph rewrites that keep a model's function (in evaluation mode) and make it cheaper: batch-norm
//! folding, removal of pass-through nodes, and the merges of linear chains that TLC leaves behind
//! (TLC.md, "Collapsing"). Each pass takes a [`Model`] and returns a new one; none knows an
//! architecture.

pub mod fold_bn;
pub mod merge;
pub mod prune;
pub mod rewrite;

pub use fold_bn::fold_batch_norms;
pub use merge::{fold_residuals, merge_conv_chains, merge_linear_chains, merge_parallel_branches};
pub use prune::prune_dead_channels;
pub use rewrite::remove_passthrough;

use crate::error::Result;
use crate::graph::Model;

/// Every exact eval-mode simplification, to a fixed point: fold batch-norms, drop identities and
/// dropout, merge conv and linear chains, sum parallel branches, fold residual identities.
pub fn collapse(model: &Model) -> Result<Model> {
    let mut m = remove_passthrough(&fold_batch_norms(model)?)?;
    loop {
        let before = m.graph().nodes().len();
        m = merge_conv_chains(&m)?;
        m = merge_linear_chains(&m)?;
        m = merge_parallel_branches(&m)?;
        m = fold_residuals(&m)?;
        if m.graph().nodes().len() == before {
            return Ok(m);
        }
    }
}

#[cfg(test)]
mod tests;
