//! Softmax and log-softmax along one axis, forward and backward.
//!
//! Tensors are seen as `[outer, axis, inner]`, contiguous. With `inner == 1` (the last axis:
//! attention scores, logits) each row is reduced with vector accumulators; otherwise the
//! reduction runs down columns, `LANES` columns at a time. Both are numerically stable: the
//! maximum is subtracted before exponentiating, so rows of large logits neither overflow nor lose
//! their small entries. A row containing NaN gives NaN throughout; a row that is all -inf gives
//! NaN (as in PyTorch). Large inputs are split over the pool by rows (see [`crate::parallel`]).
//!
//! Backward, with `y` the forward output and `dy` the upstream gradient:
//! softmax `dx = y * (dy - sum(dy * y))`, log-softmax `dx = dy - exp(y) * sum(dy)`.

use crate::isa::{self, Isa};
use crate::parallel::{self, ROWWISE_PAR_MIN_ELEMS};
use crate::simd::{self, Simd, SimdFn, MAX_LANES};
use crate::vmath::exp_v;

/// Which normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxKind {
    /// `exp(x - max) / sum(exp(x - max))`.
    Softmax,
    /// `x - max - log(sum(exp(x - max)))`.
    LogSoftmax,
}

/// Softmax of `x` (`[outer, axis, inner]`) along the middle axis, into `y`.
pub fn softmax(x: &[f32], y: &mut [f32], outer: usize, axis: usize, inner: usize) {
    forward_on(
        isa::current(),
        SoftmaxKind::Softmax,
        x,
        y,
        outer,
        axis,
        inner,
    )
}

/// [`softmax`] with a chosen ISA (scalar if this CPU lacks it).
pub fn softmax_on(isa: Isa, x: &[f32], y: &mut [f32], outer: usize, axis: usize, inner: usize) {
    forward_on(isa, SoftmaxKind::Softmax, x, y, outer, axis, inner)
}

/// Log-softmax of `x` along the middle axis, into `y`.
pub fn log_softmax(x: &[f32], y: &mut [f32], outer: usize, axis: usize, inner: usize) {
    forward_on(
        isa::current(),
        SoftmaxKind::LogSoftmax,
        x,
        y,
        outer,
        axis,
        inner,
    )
}

/// Softmax gradient: `dx` from the forward output `y` and upstream `dy`.
pub fn softmax_backward(
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    outer: usize,
    axis: usize,
    inner: usize,
) {
    backward_on(
        isa::current(),
        SoftmaxKind::Softmax,
        y,
        dy,
        dx,
        outer,
        axis,
        inner,
    )
}

/// Log-softmax gradient: `dx` from the forward output `y` and upstream `dy`.
pub fn log_softmax_backward(
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    outer: usize,
    axis: usize,
    inner: usize,
) {
    backward_on(
        isa::current(),
        SoftmaxKind::LogSoftmax,
        y,
        dy,
        dx,
        outer,
        axis,
        inner,
    )
}

fn check(what: &str, lens: &[usize], outer: usize, axis: usize, inner: usize) {
    let n = outer * axis * inner;
    assert!(
        lens.iter().all(|&l| l == n),
        "{what}: buffers of {lens:?} elements for [{outer}, {axis}, {inner}]"
    );
}

/// Rows (or column slabs) per parallel piece: whole `axis * inner` slabs, about `ROWWISE_PAR_MIN_ELEMS / 4` elements.
fn piece_len(outer: usize, axis: usize, inner: usize) -> (bool, usize) {
    let slab = axis * inner;
    let par = outer > 1 && parallel::worth_splitting(outer * slab, ROWWISE_PAR_MIN_ELEMS);
    let per_piece = (ROWWISE_PAR_MIN_ELEMS / 4 / slab.max(1)).max(1);
    (par, per_piece * slab)
}

/// Forward pass of `kind` with a chosen ISA.
pub fn forward_on(
    isa: Isa,
    kind: SoftmaxKind,
    x: &[f32],
    y: &mut [f32],
    outer: usize,
    axis: usize,
    inner: usize,
) {
    check("softmax", &[x.len(), y.len()], outer, axis, inner);
    if y.is_empty() {
        return;
    }
    let (par, piece) = piece_len(outer, axis, inner);
    parallel::for_each_chunk_mut(y, piece, par, |i, yc| {
        let xc = &x[i * piece..i * piece + yc.len()];
        simd::dispatch_on(
            isa,
            Forward {
                kind,
                x: xc,
                y: yc,
                axis,
                inner,
            },
        )
    });
}

