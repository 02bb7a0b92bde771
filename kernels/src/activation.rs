//! Point-wise activations: the scalar definitions, their derivatives, and slice kernels.
//!
//! The same [`Activation`] value is used by the engine's ops, by GEMM/conv epilogues and by the
//! inference plan, so "which non-linearity" is one piece of data everywhere. The slice kernels
//! run the lane code of [`crate::vmath`] (AVX2+FMA, NEON, or the scalar reference that
//! [`Activation::apply`] also uses), so a GEMM epilogue's short tile rows are vectorised too.

use crate::isa::{self, Isa};
use crate::parallel::{self, ELEMWISE_PAR_MIN_ELEMS, TRANSCENDENTAL_PAR_MIN_ELEMS};
use crate::simd::{self, BinaryLanes, Scalar, Simd, SimdFn, UnaryLanes};
use crate::vmath;

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

/// erf(x) for f32: relative error below 2e-7 for |x| < 1, absolute error below 1.2e-7 beyond
/// (see [`crate::vmath`]; std has no stable `erf`, and GELU's exact form needs one).
#[inline]
pub fn erf(x: f32) -> f32 {
    vmath::erf_v(Scalar, x)
}

/// Standard normal CDF, accurate in the lower tail (see [`crate::vmath::normal_cdf_v`]).
#[inline]
pub fn normal_cdf(x: f32) -> f32 {
    vmath::normal_cdf_v(Scalar, x)
}

impl Activation {
    /// f(x).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        UnaryLanes::apply(self, Scalar, x)
    }

    /// f'(x), with PyTorch's conventions at the kinks: ReLU'(0) = 0, and ReLU6 and Clamp have
    /// derivative 0 at their bounds (only the open interval between them passes gradient).
    #[inline]
    pub fn derivative(self, x: f32) -> f32 {
        BinaryLanes::apply(Grad(self), Scalar, x, 1.0)
    }

    /// Whether f costs a transcendental function per element (rather than a compare or two).
    pub fn is_transcendental(self) -> bool {
        matches!(
            self,
            Activation::Gelu
                | Activation::GeluTanh
                | Activation::Silu
                | Activation::Sigmoid
                | Activation::Tanh
        )
    }

    fn par_threshold(self) -> usize {
        if self.is_transcendental() {
            TRANSCENDENTAL_PAR_MIN_ELEMS
        } else {
            ELEMWISE_PAR_MIN_ELEMS
        }
    }
}

/// 2 u(x) = 2 sqrt(2 / pi) (x + c x^3) of the tanh GELU; 0.5 (1 + tanh u) = sigmoid(2u), the form
/// used here because it does not cancel for negative x.
#[inline(always)]
fn gelu_tanh_2u<S: Simd>(s: S, x: S::V) -> S::V {
    let k = 2.0 * SQRT_2_OVER_PI;
    s.mul(
        x,
        s.mul_add(s.mul(x, x), s.splat(k * GELU_TANH_C), s.splat(k)),
    )
}

/// `if lo < x < hi { dy } else { 0 }` per lane (0 for NaN x).
#[inline(always)]
fn pass_between<S: Simd>(s: S, x: S::V, dy: S::V, lo: f32, hi: f32) -> S::V {
    let zero = s.zero();
    s.select(
        s.gt(x, s.splat(lo)),
        s.select(s.lt(x, s.splat(hi)), dy, zero),
        zero,
    )
}

impl UnaryLanes for Activation {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
        // max/min take the data second so NaN propagates, as in PyTorch.
        match self {
            Activation::Identity => x,
            Activation::Relu => s.max(s.zero(), x),
            Activation::Relu6 => s.min(s.splat(6.0), s.max(s.zero(), x)),
            Activation::Clamp { lo, hi } => s.min(s.splat(hi), s.max(s.splat(lo), x)),
            Activation::Gelu => s.mul(x, vmath::normal_cdf_v(s, x)),
            Activation::GeluTanh => s.mul(x, vmath::sigmoid_v(s, gelu_tanh_2u(s, x))),
            Activation::Silu => s.mul(x, vmath::sigmoid_v(s, x)),
            Activation::Sigmoid => vmath::sigmoid_v(s, x),
            Activation::Tanh => vmath::tanh_v(s, x),
        }
    }
}

