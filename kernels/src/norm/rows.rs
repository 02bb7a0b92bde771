//! The lane functions the normalisation kernels are made of, written once over [`crate::simd`]
//! lanes: the sums behind the statistics (which the compiler cannot vectorise by itself, float
//! addition not being associative) and the fused affine passes after them; and the runs that
//! apply them to many planes with one dispatch (one call per tiny plane would cost more than
//! the plane).

use crate::activation::{ActKind, Activation, Grad};
use crate::simd::{self, BinaryLanes, LanesN, Scalar, Simd, SimdFn, SumLanes, UnaryLanes};

/// The `K` sums of `f` over each item of `planes` (equally long slices), each plane's f32 sums
/// added in f64; one dispatch for all of them.
pub fn plane_sums<'a, F, I, const N: usize, const K: usize>(f: F, planes: I) -> [f64; K]
where
    F: SumLanes<N, K>,
    I: Iterator<Item = [&'a [f32]; N]>,
{
    struct Run<F, I, const N: usize, const K: usize>(F, I);
    impl<'a, F, I, const N: usize, const K: usize> SimdFn for Run<F, I, N, K>
    where
        F: SumLanes<N, K>,
        I: Iterator<Item = [&'a [f32]; N]>,
    {
        type Output = [f64; K];
        #[inline(always)]
        fn call<S: Simd>(self, s: S) -> [f64; K] {
            let mut total = [0.0f64; K];
            for plane in self.1 {
                let part = simd::sums(s, self.0, plane);
                for (t, p) in total.iter_mut().zip(part) {
                    *t += p as f64;
                }
            }
            total
        }
    }
    simd::dispatch(Run(f, planes))
}

/// `out`, in planes of `hw`, as [`simd::map`] of the lane function and input planes `planes`
/// gives for each; one dispatch for the run.
pub fn map_planes<'a, L, I, const N: usize>(planes: I, out: &mut [f32], hw: usize)
where
    L: LanesN<N>,
    I: Iterator<Item = (L, [&'a [f32]; N])>,
{
    struct Run<'o, I, const N: usize>(I, &'o mut [f32], usize);
    impl<'a, L, I, const N: usize> SimdFn for Run<'_, I, N>
    where
        L: LanesN<N>,
        I: Iterator<Item = (L, [&'a [f32]; N])>,
    {
        type Output = ();
        #[inline(always)]
        fn call<S: Simd>(self, s: S) {
            // The output first: the planes are not asked for one past the run.
            for (out, (f, x)) in self.1.chunks_exact_mut(self.2).zip(self.0) {
                simd::map(s, f, x, out);
            }
        }
    }
    simd::dispatch(Run(planes, out, hw))
}

/// `Σ (x - m)²`.
#[derive(Clone, Copy)]
pub struct SqDev(pub f32);

impl SumLanes<1, 1> for SqDev {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, [acc]: [S::V; 1], [x]: [S::V; 1]) -> [S::V; 1] {
        let d = s.sub(x, s.splat(self.0));
        [s.mul_add(d, d, acc)]
    }
}

/// `(Σ g, Σ g (x - m))` with `g = dy`, or `g = dy w` given a weight.
#[derive(Clone, Copy)]
pub struct CenteredDot(pub f32);

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
pub struct ScaleShift(pub f32, pub f32);

impl UnaryLanes for ScaleShift {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
        s.mul_add(x, s.splat(self.0), s.splat(self.1))
    }
}

/// `k g + (p x + q)` with `g = dy`, or `g = dy w` given a weight.
#[derive(Clone, Copy)]
pub struct Affine2 {
    pub k: f32,
    pub p: f32,
    pub q: f32,
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

/// A batch norm's per-channel affine followed by an activation, fused into its passes. The
/// pre-activation `x s + t` is rounded in two steps (not one fused multiply-add) on purpose: the
/// forward writes `act(x s + t)` and the backward recomputes `x s + t` for `act'`, through vector
/// bodies, vector tails and the scalar instance alike, and only unfused arithmetic gives the
/// same bits on all three (the scalar instance has no FMA), so the backward's mask is exactly the
/// forward's.
#[derive(Clone, Copy)]
pub struct ActAfter<A: ActKind> {
    pub scale: f32,
    pub shift: f32,
    pub act: A,
}

/// `x s + t` in two roundings (see [`ActAfter`]).
#[inline(always)]
fn pre<S: Simd>(s: S, x: S::V, scale: S::V, shift: S::V) -> S::V {
    s.add(s.mul(x, scale), shift)
}

/// `dy act'(x s + t)`.
#[inline(always)]
fn grad_after<S: Simd>(s: S, act: Activation, dy: S::V, x: S::V, sc: S::V, sh: S::V) -> S::V {
    BinaryLanes::apply(Grad(act), s, pre(s, x, sc, sh), dy)
}

impl<A: ActKind> ActAfter<A> {
    /// `dy act'(x s + t)`.
    #[inline(always)]
    pub fn grad<S: Simd>(self, s: S, dy: S::V, x: S::V) -> S::V {
        let (sc, sh) = (s.splat(self.scale), s.splat(self.shift));
        grad_after(s, self.act.get(), dy, x, sc, sh)
    }
}

/// `act(x s + t)`: the forward.
impl<A: ActKind> UnaryLanes for ActAfter<A> {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
        let (sc, sh) = (s.splat(self.scale), s.splat(self.shift));
        UnaryLanes::apply(self.act.get(), s, pre(s, x, sc, sh))
    }
}

/// `x s + t + r`: a batch norm's affine, then a residual (same rounding rule as [`pre`]).
#[inline(always)]
fn pre_res<S: Simd>(s: S, x: S::V, r: S::V, scale: S::V, shift: S::V) -> S::V {
    s.add(pre(s, x, scale, shift), r)
}

/// [`ActAfter`] with a residual added before the activation, over `(x, r)` (forward:
/// `act(x s + t + r)`) or `(dy, x, r)` (backward: `dy act'(x s + t + r)`).
#[derive(Clone, Copy)]
pub struct ActAfterRes<A: ActKind>(pub ActAfter<A>);

impl<A: ActKind> LanesN<2> for ActAfterRes<A> {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [x, r]: [S::V; 2]) -> S::V {
        let f = self.0;
        let (sc, sh) = (s.splat(f.scale), s.splat(f.shift));
        UnaryLanes::apply(f.act.get(), s, pre_res(s, x, r, sc, sh))
    }
}

impl<A: ActKind> LanesN<3> for ActAfterRes<A> {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [dy, x, r]: [S::V; 3]) -> S::V {
        let f = self.0;
        let (sc, sh) = (s.splat(f.scale), s.splat(f.shift));
        BinaryLanes::apply(Grad(f.act.get()), s, pre_res(s, x, r, sc, sh), dy)
    }
}

/// [`ActAfterRes`] with per-element `s` and `t`: forward over `(x, r, s, t)`, backward over
/// `(dy, x, r, s, t)`.
#[derive(Clone, Copy)]
pub struct ActAfterResEach<A: ActKind>(pub A);

impl<A: ActKind> LanesN<4> for ActAfterResEach<A> {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [x, r, sc, sh]: [S::V; 4]) -> S::V {
        UnaryLanes::apply(self.0.get(), s, pre_res(s, x, r, sc, sh))
    }
}

