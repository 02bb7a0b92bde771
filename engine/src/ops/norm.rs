//! Normalisation with PyTorch's semantics: batch norm (training: normalise with the batch's
//! statistics and update the running statistics in place; eval: normalise with the running
//! statistics) and layer norm over trailing dimensions, each with its backward.

use crate::autograd::{is_grad_enabled, Backward};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use tlc_kernels::norm::{self as kn, ChannelDims, NormGrads};
use tlc_kernels::Activation;

/// Inputs an op recorded: `x`, then `weight` and `bias` when the op had them.
fn affine_inputs<'a>(
    x: &'a Tensor,
    weight: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
) -> Vec<&'a Tensor> {
    std::iter::once(x).chain(weight).chain(bias).collect()
}

/// Split recorded inputs back into `(x, weight, bias)`.
fn split_inputs(
    inputs: &[Tensor],
    has_weight: bool,
    has_bias: bool,
) -> (&Tensor, Option<&Tensor>, Option<&Tensor>) {
    let weight = has_weight.then(|| &inputs[1]);
    let bias = has_bias.then(|| &inputs[1 + has_weight as usize]);
    (&inputs[0], weight, bias)
}

/// Gradient buffers for the inputs that require grad, and the tensors made from them.
struct GradBuffers {
    dx: Option<Vec<f32>>,
    dgamma: Option<Vec<f32>>,
    dbeta: Option<Vec<f32>>,
}

impl GradBuffers {
    fn new(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Self {
        let want = |t: Option<&Tensor>| {
            t.filter(|t| t.requires_grad())
                .map(|t| tlc_kernels::alloc::zeroed_f32(t.numel()))
        };
        GradBuffers {
            dx: want(Some(x)),
            dgamma: want(weight),
            dbeta: want(bias),
        }
    }

    fn views(&mut self) -> NormGrads<'_> {
        NormGrads {
            dx: self.dx.as_deref_mut(),
            dgamma: self.dgamma.as_deref_mut(),
            dbeta: self.dbeta.as_deref_mut(),
        }
    }

    fn into_tensors(
        self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
    ) -> Vec<Option<Tensor>> {
        let mut out = vec![self.dx.map(|d| Tensor::new_unchecked(d, x.shape()))];
        if let Some(w) = weight {
            out.push(self.dgamma.map(|d| Tensor::new_unchecked(d, w.shape())));
        }
        if let Some(b) = bias {
            out.push(self.dbeta.map(|d| Tensor::new_unchecked(d, b.shape())));
        }
        out
    }
}

// ----- batch norm -------------------------------------------------------------------------------

struct BatchNormBackward {
    dims: ChannelDims,
    /// Batch statistics (training) or a copy of the running statistics (eval).
    mean: Vec<f32>,
    invstd: Vec<f32>,
    training: bool,
    has_weight: bool,
    has_bias: bool,
    /// The activation fused after the affine ([`Tensor::batch_norm_act`]).
    act: Option<Activation>,
    /// Whether a residual was added before the activation (the last input).
    residual: bool,
}

