//! Losses with mean reduction: cross-entropy over class logits (fused log-softmax + NLL, with
//! PyTorch's label smoothing) and mean squared error.
//!
//! Cross-entropy with smoothing `e` over `C` classes is, per position,
//! `(1 - e) * (-log p[target]) + e * mean_c(-log p[c])`, averaged over positions; its gradient
//! with respect to the logits is `(softmax - ((1 - e) onehot + e / C)) / positions`, computed
//! directly from the saved log-probabilities rather than through a softmax graph.

use super::softmax::split_at_axis;
use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use tlc_kernels::{softmax, vmath};

/// `[batch, classes, positions per sample]` of cross-entropy logits: `[C]` (one sample),
/// `[N, C]`, or `[N, C, d1, ...]` with the class axis second, as in PyTorch.
fn ce_dims(shape: &[usize]) -> Result<(usize, usize, usize)> {
    match shape.len() {
        0 => Err(Error::shape(
            "cross_entropy",
            "logits must have a class dimension, got a scalar",
        )),
        1 => Ok((1, shape[0], 1)),
        _ => Ok(split_at_axis(shape, 1)),
    }
}

struct CrossEntropyBackward {
    /// log-softmax of the logits, `[n, c, inner]`.
    logp: Vec<f32>,
    targets: Vec<usize>,
    smoothing: f32,
    dims: (usize, usize, usize),
}

impl Backward for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (n, c, inner) = self.dims;
        let scale = grad.item()? / (n * inner) as f32;
        let mut d = vec![0.0f32; self.logp.len()];
        vmath::exp(&self.logp, &mut d);
        let floor = self.smoothing / c as f32;
        for v in &mut d {
            *v = (*v - floor) * scale;
        }
        let hit = (1.0 - self.smoothing) * scale;
        for (pos, &t) in self.targets.iter().enumerate() {
            let (i, j) = (pos / inner, pos % inner);
            d[(i * c + t) * inner + j] -= hit;
        }
        Ok(vec![Some(Tensor::new_unchecked(d, inputs[0].shape()))])
    }
}

struct MseBackward;

impl Backward for MseBackward {
    fn name(&self) -> &'static str {
        "mse_loss"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (p, t) = (&inputs[0], &inputs[1]);
        let (pd, td) = (p.contiguous_data(), t.contiguous_data());
        let k = 2.0 * grad.item()? / pd.len() as f32;
        let gp: Vec<f32> = pd.iter().zip(td.iter()).map(|(a, b)| k * (a - b)).collect();
        let gt = t
            .requires_grad()
            .then(|| Tensor::new_unchecked(gp.iter().map(|v| -v).collect(), t.shape()));
        let gp = p
            .requires_grad()
            .then(|| Tensor::new_unchecked(gp, p.shape()));
        Ok(vec![gp, gt])
    }
}