impl<A: ActKind> LanesN<5> for ActAfterResEach<A> {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [dy, x, r, sc, sh]: [S::V; 5]) -> S::V {
        BinaryLanes::apply(Grad(self.0.get()), s, pre_res(s, x, r, sc, sh), dy)
    }
}

/// [`ActAfter`]'s forward with per-element `s` and `t`, over `(x, s, t)`: small planes are
/// processed a whole sample at a time against per-element copies of the per-channel values.
#[derive(Clone, Copy)]
pub struct ActAfterEach<A: ActKind>(pub A);

impl<A: ActKind> LanesN<3> for ActAfterEach<A> {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [x, sc, sh]: [S::V; 3]) -> S::V {
        UnaryLanes::apply(self.0.get(), s, pre(s, x, sc, sh))
    }
}

/// [`MaskedAffine2`] with per-element values, over `(dy, x, k, p, q, s, t)`.
#[derive(Clone, Copy)]
pub struct MaskedAffine2Each<A: ActKind>(pub A);

impl<A: ActKind> LanesN<7> for MaskedAffine2Each<A> {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [dy, x, k, p, q, sc, sh]: [S::V; 7]) -> S::V {
        let g = grad_after(s, self.0.get(), dy, x, sc, sh);
        s.mul_add(g, k, s.mul_add(x, p, q))
    }
}

/// `a += g` and `b += g (x - m)` element-wise, with `g = dy act'(x s + t)` and per-element `m`,
/// `s`, `t`: [`MaskedCenteredDot`]'s sums kept per element, for small planes (whose per-element
/// partial sums are added up per channel later). The tail takes the scalar instance, which
/// computes the same mask (unfused `x s + t`).
pub fn masked_sums_into<A: ActKind>(
    act: A,
    [a, b]: [&mut [f32]; 2],
    [dy, x, m, sc, sh]: [&[f32]; 5],
) {
    struct Run<'a, A>(A, [&'a mut [f32]; 2], [&'a [f32]; 5]);
    impl<A: ActKind> SimdFn for Run<'_, A> {
        type Output = ();
        #[inline(always)]
        fn call<S: Simd>(self, s: S) {
            // Indexed loads, no array `map`: a closure call the compiler leaves out of line
            // runs without the ISA's features and passes vectors through memory.
            #[inline(always)]
            fn step<S: Simd>(s: S, act: Activation, a: &mut [f32], b: &mut [f32], v: [&[f32]; 5]) {
                let (dy, x) = (s.load(v[0]), s.load(v[1]));
                let (m, sc, sh) = (s.load(v[2]), s.load(v[3]), s.load(v[4]));
                let g = grad_after(s, act, dy, x, sc, sh);
                s.store(a, s.add(s.load(a), g));
                let bv = s.mul_add(g, s.sub(x, m), s.load(b));
                s.store(b, bv);
            }
            let Run(act, [a, b], [dy, x, m, sc, sh]) = self;
            let act = act.get();
            let n = a.len();
            assert!(b.len() == n && [dy, x, m, sc, sh].iter().all(|v| v.len() == n));
            let body = n - n % S::LANES;
            for i in (0..body).step_by(S::LANES) {
                let v = [&dy[i..], &x[i..], &m[i..], &sc[i..], &sh[i..]];
                step(s, act, &mut a[i..], &mut b[i..], v);
            }
            for i in body..n {
                let v = [&dy[i..], &x[i..], &m[i..], &sc[i..], &sh[i..]];
                step(Scalar, act, &mut a[i..], &mut b[i..], v);
            }
        }
    }
    simd::dispatch(Run(act, [a, b], [dy, x, m, sc, sh]))
}