/// Backward pass of `kind` with a chosen ISA.
#[allow(clippy::too_many_arguments)]
pub fn backward_on(
    isa: Isa,
    kind: SoftmaxKind,
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    outer: usize,
    axis: usize,
    inner: usize,
) {
    check(
        "softmax backward",
        &[y.len(), dy.len(), dx.len()],
        outer,
        axis,
        inner,
    );
    if dx.is_empty() {
        return;
    }
    let (par, piece) = piece_len(outer, axis, inner);
    parallel::for_each_chunk_mut(dx, piece, par, |i, dxc| {
        let r = i * piece..i * piece + dxc.len();
        simd::dispatch_on(
            isa,
            Backward {
                kind,
                y: &y[r.clone()],
                dy: &dy[r],
                dx: dxc,
                axis,
                inner,
            },
        )
    });
}

struct Forward<'a> {
    kind: SoftmaxKind,
    x: &'a [f32],
    y: &'a mut [f32],
    axis: usize,
    inner: usize,
}

impl SimdFn for Forward<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let slab = self.axis * self.inner;
        for (xs, ys) in self.x.chunks_exact(slab).zip(self.y.chunks_exact_mut(slab)) {
            if self.inner == 1 {
                row_forward(s, self.kind, xs, ys);
            } else {
                columns_forward(s, self.kind, xs, ys, self.axis, self.inner);
            }
        }
    }
}

struct Backward<'a> {
    kind: SoftmaxKind,
    y: &'a [f32],
    dy: &'a [f32],
    dx: &'a mut [f32],
    axis: usize,
    inner: usize,
}

impl SimdFn for Backward<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let slab = self.axis * self.inner;
        for ((ys, gs), ds) in self
            .y
            .chunks_exact(slab)
            .zip(self.dy.chunks_exact(slab))
            .zip(self.dx.chunks_exact_mut(slab))
        {
            if self.inner == 1 {
                row_backward(s, self.kind, ys, gs, ds);
            } else {
                columns_backward(s, self.kind, ys, gs, ds, self.axis, self.inner);
            }
        }
    }
}

// ----- rows (inner == 1) -------------------------------------------------------------------------

