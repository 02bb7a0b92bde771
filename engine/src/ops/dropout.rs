//! Inverted dropout: in training each element is zeroed with probability `p` and the survivors
//! are scaled by `1 / (1 - p)`, so evaluation needs no rescaling. The mask is drawn from the
//! caller's [`Rng`] (one uniform per element, in row-major order), so a seed reproduces it, and
//! the backward multiplies by the same mask.

use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

struct DropoutBackward {
    /// 0 or `1 / (1 - p)` per element.
    mask: Vec<f32>,
}

impl Backward for DropoutBackward {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let g = grad.contiguous_data();
        let d = g.iter().zip(&self.mask).map(|(g, m)| g * m).collect();
        Ok(vec![Some(Tensor::new_unchecked(d, inputs[0].shape()))])
    }
}

impl Tensor {
    /// Dropout with drop probability `p` in [0, 1]. The identity (no draws from `rng`) when not
    /// `training` or when `p` is 0; all zeros when `p` is 1.
    pub fn dropout(&self, p: f32, training: bool, rng: &mut Rng) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "dropout",
                format!("probability {p} is outside [0, 1]"),
            ));
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        let mask: Vec<f32> = if p == 1.0 {
            vec![0.0; self.numel()]
        } else {
            let keep = 1.0 / (1.0 - p);
            (0..self.numel())
                .map(|_| if rng.uniform() >= p { keep } else { 0.0 })
                .collect()
        };
        let x = self.contiguous_data();
        let y = x.iter().zip(&mask).map(|(x, m)| x * m).collect();
        let out = Tensor::new_unchecked(y, self.shape());
        Ok(Tensor::record(out, &[self], || DropoutBackward { mask }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, GradcheckOptions};

    #[test]
    fn keeps_the_expected_fraction_and_preserves_the_mean() {
        let n = 200_000;
        let x = Tensor::ones(&[n]);
        for p in [0.1f32, 0.5, 0.8] {
            let y = x.dropout(p, true, &mut Rng::new(42)).unwrap().to_vec();
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            // Binomial standard deviation of the kept fraction is sqrt(p (1 - p) / n) < 0.0012.
            assert!(
                (kept - (1.0 - p as f64)).abs() < 0.006,
                "p={p}: kept {kept}"
            );
            assert!(
                (mean - 1.0).abs() < 0.006 / (1.0 - p as f64),
                "p={p}: mean {mean}"
            );
            assert!(y
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p)).abs() < 1e-6));
        }
    }

    #[test]
    fn deterministic_given_the_seed_and_identity_in_eval() {
        let x = Tensor::randn(&[4, 33], &mut Rng::new(1));
        let a = x.dropout(0.3, true, &mut Rng::new(9)).unwrap();
        let b = x.dropout(0.3, true, &mut Rng::new(9)).unwrap();
        let c = x.dropout(0.3, true, &mut Rng::new(10)).unwrap();
        assert_eq!(a.to_vec(), b.to_vec());
        assert_ne!(a.to_vec(), c.to_vec());
        let mut rng = Rng::new(5);
        let before = rng.clone().next_u64();
        assert_eq!(
            x.dropout(0.3, false, &mut rng).unwrap().to_vec(),
            x.to_vec()
        );
        assert_eq!(x.dropout(0.0, true, &mut rng).unwrap().to_vec(), x.to_vec());
        assert_eq!(rng.next_u64(), before, "eval and p = 0 draw nothing");
        let z = x.dropout(1.0, true, &mut rng).unwrap();
        assert!(z.to_vec().iter().all(|&v| v == 0.0));
        // A transposed view drops in its logical (row-major) order.
        let t = x.transpose(0, 1).unwrap();
        let dt = t.dropout(0.5, true, &mut Rng::new(3)).unwrap();
        let dc = t.contiguous().dropout(0.5, true, &mut Rng::new(3)).unwrap();
        assert_eq!(dt.to_vec(), dc.to_vec());
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[3]);
        let e = x
            .dropout(1.5, true, &mut Rng::new(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dropout") && e.contains("1.5"), "{e}");
        assert!(x.dropout(-0.1, false, &mut Rng::new(0)).is_err());
        assert!(x.dropout(f32::NAN, true, &mut Rng::new(0)).is_err());
    }

    #[test]
    fn backward_reuses_the_mask() {
        let x = Tensor::randn(&[5, 7], &mut Rng::new(2)).with_requires_grad(true);
        let y = x.dropout(0.4, true, &mut Rng::new(8)).unwrap();
        let g = y.backward_with(Tensor::ones(&[5, 7])).unwrap();
        let gx = g.get(&x).unwrap().to_vec();
        for ((&gv, &yv), &xv) in gx.iter().zip(&y.to_vec()).zip(&x.to_vec()) {
            // Where y kept x (scaled), the gradient is the scale; where it dropped, 0.
            assert!((gv * xv - yv).abs() < 1e-6);
        }
        let opts = GradcheckOptions::default();
        for shape in [&[9][..], &[3, 4], &[2, 3, 5]] {
            let x = Tensor::randn(shape, &mut Rng::new(4));
            for p in [0.2, 0.5, 1.0] {
                // A fresh generator with a fixed seed per call: the same mask every evaluation.
                gradcheck(
                    "dropout",
                    |t| t[0].dropout(p, true, &mut Rng::new(11)),
                    &[x.clone()],
                    &opts,
                )
                .unwrap();
            }
        }
        let z = Tensor::zeros(&[2]).with_requires_grad(true);
        let out = z.dropout(0.5, false, &mut Rng::new(0)).unwrap();
        assert_close(
            out.backward_with(Tensor::ones(&[2]))
                .unwrap()
                .get(&z)
                .unwrap(),
            &Tensor::ones(&[2]),
            0.0,
            "eval",
        );
    }
}
