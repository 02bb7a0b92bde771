//! Gradient clipping (by global L2 norm, by value) and finiteness checks over [`Gradients`].

use crate::autograd::Gradients;
use crate::error::{Error, Result};

impl Gradients {
    /// Whether every gradient element is finite (no NaN, no infinity).
    pub fn all_finite(&self) -> bool {
        self.values()
            .all(|g| g.contiguous_data().iter().all(|v| v.is_finite()))
    }

    /// The L2 norm of all gradients taken together (accumulated in f64).
    pub fn global_norm(&self) -> f64 {
        self.values()
            .map(|g| {
                g.contiguous_data()
                    .iter()
                    .map(|&v| v as f64 * v as f64)
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }
}

/// Scale all gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (scale = min(1, max_norm / (norm + 1e-6))), and return
/// the norm before clipping.
///
/// A non-finite norm (a NaN or infinite gradient) is returned as is and the gradients are left
/// untouched (PyTorch would multiply them by NaN or 0): check it, or [`Gradients::all_finite`],
/// before stepping.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f32> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm {max_norm} must be finite and > 0"),
        ));
    }
    let norm = grads.global_norm() as f32;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let coef = (max_norm as f32 / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for g in grads.values_mut() {
            g.update_data(|d| d.iter_mut().for_each(|v| *v *= coef));
        }
    }
    Ok(norm)
}

/// Clamp every gradient element to `[-clip_value, clip_value]` (NaN stays NaN), as
/// `torch.nn.utils.clip_grad_value_`.
pub fn clip_grad_value(grads: &mut Gradients, clip_value: f64) -> Result<()> {
    if !(clip_value.is_finite() && clip_value >= 0.0) {
        return Err(Error::invalid(
            "clip_grad_value",
            format!("clip_value {clip_value} must be finite and >= 0"),
        ));
    }
    let c = clip_value as f32;
    for g in grads.values_mut() {
        g.update_data(|d| d.iter_mut().for_each(|v| *v = v.clamp(-c, c)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;
    use crate::testing::{assert_close, Fixture};

    /// Leaves and gradients for them, built by hand.
    fn grads_for(values: &[Tensor]) -> (Vec<Tensor>, Gradients) {
        let leaves: Vec<Tensor> = values
            .iter()
            .map(|v| Tensor::zeros(v.shape()).with_requires_grad(true))
            .collect();
        let mut g = Gradients::default();
        for (l, v) in leaves.iter().zip(values) {
            g.insert(l, v.clone());
        }
        (leaves, g)
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("optim").unwrap();
        for case in ["clip_norm", "clip_norm_noop", "clip_value"] {
            let meta = fx.meta(case).unwrap();
            let ins = [
                fx.tensor(case, "g0").unwrap(),
                fx.tensor(case, "g1").unwrap(),
            ];
            let (leaves, mut g) = grads_for(&ins);
            if let Some(max_norm) = meta["max_norm"].as_f64() {
                let norm = clip_grad_norm(&mut g, max_norm).unwrap();
                let want = fx.tensor(case, "norm").unwrap().item().unwrap();
                assert!(
                    (norm - want).abs() <= 1e-6 * want,
                    "{case}: norm {norm} vs {want}"
                );
            } else {
                clip_grad_value(&mut g, meta["clip_value"].as_f64().unwrap()).unwrap();
            }
            for (i, l) in leaves.iter().enumerate() {
                let want = fx.tensor(case, &format!("out{i}")).unwrap();
                assert_close(g.get(l).unwrap(), &want, 1e-6, &format!("{case} grad {i}"));
            }
        }
    }

    #[test]
    fn clipping_by_norm_and_value() {
        let a = Tensor::from_vec(vec![3.0, 0.0], &[2]).unwrap();
        let b = Tensor::from_vec(vec![4.0], &[1]).unwrap();
        let (leaves, mut g) = grads_for(&[a, b]);
        assert!(g.all_finite());
        assert!((g.global_norm() - 5.0).abs() < 1e-12);
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert_eq!(norm, 5.0);
        assert!((g.global_norm() - 1.0).abs() < 1e-5);
        let v = g.get(&leaves[0]).unwrap().to_vec();
        assert!((v[0] - 0.6).abs() < 1e-6 && v[1] == 0.0);
        // Under the limit: untouched.
        let before = g.get(&leaves[1]).unwrap().to_vec();
        clip_grad_norm(&mut g, 10.0).unwrap();
        assert_eq!(g.get(&leaves[1]).unwrap().to_vec(), before);

        clip_grad_value(&mut g, 0.7).unwrap();
        assert_eq!(g.get(&leaves[1]).unwrap().to_vec(), vec![0.7]);
        assert!(clip_grad_norm(&mut g, 0.0).is_err());
        assert!(clip_grad_norm(&mut g, f64::NAN).is_err());
        assert!(clip_grad_value(&mut g, -1.0).is_err());
    }

    #[test]
    fn non_finite_gradients_are_reported_not_spread() {
        let a = Tensor::from_vec(vec![1.0, f32::NAN], &[2]).unwrap();
        let b = Tensor::from_vec(vec![2.0], &[1]).unwrap();
        let (leaves, mut g) = grads_for(&[a, b]);
        assert!(!g.all_finite());
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!(norm.is_nan());
        assert_eq!(g.get(&leaves[1]).unwrap().to_vec(), vec![2.0]);
        let c = Tensor::from_vec(vec![f32::INFINITY], &[1]).unwrap();
        let (_, mut g) = grads_for(&[c]);
        assert!(!g.all_finite());
        assert_eq!(clip_grad_norm(&mut g, 1.0).unwrap(), f32::INFINITY);
        clip_grad_value(&mut g, 1.0).unwrap();
        assert!(g.all_finite());
    }
}