impl Backward for BatchNormBackward {
    fn name(&self) -> &'static str {
        match (self.act, self.residual) {
            (None, _) => "batch_norm",
            (Some(_), false) => "batch_norm_act",
            (Some(_), true) => "batch_norm_add_act",
        }
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (x, weight, bias) = split_inputs(inputs, self.has_weight, self.has_bias);
        let (g, xd) = (grad.contiguous_data(), x.contiguous_data());
        let wd = weight.map(|w| w.contiguous_data());
        let mut bufs = GradBuffers::new(x, weight, bias);
        if let (Some(act), true) = (self.act, self.residual) {
            // The gradient at the sum, once: the residual's, and the batch norm's to go on with.
            let r = inputs.last().expect("the residual is recorded last");
            let bd = bias.map(|b| b.contiguous_data());
            let (scale, shift) =
                kn::fold_affine(&self.mean, &self.invstd, wd.as_deref(), bd.as_deref());
            let mut gs = tlc_kernels::alloc::zeroed_f32(g.len());
            let rd = r.contiguous_data();
            kn::residual_act_grad(&g, &xd, &rd, self.dims, &scale, &shift, act, &mut gs);
            let run = if self.training {
                kn::batch_norm_train_backward
            } else {
                kn::batch_norm_eval_backward
            };
            let (stats, w) = ((&self.mean, &self.invstd), wd.as_deref());
            run(&gs, &xd, self.dims, stats.0, stats.1, w, bufs.views());
            let mut grads = bufs.into_tensors(x, weight, bias);
            grads.push(
                r.requires_grad()
                    .then(|| Tensor::new_unchecked(gs, r.shape())),
            );
            return Ok(grads);
        }
        if let Some(act) = self.act {
            let bd = bias.map(|b| b.contiguous_data());
            kn::batch_norm_act_backward(
                &g,
                &xd,
                self.dims,
                (&self.mean, &self.invstd),
                (wd.as_deref(), bd.as_deref()),
                act,
                self.training,
                bufs.views(),
            );
            return Ok(bufs.into_tensors(x, weight, bias));
        }
        let run = if self.training {
            kn::batch_norm_train_backward
        } else {
            kn::batch_norm_eval_backward
        };
        run(
            &g,
            &xd,
            self.dims,
            &self.mean,
            &self.invstd,
            wd.as_deref(),
            bufs.views(),
        );
        Ok(bufs.into_tensors(x, weight, bias))
    }
}

/// A per-channel parameter (weight, bias, running statistic) must have shape `[c]`.
fn check_per_channel(name: &str, t: Option<&Tensor>, c: usize, x: &Tensor) -> Result<()> {
    match t {
        Some(t) if t.shape() != [c] => Err(Error::shape(
            "batch_norm",
            format!(
                "{name} has shape {:?}, expected [{c}] for input {:?}",
                t.shape(),
                x.shape()
            ),
        )),
        _ => Ok(()),
    }
}