impl Tensor {
    /// Mean cross-entropy of logits `self` (`[C]`, `[N, C]` or `[N, C, d1, ...]`) against class
    /// indices `targets` (one per sample and position, row-major over `[N, d1, ...]`), with
    /// PyTorch's `label_smoothing` in [0, 1]. Out-of-range targets are an error.
    pub fn cross_entropy(&self, targets: &[usize], label_smoothing: f32) -> Result<Tensor> {
        let (n, c, inner) = ce_dims(self.shape())?;
        let positions = n * inner;
        if targets.len() != positions {
            return Err(Error::shape(
                "cross_entropy",
                format!(
                    "{} targets for logits of shape {:?} (expected {positions})",
                    targets.len(),
                    self.shape()
                ),
            ));
        }
        if positions == 0 || c == 0 {
            return Err(Error::shape(
                "cross_entropy",
                format!(
                    "logits of shape {:?} hold no samples or no classes",
                    self.shape()
                ),
            ));
        }
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::invalid(
                "cross_entropy",
                format!("label_smoothing {label_smoothing} is outside [0, 1]"),
            ));
        }
        if let Some((pos, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= c) {
            return Err(Error::invalid(
                "cross_entropy",
                format!("target {t} at position {pos} is out of range for {c} classes"),
            ));
        }
        let mut logp = vec![0.0f32; self.numel()];
        softmax::log_softmax(&self.contiguous_data(), &mut logp, n, c, inner);
        let (e, cf) = (label_smoothing as f64, c as f64);
        let mut total = 0.0f64;
        for (pos, &t) in targets.iter().enumerate() {
            let (i, j) = (pos / inner, pos % inner);
            let at = |k: usize| logp[(i * c + k) * inner + j] as f64;
            let mut loss = -(1.0 - e) * at(t);
            if e > 0.0 {
                loss -= e / cf * (0..c).map(at).sum::<f64>();
            }
            total += loss;
        }
        let out = Tensor::scalar((total / positions as f64) as f32);
        Ok(Tensor::record(out, &[self], || CrossEntropyBackward {
            logp,
            targets: targets.to_vec(),
            smoothing: label_smoothing,
            dims: (n, c, inner),
        }))
    }

    /// Mean squared error between `self` and `target` (same shape); differentiable in both.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::shape(
                "mse_loss",
                format!(
                    "prediction {:?} and target {:?} differ",
                    self.shape(),
                    target.shape()
                ),
            ));
        }
        if self.numel() == 0 {
            return Err(Error::shape("mse_loss", "empty tensors have no mean"));
        }
        let (p, t) = (self.contiguous_data(), target.contiguous_data());
        let sum: f64 = p
            .iter()
            .zip(t.iter())
            .map(|(a, b)| {
                let d = (a - b) as f64;
                d * d
            })
            .sum();
        let out = Tensor::scalar((sum / p.len() as f64) as f32);
        Ok(Tensor::record(out, &[self, target], || MseBackward))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    #[test]
    fn values() {
        // Two samples, three classes; uniform logits give log(3).
        let x = Tensor::from_vec(vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0], &[2, 3]).unwrap();
        let l = x.cross_entropy(&[1, 2], 0.0).unwrap().item().unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((l - (3f32.ln() + (lse - 3.0)) / 2.0).abs() < 1e-6);
        // Smoothing 1: the target no longer matters.
        let a = x.cross_entropy(&[0, 0], 1.0).unwrap().item().unwrap();
        let b = x.cross_entropy(&[2, 1], 1.0).unwrap().item().unwrap();
        assert!((a - b).abs() < 1e-6);
        // Unbatched [C] logits, and a class axis in the middle ([N, C, L]).
        let u = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap();
        assert!((u.cross_entropy(&[2], 0.0).unwrap().item().unwrap() - (lse - 3.0)).abs() < 1e-6);
        let s = x.reshape(&[1, 2, 3]).unwrap();
        // Positions j = 0..3 with classes {x[0][j], x[1][j]}.
        let v = s.cross_entropy(&[0, 1, 1], 0.0).unwrap().item().unwrap();
        let want = ((1f32.exp() + 1.0).ln() + (2f32.exp() + 1.0).ln() - 2.0
            + (3f32.exp() + 1.0).ln()
            - 3.0)
            / 3.0;
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        let p = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap();
        let q = Tensor::from_vec(vec![1.0, 0.0, 5.0], &[3]).unwrap();
        assert!((p.mse_loss(&q).unwrap().item().unwrap() - 8.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[2, 3]);
        let e = x.cross_entropy(&[0, 3], 0.0).unwrap_err().to_string();
        assert!(
            e.contains("cross_entropy") && e.contains("target 3") && e.contains("3 classes"),
            "{e}"
        );
        let e = x.cross_entropy(&[0], 0.0).unwrap_err().to_string();
        assert!(e.contains("1 targets") && e.contains("[2, 3]"), "{e}");
        assert!(x.cross_entropy(&[0, 1], 1.5).is_err());
        assert!(x.cross_entropy(&[0, 1], f32::NAN).is_err());
        assert!(Tensor::scalar(1.0).cross_entropy(&[0], 0.0).is_err());
        assert!(Tensor::zeros(&[0, 3]).cross_entropy(&[], 0.0).is_err());
        let e = x.mse_loss(&Tensor::zeros(&[3, 2])).unwrap_err().to_string();
        assert!(e.contains("mse_loss") && e.contains("[3, 2]"), "{e}");
    }

    #[test]
    fn gradcheck_in_several_shapes() {
        let mut rng = Rng::new(7);
        let opts = GradcheckOptions::default();
        let shapes: [&[usize]; 5] = [&[5], &[4, 3], &[6, 7], &[2, 4, 3], &[2, 3, 2, 2]];
        for shape in shapes {
            let x = Tensor::randn(shape, &mut rng).scale(2.0).unwrap();
            let (n, c, inner) = ce_dims(shape).unwrap();
            let targets: Vec<usize> = (0..n * inner).map(|_| rng.below(c)).collect();
            for eps in [0.0, 0.1, 1.0] {
                gradcheck(
                    "cross_entropy",
                    |t| t[0].cross_entropy(&targets, eps),
                    &[x.clone()],
                    &opts,
                )
                .unwrap();
            }
            let y = Tensor::randn(shape, &mut rng);
            gradcheck("mse_loss", |t| t[0].mse_loss(&t[1]), &[x.clone(), y], &opts).unwrap();
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("loss").unwrap();
        for case in fx.cases() {
            let meta = fx.meta(&case).unwrap();
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            match meta["op"].as_str().unwrap() {
                "cross_entropy" => {
                    let targets: Vec<usize> = fx
                        .tensor(&case, "targets")
                        .unwrap()
                        .to_vec()
                        .iter()
                        .map(|&v| v as usize)
                        .collect();
                    let eps = meta["label_smoothing"].as_f64().unwrap() as f32;
                    let out = x.cross_entropy(&targets, eps).unwrap();
                    assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
                    let g = out
                        .backward_with(fx.tensor(&case, "grad_out").unwrap())
                        .unwrap();
                    assert_close(
                        g.get(&x).unwrap(),
                        &fx.tensor(&case, "grad_x").unwrap(),
                        1e-4,
                        &case,
                    );
                }
                "mse_loss" => {
                    let y = fx.tensor(&case, "y").unwrap().with_requires_grad(true);
                    let out = x.mse_loss(&y).unwrap();
                    assert_close(&out, &fx.tensor(&case, "out").unwrap(), 1e-4, &case);
                    let g = out
                        .backward_with(fx.tensor(&case, "grad_out").unwrap())
                        .unwrap();
                    for (t, role) in [(&x, "grad_x"), (&y, "grad_y")] {
                        let want = fx.tensor(&case, role).unwrap();
                        assert_close(g.get(t).unwrap(), &want, 1e-4, &case);
                    }
                }
                other => panic!("unknown op {other} in fixture"),
            }
        }
    }
}
