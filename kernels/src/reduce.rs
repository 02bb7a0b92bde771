//! Reductions along one axis: sum, mean, and max with its argmax.
//!
//! Tensors are seen as `[outer, axis, inner]`, contiguous, and reduce to `[outer, inner]`. With
//! `inner == 1` (the last axis, or a whole tensor) each row is summed with four vector
//! accumulators over short blocks whose sums are added in f64, so long rows stay accurate;
//! otherwise rows of `inner` values are added down the axis, vector by vector. Large inputs are split over the pool
//! (memory-bound: [`crate::parallel::ELEMWISE_PAR_MIN_ELEMS`]).
//!
//! `max` follows PyTorch: NaN is larger than everything (the first NaN wins), and the index is
//! the first position holding the maximum.

use crate::isa::{self, Isa};
use crate::parallel::{self, ELEMWISE_PAR_MIN_ELEMS};
use crate::simd::{self, Simd, SimdFn};

/// Values each f32 accumulator lane sums before its block is added to the f64 total (blocks of
/// 4 accumulators x LANES x this many elements; the same accuracy on every ISA).
const LANE_RUN: usize = 32;

fn check(what: &str, x: usize, out: usize, outer: usize, axis: usize, inner: usize) {
    assert!(
        x == outer * axis * inner && out == outer * inner,
        "{what}: {x} inputs and {out} outputs for [{outer}, {axis}, {inner}]"
    );
}

/// Outputs per parallel piece (whole output rows of `inner`), and whether to split at all.
fn split(outer: usize, axis: usize, inner: usize) -> (bool, usize) {
    let n = outer * axis * inner;
    let par = outer > 1 && parallel::worth_splitting(n, ELEMWISE_PAR_MIN_ELEMS);
    let rows = (ELEMWISE_PAR_MIN_ELEMS / 4 / (axis * inner).max(1)).max(1);
    (par, rows * inner)
}

/// `out[o, i] = sum over a of x[o, a, i]`.
pub fn sum(x: &[f32], out: &mut [f32], outer: usize, axis: usize, inner: usize) {
    sum_on(isa::current(), x, out, outer, axis, inner)
}

/// `out[o, i] = mean over a of x[o, a, i]` (NaN when `axis` is 0, as 0 / 0).
pub fn mean(x: &[f32], out: &mut [f32], outer: usize, axis: usize, inner: usize) {
    sum(x, out, outer, axis, inner);
    let r = 1.0 / axis as f32;
    out.iter_mut().for_each(|v| *v *= r);
}

/// [`sum`] with a chosen ISA (scalar if this CPU lacks it).
pub fn sum_on(isa: Isa, x: &[f32], out: &mut [f32], outer: usize, axis: usize, inner: usize) {
    check("sum", x.len(), out.len(), outer, axis, inner);
    if out.is_empty() {
        return;
    }
    let (par, piece) = split(outer, axis, inner);
    parallel::for_each_chunk_mut(out, piece, par, |i, oc| {
        let start = i * piece * axis;
        let xc = &x[start..start + oc.len() * axis];
        simd::dispatch_on(
            isa,
            Sum {
                x: xc,
                out: oc,
                axis,
                inner,
            },
        )
    });
}

/// The sum of all of `x`.
pub fn sum_all(x: &[f32]) -> f32 {
    let mut out = [0.0f32];
    sum(x, &mut out, 1, x.len(), 1);
    out[0]
}

struct Sum<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    axis: usize,
    inner: usize,
}

impl SimdFn for Sum<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let (axis, inner) = (self.axis, self.inner);
        if axis == 0 {
            self.out.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        if inner == 1 {
            for (o, row) in self.out.iter_mut().zip(self.x.chunks_exact(axis)) {
                *o = row_sum(s, row);
            }
            return;
        }
        for (o, slab) in self
            .out
            .chunks_exact_mut(inner)
            .zip(self.x.chunks_exact(axis * inner))
        {
            o.copy_from_slice(&slab[..inner]);
            for row in slab[inner..].chunks_exact(inner) {
                add_into(s, o, row);
            }
        }
    }
}

/// The sum of a row: blocks summed by [`simd::sums`] (four vector accumulators), added in f64.
#[inline(always)]
fn row_sum<S: Simd>(s: S, row: &[f32]) -> f32 {
    let mut total = 0.0f64;
    for block in row.chunks(4 * S::LANES * LANE_RUN) {
        total += simd::sums(s, simd::Sum, [block])[0] as f64;
    }
    total as f32
}

