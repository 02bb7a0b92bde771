//! Vectorised transcendental functions: exp, tanh, erf, the normal CDF and sigmoid.
//!
//! Each is written once over the [`Simd`] lanes (`*_v`), so the same code runs as AVX2+FMA,
//! NEON and the scalar reference, plus slice kernels over whole buffers. The polynomials come from
//! our own minimax fits (`kernels/tools/fit_vmath.py` reproduces them).
//!
//! Accuracy, measured by the tests below against f64 (`std`, or a series for erf) on dense grids,
//! the same for the scalar and SIMD instances:
//! - `exp`: relative error below 1.2e-7 (measured 8.2e-8) wherever the result is a normal f32;
//!   below 2^-126 the results are correctly scaled subnormals (within one subnormal step); +inf for
//!   x > 88.73 and 0 for x < -103.98, as `f32::exp` gives.
//! - `tanh`: relative error below 2e-7 (measured 1.4e-7), exactly ±1 for |x| > 9.1, odd (-0 stays -0).
//! - `erf`: relative error below 2e-7 (measured 1.7e-7) for |x| < 1, absolute error below 1.2e-7
//!   everywhere, exactly ±1 for |x| > 4.
//! - `normal_cdf` Phi(x): relative error below 6e-7 (measured 4.2e-7) from x = -13 up. It is
//!   one formula, erfc(|x| / sqrt 2) / 2 or 1 minus it, with -x^2/2 formed exactly: the lower tail
//!   never goes through 1 + erf, so it does not cancel. GELU, x Phi(x), inherits this (PyTorch
//!   2.15's CPU GELU, measured against the same f64 reference, is off by up to 2e-4 relative on
//!   [-3, -1], 22% on [-5, -3], and returns 0 below -5).
//! - `sigmoid`: relative error below 2e-7 (measured 1.7e-7) everywhere; tiny results for
//!   x < -88.7 are subnormals rather than 0.
//!
//! NaN in gives NaN out for every function. The lane versions are `#[inline(always)]` so they
//! fuse into the caller's loop (activations, softmax) instead of making a pass of their own.

use crate::isa::Isa;
use crate::parallel::{self, TRANSCENDENTAL_PAR_MIN_ELEMS};
use crate::simd::{self, Simd, SimdFn, UnaryLanes};
use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, LOG2_E};

/// exp(r) = 1 + r + r^2 P(r) on |r| <= ln2 / 2.
const EXP_P: [f32; 5] = [
    0.001_381_46,
    0.008_368_708,
    0.041_668_39,
    0.166_665_21,
    0.499_999_94,
];
/// ln 2 split so that n * LN2_HI is exact for |n| < 2^15 (Cody and Waite's reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Inputs are clamped here first: beyond, exp is already 0 or +inf in f32, and the clamp keeps
/// the exponent inside `mul_pow2`'s range.
const EXP_LO: f32 = -104.0;
const EXP_HI: f32 = 89.0;

/// tanh(x) = x + x^3 P(x^2) on |x| < TANH_SMALL; beyond, (1 - e) / (1 + e) with e = exp(-2|x|)
/// has no cancellation.
const TANH_P: [f32; 5] = [
    -0.005_704_998_5,
    0.020_639_097,
    -0.053_739_72,
    0.133_314_42,
    -0.333_332_8,
];
const TANH_SMALL: f32 = 0.625;

/// erf(x) = x P(x^2) on |x| < 1 (used below ERF_SMALL).
const ERF_P: [f32; 6] = [
    -0.000_576_905_03,
    0.004_954_937_4,
    -0.026_747_964,
    0.112_817_28,
    -0.376_125_84,
    FRAC_2_SQRT_PI,
];
const ERF_SMALL: f32 = 0.75;
/// erfc(x) = exp(-x^2) Q(1 / (1 + x / 2)) for x >= 0 (fitted up to ERFC_MAX).
const ERFC_Q: [f32; 10] = [
    -0.055_832_908,
    0.267_969_64,
    -0.450_587_2,
    0.232_689_53,
    0.008_092_516,
    0.185_743_27,
    0.248_359_8,
    0.281_379_1,
    0.282_190_86,
    -0.000_004_608_225_5,
];

