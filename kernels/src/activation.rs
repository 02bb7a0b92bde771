//! Point-wise activations: the scalar definitions, their derivatives, and slice kernels.
//!
//! The same [`Activation`] value is used by the engine's ops, by GEMM/conv epilogues and by the
//! inference plan, so "which non-linearity" is one piece of data everywhere.

/// A point-wise non-linearity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// f(x) = x.
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
    /// x * Phi(x) with the exact (erf) Gaussian CDF, PyTorch's default GELU.
    Gelu,
    /// The tanh approximation of GELU (PyTorch `approximate="tanh"`).
    GeluTanh,
    /// x * sigmoid(x), also called swish.
    Silu,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// min(max(x, lo), hi).
    Clamp { lo: f32, hi: f32 },
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_C: f32 = 0.044_715;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// erf(x) for f32, max absolute error about 1.2e-7 (a rational minimax fit on |x| < 4, saturated
/// beyond). std has no stable `erf`, and GELU's exact form needs one.
#[inline]
pub fn erf(x: f32) -> f32 {
    // Numerical Recipes' erfc Chebyshev fit, evaluated in f64 for headroom, then rounded to f32.
    let z = (x as f64).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let r = 1.0 - erfc;
    (if x >= 0.0 { r } else { -r }) as f32
}

/// Standard normal CDF.
#[inline]
pub fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Activation {
    /// f(x).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Gelu => x * normal_cdf(x),
            Activation::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)).tanh())
            }
            Activation::Silu => x * sigmoid(x),
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Clamp { lo, hi } => x.max(lo).min(hi),
        }
    }

    /// f'(x), with PyTorch's conventions at the kinks (ReLU'(0) = 0; ReLU6' is 0 at 0 and 6).
    #[inline]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Relu6 => {
                if x > 0.0 && x < 6.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Gelu => {
                let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
                normal_cdf(x) + x * pdf
            }
            Activation::GeluTanh => {
                let u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
                let t = u.tanh();
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x);
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
            }
            Activation::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Activation::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            Activation::Clamp { lo, hi } => {
                if x > lo && x < hi {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// y[i] = f(x[i]) in place.
pub fn apply_inplace(act: Activation, x: &mut [f32]) {
    match act {
        Activation::Identity => {}
        _ => x.iter_mut().for_each(|v| *v = act.apply(*v)),
    }
}

/// y[i] = f(x[i]).
pub fn apply(act: Activation, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "activation: input and output lengths differ"
    );
    y.iter_mut().zip(x).for_each(|(o, &v)| *o = act.apply(v));
}

/// dx[i] = dy[i] * f'(x[i]).
pub fn backward(act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(
        x.len() == dy.len() && x.len() == dx.len(),
        "activation backward: lengths differ"
    );
    for ((g, &v), &d) in dx.iter_mut().zip(x).zip(dy) {
        *g = d * act.derivative(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf values from tables (Abramowitz & Stegun, table 7.1).
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - e).abs() < 2e-7, "erf({x})");
            assert!((erf(-x) + e).abs() < 2e-7, "erf(-{x})");
        }
        assert_eq!(erf(10.0), 1.0);
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let acts = [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::Sigmoid,
            Activation::Tanh,
        ];
        for act in acts {
            for &x in &[-3.1f32, -0.7, 0.3, 1.9] {
                let h = 1e-3f64;
                let xp = act.apply((x as f64 + h) as f32) as f64;
                let xm = act.apply((x as f64 - h) as f32) as f64;
                let fd = (xp - xm) / (2.0 * h);
                assert!(
                    (fd - act.derivative(x) as f64).abs() < 2e-3,
                    "{act:?} at {x}"
                );
            }
        }
    }
}
