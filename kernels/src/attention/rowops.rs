//! The per-row element-wise steps of attention's softmax, written once over [`crate::simd`]:
//!
//! - [`scale_add_max`]: `s = s * scale + mask + bias`, returning the row's maximum;
//! - [`exp_sub_sum`]: `s = exp(s - m)`, returning the row's sum.
//!
//! Exponentials dominate attention at small head dimensions (one per score against `d` multiply-adds
//! per score in each GEMM), so they are vmath's vectorised polynomial, flushed to zero below
//! 2^-126 ([`crate::vmath::exp_ftz_v`]): NaN propagates, -inf (a masked key) and anything whose
//! exponential would be subnormal give exactly 0.

use crate::isa::Isa;
use crate::simd::{self, Scalar, Simd, SimdFn};
use crate::vmath::ExpSubFtz;

/// `row[j] = row[j] * scale + a[j] + b[j]` (each term optional), returning the maximum of the
/// result (-inf for an empty row; NaNs are skipped by the maximum and caught by the exp).
pub fn scale_add_max(
    isa: Isa,
    row: &mut [f32],
    scale: f32,
    a: Option<&[f32]>,
    b: Option<&[f32]>,
) -> f32 {
    let n = row.len();
    assert!(
        a.is_none_or(|a| a.len() == n) && b.is_none_or(|b| b.len() == n),
        "scale_add_max: term lengths differ from the row"
    );
    simd::dispatch_on(
        isa,
        ScaleAddMax {
            row,
            scale,
            terms: (a, b),
        },
    )
}

/// `row[j] = exp(row[j] - m)` (flushed as [`crate::vmath::exp_ftz_v`]), returning the sum of the
/// results. `m` must not be -inf.
pub fn exp_sub_sum(isa: Isa, row: &mut [f32], m: f32) -> f32 {
    simd::dispatch_on(isa, ExpSubSum(row, m))
}

struct ScaleAddMax<'a> {
    row: &'a mut [f32],
    scale: f32,
    terms: (Option<&'a [f32]>, Option<&'a [f32]>),
}

impl SimdFn for ScaleAddMax<'_> {
    type Output = f32;
    #[inline(always)]
    fn call<S: Simd>(self, s: S) -> f32 {
        // One loop per set of terms present, none of them branching.
        match self.terms {
            (None, None) => scale_add_max_with(s, self.row, self.scale, []),
            (Some(a), None) | (None, Some(a)) => scale_add_max_with(s, self.row, self.scale, [a]),
            (Some(a), Some(b)) => scale_add_max_with(s, self.row, self.scale, [a, b]),
        }
    }
}

/// [`scale_add_max`] with the terms present, each as long as the row.
#[inline(always)]
fn scale_add_max_with<S: Simd, const N: usize>(
    s: S,
    row: &mut [f32],
    scale: f32,
    terms: [&[f32]; N],
) -> f32 {
    let (n, sv) = (row.len(), s.splat(scale));
    assert!(terms.iter().all(|t| t.len() == n), "scale_add_max: lengths");
    let body = n - n % S::LANES;
    let (head, tail) = row.split_at_mut(body);
    let mut mv = s.splat(f32::NEG_INFINITY);
    for (k, c) in head.chunks_exact_mut(S::LANES).enumerate() {
        let mut v = s.mul(s.load(c), sv);
        for t in terms {
            // SAFETY: every term is n >= (k + 1) LANES long (asserted above).
            v = s.add(v, s.load(unsafe { simd::lanes::<S, _>(t, k * S::LANES) }));
        }
        s.store(c, v);
        // The data first in max: a NaN score is skipped.
        mv = s.max(v, mv);
    }
    let mut m = s.reduce_max(mv);
    for (j, r) in tail.iter_mut().enumerate() {
        let mut v = *r * scale;
        for t in terms {
            v += t[body + j];
        }
        *r = v;
        m = Scalar.max(v, m);
    }
    m
}

struct ExpSubSum<'a>(&'a mut [f32], f32);

impl SimdFn for ExpSubSum<'_> {
    type Output = f32;
    #[inline(always)]
    fn call<S: Simd>(self, s: S) -> f32 {
        simd::map_inplace(s, ExpSubFtz(self.1), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa;

    fn rowdata(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (h % 2000) as f32 / 100.0 - 10.0
            })
            .collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a == b) || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 2e-6 * a.abs().max(b.abs())
    }

    #[test]
    fn simd_matches_scalar_on_odd_lengths() {
        let isa = isa::current();
        for n in (0..=35).chain([64, 257]) {
            let mut base = rowdata(n, 7);
            if n > 5 {
                base[3] = f32::NEG_INFINITY;
                base[n - 1] = -1e30;
            }
            let a = rowdata(n, 11);
            let b = rowdata(n, 13);
            for terms in 0..4 {
                let ta = (terms & 1 == 1).then_some(&a[..]);
                let tb = (terms & 2 == 2).then_some(&b[..]);
                let (mut r1, mut r2) = (base.clone(), base.clone());
                let m1 = scale_add_max(isa, &mut r1, 0.37, ta, tb);
                let m2 = scale_add_max(Isa::Scalar, &mut r2, 0.37, ta, tb);
                assert_eq!(m1, m2, "n={n} terms={terms}");
                assert!(r1.iter().zip(&r2).all(|(x, y)| close(*x, *y)));
                if n == 0 {
                    assert_eq!(m1, f32::NEG_INFINITY);
                    continue;
                }
                let s1 = exp_sub_sum(isa, &mut r1, m1);
                let s2 = exp_sub_sum(Isa::Scalar, &mut r2, m2);
                assert!(close(s1, s2) || (s1 - s2).abs() < 1e-5 * s2, "{s1} vs {s2}");
                assert!(r1.iter().zip(&r2).all(|(x, y)| close(*x, *y)), "n={n}");
                assert!(r1.iter().all(|&p| (0.0..=1.0).contains(&p)));
            }
        }
    }

    #[test]
    fn max_skips_nan_and_exp_propagates_it() {
        for isa in [Isa::Scalar, isa::current()] {
            let mut row = vec![0.5f32; 19];
            row[2] = f32::NAN;
            row[17] = f32::NAN;
            row[5] = f32::NEG_INFINITY;
            row[18] = -200.0;
            assert_eq!(scale_add_max(isa, &mut row, 1.0, None, None), 0.5);
            let s = exp_sub_sum(isa, &mut row, 0.0);
            assert!(s.is_nan());
            assert!(row[2].is_nan() && row[17].is_nan());
            assert_eq!(row[5], 0.0);
            assert_eq!(row[18], 0.0);
            assert!(close(row[0], 0.5f32.exp()));
        }
    }
}