/// Horner evaluation of `c` (highest degree first) at `x`: the most accurate order, used where
/// the chain is short.
#[inline(always)]
fn horner<S: Simd, const N: usize>(s: S, x: S::V, c: &[f32; N]) -> S::V {
    let mut acc = s.splat(c[0]);
    for &k in &c[1..] {
        acc = s.mul_add(acc, x, s.splat(k));
    }
    acc
}

/// The polynomial `c` (highest degree first) at `x`, split into even and odd halves that are
/// each evaluated by Horner in x^2: two independent chains of half the length. These kernels are
/// latency-bound (each element's chain is long and the out-of-order window holds little more
/// than one vector's), so chain depth is what costs.
#[inline(always)]
fn poly<S: Simd, const N: usize>(s: S, x: S::V, c: &[f32; N]) -> S::V {
    let x2 = s.mul(x, x);
    // The coefficient of degree d is c[N - 1 - d]; each half starts at its top coefficient.
    let (mut even, mut odd) = (s.zero(), s.zero());
    for (i, &k) in c.iter().enumerate() {
        let d = N - 1 - i;
        let top = i < 2;
        if d.is_multiple_of(2) {
            even = if top {
                s.splat(k)
            } else {
                s.mul_add(even, x2, s.splat(k))
            };
        } else {
            odd = if top {
                s.splat(k)
            } else {
                s.mul_add(odd, x2, s.splat(k))
            };
        }
    }
    s.mul_add(odd, x, even)
}

/// `(y, n)` with e^x = y 2^n, for `x` already clamped into [EXP_LO, EXP_HI]: Cody and Waite's
/// reduction r = x - n ln 2, then y = e^r by the polynomial.
#[inline(always)]
fn exp_parts<S: Simd>(s: S, x: S::V) -> (S::V, S::V) {
    let n = s.round(s.mul(x, s.splat(LOG2_E)));
    let r = s.neg_mul_add(n, s.splat(LN2_HI), x);
    let r = s.neg_mul_add(n, s.splat(LN2_LO), r);
    let p = poly(s, r, &EXP_P);
    (s.add(s.mul_add(s.mul(r, r), p, r), s.splat(1.0)), n)
}

/// e^x per lane.
#[inline(always)]
pub fn exp_v<S: Simd>(s: S, x: S::V) -> S::V {
    // Data second in max/min so NaN propagates.
    let (y, n) = exp_parts(s, s.min(s.splat(EXP_HI), s.max(s.splat(EXP_LO), x)));
    s.mul_pow2(y, n)
}

/// Below this, [`exp_ftz_v`] gives 0: e^x would be under 2^-126, a subnormal.
pub const EXP_FTZ_BELOW: f32 = -87.336_54;
/// [`exp_ftz_v`] clamps its argument to this from above: the largest `x` whose `n` is 127.
const EXP_FTZ_HI: f32 = 88.37;

/// e^x per lane for softmax probabilities that feed a GEMM (attention): results that would be
/// subnormal are flushed to 0 (a subnormal adds nothing to any sum there but can cost a
/// microcode assist per multiply), -inf gives 0, NaN propagates, and arguments above 88.37 are
/// clamped (finite results; a softmax's arguments are at most 0). The same polynomial as
/// [`exp_v`], equal to it bit for bit in between; the scaling is one exact power-of-two
/// factor, which the flushed range allows.
#[inline(always)]
pub fn exp_ftz_v<S: Simd>(s: S, x: S::V) -> S::V {
    let xc = s.min(s.splat(EXP_FTZ_HI), s.max(s.splat(EXP_FTZ_BELOW), x));
    let (y, n) = exp_parts(s, xc);
    s.select(
        s.lt(x, s.splat(EXP_FTZ_BELOW)),
        s.zero(),
        s.mul(y, s.pow2(n)),
    )
}

