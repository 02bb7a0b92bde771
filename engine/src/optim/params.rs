//! What every optimizer checks before it touches a parameter: the parameter count, the learning
//! rate, each gradient's shape, and which parameters take weight decay.

use crate::autograd::Gradients;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::borrow::Cow;

/// The gradient of parameter `i` as contiguous values, `None` if it has none (then the parameter
/// is skipped, as PyTorch skips parameters whose `.grad` is `None`).
pub(crate) fn grad_of<'g>(
    op: &'static str,
    i: usize,
    param: &Tensor,
    grads: &'g Gradients,
) -> Result<Option<Cow<'g, [f32]>>> {
    let Some(g) = grads.get(param) else {
        return Ok(None);
    };
    if g.shape() != param.shape() {
        return Err(Error::shape(
            op,
            format!(
                "parameter {i} has shape {:?} but its gradient has shape {:?}",
                param.shape(),
                g.shape()
            ),
        ));
    }
    Ok(Some(g.contiguous_data()))
}

/// A state buffer saved for parameter `i` must still match it.
pub(crate) fn check_state_shape(
    op: &'static str,
    i: usize,
    param: &Tensor,
    state_shape: &[usize],
) -> Result<()> {
    if state_shape != param.shape() {
        return Err(Error::shape(
            op,
            format!(
                "parameter {i} has shape {:?} but the optimizer state for it has shape {state_shape:?}",
                param.shape()
            ),
        ));
    }
    Ok(())
}

/// Per-parameter state, sized on the first step; later steps must pass as many parameters.
pub(crate) fn ensure_slots<T>(
    op: &'static str,
    slots: &mut Vec<Option<T>>,
    started: &mut bool,
    n: usize,
) -> Result<()> {
    if !*started {
        slots.resize_with(n, || None);
        *started = true;
    } else if slots.len() != n {
        return Err(Error::invalid(
            op,
            format!(
                "step got {n} parameters but the optimizer holds state for {}",
                slots.len()
            ),
        ));
    }
    Ok(())
}

/// The learning rate must be a finite non-negative number.
pub(crate) fn check_lr(op: &'static str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(Error::invalid(
            op,
            format!("learning rate {lr} is not a finite non-negative number"),
        ));
    }
    Ok(())
}

/// Which parameters take weight decay: all of them (PyTorch's default), or those a mask marks.
#[derive(Clone, Debug, Default)]
pub(crate) struct DecayMask(Option<Vec<bool>>);

impl DecayMask {
    pub(crate) fn new(mask: Vec<bool>) -> Self {
        DecayMask(Some(mask))
    }

    pub(crate) fn check(&self, op: &'static str, n: usize) -> Result<()> {
        match &self.0 {
            Some(m) if m.len() != n => Err(Error::invalid(
                op,
                format!(
                    "the weight-decay mask has {} entries for {n} parameters",
                    m.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn decays(&self, i: usize) -> bool {
        self.0.as_ref().is_none_or(|m| m[i])
    }
}

/// The common rule "decay weight matrices and kernels, not biases or normalisation parameters":
/// `true` for parameters of rank 2 or more.
pub fn decay_matrices_only(params: &[Tensor]) -> Vec<bool> {
    params.iter().map(|p| p.rank() >= 2).collect()
}

/// Check a hyperparameter lies in a range (messages name the optimizer and the value).
pub(crate) fn check_range(
    op: &'static str,
    what: &str,
    v: f64,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<()> {
    if !ok(v) {
        return Err(Error::invalid(op, format!("{what} = {v} is not {range}")));
    }
    Ok(())
}