/// An activation known when compiling ([`ReluKind`]) or chosen at run time ([`Activation`]): hot
/// fused loops (batch norm + ReLU in training) are generic over it, so ReLU's per-lane `match`
/// folds away instead of running once per vector.
pub trait ActKind: Copy + Send + Sync {
    fn get(self) -> Activation;
}

impl ActKind for Activation {
    #[inline(always)]
    fn get(self) -> Activation {
        self
    }
}

/// ReLU as a type ([`ActKind`]).
#[derive(Clone, Copy, Debug)]
pub struct ReluKind;

impl ActKind for ReluKind {
    #[inline(always)]
    fn get(self) -> Activation {
        Activation::Relu
    }
}

/// `dy * f'(x)` per lane, as a [`BinaryLanes`] of (x, dy).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grad(pub(crate) Activation);

impl BinaryLanes for Grad {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V, dy: S::V) -> S::V {
        let one = s.splat(1.0);
        match self.0 {
            Activation::Identity => dy,
            Activation::Relu => s.select(s.gt(x, s.zero()), dy, s.zero()),
            Activation::Relu6 => pass_between(s, x, dy, 0.0, 6.0),
            Activation::Clamp { lo, hi } => pass_between(s, x, dy, lo, hi),
            Activation::Gelu => {
                // Phi(x) + x phi(x)
                let d = s.mul_add(x, vmath::normal_pdf_v(s, x), vmath::normal_cdf_v(s, x));
                s.mul(dy, d)
            }
            Activation::GeluTanh => {
                // d/dx [x sigma(2u)] = sigma + x sigma (1 - sigma) 2u'
                let sg = vmath::sigmoid_v(s, gelu_tanh_2u(s, x));
                let k = 2.0 * SQRT_2_OVER_PI;
                let du2 = s.mul_add(s.mul(x, x), s.splat(3.0 * k * GELU_TANH_C), s.splat(k));
                let t = s.mul(s.mul(x, du2), s.sub(one, sg));
                s.mul(dy, s.mul_add(sg, t, sg))
            }
            Activation::Silu => {
                // sigma (1 + x (1 - sigma))
                let sg = vmath::sigmoid_v(s, x);
                s.mul(dy, s.mul(sg, s.mul_add(x, s.sub(one, sg), one)))
            }
            Activation::Sigmoid => {
                let sg = vmath::sigmoid_v(s, x);
                s.mul(dy, s.mul(sg, s.sub(one, sg)))
            }
            Activation::Tanh => {
                let t = vmath::tanh_v(s, x);
                s.mul(dy, s.neg_mul_add(t, t, one))
            }
        }
    }
}

/// Bind `$a` to `$act` as a constant of its variant in each arm, so the per-lane `match` in the
/// lane functions folds away and each activation gets its own straight loop.
macro_rules! specialise {
    ($act:expr, |$a:ident| $body:expr) => {
        match $act {
            Activation::Identity => {
                let $a = Activation::Identity;
                $body
            }
            Activation::Relu => {
                let $a = Activation::Relu;
                $body
            }
            Activation::Relu6 => {
                let $a = Activation::Relu6;
                $body
            }
            Activation::Clamp { lo, hi } => {
                let $a = Activation::Clamp { lo, hi };
                $body
            }
            Activation::Gelu => {
                let $a = Activation::Gelu;
                $body
            }
            Activation::GeluTanh => {
                let $a = Activation::GeluTanh;
                $body
            }
            Activation::Silu => {
                let $a = Activation::Silu;
                $body
            }
            Activation::Sigmoid => {
                let $a = Activation::Sigmoid;
                $body
            }
            Activation::Tanh => {
                let $a = Activation::Tanh;
                $body
            }
        }
    };
}

/// The three slice kernels as one [`SimdFn`].
enum Kernel<'a> {
    InPlace(&'a mut [f32]),
    Map(&'a [f32], &'a mut [f32]),
    Backward(&'a [f32], &'a [f32], &'a mut [f32]),
}

struct Run<'a>(Activation, Kernel<'a>);

impl SimdFn for Run<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        match self.1 {
            Kernel::InPlace(x) => specialise!(self.0, |a| simd::map_inplace(s, a, x)),
            Kernel::Map(x, y) => specialise!(self.0, |a| simd::map(s, a, [x], y)),
            Kernel::Backward(x, dy, dx) => {
                specialise!(self.0, |a| simd::map(s, Grad(a), [x, dy], dx))
            }
        };
    }
}