/// `e^(x - m)` per lane through [`exp_ftz_v`]: the numerator of a softmax whose row maximum
/// is `m`, for probabilities that feed a GEMM (attention).
#[derive(Clone, Copy, Debug)]
pub struct ExpSubFtz(pub f32);

impl UnaryLanes for ExpSubFtz {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
        exp_ftz_v(s, s.sub(x, s.splat(self.0)))
    }
}

/// tanh(x) per lane.
#[inline(always)]
pub fn tanh_v<S: Simd>(s: S, x: S::V) -> S::V {
    let one = s.splat(1.0);
    let a = s.abs(x);
    let u = s.mul(x, x);
    let small = s.mul_add(s.mul(x, u), horner(s, u, &TANH_P), x);
    let e = exp_v(s, s.mul(a, s.splat(-2.0)));
    let large = s.div(s.sub(one, e), s.add(one, e));
    // The sign is restored last: the polynomial turns -0 into +0.
    s.copysign(
        s.select(s.lt(a, s.splat(TANH_SMALL)), s.abs(small), large),
        x,
    )
}

/// erfc(a) for a >= 0 given a^2 as `sq_hi + sq_lo` (NaN for NaN).
#[inline(always)]
fn erfc_nonneg<S: Simd>(s: S, a: S::V, sq_hi: S::V, sq_lo: S::V) -> S::V {
    let one = s.splat(1.0);
    let t = s.div(one, s.mul_add(a, s.splat(0.5), one));
    let q = poly(s, t, &ERFC_Q);
    // exp(-hi - lo) = exp(-hi) (1 - lo) to f32 precision: lo is below half an ulp of hi.
    let e = s.mul(exp_v(s, s.sub(s.zero(), sq_hi)), s.sub(one, sq_lo));
    s.mul(e, q)
}

/// erfc underflows to 0 in f32 beyond this; inputs are clamped to it.
const ERFC_MAX: f32 = 10.5;

/// erf(x) per lane: a polynomial near 0 (where 1 - erfc would cancel), 1 - erfc beyond.
#[inline(always)]
pub fn erf_v<S: Simd>(s: S, x: S::V) -> S::V {
    let a = s.min(s.splat(ERFC_MAX), s.abs(x));
    let small = s.mul(x, horner(s, s.mul(x, x), &ERF_P));
    let sq = s.mul(a, a);
    let erfc = erfc_nonneg(s, a, sq, s.mul_error(a, a, sq));
    let large = s.copysign(s.sub(s.splat(1.0), erfc), x);
    s.select(s.lt(a, s.splat(ERF_SMALL)), small, large)
}

/// The standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2 per lane. One formula covers every x
/// with no cancellation: q = erfc(|x| / sqrt 2) / 2 is relatively accurate, and Phi is q below
/// 0 and 1 - q (with q <= 1/2) above.
#[inline(always)]
pub fn normal_cdf_v<S: Simd>(s: S, x: S::V) -> S::V {
    let half = s.splat(0.5);
    // The exponent -x^2 / 2 is formed from x exactly (rounding x / sqrt 2 first would cost
    // 2 z^2 ulp of relative error in the tail).
    let xa = s.min(s.splat(ERFC_MAX * std::f32::consts::SQRT_2), s.abs(x));
    let sq = s.mul(xa, xa);
    let sq_lo = s.mul_error(xa, xa, sq);
    let q = s.mul(
        half,
        erfc_nonneg(
            s,
            s.mul(xa, s.splat(FRAC_1_SQRT_2)),
            s.mul(sq, half),
            s.mul(sq_lo, half),
        ),
    );
    s.select(s.gt(x, s.zero()), s.sub(s.splat(1.0), q), q)
}