/// [`CenteredDot`] of the gradient that reaches the affine's output, `g = dy act'(x s + t)`.
#[derive(Clone, Copy)]
pub struct MaskedCenteredDot<A: ActKind>(pub CenteredDot, pub ActAfter<A>);

impl<A: ActKind> SumLanes<2, 2> for MaskedCenteredDot<A> {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, acc: [S::V; 2], [dy, x]: [S::V; 2]) -> [S::V; 2] {
        self.0.add(s, acc, self.1.grad(s, dy, x), x)
    }
}

/// [`Affine2`] of `g = dy act'(x s + t)`.
#[derive(Clone, Copy)]
pub struct MaskedAffine2<A: ActKind>(pub Affine2, pub ActAfter<A>);

impl<A: ActKind> BinaryLanes for MaskedAffine2<A> {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, dy: S::V, x: S::V) -> S::V {
        BinaryLanes::apply(self.0, s, self.1.grad(s, dy, x), x)
    }
}

/// `(x - m) r g + b`.
#[derive(Clone, Copy)]
pub struct Normalize(pub f32, pub f32);

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
    use crate::isa::{self, Isa};

    /// Deterministic values in [-1.7, 2.3): a non-zero mean.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        simd::test_bits(seed)
            .take(n)
            .map(|s| (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 1.7)
            .collect()
    }

    /// Every lane function on odd sizes, the CPU's SIMD against the scalar instance, and the
    /// sums against f64.
    #[test]
    fn simd_matches_scalar_on_odd_sizes() {
        let close = |a: f32, b: f64, scale: f64| (a as f64 - b).abs() <= 1e-5 * scale.max(1.0);
        for n in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1027] {
            let (x, dy, w, b) = (data(n, 1), data(n, 2), data(n, 3), data(n, 4));
            let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let (xd, gd, wd) = (f(&x), f(&dy), f(&w));
            let scale = n as f64 * 4.0;
            for isa in [isa::current(), Isa::Scalar] {
                let [sum] = simd::sums_on(isa, simd::Sum, [&x]);
                assert!(close(sum, xd.iter().sum(), scale), "sum n={n}");
                let [sq] = simd::sums_on(isa, SqDev(0.3), [&x]);
                let want: f64 = xd.iter().map(|v| (v - 0.3f32 as f64).powi(2)).sum();
                assert!(close(sq, want, scale * 4.0), "sq n={n}");
                let m = -0.2f32 as f64;
                let [a, c] = simd::sums_on(isa, CenteredDot(-0.2), [&dy, &x]);
                let cd: f64 = gd.iter().zip(&xd).map(|(g, x)| g * (x - m)).sum();
                assert!(close(a, gd.iter().sum(), scale) && close(c, cd, scale * 4.0));
                let [a, c] = simd::sums_on(isa, CenteredDot(-0.2), [&dy, &w, &x]);
                let g: Vec<f64> = gd.iter().zip(&wd).map(|(g, w)| g * w).collect();
                let cd: f64 = g.iter().zip(&xd).map(|(g, x)| g * (x - m)).sum();
                assert!(close(a, g.iter().sum(), scale * 2.0) && close(c, cd, scale * 8.0));
            }
            let outs = [isa::current(), Isa::Scalar].map(|isa| {
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
        }
    }

    /// The runs: per-plane sums in f64 and per-plane lane functions, against one call a plane.
    #[test]
    fn plane_runs_match_one_call_per_plane() {
        let (hw, planes) = (37, 5);
        let x = data(hw * planes, 7);
        let each = || x.chunks_exact(hw).map(|p| [p]);
        let [total] = plane_sums(SqDev(0.5), each());
        let want: f64 = each()
            .map(|[p]| simd::sums_on(isa::current(), SqDev(0.5), [p])[0] as f64)
            .sum();
        assert_eq!(total, want);
        let mut y = vec![0.0; x.len()];
        map_planes(
            each()
                .enumerate()
                .map(|(k, p)| (ScaleShift(k as f32, 1.0), p)),
            &mut y,
            hw,
        );
        for (k, (yp, xp)) in y.chunks_exact(hw).zip(x.chunks_exact(hw)).enumerate() {
            let mut one = vec![0.0; hw];
            simd::map_on(isa::current(), ScaleShift(k as f32, 1.0), [xp], &mut one);
            assert_eq!(yp, &one[..]);
        }
    }
}