/// Elements per parallel piece.
const PIECE: usize = 1 << 13;

/// y[i] = f(x[i]) in place.
pub fn apply_inplace(act: Activation, x: &mut [f32]) {
    apply_inplace_on(isa::current(), act, x)
}

/// [`apply_inplace`] with a chosen ISA (scalar if this CPU lacks it).
pub fn apply_inplace_on(isa: Isa, act: Activation, x: &mut [f32]) {
    if act == Activation::Identity {
        return;
    }
    let par = parallel::worth_splitting(x.len(), act.par_threshold());
    parallel::for_each_chunk_mut(x, PIECE, par, |_, c| {
        simd::dispatch_on(isa, Run(act, Kernel::InPlace(c)))
    });
}

/// y[i] = f(x[i]).
pub fn apply(act: Activation, x: &[f32], y: &mut [f32]) {
    apply_on(isa::current(), act, x, y)
}

/// [`apply`] with a chosen ISA (scalar if this CPU lacks it).
pub fn apply_on(isa: Isa, act: Activation, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "activation: input and output lengths differ"
    );
    let par = parallel::worth_splitting(x.len(), act.par_threshold());
    parallel::for_each_chunk_mut(y, PIECE, par, |i, c| {
        let xc = &x[i * PIECE..i * PIECE + c.len()];
        simd::dispatch_on(isa, Run(act, Kernel::Map(xc, c)))
    });
}

/// dx[i] = dy[i] * f'(x[i]).
pub fn backward(act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    backward_on(isa::current(), act, x, dy, dx)
}

