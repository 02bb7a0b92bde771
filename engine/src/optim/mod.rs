//! Optimizers ([`Sgd`], [`AdamW`]) with PyTorch's exact update rules, learning-rate schedules
//! ([`LrSchedule`]), and gradient clipping ([`clip_grad_norm`], [`clip_grad_value`]).
//!
//! Parameters are leaf tensors (`with_requires_grad(true)`); gradients are the [`Gradients`] of
//! `loss.backward()`. A step updates the parameters in place ([`Tensor::update_data`], which keeps
//! their autograd identity) and keeps per-parameter state by position in the slice, so pass the
//! parameters in the same order every step. Parameters without a gradient are skipped.

mod adamw;
mod clip;
mod params;
mod schedule;
mod sgd;
mod state;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_grad_norm, clip_grad_value};
pub use params::decay_matrices_only;
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdConfig};
pub use state::OptimState;

use crate::autograd::Gradients;
use crate::error::Result;
use crate::tensor::Tensor;

/// A gradient-descent method.
pub trait Optimizer {
    /// Update `params` in place from their gradients in `grads`. Errors (nothing is updated for
    /// the offending parameter) on a gradient or saved state whose shape differs from its
    /// parameter, or a parameter count different from earlier steps.
    fn step(&mut self, params: &mut [Tensor], grads: &Gradients) -> Result<()>;

    /// The current learning rate.
    fn lr(&self) -> f64;

    /// Set the learning rate (a schedule's value for this step or epoch).
    fn set_lr(&mut self, lr: f64);

    /// The state needed to resume training exactly (buffers, step counts, learning rate).
    fn state(&self) -> OptimState;

    /// Restore what [`Optimizer::state`] returned (from this kind of optimizer).
    fn load_state(&mut self, state: &OptimState) -> Result<()>;
}

#[cfg(test)]
mod tests;
