//! The plane and row passes the normalisation kernels are made of, written once over
//! [`crate::simd`] lanes: the sums behind the statistics (which the compiler cannot vectorise by
//! itself, float addition not being associative) and the fused affine passes after them. Each
//! checks its slice lengths and dispatches once per call on [`isa::current`].

use crate::isa;
use crate::simd::{self, BinaryLanes, LanesN, Simd, SumLanes, UnaryLanes};

/// `Σ x`.
pub fn sum(x: &[f32]) -> f32 {
    simd::sums_on(isa::current(), simd::Sum, [x])[0]
}

/// `Σ (x - m)²`.
pub fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    simd::sums_on(isa::current(), SqDev(m), [x])[0]
}

/// `(Σ dy, Σ dy (x - m))`: the two sums of a normalisation's backward.
pub fn sum_and_centered_dot(dy: &[f32], x: &[f32], m: f32) -> (f32, f32) {
    let [s, d] = simd::sums_on(isa::current(), CenteredDot(m), [dy, x]);
    (s, d)
}

/// `(Σ dy w, Σ dy w (x - m))`: the same with a per-element weight (layer norm's gamma).
pub fn weighted_sum_and_centered_dot(dy: &[f32], w: &[f32], x: &[f32], m: f32) -> (f32, f32) {
    let [s, d] = simd::sums_on(isa::current(), CenteredDot(m), [dy, w, x]);
    (s, d)
}

/// `y = x s + t`.
pub fn scale_shift(x: &[f32], s: f32, t: f32, y: &mut [f32]) {
    simd::map_on(isa::current(), ScaleShift(s, t), [x], y)
}

/// `dx = k dy + p x + q`: a normalisation's input gradient once its sums are known.
pub fn affine2(dy: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
    simd::map_on(isa::current(), Affine2 { k, p, q }, [dy, x], dx)
}

/// `dx = k dy w + p x + q`.
pub fn weighted_affine2(dy: &[f32], w: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
    simd::map_on(isa::current(), Affine2 { k, p, q }, [dy, w, x], dx)
}

/// `y = (x - m) r g + b` with per-element `g` and `b`.
pub fn normalize_affine(x: &[f32], m: f32, r: f32, g: &[f32], b: &[f32], y: &mut [f32]) {
    simd::map_on(isa::current(), Normalize(m, r), [x, g, b], y)
}

/// `Σ (x - m)²`.
#[derive(Clone, Copy)]
struct SqDev(f32);

impl SumLanes<1, 1> for SqDev {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, [acc]: [S::V; 1], [x]: [S::V; 1]) -> [S::V; 1] {
        let d = s.sub(x, s.splat(self.0));
        [s.mul_add(d, d, acc)]
    }
}

/// `(Σ g, Σ g (x - m))` with `g = dy`, or `g = dy w` given a weight.
#[derive(Clone, Copy)]
struct CenteredDot(f32);

impl CenteredDot {
    #[inline(always)]
    fn add<S: Simd>(self, s: S, [a, b]: [S::V; 2], g: S::V, x: S::V) -> [S::V; 2] {
        [s.add(a, g), s.mul_add(g, s.sub(x, s.splat(self.0)), b)]
    }
}

impl SumLanes<2, 2> for CenteredDot {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, acc: [S::V; 2], [dy, x]: [S::V; 2]) -> [S::V; 2] {
        self.add(s, acc, dy, x)
    }
}

impl SumLanes<3, 2> for CenteredDot {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, acc: [S::V; 2], [dy, w, x]: [S::V; 3]) -> [S::V; 2] {
        self.add(s, acc, s.mul(dy, w), x)
    }
}

/// `x s + t`.
#[derive(Clone, Copy)]
struct ScaleShift(f32, f32);

impl UnaryLanes for ScaleShift {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
        s.mul_add(x, s.splat(self.0), s.splat(self.1))
    }
}

/// `k g + (p x + q)` with `g = dy`, or `g = dy w` given a weight.
#[derive(Clone, Copy)]
struct Affine2 {
    k: f32,
    p: f32,
    q: f32,
}

impl BinaryLanes for Affine2 {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, dy: S::V, x: S::V) -> S::V {
        let lin = s.mul_add(x, s.splat(self.p), s.splat(self.q));
        s.mul_add(dy, s.splat(self.k), lin)
    }
}

impl LanesN<3> for Affine2 {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [dy, w, x]: [S::V; 3]) -> S::V {
        BinaryLanes::apply(self, s, s.mul(dy, w), x)
    }
}

/// `(x - m) r g + b`.
#[derive(Clone, Copy)]
struct Normalize(f32, f32);

impl LanesN<3> for Normalize {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [x, g, b]: [S::V; 3]) -> S::V {
        let xhat = s.mul(s.sub(x, s.splat(self.0)), s.splat(self.1));
        s.mul_add(xhat, g, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Isa;

    /// Deterministic values in [-1.7, 2.3): a non-zero mean.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        simd::test_values(n, seed, -1.7, 2.3)
    }

    /// Every pass on odd sizes, the CPU's SIMD against the scalar instance and the sums against
    /// f64.
    #[test]
    fn simd_matches_scalar_on_odd_sizes() {
        let close = |a: f32, b: f64, scale: f64| (a as f64 - b).abs() <= 1e-5 * scale.max(1.0);
        for n in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1027] {
            let (x, dy, w, b) = (data(n, 1), data(n, 2), data(n, 3), data(n, 4));
            let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let (xd, gd, wd) = (f(&x), f(&dy), f(&w));
            let scale = n as f64 * 4.0;
            assert!(close(sum(&x), xd.iter().sum(), scale), "sum n={n}");
            let sq: f64 = xd.iter().map(|v| (v - 0.3f32 as f64).powi(2)).sum();
            assert!(close(sum_sq_dev(&x, 0.3), sq, scale * 4.0), "sq n={n}");
            let m = -0.2f32 as f64;
            let (a, c) = sum_and_centered_dot(&dy, &x, -0.2);
            let cd: f64 = gd.iter().zip(&xd).map(|(g, x)| g * (x - m)).sum();
            assert!(close(a, gd.iter().sum(), scale) && close(c, cd, scale * 4.0));
            let (a, c) = weighted_sum_and_centered_dot(&dy, &w, &x, -0.2);
            let g: Vec<f64> = gd.iter().zip(&wd).map(|(g, w)| g * w).collect();
            let cd: f64 = g.iter().zip(&xd).map(|(g, x)| g * (x - m)).sum();
            assert!(close(a, g.iter().sum(), scale * 2.0) && close(c, cd, scale * 8.0));

            let isas = [isa::current(), Isa::Scalar];
            let outs = isas.map(|isa| {
                let mut y = vec![vec![0.0f32; n]; 4];
                simd::map_on(isa, ScaleShift(1.5, -0.25), [&x], &mut y[0]);
                let aff = Affine2 {
                    k: 0.7,
                    p: -1.1,
                    q: 0.05,
                };
                simd::map_on(isa, aff, [&dy, &x], &mut y[1]);
                simd::map_on(isa, aff, [&dy, &w, &x], &mut y[2]);
                simd::map_on(isa, Normalize(0.2, 1.3), [&x, &w, &b], &mut y[3]);
                y
            });
            for (k, (p, q)) in outs[0].iter().zip(&outs[1]).enumerate() {
                for (i, (&p, &q)) in p.iter().zip(q).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                        "pass {k}[{i}] n={n}"
                    );
                }
            }
            let mut y = vec![0.0; n];
            normalize_affine(&x, 0.2, 1.3, &w, &b, &mut y);
            assert_eq!(y, outs[0][3]);
        }
    }
}