impl Tensor {
    /// Batch normalisation of `self`, shaped `[N, C]`, `[N, C, L]` or `[N, C, H, W]` (any
    /// `[N, C, ...]`), per channel, with PyTorch's `F.batch_norm` semantics:
    ///
    /// - `training`: normalise with the batch's mean and biased variance over every dim but C;
    ///   when `running` = `(running_mean, running_var)` is given, update them in place as
    ///   `(1 - momentum) * running + momentum * batch`, the variance term being the *unbiased*
    ///   batch variance. Needs more than one value per channel.
    /// - eval (`!training`): normalise with `running` (required).
    ///
    /// Then `* weight + bias` when given (shape `[C]`). Gradients flow to `self`, `weight` and
    /// `bias`; the running statistics are buffers and never require grad.
    pub fn batch_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&mut Tensor, &mut Tensor)>,
        training: bool,
        momentum: f32,
        eps: f32,
    ) -> Result<Tensor> {
        self.batch_norm_then(weight, bias, running, training, momentum, eps, None, None)
    }

    /// [`Tensor::batch_norm`] followed by `act`, as one op: one pass writes `act(bn(x))` (the
    /// normalised values are never stored), and the backward recomputes the activation's mask
    /// from `x` inside batch norm's own two passes. The same values and gradients as the two ops
    /// in sequence, with two of their five activation-sized passes and one buffer saved.
    #[allow(clippy::too_many_arguments)] // batch_norm's, and the activation
    pub fn batch_norm_act(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&mut Tensor, &mut Tensor)>,
        training: bool,
        momentum: f32,
        eps: f32,
        act: Activation,
    ) -> Result<Tensor> {
        self.batch_norm_then(
            weight,
            bias,
            running,
            training,
            momentum,
            eps,
            Some(act),
            None,
        )
    }

    /// `act(batch_norm(self) + residual)`, as one op: a residual block's end (batch norm, the
    /// shortcut added, the activation) in one pass over the output, the normalised values and
    /// the sum never stored. The backward writes the gradient at the sum once (the residual's)
    /// and runs batch norm's backward on it. `residual` has `self`'s shape.
    #[allow(clippy::too_many_arguments)] // batch_norm_act's, and the residual
    pub fn batch_norm_add_act(
        &self,
        residual: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&mut Tensor, &mut Tensor)>,
        training: bool,
        momentum: f32,
        eps: f32,
        act: Activation,
    ) -> Result<Tensor> {
        let r = Some(residual);
        self.batch_norm_then(weight, bias, running, training, momentum, eps, Some(act), r)
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_then(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&mut Tensor, &mut Tensor)>,
        training: bool,
        momentum: f32,
        eps: f32,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        if let Some(r) = residual {
            if r.shape() != self.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "residual of shape {:?} for an input of shape {:?}",
                        r.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        if self.rank() < 2 {
            return Err(Error::shape(
                OP,
                format!("input of shape {:?} is not [N, C, ...]", self.shape()),
            ));
        }
        let s = self.shape();
        let dims = ChannelDims {
            n: s[0],
            c: s[1],
            hw: s[2..].iter().product(),
        };
        check_per_channel("weight", weight, dims.c, self)?;
        check_per_channel("bias", bias, dims.c, self)?;
        if let Some((m, v)) = &running {
            check_per_channel("running_mean", Some(m), dims.c, self)?;
            check_per_channel("running_var", Some(v), dims.c, self)?;
        }
        if !(eps >= 0.0 && eps.is_finite() && momentum.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("eps must be finite and >= 0 and momentum finite (eps {eps}, momentum {momentum})"),
            ));
        }
        let xd = self.contiguous_data();
        let (wd, bd) = (
            weight.map(|w| w.contiguous_data()),
            bias.map(|b| b.contiguous_data()),
        );
        let rd = residual.map(|r| r.contiguous_data());
        let mut y = tlc_kernels::alloc::zeroed_f32(dims.len());
        let (mean, invstd) = if training {
            let count = dims.per_channel();
            if count < 2 {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "expected more than 1 value per channel when training, got input of shape {:?}",
                        self.shape()
                    ),
                ));
            }
            let st = kn::batch_stats(&xd, dims, eps);
            if let Some((rm, rv)) = running {
                let unbias = count as f32 / (count - 1) as f32;
                rm.update_data(|d| {
                    d.iter_mut()
                        .zip(&st.mean)
                        .for_each(|(r, &b)| *r = (1.0 - momentum) * *r + momentum * b)
                });
                rv.update_data(|d| {
                    d.iter_mut()
                        .zip(&st.var)
                        .for_each(|(r, &b)| *r = (1.0 - momentum) * *r + momentum * b * unbias)
                });
            }
            (st.mean, st.invstd)
        } else {
            let Some((rm, rv)) = running else {
                return Err(Error::invalid(
                    OP,
                    "eval mode normalises with running statistics, and none were given",
                ));
            };
            let mean = rm.to_vec();
            let invstd: Vec<f32> = rv
                .to_vec()
                .iter()
                .map(|&v| 1.0 / (v + eps).sqrt())
                .collect();
            (mean, invstd)
        };
        let (scale, shift) = kn::fold_affine(&mean, &invstd, wd.as_deref(), bd.as_deref());
        if !y.is_empty() {
            match (act, rd.as_deref()) {
                (None, _) => kn::channel_scale_shift(&xd, dims, &scale, &shift, &mut y),
                (Some(a), None) => {
                    kn::channel_scale_shift_act(&xd, dims, &scale, &shift, a, &mut y)
                }
                (Some(a), Some(r)) => {
                    kn::channel_scale_shift_add_act(&xd, r, dims, &scale, &shift, a, &mut y)
                }
            }
        }
        let out = Tensor::new_unchecked(y, self.shape());
        let mut inputs = affine_inputs(self, weight, bias);
        inputs.extend(residual);
        Ok(Tensor::record(out, &inputs, || BatchNormBackward {
            dims,
            mean,
            invstd,
            training,
            has_weight: weight.is_some(),
            has_bias: bias.is_some(),
            act,
            residual: residual.is_some(),
        }))
    }
}