/// `acc += row`, vector by vector.
#[inline(always)]
fn add_into<S: Simd>(s: S, acc: &mut [f32], row: &[f32]) {
    let body = acc.len() - acc.len() % S::LANES;
    for (a, r) in acc[..body]
        .chunks_exact_mut(S::LANES)
        .zip(row[..body].chunks_exact(S::LANES))
    {
        s.store(a, s.add(s.load(a), s.load(r)));
    }
    for (a, r) in acc[body..].iter_mut().zip(&row[body..]) {
        *a += r;
    }
}

/// `out[o, i] = max over a of x[o, a, i]` and `idx[o, i]` = the first `a` attaining it.
/// Panics if `axis` is 0 (the maximum of nothing is undefined; the engine reports it first).
pub fn max(x: &[f32], out: &mut [f32], idx: &mut [usize], outer: usize, axis: usize, inner: usize) {
    max_on(isa::current(), x, out, idx, outer, axis, inner)
}

/// [`max`] with a chosen ISA (scalar if this CPU lacks it).
pub fn max_on(
    isa: Isa,
    x: &[f32],
    out: &mut [f32],
    idx: &mut [usize],
    outer: usize,
    axis: usize,
    inner: usize,
) {
    check("max", x.len(), out.len(), outer, axis, inner);
    assert_eq!(idx.len(), out.len(), "max: index buffer length");
    assert!(axis > 0 || out.is_empty(), "max: reducing an empty axis");
    if out.is_empty() {
        return;
    }
    // Values and indices travel together so one parallel split covers both.
    let mut pairs: Vec<(f32, usize)> = vec![(0.0, 0); out.len()];
    let (par, piece) = split(outer, axis, inner);
    parallel::for_each_chunk_mut(&mut pairs, piece, par, |i, pc| {
        let start = i * piece * axis;
        let xc = &x[start..start + pc.len() * axis];
        simd::dispatch_on(
            isa,
            Max {
                x: xc,
                out: pc,
                axis,
                inner,
            },
        )
    });
    for ((o, i), (v, k)) in out.iter_mut().zip(idx.iter_mut()).zip(pairs) {
        *o = v;
        *i = k;
    }
}

struct Max<'a> {
    x: &'a [f32],
    out: &'a mut [(f32, usize)],
    axis: usize,
    inner: usize,
}

/// Whether `v` replaces `best` as the running maximum: larger, or the first NaN.
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    v > best || (v.is_nan() && !best.is_nan())
}

impl SimdFn for Max<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let (axis, inner) = (self.axis, self.inner);
        if inner == 1 {
            for (o, row) in self.out.iter_mut().zip(self.x.chunks_exact(axis)) {
                *o = row_argmax(s, row);
            }
            return;
        }
        for (o, slab) in self
            .out
            .chunks_exact_mut(inner)
            .zip(self.x.chunks_exact(axis * inner))
        {
            for (p, &v) in o.iter_mut().zip(&slab[..inner]) {
                *p = (v, 0);
            }
            for (a, row) in slab.chunks_exact(inner).enumerate().skip(1) {
                for (p, &v) in o.iter_mut().zip(row) {
                    if beats(v, p.0) {
                        *p = (v, a);
                    }
                }
            }
        }
    }
}