/// The standard normal density exp(-x^2 / 2) / sqrt(2 pi) per lane.
#[inline(always)]
pub fn normal_pdf_v<S: Simd>(s: S, x: S::V) -> S::V {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let e = exp_v(s, s.mul(s.mul(x, x), s.splat(-0.5)));
    s.mul(e, s.splat(FRAC_1_SQRT_2PI))
}

/// 1 / (1 + e^-x) per lane, as e^x / (1 + e^x) for negative x.
#[inline(always)]
pub fn sigmoid_v<S: Simd>(s: S, x: S::V) -> S::V {
    // e^-|x| never overflows, so tiny results for x < -88.7 come out as subnormals, not 0.
    let one = s.splat(1.0);
    let e = exp_v(s, s.sub(s.zero(), s.abs(x)));
    let r = s.div(one, s.add(one, e));
    s.select(s.lt(x, s.zero()), s.mul(e, r), r)
}

/// The functions with slice kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathFn {
    Exp,
    Tanh,
    Erf,
    NormalCdf,
    Sigmoid,
}

impl MathFn {
    /// f(x) for one value, through the scalar instance of the lane code.
    pub fn eval(self, x: f32) -> f32 {
        self.apply(simd::Scalar, x)
    }
}

impl UnaryLanes for MathFn {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
        match self {
            MathFn::Exp => exp_v(s, x),
            MathFn::Tanh => tanh_v(s, x),
            MathFn::Erf => erf_v(s, x),
            MathFn::NormalCdf => normal_cdf_v(s, x),
            MathFn::Sigmoid => sigmoid_v(s, x),
        }
    }
}

struct MapKernel<'a> {
    f: MathFn,
    x: Option<&'a [f32]>,
    y: &'a mut [f32],
}

impl SimdFn for MapKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        // One loop per function with the function a constant, so no match runs inside the loop.
        macro_rules! run {
            ($f:expr) => {
                match self.x {
                    Some(x) => simd::map(s, $f, [x], self.y),
                    None => simd::map_inplace(s, $f, self.y),
                }
            };
        }
        match self.f {
            MathFn::Exp => run!(MathFn::Exp),
            MathFn::Tanh => run!(MathFn::Tanh),
            MathFn::Erf => run!(MathFn::Erf),
            MathFn::NormalCdf => run!(MathFn::NormalCdf),
            MathFn::Sigmoid => run!(MathFn::Sigmoid),
        };
    }
}

/// Elements per parallel piece.
const PIECE: usize = 1 << 13;

/// `y[i] = f(x[i])` with `isa` (scalar if this CPU lacks it), split over the pool when large.
pub fn eval_on(isa: Isa, f: MathFn, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "vmath: input and output lengths differ");
    let par = parallel::worth_splitting(x.len(), TRANSCENDENTAL_PAR_MIN_ELEMS);
    parallel::for_each_chunk_mut(y, PIECE, par, |i, yc| {
        let xc = &x[i * PIECE..i * PIECE + yc.len()];
        simd::dispatch_on(
            isa,
            MapKernel {
                f,
                x: Some(xc),
                y: yc,
            },
        );
    });
}

/// `x[i] = f(x[i])` with `isa`, split over the pool when large.
pub fn eval_inplace_on(isa: Isa, f: MathFn, x: &mut [f32]) {
    let par = parallel::worth_splitting(x.len(), TRANSCENDENTAL_PAR_MIN_ELEMS);
    parallel::for_each_chunk_mut(x, PIECE, par, |_, xc| {
        simd::dispatch_on(isa, MapKernel { f, x: None, y: xc });
    });
}

/// `y[i] = f(x[i])` with the best ISA.
pub fn eval(f: MathFn, x: &[f32], y: &mut [f32]) {
    eval_on(crate::isa::current(), f, x, y)
}

/// `x[i] = f(x[i])` with the best ISA.
pub fn eval_inplace(f: MathFn, x: &mut [f32]) {
    eval_inplace_on(crate::isa::current(), f, x)
}