// ----- layer norm -------------------------------------------------------------------------------

struct LayerNormBackward {
    d: usize,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    has_weight: bool,
    has_bias: bool,
}

impl Backward for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (x, weight, bias) = split_inputs(inputs, self.has_weight, self.has_bias);
        let (g, xd) = (grad.contiguous_data(), x.contiguous_data());
        let wd = weight.map(|w| w.contiguous_data());
        let mut bufs = GradBuffers::new(x, weight, bias);
        kn::layer_norm_backward(
            &g,
            &xd,
            self.d,
            &self.mean,
            &self.rstd,
            wd.as_deref(),
            bufs.views(),
        );
        Ok(bufs.into_tensors(x, weight, bias))
    }
}

impl Tensor {
    /// Layer normalisation over the trailing dimensions `normalized_shape` (PyTorch's
    /// `F.layer_norm`): each row of `prod(normalized_shape)` elements is normalised with its own
    /// mean and biased variance, then `* weight + bias` (both of shape `normalized_shape`) when
    /// given.
    pub fn layer_norm(
        &self,
        normalized_shape: &[usize],
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let k = normalized_shape.len();
        let r = self.rank();
        if k == 0 || k > r || self.shape()[r - k..] != *normalized_shape {
            return Err(Error::shape(
                OP,
                format!(
                    "normalized_shape {normalized_shape:?} is not the trailing (non-empty) part of input shape {:?}",
                    self.shape()
                ),
            ));
        }
        for (name, t) in [("weight", weight), ("bias", bias)] {
            if let Some(t) = t {
                if t.shape() != normalized_shape {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "{name} has shape {:?}, expected {normalized_shape:?}",
                            t.shape()
                        ),
                    ));
                }
            }
        }
        let d: usize = normalized_shape.iter().product();
        if d == 0 {
            return Err(Error::shape(
                OP,
                format!("normalized_shape {normalized_shape:?} is empty"),
            ));
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("eps must be finite and >= 0, got {eps}"),
            ));
        }
        let xd = self.contiguous_data();
        let (wd, bd) = (
            weight.map(|w| w.contiguous_data()),
            bias.map(|b| b.contiguous_data()),
        );
        let mut y = vec![0.0f32; xd.len()];
        let inputs = affine_inputs(self, weight, bias);
        if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
            kn::layer_norm_infer(&xd, d, wd.as_deref(), bd.as_deref(), eps, &mut y);
            return Ok(Tensor::new_unchecked(y, self.shape()));
        }
        let st = kn::layer_norm_forward(&xd, d, wd.as_deref(), bd.as_deref(), eps, &mut y);
        let out = Tensor::new_unchecked(y, self.shape());
        Ok(Tensor::record(out, &inputs, || LayerNormBackward {
            d,
            mean: st.mean,
            rstd: st.rstd,
            has_weight: weight.is_some(),
            has_bias: bias.is_some(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::randn(shape, rng)
    }

    #[test]
    fn batch_norm_values_and_running_update() {
        // One channel of [1, 2, 3, 4] (as [4, 1]): mean 2.5, biased var 1.25, unbiased 5/3.
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[4, 1]).unwrap();
        let (mut rm, mut rv) = (Tensor::zeros(&[1]), Tensor::ones(&[1]));
        let w = Tensor::from_vec(vec![2.0], &[1]).unwrap();
        let b = Tensor::from_vec(vec![0.5], &[1]).unwrap();
        let y = x
            .batch_norm(Some(&w), Some(&b), Some((&mut rm, &mut rv)), true, 0.1, 0.0)
            .unwrap();
        let s = 1.25f32.sqrt();
        let expect: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .map(|v| (v - 2.5) / s * 2.0 + 0.5)
            .collect();
        assert_close(
            &y,
            &Tensor::from_vec(expect, &[4, 1]).unwrap(),
            1e-6,
            "train",
        );
        assert!((rm.item().unwrap() - 0.25).abs() < 1e-6);
        assert!((rv.item().unwrap() - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
        // Eval uses the running statistics and leaves them alone.
        let y = x
            .batch_norm(None, None, Some((&mut rm, &mut rv)), false, 0.1, 0.0)
            .unwrap();
        let sd = rv.item().unwrap().sqrt();
        assert!((y.get_flat(3) - (4.0 - 0.25) / sd).abs() < 1e-5);
        assert!((rm.item().unwrap() - 0.25).abs() < 1e-6);
    }

    #[test]
    fn batch_norm_errors() {
        let x = Tensor::zeros(&[2, 3, 4]);
        let c3 = Tensor::ones(&[3]);
        let c4 = Tensor::ones(&[4]);
        let e = Tensor::zeros(&[3])
            .batch_norm(None, None, None, true, 0.1, 1e-5)
            .unwrap_err();
        assert!(
            e.to_string().contains("batch_norm") && e.to_string().contains("[3]"),
            "{e}"
        );
        assert!(x
            .batch_norm(Some(&c4), None, None, true, 0.1, 1e-5)
            .is_err());
        assert!(x
            .batch_norm(None, Some(&c4), None, true, 0.1, 1e-5)
            .is_err());
        let (mut m, mut v) = (c4.clone(), c3.clone());
        assert!(x
            .batch_norm(None, None, Some((&mut m, &mut v)), true, 0.1, 1e-5)
            .is_err());
        // Eval without running statistics, training with one value per channel, bad eps.
        assert!(x
            .batch_norm(Some(&c3), None, None, false, 0.1, 1e-5)
            .is_err());
        let e = Tensor::zeros(&[1, 3])
            .batch_norm(None, None, None, true, 0.1, 1e-5)
            .unwrap_err();
        assert!(e.to_string().contains("more than 1 value"), "{e}");
        assert!(x.batch_norm(None, None, None, true, 0.1, -1.0).is_err());
        assert!(x
            .batch_norm(None, None, None, true, f32::NAN, 1e-5)
            .is_err());
        assert!(x
            .batch_norm(Some(&c3), Some(&c3), None, true, 0.1, 1e-5)
            .is_ok());
    }

    #[test]
    fn gradcheck_batch_norm() {
        let mut rng = Rng::new(5);
        let shapes: [&[usize]; 5] = [
            &[6, 3],
            &[3, 2, 5],
            &[2, 3, 3, 4],
            &[1, 2, 3, 5],
            &[4, 5, 1, 1],
        ];
        let o = GradcheckOptions::default();
        for shape in shapes {
            let c = shape[1];
            let x = randn(shape, &mut rng).affine(1.5, 0.3).unwrap();
            let w = Tensor::rand_uniform(&[c], 0.5, 1.5, &mut rng);
            let b = randn(&[c], &mut rng);
            let rm0 = randn(&[c], &mut rng);
            let rv0 = Tensor::rand_uniform(&[c], 0.5, 2.0, &mut rng);
            for training in [true, false] {
                let name = format!("batch_norm {shape:?} training={training}");
                let run = |t: &[Tensor], affine: bool| {
                    let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
                    let (w, b) = if affine {
                        (Some(&t[1]), Some(&t[2]))
                    } else {
                        (None, None)
                    };
                    t[0].batch_norm(w, b, Some((&mut rm, &mut rv)), training, 0.1, 1e-5)
                };
                gradcheck(
                    &name,
                    |t| run(t, true),
                    &[x.clone(), w.clone(), b.clone()],
                    &o,
                )
                .unwrap();
                gradcheck(&name, |t| run(t, false), &[x.clone()], &o).unwrap();
            }
            // Training without running statistics, weight only.
            gradcheck(
                "batch_norm weight only",
                |t| t[0].batch_norm(Some(&t[1]), None, None, true, 0.1, 1e-5),
                &[x.clone(), w.clone()],
                &o,
            )
            .unwrap();
        }
    }

    /// The fused ops against batch norm, (the residual add,) then the activation: values,
    /// running statistics and every input's gradient (the residual's included), both modes, on
    /// small planes and on large (SIMD) ones.
    #[test]
    fn fused_batch_norm_equals_the_separate_ops() {
        let mut rng = Rng::new(9);
        for shape in [&[6, 3][..], &[2, 3, 3, 4], &[3, 4, 9, 10]] {
            let c = shape[1];
            let x = randn(shape, &mut rng).with_requires_grad(true);
            let r = randn(shape, &mut rng).with_requires_grad(true);
            let w = Tensor::rand_uniform(&[c], 0.5, 3.0, &mut rng).with_requires_grad(true);
            let b = randn(&[c], &mut rng).affine(2.0, 1.0).unwrap();
            let b = b.with_requires_grad(true);
            let probe = randn(shape, &mut rng);
            let cases = [Activation::Relu, Activation::Relu6, Activation::Silu]
                .into_iter()
                .flat_map(|a| [(a, false), (a, true)]);
            for (act, residual) in cases {
                for training in [true, false] {
                    let run = |fused: bool| {
                        let (mut rm, mut rv) = (Tensor::zeros(&[c]), Tensor::ones(&[c]));
                        let running = Some((&mut rm, &mut rv));
                        let (wb, bb) = (Some(&w), Some(&b));
                        let y = match (fused, residual) {
                            (true, false) => {
                                x.batch_norm_act(wb, bb, running, training, 0.1, 1e-5, act)
                            }
                            (true, true) => {
                                x.batch_norm_add_act(&r, wb, bb, running, training, 0.1, 1e-5, act)
                            }
                            (false, _) => x
                                .batch_norm(wb, bb, running, training, 0.1, 1e-5)
                                .and_then(|y| if residual { y.add(&r) } else { Ok(y) })
                                .and_then(|y| y.activation(act)),
                        }
                        .unwrap();
                        let loss = y.mul(&probe).unwrap().sum_all().unwrap();
                        let g = loss.backward().unwrap();
                        let mut inputs = vec![&x, &w, &b];
                        inputs.extend(residual.then_some(&r));
                        let grads: Vec<Tensor> =
                            inputs.iter().map(|t| g.get(t).unwrap().clone()).collect();
                        (y, rm, rv, grads)
                    };
                    let (fused, plain) = (run(true), run(false));
                    let what = format!("{act:?} residual={residual} {shape:?} training={training}");
                    assert_close(&fused.0, &plain.0, 1e-5, &format!("y {what}"));
                    assert_eq!(fused.1.to_vec(), plain.1.to_vec(), "running mean {what}");
                    assert_eq!(fused.2.to_vec(), plain.2.to_vec(), "running var {what}");
                    assert_eq!(fused.3.len(), 3 + residual as usize);
                    for (k, (a, p)) in fused.3.iter().zip(&plain.3).enumerate() {
                        assert_close(a, p, 1e-4, &format!("grad {k} {what}"));
                    }
                }
            }
        }
        let x = Tensor::zeros(&[2, 3, 4]);
        let bad = Tensor::zeros(&[2, 3, 5]);
        let e = x
            .batch_norm_add_act(&bad, None, None, None, true, 0.1, 1e-5, Activation::Relu)
            .unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");
    }

    #[test]
    fn gradcheck_fused_batch_norm() {
        let mut rng = Rng::new(6);
        let o = GradcheckOptions::default();
        for shape in [&[6, 3][..], &[2, 3, 3, 4], &[2, 2, 8, 9]] {
            let c = shape[1];
            let x = randn(shape, &mut rng).affine(1.5, 0.3).unwrap();
            let w = Tensor::rand_uniform(&[c], 0.5, 1.5, &mut rng);
            let b = randn(&[c], &mut rng);
            let r = randn(shape, &mut rng);
            // Finite differences straddle ReLU's kinks once a channel has enough values near
            // zero (a step in gamma moves them all): the large planes check smooth activations,
            // and the kinked ones are matched exactly against the unfused ops above.
            let acts: &[Activation] = if shape.len() == 4 && shape[2] * shape[3] > 64 {
                &[Activation::Gelu, Activation::Silu]
            } else {
                &[
                    Activation::Relu,
                    Activation::Relu6,
                    Activation::Gelu,
                    Activation::Silu,
                ]
            };
            for &act in acts {
                for (residual, training) in
                    [(false, true), (false, false), (true, true), (true, false)]
                {
                    // The residual moves pre-activations by O(1) more: kinked activations are
                    // left to the exact comparison there too.
                    if residual && !matches!(act, Activation::Gelu | Activation::Silu) {
                        continue;
                    }
                    let name = format!(
                        "fused batch norm {act:?} residual={residual} {shape:?} training={training}"
                    );
                    let f = |t: &[Tensor]| {
                        let (mut rm, mut rv) = (Tensor::zeros(&[c]), Tensor::ones(&[c]));
                        let running = Some((&mut rm, &mut rv));
                        let (w, b) = (Some(&t[1]), Some(&t[2]));
                        match t.get(3) {
                            Some(r) => {
                                t[0].batch_norm_add_act(r, w, b, running, training, 0.1, 1e-5, act)
                            }
                            None => t[0].batch_norm_act(w, b, running, training, 0.1, 1e-5, act),
                        }
                    };
                    let mut ins = vec![x.clone(), w.clone(), b.clone()];
                    ins.extend(residual.then(|| r.clone()));
                    gradcheck(&name, f, &ins, &o).unwrap();
                }
            }
        }
    }

    #[test]
    fn batch_norm_reads_non_contiguous_input() {
        let mut rng = Rng::new(8);
        let x = randn(&[3, 4, 5], &mut rng);
        let xt = x.transpose(0, 2).unwrap(); // [5, 4, 3], strided
        let a = xt.batch_norm(None, None, None, true, 0.1, 1e-5).unwrap();
        let b = xt
            .contiguous()
            .batch_norm(None, None, None, true, 0.1, 1e-5)
            .unwrap();
        assert_eq!(a.to_vec(), b.to_vec());
    }

    #[test]
    fn layer_norm_values_and_errors() {
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0], &[2, 3]).unwrap();
        let y = x.layer_norm(&[3], None, None, 0.0).unwrap();
        let s = (2.0f32 / 3.0).sqrt();
        let row0 = [-1.0 / s, 0.0, 1.0 / s];
        assert!(y.to_vec()[..3]
            .iter()
            .zip(row0)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        // A row of equal values normalises to zero (with eps > 0).
        let z = Tensor::full(&[1, 4], 3.0)
            .layer_norm(&[4], None, None, 1e-5)
            .unwrap();
        assert!(z.to_vec().iter().all(|v| v.abs() < 1e-3));
        let e = x
            .layer_norm(&[2], None, None, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_norm") && e.contains("[2, 3]"), "{e}");
        assert!(x.layer_norm(&[], None, None, 1e-5).is_err());
        assert!(x.layer_norm(&[1, 2, 3], None, None, 1e-5).is_err());
        assert!(x
            .layer_norm(&[3], Some(&Tensor::ones(&[2])), None, 1e-5)
            .is_err());
        assert!(x
            .layer_norm(&[3], None, Some(&Tensor::ones(&[3, 1])), 1e-5)
            .is_err());
        assert!(x.layer_norm(&[3], None, None, f32::INFINITY).is_err());
        assert!(Tensor::zeros(&[2, 0])
            .layer_norm(&[0], None, None, 1e-5)
            .is_err());
    }

    #[test]
    fn gradcheck_layer_norm() {
        let mut rng = Rng::new(6);
        let cases: [(&[usize], &[usize]); 4] = [
            (&[3, 5], &[5]),
            (&[2, 3, 7], &[7]),
            (&[2, 3, 4], &[3, 4]),
            (&[1, 9], &[9]),
        ];
        let o = GradcheckOptions::default();
        for (shape, ns) in cases {
            let x = randn(shape, &mut rng);
            let w = Tensor::rand_uniform(ns, 0.5, 1.5, &mut rng);
            let b = randn(ns, &mut rng);
            let name = format!("layer_norm {shape:?} over {ns:?}");
            gradcheck(
                &name,
                |t| t[0].layer_norm(ns, Some(&t[1]), Some(&t[2]), 1e-5),
                &[x.clone(), w.clone(), b.clone()],
                &o,
            )
            .unwrap();
            gradcheck(
                &name,
                |t| t[0].layer_norm(ns, None, None, 1e-5),
                &[x.clone()],
                &o,
            )
            .unwrap();
            gradcheck(
                &name,
                |t| t[0].layer_norm(ns, Some(&t[1]), None, 1e-5),
                &[x.clone(), w.clone()],
                &o,
            )
            .unwrap();
            gradcheck(
                &name,
                |t| t[0].layer_norm(ns, None, Some(&t[1]), 1e-5),
                &[x.clone(), b.clone()],
                &o,
            )
            .unwrap();
        }
        // Parameters alone (the input does not require grad).
        let x = randn(&[4, 6], &mut rng);
        let w = Tensor::rand_uniform(&[6], 0.5, 1.5, &mut rng);
        let opts = GradcheckOptions {
            skip: vec![0],
            ..Default::default()
        };
        gradcheck(
            "layer_norm params",
            |t| t[0].layer_norm(&[6], Some(&t[1]), None, 1e-5),
            &[x, w],
            &opts,
        )
        .unwrap();
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("norm").unwrap();
        for case in fx.cases() {
            let meta = fx.meta(&case).unwrap();
            let eps = meta["eps"].as_f64().unwrap() as f32;
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let weight = fx
                .try_tensor(&case, "weight")
                .map(|t| t.with_requires_grad(true));
            let bias = fx
                .try_tensor(&case, "bias")
                .map(|t| t.with_requires_grad(true));
            let mut running = fx
                .try_tensor(&case, "running_mean")
                .map(|m| (m, fx.tensor(&case, "running_var").unwrap()));
            let out = match fx.meta_str(&case, "op").unwrap().as_str() {
                "batch_norm" => x
                    .batch_norm(
                        weight.as_ref(),
                        bias.as_ref(),
                        running.as_mut().map(|(m, v)| (m, v)),
                        meta["training"].as_bool().unwrap(),
                        meta["momentum"].as_f64().unwrap() as f32,
                        eps,
                    )
                    .unwrap(),
                "layer_norm" => {
                    let ns: Vec<usize> = meta["normalized_shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as usize)
                        .collect();
                    x.layer_norm(&ns, weight.as_ref(), bias.as_ref(), eps)
                        .unwrap()
                }
                other => panic!("unknown op {other}"),
            };
            assert_close(
                &out,
                &fx.tensor(&case, "out").unwrap(),
                1e-4,
                &format!("{case} out"),
            );
            if let Some((m, v)) = &running {
                let what = format!("{case} running stats");
                assert_close(
                    m,
                    &fx.tensor(&case, "running_mean_after").unwrap(),
                    1e-5,
                    &what,
                );
                assert_close(
                    v,
                    &fx.tensor(&case, "running_var_after").unwrap(),
                    1e-5,
                    &what,
                );
            }
            let g = out
                .backward_with(fx.tensor(&case, "grad_out").unwrap())
                .unwrap();
            let check = |t: &Tensor, role: &str| {
                assert_close(
                    g.get(t).unwrap(),
                    &fx.tensor(&case, role).unwrap(),
                    1e-4,
                    &format!("{case} {role}"),
                );
            };
            check(&x, "grad_x");
            if let Some(w) = &weight {
                check(w, "grad_weight");
            }
            if let Some(b) = &bias {
                check(b, "grad_bias");
            }
        }
    }
}