/// `if a > b { a } else { b }`, the lane `max` contract, for the scalar tails.
#[inline(always)]
fn max_scalar(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The row's maximum (two accumulators to overlap the max latency).
#[inline(always)]
fn row_max<S: Simd>(s: S, x: &[f32]) -> f32 {
    let (mut a0, mut a1) = (s.splat(f32::NEG_INFINITY), s.splat(f32::NEG_INFINITY));
    let mut pairs = x.chunks_exact(2 * S::LANES);
    for c in &mut pairs {
        a0 = s.max(a0, s.load(c));
        a1 = s.max(a1, s.load(&c[S::LANES..]));
    }
    let mut m = s.reduce_max(s.max(a0, a1));
    for &v in pairs.remainder() {
        m = max_scalar(m, v);
    }
    m
}

/// `sum(exp(x - m))`, writing `exp(x - m)` to `y` when given. The tail is padded with -inf,
/// whose exponential adds 0. (Its own loop rather than `simd::map`: on 128-wide rows the
/// generic loop's register allocation costs this one 5%.)
#[inline(always)]
fn row_exp_sum<S: Simd>(s: S, x: &[f32], mut y: Option<&mut [f32]>, m: f32) -> f32 {
    let mv = s.splat(m);
    let mut acc = s.zero();
    let body = x.len() - x.len() % S::LANES;
    for (k, c) in x[..body].chunks_exact(S::LANES).enumerate() {
        let e = exp_v(s, s.sub(s.load(c), mv));
        acc = s.add(acc, e);
        if let Some(y) = y.as_deref_mut() {
            s.store(&mut y[k * S::LANES..], e);
        }
    }
    let tail = x.len() - body;
    if tail > 0 {
        let mut buf = [f32::NEG_INFINITY; MAX_LANES];
        buf[..tail].copy_from_slice(&x[body..]);
        let e = exp_v(s, s.sub(s.load(&buf), mv));
        acc = s.add(acc, e);
        if let Some(y) = y {
            s.store(&mut buf, e);
            y[body..].copy_from_slice(&buf[..tail]);
        }
    }
    s.reduce_add(acc)
}

/// `y = (x - m) - l` over a row: subtracting the maximum first keeps the entries near it exact
/// (`x - (m + l)` would round `m + l` to the maximum's ulp).
#[inline(always)]
fn row_sub2<S: Simd>(s: S, x: &[f32], y: &mut [f32], m: f32, l: f32) {
    let (mv, lv) = (s.splat(m), s.splat(l));
    let body = x.len() - x.len() % S::LANES;
    for (xc, yc) in x[..body]
        .chunks_exact(S::LANES)
        .zip(y[..body].chunks_exact_mut(S::LANES))
    {
        s.store(yc, s.sub(s.sub(s.load(xc), mv), lv));
    }
    for (xv, yv) in x[body..].iter().zip(&mut y[body..]) {
        *yv = (xv - m) - l;
    }
}

#[inline(always)]
fn row_forward<S: Simd>(s: S, kind: SoftmaxKind, x: &[f32], y: &mut [f32]) {
    let m = row_max(s, x);
    match kind {
        SoftmaxKind::Softmax => {
            let sum = row_exp_sum(s, x, Some(&mut *y), m);
            let r = 1.0 / sum;
            y.iter_mut().for_each(|v| *v *= r);
        }
        SoftmaxKind::LogSoftmax => {
            let sum = row_exp_sum(s, x, None, m);
            row_sub2(s, x, y, m, sum.ln());
        }
    }
}

#[inline(always)]
fn row_backward<S: Simd>(s: S, kind: SoftmaxKind, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    match kind {
        SoftmaxKind::Softmax => {
            let [dot] = simd::sums(s, simd::Dot, [dy, y]);
            for ((d, &yv), &g) in dx.iter_mut().zip(y).zip(dy) {
                *d = yv * (g - dot);
            }
        }
        SoftmaxKind::LogSoftmax => {
            let [sum] = simd::sums(s, simd::Sum, [dy]);
            let sv = s.splat(sum);
            let body = y.len() - y.len() % S::LANES;
            for ((yc, gc), dc) in y[..body]
                .chunks_exact(S::LANES)
                .zip(dy[..body].chunks_exact(S::LANES))
                .zip(dx[..body].chunks_exact_mut(S::LANES))
            {
                s.store(dc, s.neg_mul_add(exp_v(s, s.load(yc)), sv, s.load(gc)));
            }
            let tail = y.len() - body;
            if tail > 0 {
                let (mut yb, mut gb) = ([0.0f32; MAX_LANES], [0.0f32; MAX_LANES]);
                yb[..tail].copy_from_slice(&y[body..]);
                gb[..tail].copy_from_slice(&dy[body..]);
                let v = s.neg_mul_add(exp_v(s, s.load(&yb)), sv, s.load(&gb));
                s.store(&mut yb, v);
                dx[body..].copy_from_slice(&yb[..tail]);
            }
        }
    }
}

// ----- columns (inner > 1) -----------------------------------------------------------------------

/// Up to `LANES` values from `x`, padded with `pad`.
#[inline(always)]
fn load_n<S: Simd>(s: S, x: &[f32], pad: f32) -> S::V {
    if x.len() >= S::LANES {
        s.load(x)
    } else {
        let mut buf = [pad; MAX_LANES];
        buf[..x.len()].copy_from_slice(x);
        s.load(&buf)
    }
}

/// The first `y.len()` (at most `LANES`) lanes of `v` into `y`.
#[inline(always)]
fn store_n<S: Simd>(s: S, y: &mut [f32], v: S::V) {
    if y.len() >= S::LANES {
        s.store(y, v)
    } else {
        let mut buf = [0.0f32; MAX_LANES];
        s.store(&mut buf, v);
        let n = y.len();
        y.copy_from_slice(&buf[..n]);
    }
}

/// One `[axis, inner]` slab, reduced down its columns `LANES` at a time.
#[inline(always)]
fn columns_forward<S: Simd>(
    s: S,
    kind: SoftmaxKind,
    x: &[f32],
    y: &mut [f32],
    axis: usize,
    inner: usize,
) {
    for j in (0..inner).step_by(S::LANES) {
        let w = S::LANES.min(inner - j);
        let at = |a: usize| a * inner + j..a * inner + j + w;
        let mut m = s.splat(f32::NEG_INFINITY);
        for a in 0..axis {
            m = s.max(m, load_n(s, &x[at(a)], f32::NEG_INFINITY));
        }
        let mut sum = s.zero();
        for a in 0..axis {
            let e = exp_v(s, s.sub(load_n(s, &x[at(a)], 0.0), m));
            sum = s.add(sum, e);
            if kind == SoftmaxKind::Softmax {
                store_n(s, &mut y[at(a)], e);
            }
        }
        match kind {
            SoftmaxKind::Softmax => {
                let r = s.div(s.splat(1.0), sum);
                for a in 0..axis {
                    let v = s.mul(load_n(s, &y[at(a)], 0.0), r);
                    store_n(s, &mut y[at(a)], v);
                }
            }
            SoftmaxKind::LogSoftmax => {
                let mut lse = [0.0f32; MAX_LANES];
                s.store(&mut lse, sum);
                lse.iter_mut().for_each(|v| *v = v.ln());
                let lse = s.load(&lse);
                for a in 0..axis {
                    let v = s.sub(s.sub(load_n(s, &x[at(a)], 0.0), m), lse);
                    store_n(s, &mut y[at(a)], v);
                }
            }
        }
    }
}

#[inline(always)]
fn columns_backward<S: Simd>(
    s: S,
    kind: SoftmaxKind,
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    axis: usize,
    inner: usize,
) {
    for j in (0..inner).step_by(S::LANES) {
        let w = S::LANES.min(inner - j);
        let at = |a: usize| a * inner + j..a * inner + j + w;
        let mut acc = s.zero();
        for a in 0..axis {
            let g = load_n(s, &dy[at(a)], 0.0);
            acc = match kind {
                SoftmaxKind::Softmax => s.mul_add(g, load_n(s, &y[at(a)], 0.0), acc),
                SoftmaxKind::LogSoftmax => s.add(acc, g),
            };
        }
        for a in 0..axis {
            let (yv, g) = (load_n(s, &y[at(a)], 0.0), load_n(s, &dy[at(a)], 0.0));
            let v = match kind {
                SoftmaxKind::Softmax => s.mul(yv, s.sub(g, acc)),
                SoftmaxKind::LogSoftmax => s.neg_mul_add(exp_v(s, yv), acc, g),
            };
            store_n(s, &mut dx[at(a)], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax or log-softmax in f64 straight from the definition.
    fn reference(
        kind: SoftmaxKind,
        x: &[f32],
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Vec<f64> {
        let mut y = vec![0.0f64; x.len()];
        for o in 0..outer {
            for j in 0..inner {
                let idx = |a: usize| (o * axis + a) * inner + j;
                let m = (0..axis).map(|a| x[idx(a)] as f64).fold(f64::MIN, f64::max);
                let sum: f64 = (0..axis).map(|a| (x[idx(a)] as f64 - m).exp()).sum();
                for a in 0..axis {
                    let v = x[idx(a)] as f64 - m;
                    y[idx(a)] = match kind {
                        SoftmaxKind::Softmax => v.exp() / sum,
                        SoftmaxKind::LogSoftmax => v - sum.ln(),
                    };
                }
            }
        }
        y
    }

    fn input(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0 - 1.0) * scale)
            .collect()
    }

    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (3, 7, 1),
        (2, 8, 1),
        (4, 17, 1),
        (5, 100, 1),
        (2, 5, 3),
        (3, 4, 8),
        (2, 9, 13),
        (1, 3, 33),
    ];

    #[test]
    fn forward_matches_f64_on_every_isa() {
        for isa in [Isa::Scalar, isa::detect()] {
            for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
                for (o, a, i) in SHAPES {
                    // Scale 30: logits spread over +-30, where an unstable softmax would lose
                    // small entries; the tolerance is on the output's own scale.
                    let x = input(o * a * i, 30.0);
                    let mut y = vec![0.0; x.len()];
                    forward_on(isa, kind, &x, &mut y, o, a, i);
                    let want = reference(kind, &x, o, a, i);
                    for (k, (&g, &w)) in y.iter().zip(&want).enumerate() {
                        // f32 rounds x - max by up to half an ulp of |x - max| ~ |ln p|, which
                        // exp turns into that much relative error: inherent, not ours.
                        let tol = match kind {
                            SoftmaxKind::Softmax => 1.2e-7 * (w.ln().abs() + 4.0) * w,
                            SoftmaxKind::LogSoftmax => 4e-7 * w.abs().max(1.0),
                        };
                        assert!(
                            (g as f64 - w).abs() <= tol + 1e-37,
                            "{kind:?} {isa:?} [{o},{a},{i}] element {k}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stable_for_huge_logits_and_nan_rows() {
        let x = [1e4f32, 1e4 - 1.0, -1e4, 0.0, 3e38, 3e38];
        let mut y = [0.0f32; 6];
        softmax(&x, &mut y, 3, 2, 1);
        let e = (-1.0f32).exp();
        assert!((y[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (y[1] - e / (1.0 + e)).abs() < 1e-6);
        assert_eq!((y[2], y[3]), (0.0, 1.0));
        assert_eq!((y[4], y[5]), (0.5, 0.5));
        log_softmax(&x, &mut y, 3, 2, 1);
        assert!((y[2] + 1e4).abs() < 1e-2 && y[3] == 0.0);

        let x = [
            1.0f32,
            f32::NAN,
            2.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            0.0,
        ];
        softmax(&x, &mut y[..6], 2, 3, 1);
        assert!(y[..3].iter().all(|v| v.is_nan()));
        assert_eq!(&y[3..], &[0.0, 0.0, 1.0]);
        let all_masked = [f32::NEG_INFINITY; 4];
        let mut y4 = [0.0f32; 4];
        softmax(&all_masked, &mut y4, 1, 4, 1);
        assert!(y4.iter().all(|v| v.is_nan()), "as PyTorch: {y4:?}");
    }

    #[test]
    fn simd_matches_scalar() {
        let best = isa::detect();
        for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
            for (o, a, i) in SHAPES {
                let n = o * a * i;
                let x = input(n, 8.0);
                let dy = input(n + 3, 1.0)[3..].to_vec();
                let (mut ys, mut yv) = (vec![0.0; n], vec![0.0; n]);
                forward_on(Isa::Scalar, kind, &x, &mut ys, o, a, i);
                forward_on(best, kind, &x, &mut yv, o, a, i);
                let (mut gs, mut gv) = (vec![0.0; n], vec![0.0; n]);
                backward_on(Isa::Scalar, kind, &ys, &dy, &mut gs, o, a, i);
                backward_on(best, kind, &ys, &dy, &mut gv, o, a, i);
                for k in 0..n {
                    let close = |p: f32, q: f32| (p - q).abs() <= 1e-6 * p.abs().max(1.0);
                    assert!(close(ys[k], yv[k]), "{kind:?} [{o},{a},{i}] y[{k}]");
                    assert!(close(gs[k], gv[k]), "{kind:?} [{o},{a},{i}] dx[{k}]");
                }
            }
        }
    }

    #[test]
    fn backward_matches_the_jacobian() {
        for kind in [SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax] {
            for (o, a, i) in SHAPES {
                let n = o * a * i;
                let x = input(n, 3.0);
                let dy = input(n + 5, 1.0)[5..].to_vec();
                let mut y = vec![0.0; n];
                forward_on(isa::current(), kind, &x, &mut y, o, a, i);
                let mut dx = vec![0.0; n];
                backward_on(isa::current(), kind, &y, &dy, &mut dx, o, a, i);
                // dx_k = sum_l dy_l * dy_l/dx_k with the explicit Jacobian of one column.
                let p = reference(SoftmaxKind::Softmax, &x, o, a, i);
                for oo in 0..o {
                    for j in 0..i {
                        let idx = |t: usize| (oo * a + t) * i + j;
                        for k in 0..a {
                            let mut want = 0.0f64;
                            for l in 0..a {
                                let delta = (k == l) as u8 as f64;
                                let jac = match kind {
                                    SoftmaxKind::Softmax => p[idx(l)] * (delta - p[idx(k)]),
                                    SoftmaxKind::LogSoftmax => delta - p[idx(k)],
                                };
                                want += dy[idx(l)] as f64 * jac;
                            }
                            let got = dx[idx(k)] as f64;
                            assert!(
                                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                                "{kind:?} [{o},{a},{i}] dx[{}]: {got} vs {want}",
                                idx(k)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_split_matches_one_thread() {
        let (o, a) = (3 * ROWWISE_PAR_MIN_ELEMS / 100 + 1, 100);
        let x = input(o * a, 5.0);
        let mut y = vec![0.0; x.len()];
        softmax(&x, &mut y, o, a, 1);
        for row in [0, o / 2, o - 1] {
            let mut one = vec![0.0; a];
            softmax(&x[row * a..(row + 1) * a], &mut one, 1, a, 1);
            assert_eq!(&y[row * a..(row + 1) * a], &one[..]);
        }
        let (o, a, i) = (40, 30, 37);
        let x = input(o * a * i, 5.0);
        let mut y = vec![0.0; x.len()];
        log_softmax(&x, &mut y, o, a, i);
        let mut one = vec![0.0; a * i];
        log_softmax(&x[..a * i], &mut one, 1, a, i);
        assert_eq!(&y[..a * i], &one[..]);
    }
}