/// [`backward`] with a chosen ISA (scalar if this CPU lacks it).
pub fn backward_on(isa: Isa, act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(
        x.len() == dy.len() && x.len() == dx.len(),
        "activation backward: lengths differ"
    );
    let par = parallel::worth_splitting(x.len(), act.par_threshold());
    parallel::for_each_chunk_mut(dx, PIECE, par, |i, c| {
        let r = i * PIECE..i * PIECE + c.len();
        simd::dispatch_on(isa, Run(act, Kernel::Backward(&x[r.clone()], &dy[r], c)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmath::tests::normal_cdf64;

    const ALL: [Activation; 9] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Relu6,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Clamp { lo: -0.5, hi: 1.5 },
    ];

    /// f and f' in f64, straight from the definitions.
    fn reference(act: Activation, x: f64) -> (f64, f64) {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (c, k) = (GELU_TANH_C as f64, (2.0 / std::f64::consts::PI).sqrt());
        match act {
            Activation::Identity => (x, 1.0),
            Activation::Relu => (x.max(0.0), (x > 0.0) as u8 as f64),
            Activation::Relu6 => (x.clamp(0.0, 6.0), (x > 0.0 && x < 6.0) as u8 as f64),
            Activation::Clamp { lo, hi } => {
                let (lo, hi) = (lo as f64, hi as f64);
                (x.clamp(lo, hi), (x > lo && x < hi) as u8 as f64)
            }
            Activation::Gelu => {
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (x * normal_cdf64(x), normal_cdf64(x) + x * pdf)
            }
            Activation::GeluTanh => {
                let u = k * (x + c * x * x * x);
                let t = u.tanh();
                let du = k * (1.0 + 3.0 * c * x * x);
                (
                    0.5 * x * (1.0 + t),
                    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
                )
            }
            Activation::Silu => (x * sig(x), sig(x) * (1.0 + x * (1.0 - sig(x)))),
            Activation::Sigmoid => (sig(x), sig(x) * (1.0 - sig(x))),
            Activation::Tanh => (x.tanh(), 1.0 - x.tanh().powi(2)),
        }
    }

    #[test]
    fn erf_matches_known_values() {
        // erf values from tables (Abramowitz & Stegun, table 7.1).
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - e).abs() < 1.2e-7, "erf({x})");
            assert!((erf(-x) + e).abs() < 1.2e-7, "erf(-{x})");
        }
        assert_eq!(erf(10.0), 1.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn values_and_derivatives_match_f64_definitions() {
        for act in ALL {
            for i in 0..=4000 {
                let x = -12.0 + 24.0 * i as f32 / 4000.0;
                let (f, df) = reference(act, x as f64);
                let (got, dgot) = (act.apply(x) as f64, act.derivative(x) as f64);
                // Relative to max(|value|, 1e-3): the tanh GELU's f64 definition itself cancels in
                // its lower tail, where ours (the sigmoid form) is the accurate one.
                let tol = |v: f64| 1e-6 * v.abs().max(1e-3);
                assert!((got - f).abs() <= tol(f), "{act:?}({x}) = {got}, want {f}");
                assert!(
                    (dgot - df).abs() <= tol(df) + 1e-6,
                    "{act:?}'({x}) = {dgot}, want {df}"
                );
            }
        }
    }

    #[test]
    fn gelu_is_relatively_accurate_in_its_tail() {
        for i in 0..=1000 {
            let x = -13.0 + 9.0 * i as f32 / 1000.0;
            let want = x as f64 * normal_cdf64(x as f64);
            let got = Activation::Gelu.apply(x) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "gelu({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn nan_and_infinity_follow_pytorch() {
        for act in ALL {
            assert!(act.apply(f32::NAN).is_nan(), "{act:?}(NaN)");
        }
        assert_eq!(Activation::Relu.apply(f32::INFINITY), f32::INFINITY);
        assert_eq!(Activation::Relu6.apply(f32::INFINITY), 6.0);
        assert_eq!(Activation::Sigmoid.apply(f32::NEG_INFINITY), 0.0);
        assert_eq!(Activation::Tanh.apply(f32::NEG_INFINITY), -1.0);
        assert_eq!(Activation::Gelu.apply(f32::INFINITY), f32::INFINITY);
        assert_eq!(Activation::Silu.apply(-200.0), -0.0);
        assert_eq!(Activation::Relu.derivative(0.0), 0.0);
        assert_eq!(Activation::Relu6.derivative(6.0), 0.0);
    }

    #[test]
    fn simd_matches_scalar_on_every_length() {
        let best = isa::detect();
        for act in ALL {
            for n in [1usize, 2, 3, 5, 7, 8, 9, 13, 16, 17, 31, 64, 67] {
                let mut x: Vec<f32> = (0..n).map(|i| (i as f32 * 1.37).sin() * 7.0).collect();
                if n > 4 {
                    x[3] = f32::NAN;
                    x[4] = -1e4;
                }
                let dy: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).cos()).collect();
                let (mut ys, mut yv) = (vec![0.0; n], vec![0.0; n]);
                apply_on(Isa::Scalar, act, &x, &mut ys);
                apply_on(best, act, &x, &mut yv);
                let mut yi = x.clone();
                apply_inplace_on(best, act, &mut yi);
                let (mut gs, mut gv) = (vec![0.0; n], vec![0.0; n]);
                backward_on(Isa::Scalar, act, &x, &dy, &mut gs);
                backward_on(best, act, &x, &dy, &mut gv);
                for i in 0..n {
                    // Relative, with an absolute floor for derivatives that cancel to near 0
                    // (FMA rounds those differently from the scalar path).
                    let close = |a: f32, b: f32| {
                        (a.is_nan() && b.is_nan()) || (a - b).abs() <= 4e-7 * a.abs() + 3e-8
                    };
                    assert!(
                        close(ys[i], yv[i]),
                        "{act:?} n={n} i={i}: {} vs {}",
                        ys[i],
                        yv[i]
                    );
                    assert!(
                        close(gs[i], gv[i]),
                        "{act:?}' n={n} i={i}: {} vs {}",
                        gs[i],
                        gv[i]
                    );
                    assert!(yi[i].to_bits() == yv[i].to_bits() || yi[i].is_nan());
                    assert!(ys[i].to_bits() == act.apply(x[i]).to_bits() || ys[i].is_nan());
                }
            }
        }
    }

    #[test]
    fn large_slices_split_over_the_pool_consistently() {
        let n = 5 * TRANSCENDENTAL_PAR_MIN_ELEMS + 3;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.003).sin() * 5.0).collect();
        let dy = vec![1.0f32; n];
        for act in [Activation::Gelu, Activation::Relu] {
            let (mut y, mut g) = (vec![0.0; n], vec![0.0; n]);
            apply(act, &x, &mut y);
            backward(act, &x, &dy, &mut g);
            for i in (0..n).step_by(1009) {
                let mut one = [0.0f32];
                apply(act, &x[i..i + 1], &mut one);
                assert_eq!(y[i], one[0]);
                backward(act, &x[i..i + 1], &dy[i..i + 1], &mut one);
                assert_eq!(g[i], one[0]);
            }
        }
    }
}