/// The maximum of a row and its first position: a vector pass for the value (and whether any
/// NaN is present), then a search for its first occurrence.
#[inline(always)]
fn row_argmax<S: Simd>(s: S, row: &[f32]) -> (f32, usize) {
    let (mut m, mut nan) = (s.splat(f32::NEG_INFINITY), false);
    let body = row.len() - row.len() % S::LANES;
    for c in row[..body].chunks_exact(S::LANES) {
        let v = s.load(c);
        nan |= s.any(s.is_nan(v));
        m = s.max(m, v);
    }
    let mut best = s.reduce_max(m);
    for &v in &row[body..] {
        nan |= v.is_nan();
        best = if v > best { v } else { best };
    }
    let at = if nan {
        row.iter().position(|v| v.is_nan())
    } else {
        row.iter().position(|&v| v == best)
    };
    let at = at.expect("a row's maximum occurs in it");
    (row[at], at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 2654435761usize % 2001) as f32 - 1000.0) / 37.0)
            .collect()
    }

    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (3, 7, 1),
        (2, 33, 1),
        (4, 100, 1),
        (1, 5000, 1),
        (2, 5, 3),
        (3, 4, 8),
        (2, 9, 13),
        (5, 1, 17),
    ];

    #[test]
    fn sum_and_mean_match_f64() {
        for isa in [Isa::Scalar, isa::detect()] {
            for (o, a, i) in SHAPES {
                let x = input(o * a * i);
                let mut out = vec![0.0; o * i];
                sum_on(isa, &x, &mut out, o, a, i);
                let mut m = vec![0.0; o * i];
                mean(&x, &mut m, o, a, i);
                for oo in 0..o {
                    for j in 0..i {
                        let want: f64 = (0..a).map(|k| x[(oo * a + k) * i + j] as f64).sum();
                        let got = out[oo * i + j] as f64;
                        let tol = 1e-6 * (a as f64).sqrt() * 30.0;
                        assert!(
                            (got - want).abs() < tol,
                            "{isa:?} [{o},{a},{i}]: {got} vs {want}"
                        );
                        assert!((m[oo * i + j] as f64 - want / a as f64).abs() < tol / a as f64);
                    }
                }
            }
        }
    }

    #[test]
    fn long_sums_stay_accurate() {
        // 1 + 1e-4 * n in f32 naive accumulation drifts; blocked f64 totals do not.
        let n = 1 << 20;
        let x = vec![0.1f32; n];
        let got = sum_all(&x) as f64;
        let want = 0.1f32 as f64 * n as f64;
        assert!((got - want).abs() / want < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn empty_axis_sums_to_zero() {
        let mut out = vec![1.0; 6];
        sum(&[], &mut out, 2, 0, 3);
        assert_eq!(out, vec![0.0; 6]);
        let mut out = vec![1.0; 2];
        sum(&[], &mut out, 2, 0, 1);
        assert_eq!(out, vec![0.0; 2]);
        mean(&[], &mut out, 2, 0, 1);
        assert!(out.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn max_finds_the_first_maximum() {
        for isa in [Isa::Scalar, isa::detect()] {
            for (o, a, i) in SHAPES {
                // Few distinct values, so ties are common.
                let x: Vec<f32> = input(o * a * i).iter().map(|v| v.round()).collect();
                let (mut out, mut idx) = (vec![0.0; o * i], vec![0; o * i]);
                max_on(isa, &x, &mut out, &mut idx, o, a, i);
                for oo in 0..o {
                    for j in 0..i {
                        let col: Vec<f32> = (0..a).map(|k| x[(oo * a + k) * i + j]).collect();
                        let m = col.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let first = col.iter().position(|&v| v == m).unwrap();
                        assert_eq!((out[oo * i + j], idx[oo * i + j]), (m, first));
                    }
                }
            }
        }
    }

    #[test]
    fn max_propagates_the_first_nan() {
        for isa in [Isa::Scalar, isa::detect()] {
            let mut x = input(40);
            x[13] = f32::NAN;
            x[29] = f32::NAN;
            let (mut out, mut idx) = ([0.0f32], [0usize]);
            max_on(isa, &x, &mut out, &mut idx, 1, 40, 1);
            assert!(out[0].is_nan() && idx[0] == 13, "{isa:?}");
            // Down columns: [4, 2] with a NaN in column 1 at row 2.
            let x = [1.0, 5.0, 3.0, 2.0, 3.0, f32::NAN, 0.0, 9.0];
            let (mut out, mut idx) = ([0.0f32; 2], [0usize; 2]);
            max_on(isa, &x, &mut out, &mut idx, 1, 4, 2);
            assert_eq!((out[0], idx[0]), (3.0, 1));
            assert!(out[1].is_nan() && idx[1] == 2);
        }
    }

    #[test]
    fn parallel_split_matches_one_piece() {
        let (o, a) = (ELEMWISE_PAR_MIN_ELEMS / 50, 100);
        let x = input(o * a);
        let (mut s, mut m, mut k) = (vec![0.0; o], vec![0.0; o], vec![0; o]);
        sum(&x, &mut s, o, a, 1);
        max(&x, &mut m, &mut k, o, a, 1);
        for r in [0, o / 3, o - 1] {
            let row = &x[r * a..(r + 1) * a];
            assert_eq!(s[r], sum_all(row));
            let (mut m1, mut k1) = ([0.0f32], [0usize]);
            max(row, &mut m1, &mut k1, 1, a, 1);
            assert_eq!((m[r], k[r]), (m1[0], k1[0]));
        }
        let (o, a, i) = (64, 40, 30);
        let x = input(o * a * i);
        let mut s = vec![0.0; o * i];
        sum(&x, &mut s, o, a, i);
        let mut s1 = vec![0.0; i];
        sum(&x[(o - 1) * a * i..], &mut s1, 1, a, i);
        assert_eq!(&s[(o - 1) * i..], &s1[..]);
    }
}
