//! Point-wise activations: relu, relu6, gelu (exact, erf), gelu_tanh, silu, sigmoid, tanh,
//! clamp, and the generic [`Tensor::activation`]. Forward and backward run the SIMD kernels of
//! `tlc_kernels::activation`; the backward reads the saved input (`dy * f'(x)`).

use crate::autograd::Backward;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use tlc_kernels::activation::{self, Activation};

/// The PyTorch-style name of an activation, for error messages and autograd.
pub fn activation_name(act: Activation) -> &'static str {
    match act {
        Activation::Identity => "identity",
        Activation::Relu => "relu",
        Activation::Relu6 => "relu6",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_tanh",
        Activation::Silu => "silu",
        Activation::Sigmoid => "sigmoid",
        Activation::Tanh => "tanh",
        Activation::Clamp { .. } => "clamp",
    }
}

struct ActivationBackward {
    act: Activation,
}

impl Backward for ActivationBackward {
    fn name(&self) -> &'static str {
        activation_name(self.act)
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let (xd, gd) = (x.contiguous_data(), grad.contiguous_data());
        let mut dx = tlc_kernels::alloc::zeroed_f32(xd.len());
        activation::backward(self.act, &xd, &gd, &mut dx);
        Ok(vec![Some(Tensor::new_unchecked(dx, x.shape()))])
    }
}

impl Tensor {
    /// `act` applied element-wise.
    pub fn activation(&self, act: Activation) -> Result<Tensor> {
        if let Activation::Clamp { lo, hi } = act {
            if lo.is_nan() || hi.is_nan() || lo > hi {
                return Err(Error::invalid(
                    "clamp",
                    format!("bounds [{lo}, {hi}] are not an interval"),
                ));
            }
        }
        if act == Activation::Identity {
            return Ok(self.clone());
        }
        let x = self.contiguous_data();
        let mut y = tlc_kernels::alloc::zeroed_f32(x.len());
        activation::apply(act, &x, &mut y);
        let out = Tensor::new_unchecked(y, self.shape());
        Ok(Tensor::record(out, &[self], || ActivationBackward { act }))
    }

    /// max(x, 0).
    pub fn relu(&self) -> Result<Tensor> {
        self.activation(Activation::Relu)
    }

    /// min(max(x, 0), 6).
    pub fn relu6(&self) -> Result<Tensor> {
        self.activation(Activation::Relu6)
    }

    /// x Phi(x), the exact GELU (PyTorch's default `approximate="none"`).
    pub fn gelu(&self) -> Result<Tensor> {
        self.activation(Activation::Gelu)
    }

    /// The tanh approximation of GELU (PyTorch `approximate="tanh"`).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.activation(Activation::GeluTanh)
    }

    /// x sigmoid(x).
    pub fn silu(&self) -> Result<Tensor> {
        self.activation(Activation::Silu)
    }

    /// 1 / (1 + e^-x).
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.activation(Activation::Sigmoid)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.activation(Activation::Tanh)
    }

    /// min(max(x, lo), hi); gradient 1 strictly between the bounds, 0 elsewhere (as PyTorch).
    /// `lo > hi` or a NaN bound is an error.
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        self.activation(Activation::Clamp { lo, hi })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, Fixture, GradcheckOptions};
    use crate::Rng;

    const ALL: [Activation; 8] = [
        Activation::Relu,
        Activation::Relu6,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Clamp { lo: -0.5, hi: 1.5 },
    ];

    #[test]
    fn values() {
        let x = Tensor::from_vec(vec![-2.0, -0.5, 0.0, 0.5, 3.0, 7.0], &[2, 3]).unwrap();
        assert_eq!(
            x.relu().unwrap().to_vec(),
            vec![0.0, 0.0, 0.0, 0.5, 3.0, 7.0]
        );
        assert_eq!(
            x.relu6().unwrap().to_vec(),
            vec![0.0, 0.0, 0.0, 0.5, 3.0, 6.0]
        );
        assert_eq!(
            x.clamp(-1.0, 1.0).unwrap().to_vec(),
            vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.0]
        );
        let t = x.tanh().unwrap().to_vec();
        let s = x.sigmoid().unwrap().to_vec();
        let g = x.gelu().unwrap().to_vec();
        for (i, &v) in x.to_vec().iter().enumerate() {
            assert!((t[i] - v.tanh()).abs() < 1e-6);
            assert!((s[i] - 1.0 / (1.0 + (-v).exp())).abs() < 1e-6);
        }
        // GELU(1) = Phi(1) = 0.841344746...
        let g1 = Tensor::scalar(1.0).gelu().unwrap().item().unwrap();
        assert!((g1 - 0.841_344_7).abs() < 1e-6);
        assert_eq!(g[2], 0.0);
        assert_eq!(
            x.activation(Activation::Identity).unwrap().to_vec(),
            x.to_vec()
        );
        // A transposed (non-contiguous) input reads in its logical order.
        let xt = x.transpose(0, 1).unwrap();
        assert_eq!(
            xt.relu().unwrap().to_vec(),
            vec![0.0, 0.5, 0.0, 3.0, 0.0, 7.0]
        );
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[3]);
        let e = x.clamp(1.0, -1.0).unwrap_err().to_string();
        assert!(e.contains("clamp") && e.contains("[1, -1]"), "{e}");
        assert!(x.clamp(f32::NAN, 1.0).is_err());
    }

    #[test]
    fn gradcheck_every_activation_in_several_shapes() {
        let mut rng = Rng::new(3);
        let shapes: [&[usize]; 4] = [&[7], &[3, 5], &[2, 3, 4], &[1, 9, 1, 3]];
        for act in ALL {
            for shape in shapes {
                // Keep inputs a step away from the kinks (0, 6, the clamp bounds), where finite
                // differences straddle two slopes.
                let mut x = Tensor::randn(shape, &mut rng).scale(3.0).unwrap().to_vec();
                for v in &mut x {
                    for kink in [0.0f32, 6.0, -0.5, 1.5] {
                        if (*v - kink).abs() < 0.05 {
                            *v = kink + 0.1;
                        }
                    }
                }
                let x = Tensor::from_vec(x, shape).unwrap();
                gradcheck(
                    activation_name(act),
                    |t| t[0].activation(act),
                    &[x],
                    &GradcheckOptions::default(),
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn pytorch_parity() {
        let fx = Fixture::load("activation").unwrap();
        for case in fx.cases() {
            let x = fx.tensor(&case, "x").unwrap().with_requires_grad(true);
            let meta = fx.meta(&case).unwrap();
            let act = match meta["op"].as_str().unwrap() {
                "relu" => Activation::Relu,
                "relu6" => Activation::Relu6,
                "gelu" => Activation::Gelu,
                "gelu_tanh" => Activation::GeluTanh,
                "silu" => Activation::Silu,
                "sigmoid" => Activation::Sigmoid,
                "tanh" => Activation::Tanh,
                "clamp" => Activation::Clamp {
                    lo: meta["lo"].as_f64().unwrap() as f32,
                    hi: meta["hi"].as_f64().unwrap() as f32,
                },
                other => panic!("unknown op {other} in fixture"),
            };
            let out = x.activation(act).unwrap();
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
    }
}