/// `y[i] = e^x[i]`.
pub fn exp(x: &[f32], y: &mut [f32]) {
    eval(MathFn::Exp, x, y)
}

/// `y[i] = tanh(x[i])`.
pub fn tanh(x: &[f32], y: &mut [f32]) {
    eval(MathFn::Tanh, x, y)
}

/// `y[i] = erf(x[i])`.
pub fn erf(x: &[f32], y: &mut [f32]) {
    eval(MathFn::Erf, x, y)
}

/// `y[i] = 1 / (1 + e^-x[i])`.
pub fn sigmoid(x: &[f32], y: &mut [f32]) {
    eval(MathFn::Sigmoid, x, y)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::isa;

    /// erf in f64 to ~1e-15: the all-positive series exp(-x^2) sum 2^n x^(2n+1) / (2n+1)!! for
    /// |x| < 3, and 1 - erfc by its continued fraction beyond.
    pub(crate) fn erf64(x: f64) -> f64 {
        if x.is_nan() {
            return f64::NAN;
        }
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term > 1e-18 * sum {
                n += 1.0;
                term *= 2.0 * a * a / (2.0 * n + 1.0);
                sum += term;
            }
            sum * (-a * a).exp() * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            1.0 - erfc64(a)
        };
        r.copysign(x)
    }

    /// erfc for x >= 3 by backward evaluation of its continued fraction.
    pub(crate) fn erfc64(x: f64) -> f64 {
        if x.is_infinite() {
            return 0.0;
        }
        let mut k = x;
        for n in (1..400).rev() {
            k = x + (n as f64 / 2.0) / k;
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / k
    }

    /// Phi(x) in f64, using erfc in the lower tail so it stays relatively accurate.
    pub(crate) fn normal_cdf64(x: f64) -> f64 {
        let z = x / std::f64::consts::SQRT_2;
        if z < -3.0 {
            0.5 * erfc64(-z)
        } else {
            0.5 * (1.0 + erf64(z))
        }
    }

    #[test]
    fn reference_erf_matches_tables() {
        assert!((erf64(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
        assert!((erf64(2.0) - 0.995_322_265_018_952_7).abs() < 1e-15);
        assert!((erfc64(5.0) - 1.537_459_794_428_035e-12).abs() < 1e-25);
        assert!((erf64(2.999_999) - (1.0 - erfc64(2.999_999))).abs() < 1e-14);
    }

    /// A dense grid over [lo, hi] plus the given special values.
    fn grid(lo: f32, hi: f32, n: usize, extra: &[f32]) -> Vec<f32> {
        let mut v: Vec<f32> = (0..=n)
            .map(|i| lo + (hi - lo) * i as f32 / n as f32)
            .collect();
        v.extend_from_slice(extra);
        v
    }

    const SPECIAL: [f32; 9] = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-8,
        -1e-8,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];

    /// Max relative error of `f` on `xs` against `reference`, counting absolute error below
    /// `abs_floor` as none; asserts NaN and infinities match exactly.
    fn max_rel_err(
        f: MathFn,
        isa: Isa,
        xs: &[f32],
        reference: impl Fn(f64) -> f64,
        abs_floor: f64,
    ) -> (f64, f32) {
        let mut y = vec![0.0; xs.len()];
        eval_on(isa, f, xs, &mut y);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &got) in xs.iter().zip(&y) {
            let want = reference(x as f64);
            if want.is_nan() || want.is_infinite() || (want as f32).is_infinite() {
                assert!(
                    got.to_bits() == (want as f32).to_bits() || (got.is_nan() && want.is_nan()),
                    "{f:?}({x}) = {got}, want {want} ({isa:?})"
                );
                continue;
            }
            let err = (got as f64 - want).abs();
            if err <= abs_floor {
                continue;
            }
            let rel = err / want.abs();
            assert!(rel.is_finite(), "{f:?}({x}) = {got}, want {want} ({isa:?})");
            if rel > worst.0 {
                worst = (rel, x);
            }
        }
        worst
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if isa::detect() != Isa::Scalar {
            v.push(isa::detect());
        }
        v
    }

    #[test]
    fn exp_is_accurate_and_saturates() {
        let xs = grid(-110.0, 95.0, 400_000, &SPECIAL);
        for isa in isas() {
            // Subnormal results: within one subnormal step (2^-149 = 1.4e-45).
            let (e, at) = max_rel_err(MathFn::Exp, isa, &xs, f64::exp, 1.5e-45);
            assert!(
                e < 1.2e-7,
                "exp ({isa:?}): max relative error {e:.3e} at x = {at}"
            );
            let fine = grid(-1.0, 1.0, 100_000, &[]);
            let (e, at) = max_rel_err(MathFn::Exp, isa, &fine, f64::exp, 0.0);
            assert!(e < 1.2e-7, "exp ({isa:?}) near 0: {e:.3e} at x = {at}");
        }
        let mut y = [0.0f32; 6];
        exp(&[88.8, 1000.0, -104.0, -1000.0, 0.0, 88.7], &mut y);
        assert_eq!(&y[..5], &[f32::INFINITY, f32::INFINITY, 0.0, 0.0, 1.0]);
        assert!(y[5].is_finite());
    }

    /// `x = e^(x - m)` flushed as attention needs it, returning the sum.
    struct Ftz<'a>(&'a mut [f32], f32);

    impl SimdFn for Ftz<'_> {
        type Output = f32;
        fn call<S: Simd>(self, s: S) -> f32 {
            simd::map_inplace(s, ExpSubFtz(self.1), self.0)
        }
    }

    #[test]
    fn exp_ftz_flushes_underflow_and_propagates_nan() {
        for isa in isas() {
            let mut row = vec![0.5f32; 19];
            row[2] = f32::NAN;
            row[17] = f32::NAN;
            row[5] = f32::NEG_INFINITY;
            row[18] = -200.0;
            row[7] = -1e30;
            row[8] = -87.4; // e^x is subnormal: flushed
            row[9] = -87.3; // e^x is normal: kept
            let s = simd::dispatch_on(isa, Ftz(&mut row, 0.0));
            assert!(s.is_nan(), "{isa:?}");
            assert!(row[2].is_nan() && row[17].is_nan());
            assert_eq!([row[5], row[18], row[7], row[8]], [0.0; 4], "{isa:?}");
            assert!(
                row[9] > f32::MIN_POSITIVE && row[9] < 1.3e-38,
                "{isa:?}: {}",
                row[9]
            );
            assert!((row[0] - 0.5f32.exp()).abs() <= 2e-7 * row[0]);
            // Unflushed results are exp's own, to the bit.
            let xs = grid(-87.33, 88.0, 20_000, &[0.0, 1e-30]);
            let mut flushed = xs.clone();
            simd::dispatch_on(isa, Ftz(&mut flushed, 0.0));
            let mut plain = vec![0.0; xs.len()];
            eval_on(isa, MathFn::Exp, &xs, &mut plain);
            assert_eq!(flushed, plain, "{isa:?}");
            // Clamped above: finite.
            let mut big = [1000.0f32, 88.37, f32::INFINITY];
            simd::dispatch_on(isa, Ftz(&mut big, 0.0));
            assert!(
                big.iter().all(|v| v.is_finite() && *v > 1e38),
                "{isa:?}: {big:?}"
            );
            // Subtracting the maximum first: the largest entry gives exactly 1.
            let mut row = [3.0f32, 7.5, -2.0];
            simd::dispatch_on(isa, Ftz(&mut row, 7.5));
            assert_eq!(row[1], 1.0);
        }
    }

    #[test]
    fn tanh_is_accurate_and_saturates() {
        let xs = grid(-20.0, 20.0, 400_000, &SPECIAL);
        let small = grid(-1.0, 1.0, 100_000, &[]);
        for isa in isas() {
            for g in [&xs, &small] {
                let (e, at) = max_rel_err(MathFn::Tanh, isa, g, f64::tanh, 0.0);
                assert!(
                    e < 2e-7,
                    "tanh ({isa:?}): max relative error {e:.3e} at x = {at}"
                );
            }
        }
        let mut y = [0.0f32; 3];
        tanh(&[9.1, -50.0, -0.0], &mut y);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[1], -1.0);
        assert!(y[2] == 0.0 && y[2].is_sign_negative());
    }

    #[test]
    fn erf_is_accurate_and_saturates() {
        let xs = grid(-12.0, 12.0, 400_000, &SPECIAL);
        let small = grid(-1.0, 1.0, 100_000, &[]);
        for isa in isas() {
            let (e, at) = max_rel_err(MathFn::Erf, isa, &xs, erf64, 1.2e-7);
            assert_eq!(
                e, 0.0,
                "erf ({isa:?}): an error above 1.2e-7 absolute at x = {at}"
            );
            let (e, at) = max_rel_err(MathFn::Erf, isa, &small, erf64, 0.0);
            assert!(e < 2e-7, "erf ({isa:?}) on |x| < 1: {e:.3e} at x = {at}");
        }
        let mut y = [0.0f32; 2];
        erf(&[4.0, -100.0], &mut y);
        assert_eq!(y, [1.0, -1.0]);
    }

    #[test]
    fn normal_cdf_is_accurate_in_the_tail() {
        let xs = grid(-13.0, 8.0, 400_000, &SPECIAL);
        for isa in isas() {
            let (e, at) = max_rel_err(MathFn::NormalCdf, isa, &xs, normal_cdf64, 0.0);
            assert!(
                e < 6e-7,
                "normal_cdf ({isa:?}): max relative error {e:.3e} at x = {at}"
            );
        }
    }

    #[test]
    fn sigmoid_is_accurate_and_saturates() {
        let xs = grid(-120.0, 120.0, 400_000, &SPECIAL);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        for isa in isas() {
            let (e, at) = max_rel_err(MathFn::Sigmoid, isa, &xs, sig, 1.5e-45);
            assert!(
                e < 2e-7,
                "sigmoid ({isa:?}): max relative error {e:.3e} at x = {at}"
            );
        }
    }

    #[test]
    fn simd_matches_scalar_on_every_length() {
        let best = isa::detect();
        for f in [
            MathFn::Exp,
            MathFn::Tanh,
            MathFn::Erf,
            MathFn::NormalCdf,
            MathFn::Sigmoid,
        ] {
            for n in [0usize, 1, 3, 4, 7, 8, 9, 15, 17, 33, 100] {
                let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.77).sin() * 6.0).collect();
                let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
                eval_on(Isa::Scalar, f, &x, &mut a);
                eval_on(best, f, &x, &mut b);
                let mut c = x.clone();
                eval_inplace_on(best, f, &mut c);
                assert_eq!(b, c, "{f:?} n={n}: in place differs");
                for i in 0..n {
                    let tol = 4e-7 * a[i].abs().max(1e-30);
                    assert!(
                        (a[i] - b[i]).abs() <= tol,
                        "{f:?} n={n} x={}: scalar {} vs {best:?} {}",
                        x[i],
                        a[i],
                        b[i]
                    );
                }
                assert!(x.iter().zip(&a).all(|(&x, &y)| y == f.eval(x)));
            }
        }
    }

    #[test]
    fn large_inputs_split_over_the_pool_consistently() {
        let n = 3 * TRANSCENDENTAL_PAR_MIN_ELEMS + 5;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).cos() * 4.0).collect();
        let mut y = vec![0.0; n];
        eval(MathFn::Erf, &x, &mut y);
        let mut one = [0.0f32];
        for i in (0..n).step_by(997) {
            eval(MathFn::Erf, &x[i..i + 1], &mut one);
            assert_eq!(y[i], one[0]);
        }
    }
}
