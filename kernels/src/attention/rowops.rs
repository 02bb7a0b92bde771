//! The per-row element-wise steps of attention's softmax, with SIMD versions:
//!
//! - [`scale_add_max`]: `s = s * scale + mask + bias`, returning the row's maximum;
//! - [`exp_sub_sum`]: `s = exp(s - m)`, returning the row's sum.
//!
//! Exponentials dominate attention at small head dimensions (one per score against `d` multiply-adds
//! per score in each GEMM), so they are computed with a vectorised polynomial rather than libm.
//! NOTE: `crate::vmath` is getting a shared SIMD exp; once merged, [`exp_poly`] and the `exp8` /
//! `exp4` lane functions below should be replaced by it (same contract: NaN propagates, arguments
//! below [`EXP_LO`] give exactly 0).

use crate::isa::Isa;

/// Below this, `exp` returns 0 (its true value is subnormal); keeps `2^n` a normal float.
pub const EXP_LO: f32 = -87.336_54;
/// Arguments are clamped to this (exp(88) ~ 1.65e38 is still finite).
const EXP_HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n * LN2_HI is exact for |n| <= 128 (Cody-Waite reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// exp(r) ~ 1 + r + r^2 * P(r) on |r| <= ln2 / 2 (Cephes expf coefficients).
const P0: f32 = 1.987_569_1e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5;

/// `e^x` to about 2 ulp: NaN propagates, `x < EXP_LO` (including -inf) gives 0. The scalar
/// reference of the SIMD lane versions (same steps, without fused multiply-adds).
#[inline]
pub fn exp_poly(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5;
    let y = p * (r * r) + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

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
        a.map_or(true, |a| a.len() == n) && b.map_or(true, |b| b.len() == n),
        "scale_add_max: term lengths differ from the row"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only reported by isa::detect when the CPU has AVX2 and FMA; lengths
        // were checked above.
        Isa::Avx2Fma => unsafe { avx2::scale_add_max(row, scale, a, b) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Neon is only reported on aarch64 CPUs with NEON; lengths were checked above.
        Isa::Neon => unsafe { neon::scale_add_max(row, scale, a, b) },
        _ => scalar::scale_add_max(row, scale, a, b),
    }
}

/// `row[j] = exp(row[j] - m)`, returning the sum of the results. `m` must not be -inf.
pub fn exp_sub_sum(isa: Isa, row: &mut [f32], m: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only reported by isa::detect when the CPU has AVX2 and FMA.
        Isa::Avx2Fma => unsafe { avx2::exp_sub_sum(row, m) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Neon is only reported on aarch64 CPUs with NEON.
        Isa::Neon => unsafe { neon::exp_sub_sum(row, m) },
        _ => scalar::exp_sub_sum(row, m),
    }
}

/// Portable versions: the reference the SIMD ones are tested against, and their tails.
pub mod scalar {
    use super::exp_poly;

    /// See [`super::scale_add_max`].
    pub fn scale_add_max(row: &mut [f32], scale: f32, a: Option<&[f32]>, b: Option<&[f32]>) -> f32 {
        let mut m = f32::NEG_INFINITY;
        for (j, s) in row.iter_mut().enumerate() {
            let mut v = *s * scale;
            if let Some(a) = a {
                v += a[j];
            }
            if let Some(b) = b {
                v += b[j];
            }
            *s = v;
            m = m.max(v);
        }
        m
    }

    /// See [`super::exp_sub_sum`].
    pub fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
        let mut sum = 0.0;
        for s in row.iter_mut() {
            *s = exp_poly(*s - m);
            sum += *s;
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use core::arch::x86_64::*;

    /// Eight lanes of [`exp_poly`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp8(x: __m256) -> __m256 {
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
        let xc = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
            _mm256_set1_ps(EXP_HI),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let y = _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)));
        _mm256_blendv_ps(y, x, nan)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b`, when given, must be as long as `row`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scale_add_max(
        row: &mut [f32],
        scale: f32,
        a: Option<&[f32]>,
        b: Option<&[f32]>,
    ) -> f32 {
        let n = row.len();
        let body = n - n % 8;
        let vs = _mm256_set1_ps(scale);
        let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
        let p = row.as_mut_ptr();
        let mut j = 0;
        while j < body {
            // SAFETY (all pointer accesses in this loop): j + 8 <= body <= n and the terms are
            // n long (the caller's contract).
            let mut v = _mm256_mul_ps(_mm256_loadu_ps(p.add(j)), vs);
            if let Some(a) = a {
                v = _mm256_add_ps(v, _mm256_loadu_ps(a.as_ptr().add(j)));
            }
            if let Some(b) = b {
                v = _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(j)));
            }
            _mm256_storeu_ps(p.add(j), v);
            // max(v, m) returns m when v is NaN: NaNs are skipped, as in the scalar version.
            vm = _mm256_max_ps(v, vm);
            j += 8;
        }
        let tail = super::scalar::scale_add_max(
            &mut row[body..],
            scale,
            a.map(|a| &a[body..]),
            b.map(|b| &b[body..]),
        );
        hmax(vm).max(tail)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
        let n = row.len();
        let body = n - n % 8;
        let vmx = _mm256_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let p = row.as_mut_ptr();
        let mut j = 0;
        while j < body {
            // SAFETY: j + 8 <= body <= row.len().
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), vmx));
            _mm256_storeu_ps(p.add(j), e);
            acc = _mm256_add_ps(acc, e);
            j += 8;
        }
        hsum(acc) + super::scalar::exp_sub_sum(&mut row[body..], m)
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use core::arch::aarch64::*;

    /// Four lanes of [`exp_poly`].
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn exp4(x: float32x4_t) -> float32x4_t {
        let nan = vmvnq_u32(vceqq_f32(x, x));
        let under = vcltq_f32(x, vdupq_n_f32(EXP_LO));
        let xc = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
        let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(LOG2E)));
        let r = vfmsq_f32(xc, n, vdupq_n_f32(LN2_HI));
        let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
        let mut p = vdupq_n_f32(P0);
        p = vfmaq_f32(vdupq_n_f32(P1), p, r);
        p = vfmaq_f32(vdupq_n_f32(P2), p, r);
        p = vfmaq_f32(vdupq_n_f32(P3), p, r);
        p = vfmaq_f32(vdupq_n_f32(P4), p, r);
        p = vfmaq_f32(vdupq_n_f32(P5), p, r);
        let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
        let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
        let y = vmulq_f32(y, vreinterpretq_f32_s32(bits));
        let y = vbslq_f32(under, vdupq_n_f32(0.0), y);
        vbslq_f32(nan, x, y)
    }

    /// # Safety
    /// Needs NEON; `a` and `b`, when given, must be as long as `row`.
    #[target_feature(enable = "neon")]
    pub unsafe fn scale_add_max(
        row: &mut [f32],
        scale: f32,
        a: Option<&[f32]>,
        b: Option<&[f32]>,
    ) -> f32 {
        let n = row.len();
        let body = n - n % 4;
        let mut vm = vdupq_n_f32(f32::NEG_INFINITY);
        let p = row.as_mut_ptr();
        let mut j = 0;
        while j < body {
            // SAFETY (all pointer accesses in this loop): j + 4 <= body <= n and the terms are
            // n long (the caller's contract).
            let mut v = vmulq_n_f32(vld1q_f32(p.add(j)), scale);
            if let Some(a) = a {
                v = vaddq_f32(v, vld1q_f32(a.as_ptr().add(j)));
            }
            if let Some(b) = b {
                v = vaddq_f32(v, vld1q_f32(b.as_ptr().add(j)));
            }
            vst1q_f32(p.add(j), v);
            // maxnm ignores a NaN operand, as the scalar version does.
            vm = vmaxnmq_f32(vm, v);
            j += 4;
        }
        let tail = super::scalar::scale_add_max(
            &mut row[body..],
            scale,
            a.map(|a| &a[body..]),
            b.map(|b| &b[body..]),
        );
        vmaxnmvq_f32(vm).max(tail)
    }

    /// # Safety
    /// Needs NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
        let n = row.len();
        let body = n - n % 4;
        let vmx = vdupq_n_f32(m);
        let mut acc = vdupq_n_f32(0.0);
        let p = row.as_mut_ptr();
        let mut j = 0;
        while j < body {
            // SAFETY: j + 4 <= body <= row.len().
            let e = exp4(vsubq_f32(vld1q_f32(p.add(j)), vmx));
            vst1q_f32(p.add(j), e);
            acc = vaddq_f32(acc, e);
            j += 4;
        }
        vaddvq_f32(acc) + super::scalar::exp_sub_sum(&mut row[body..], m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa;

    #[test]
    fn exp_poly_is_accurate_and_handles_the_edges() {
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let err = ((exp_poly(x) as f64 - want) / want).abs();
            worst = worst.max(err);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_poly(-1e30), 0.0);
        assert!(exp_poly(f32::NAN).is_nan());
        assert!(exp_poly(1000.0).is_finite());
    }

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
                let m2 = scalar::scale_add_max(&mut r2, 0.37, ta, tb);
                assert_eq!(m1, m2, "n={n} terms={terms}");
                assert!(r1.iter().zip(&r2).all(|(x, y)| close(*x, *y)));
                if n == 0 {
                    assert_eq!(m1, f32::NEG_INFINITY);
                    continue;
                }
                let s1 = exp_sub_sum(isa, &mut r1, m1);
                let s2 = scalar::exp_sub_sum(&mut r2, m2);
                assert!(close(s1, s2) || (s1 - s2).abs() < 1e-5 * s2, "{s1} vs {s2}");
                assert!(r1.iter().zip(&r2).all(|(x, y)| close(*x, *y)), "n={n}");
                assert!(r1.iter().all(|&p| (0.0..=1.0).contains(&p)));
            }
        }
    }

    #[test]
    fn simd_exp_propagates_nan_and_flushes_underflow() {
        let isa = isa::current();
        let mut row = vec![0.5f32; 19];
        row[2] = f32::NAN;
        row[17] = f32::NAN;
        row[5] = f32::NEG_INFINITY;
        row[18] = -200.0;
        let s = exp_sub_sum(isa, &mut row, 0.0);
        assert!(s.is_nan());
        assert!(row[2].is_nan() && row[17].is_nan());
        assert_eq!(row[5], 0.0);
        assert_eq!(row[18], 0.0);
        assert!(close(row[0], 0.5f32.exp()));
    }
}
