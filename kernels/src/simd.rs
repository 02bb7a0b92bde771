//! A small portable SIMD layer: one trait, [`Simd`], implemented for 8-lane AVX2+FMA, 4-lane NEON
//! and 1-lane scalar, so each vector algorithm (exp, erf, softmax, reductions, ...) is written once
//! and its scalar instance is the reference the SIMD instances are tested against.
//!
//! Safety model: a token of an ISA type ([`Avx2`], [`Neon`]) is only created by [`dispatch_on`]
//! after checking the CPU supports that ISA, so the token's methods may use its instructions. A
//! kernel is a [`SimdFn`]; `dispatch_on` calls it inside a `#[target_feature]` function of the
//! chosen ISA, into which the `#[inline(always)]` generic code and the token's methods inline, so
//! they compile to the vector instructions themselves.
//!
//! Lane semantics every implementation follows exactly (the tests compare them bit for bit where
//! the arithmetic allows): `max(a, b)` is `if a > b { a } else { b }` and `min(a, b)` is
//! `if a < b { a } else { b }`, so a NaN in `b` always propagates (write the data operand second);
//! `mul_add` is fused where the ISA has FMA and rounds twice in the scalar instance.

use crate::isa::{self, Isa};

/// A SIMD instruction set seen as `LANES` f32 lanes.
pub trait Simd: Copy + Send + Sync + 'static {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// A lane mask, the result of a comparison.
    type M: Copy;
    /// Lanes per vector.
    const LANES: usize;

    /// Every lane `v`.
    fn splat(self, v: f32) -> Self::V;
    /// The first `LANES` elements of `s` (panics if `s` is shorter).
    fn load(self, s: &[f32]) -> Self::V;
    /// Write `v` to the first `LANES` elements of `s` (panics if `s` is shorter).
    fn store(self, s: &mut [f32], v: Self::V);
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c - a * b`.
    fn neg_mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a * b - p` exactly, where `p` is `a * b` rounded (the product's rounding error); needs
    /// |a|, |b| < 2^100.
    fn mul_error(self, a: Self::V, b: Self::V, p: Self::V) -> Self::V;
    /// `if a > b { a } else { b }`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `if a < b { a } else { b }`.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `|a|` (clears the sign bit; NaN stays NaN).
    fn abs(self, a: Self::V) -> Self::V;
    /// The magnitude of `mag` with the sign bit of `sign`.
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V;
    /// Round to the nearest integer, ties to even (valid for |a| < 2^22 and NaN).
    fn round(self, a: Self::V) -> Self::V;
    /// `a * 2^n` for integral `n` in [-252, 254] (two exact power-of-two factors, so results in
    /// the subnormal range and overflow to infinity come out right).
    fn mul_pow2(self, a: Self::V, n: Self::V) -> Self::V;
    /// Lanes where `a < b`.
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes where `a > b`.
    fn gt(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes where `a == b` (never for NaN).
    fn eq(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes where `a` is NaN.
    fn is_nan(self, a: Self::V) -> Self::M;
    /// Whether any lane of `m` is set.
    fn any(self, m: Self::M) -> bool;
    /// `if m { a } else { b }` per lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes.
    fn reduce_add(self, v: Self::V) -> f32;
    /// The largest lane, folding lanes with [`Simd::max`] (NaN-propagation as `max` gives it).
    fn reduce_max(self, v: Self::V) -> f32;

    /// 0 in every lane.
    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
}

/// A kernel body generic over the ISA: `dispatch_on` instantiates `call` for the chosen one.
pub trait SimdFn {
    /// What the kernel returns.
    type Output;
    /// Run with the ISA token `s`.
    fn call<S: Simd>(self, s: S) -> Self::Output;
}

/// Run `f` with the ISA `isa::current()` picked.
#[inline]
pub fn dispatch<F: SimdFn>(f: F) -> F::Output {
    dispatch_on(isa::current(), f)
}

/// Run `f` with `isa`, falling back to scalar if this CPU lacks it (so tests and benches may ask
/// for any ISA).
#[inline]
pub fn dispatch_on<F: SimdFn>(isa: Isa, f: F) -> F::Output {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma if isa::detect() == Isa::Avx2Fma => {
            // SAFETY: detect() just confirmed the CPU has AVX2 and FMA.
            unsafe { run_avx2(f) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa::detect() == Isa::Neon => {
            // SAFETY: detect() just confirmed the CPU has NEON.
            unsafe { run_neon(f) }
        }
        _ => f.call(Scalar),
    }
}

/// A function applied lane by lane to one vector. Kernels pass these, not closures: a closure
/// body is compiled on its own, without the ISA's target features, and then cannot inline the
/// intrinsics, while these `#[inline(always)]` methods land inside the `#[target_feature]` caller.
pub trait UnaryLanes: Copy {
    /// f(x) per lane.
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V;
}

/// A function applied lane by lane to two vectors (see [`UnaryLanes`]).
pub trait BinaryLanes: Copy {
    /// f(a, b) per lane.
    fn apply<S: Simd>(self, s: S, a: S::V, b: S::V) -> S::V;
}

/// `y = f(x)` vector by vector; the tail goes through a padded buffer so every element takes the
/// same vector path (short rows, such as GEMM tile rows, stay vectorised).
#[inline(always)]
pub fn map<S: Simd, F: UnaryLanes>(s: S, f: F, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "simd::map: lengths differ");
    let body = x.len() - x.len() % S::LANES;
    for (xi, yi) in x[..body]
        .chunks_exact(S::LANES)
        .zip(y[..body].chunks_exact_mut(S::LANES))
    {
        s.store(yi, f.apply(s, s.load(xi)));
    }
    let tail = x.len() - body;
    if tail > 0 {
        let mut buf = [0.0f32; MAX_LANES];
        buf[..tail].copy_from_slice(&x[body..]);
        let v = f.apply(s, s.load(&buf));
        s.store(&mut buf, v);
        y[body..].copy_from_slice(&buf[..tail]);
    }
}

/// `x = f(x)` vector by vector (tail as in [`map`]).
#[inline(always)]
pub fn map_inplace<S: Simd, F: UnaryLanes>(s: S, f: F, x: &mut [f32]) {
    let body = x.len() - x.len() % S::LANES;
    for xi in x[..body].chunks_exact_mut(S::LANES) {
        s.store(xi, f.apply(s, s.load(xi)));
    }
    let tail = x.len() - body;
    if tail > 0 {
        let mut buf = [0.0f32; MAX_LANES];
        buf[..tail].copy_from_slice(&x[body..]);
        let v = f.apply(s, s.load(&buf));
        s.store(&mut buf, v);
        x[body..].copy_from_slice(&buf[..tail]);
    }
}

/// `y = f(a, b)` vector by vector (tail as in [`map`]).
#[inline(always)]
pub fn zip_map<S: Simd, F: BinaryLanes>(s: S, f: F, a: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(
        a.len() == y.len() && b.len() == y.len(),
        "simd::zip_map: lengths differ"
    );
    let body = y.len() - y.len() % S::LANES;
    for ((ai, bi), yi) in a[..body]
        .chunks_exact(S::LANES)
        .zip(b[..body].chunks_exact(S::LANES))
        .zip(y[..body].chunks_exact_mut(S::LANES))
    {
        s.store(yi, f.apply(s, s.load(ai), s.load(bi)));
    }
    let tail = y.len() - body;
    if tail > 0 {
        let (mut ba, mut bb) = ([0.0f32; MAX_LANES], [0.0f32; MAX_LANES]);
        ba[..tail].copy_from_slice(&a[body..]);
        bb[..tail].copy_from_slice(&b[body..]);
        let v = f.apply(s, s.load(&ba), s.load(&bb));
        s.store(&mut ba, v);
        y[body..].copy_from_slice(&ba[..tail]);
    }
}

/// The widest vector any implementation has (the tail buffers' size).
pub const MAX_LANES: usize = 8;

// ----- scalar ------------------------------------------------------------------------------------

/// One f32 lane: the portable reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to an integer, ties to even.
const ROUND_MAGIC: f32 = 12_582_912.0;

impl Simd for Scalar {
    type V = f32;
    type M = bool;
    const LANES: usize = 1;

    #[inline(always)]
    fn splat(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: f32) {
        s[0] = v;
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        // Unfused: without FMA hardware `f32::mul_add` is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    fn neg_mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        c - a * b
    }
    #[inline(always)]
    fn mul_error(self, a: f32, b: f32, p: f32) -> f32 {
        // Dekker's exact product: split each factor into 12-bit halves whose products are exact.
        #[inline(always)]
        fn split(x: f32) -> (f32, f32) {
            let c = 4097.0 * x;
            let hi = c - (c - x);
            (hi, x - hi)
        }
        let ((ah, al), (bh, bl)) = (split(a), split(b));
        ((ah * bh - p) + ah * bl + al * bh) + al * bl
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        if a < b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn abs(self, a: f32) -> f32 {
        a.abs()
    }
    #[inline(always)]
    fn copysign(self, mag: f32, sign: f32) -> f32 {
        mag.copysign(sign)
    }
    #[inline(always)]
    fn round(self, a: f32) -> f32 {
        // `round_ties_even` is a libm call on baseline x86_64; the magic constant is exact here.
        let r = (a.abs() + ROUND_MAGIC) - ROUND_MAGIC;
        r.copysign(a)
    }
    #[inline(always)]
    fn mul_pow2(self, a: f32, n: f32) -> f32 {
        let n = n as i32;
        let h = n >> 1;
        a * f32::from_bits(((h + 127) as u32) << 23) * f32::from_bits(((n - h + 127) as u32) << 23)
    }
    #[inline(always)]
    fn lt(self, a: f32, b: f32) -> bool {
        a < b
    }
    #[inline(always)]
    fn gt(self, a: f32, b: f32) -> bool {
        a > b
    }
    #[inline(always)]
    fn eq(self, a: f32, b: f32) -> bool {
        a == b
    }
    #[inline(always)]
    fn is_nan(self, a: f32) -> bool {
        a.is_nan()
    }
    #[inline(always)]
    fn any(self, m: bool) -> bool {
        m
    }
    #[inline(always)]
    fn select(self, m: bool, a: f32, b: f32) -> f32 {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn reduce_max(self, v: f32) -> f32 {
        v
    }
}

// ----- x86_64 AVX2 + FMA -------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<F: SimdFn>(f: F) -> F::Output {
    f.call(Avx2::assume_supported())
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// 8 f32 lanes of AVX2 with FMA. Only [`super::dispatch_on`] creates one, after detection.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(());

    impl Avx2 {
        /// The token, on a CPU the caller knows has AVX2 and FMA.
        #[inline(always)]
        pub(super) fn assume_supported() -> Self {
            Avx2(())
        }
    }

    // SAFETY (every `unsafe` block below): an `Avx2` value exists only once AVX2 and FMA were
    // detected (see `assume_supported`'s single caller), so the intrinsics are available; loads
    // and stores are unaligned and in bounds by the length asserts before them.
    impl Simd for Avx2 {
        type V = __m256;
        type M = __m256;
        const LANES: usize = 8;

        #[inline(always)]
        fn splat(self, v: f32) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        fn load(self, s: &[f32]) -> __m256 {
            assert!(s.len() >= 8);
            // SAFETY: 8 readable elements checked above; see the impl comment.
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32], v: __m256) {
            assert!(s.len() >= 8);
            // SAFETY: 8 writable elements checked above; see the impl comment.
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn neg_mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_fnmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn mul_error(self, a: __m256, b: __m256, p: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_fmsub_ps(a, b, p) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            // vmaxps returns its second operand unless a > b: exactly the contract.
            // SAFETY: see the impl comment.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn copysign(self, mag: __m256, sign: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe {
                let bit = _mm256_set1_ps(-0.0);
                _mm256_or_ps(_mm256_andnot_ps(bit, mag), _mm256_and_ps(bit, sign))
            }
        }
        #[inline(always)]
        fn round(self, a: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn mul_pow2(self, a: __m256, n: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe {
                let n = _mm256_cvtps_epi32(n);
                let h = _mm256_srai_epi32::<1>(n);
                let bias = _mm256_set1_epi32(127);
                let p1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(h, bias));
                let p2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(n, h), bias));
                _mm256_mul_ps(
                    _mm256_mul_ps(a, _mm256_castsi256_ps(p1)),
                    _mm256_castsi256_ps(p2),
                )
            }
        }
        #[inline(always)]
        fn lt(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        fn gt(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(a, b) }
        }
        #[inline(always)]
        fn eq(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }
        }
        #[inline(always)]
        fn is_nan(self, a: __m256) -> __m256 {
            // SAFETY: see the impl comment.
            unsafe { _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a) }
        }
        #[inline(always)]
        fn any(self, m: __m256) -> bool {
            // SAFETY: see the impl comment.
            unsafe { _mm256_movemask_ps(m) != 0 }
        }
        #[inline(always)]
        fn select(self, m: __m256, a: __m256, b: __m256) -> __m256 {
            // blendv takes its second operand where the mask is set.
            // SAFETY: see the impl comment.
            unsafe { _mm256_blendv_ps(b, a, m) }
        }
        #[inline(always)]
        fn reduce_add(self, v: __m256) -> f32 {
            // SAFETY: see the impl comment.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn reduce_max(self, v: __m256) -> f32 {
            // SAFETY: see the impl comment.
            unsafe {
                let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }
}

// ----- aarch64 NEON ------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
pub use neon::Neon;

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn run_neon<F: SimdFn>(f: F) -> F::Output {
    f.call(Neon::assume_supported())
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::Simd;
    use std::arch::aarch64::*;

    /// 4 f32 lanes of NEON. Only [`super::dispatch_on`] creates one, after detection.
    #[derive(Clone, Copy, Debug)]
    pub struct Neon(());

    impl Neon {
        /// The token, on a CPU the caller knows has NEON.
        #[inline(always)]
        pub(super) fn assume_supported() -> Self {
            Neon(())
        }
    }

    // SAFETY (every `unsafe` block below): a `Neon` value exists only once NEON was detected
    // (see `assume_supported`'s single caller), so the intrinsics are available; loads and stores
    // are in bounds by the length asserts before them.
    impl Simd for Neon {
        type V = float32x4_t;
        type M = uint32x4_t;
        const LANES: usize = 4;

        #[inline(always)]
        fn splat(self, v: f32) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vdupq_n_f32(v) }
        }
        #[inline(always)]
        fn load(self, s: &[f32]) -> float32x4_t {
            assert!(s.len() >= 4);
            // SAFETY: 4 readable elements checked above; see the impl comment.
            unsafe { vld1q_f32(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32], v: float32x4_t) {
            assert!(s.len() >= 4);
            // SAFETY: 4 writable elements checked above; see the impl comment.
            unsafe { vst1q_f32(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vsubq_f32(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vmulq_f32(a, b) }
        }
        #[inline(always)]
        fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vdivq_f32(a, b) }
        }
        #[inline(always)]
        fn mul_add(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        fn neg_mul_add(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vfmsq_f32(c, a, b) }
        }
        #[inline(always)]
        fn mul_error(self, a: float32x4_t, b: float32x4_t, p: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vfmaq_f32(vnegq_f32(p), a, b) }
        }
        #[inline(always)]
        fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // fmax would propagate a NaN from either side; compare-and-select keeps the contract.
            // SAFETY: see the impl comment.
            unsafe { vbslq_f32(vcgtq_f32(a, b), a, b) }
        }
        #[inline(always)]
        fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vbslq_f32(vcltq_f32(a, b), a, b) }
        }
        #[inline(always)]
        fn abs(self, a: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vabsq_f32(a) }
        }
        #[inline(always)]
        fn copysign(self, mag: float32x4_t, sign: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vbslq_f32(vdupq_n_u32(0x8000_0000), sign, mag) }
        }
        #[inline(always)]
        fn round(self, a: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vrndnq_f32(a) }
        }
        #[inline(always)]
        fn mul_pow2(self, a: float32x4_t, n: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe {
                let n = vcvtq_s32_f32(n);
                let h = vshrq_n_s32::<1>(n);
                let bias = vdupq_n_s32(127);
                let p1 = vshlq_n_s32::<23>(vaddq_s32(h, bias));
                let p2 = vshlq_n_s32::<23>(vaddq_s32(vsubq_s32(n, h), bias));
                vmulq_f32(
                    vmulq_f32(a, vreinterpretq_f32_s32(p1)),
                    vreinterpretq_f32_s32(p2),
                )
            }
        }
        #[inline(always)]
        fn lt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vcltq_f32(a, b) }
        }
        #[inline(always)]
        fn gt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vcgtq_f32(a, b) }
        }
        #[inline(always)]
        fn eq(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vceqq_f32(a, b) }
        }
        #[inline(always)]
        fn is_nan(self, a: float32x4_t) -> uint32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vmvnq_u32(vceqq_f32(a, a)) }
        }
        #[inline(always)]
        fn any(self, m: uint32x4_t) -> bool {
            // SAFETY: see the impl comment.
            unsafe { vmaxvq_u32(m) != 0 }
        }
        #[inline(always)]
        fn select(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see the impl comment.
            unsafe { vbslq_f32(m, a, b) }
        }
        #[inline(always)]
        fn reduce_add(self, v: float32x4_t) -> f32 {
            // SAFETY: see the impl comment.
            unsafe { vaddvq_f32(v) }
        }
        #[inline(always)]
        fn reduce_max(self, v: float32x4_t) -> f32 {
            // Fold with the contract's max (vmaxvq would treat NaN differently from x86).
            // SAFETY: see the impl comment.
            unsafe {
                let hi = vcombine_f32(vget_high_f32(v), vget_low_f32(v));
                let m = self.max(v, hi);
                let m2 = vrev64q_f32(m);
                vgetq_lane_f32::<0>(self.max(m, m2))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane operations under test, as one binary function each.
    #[derive(Clone, Copy)]
    struct Op(usize);
    const OPS: usize = 10;

    impl BinaryLanes for Op {
        fn apply<S: Simd>(self, s: S, a: S::V, b: S::V) -> S::V {
            match self.0 {
                0 => s.mul_error(a, b, s.mul(a, b)),
                1 => s.max(a, b),
                2 => s.min(a, b),
                3 => s.abs(a),
                4 => s.copysign(a, b),
                5 => s.round(a),
                6 => s.mul_pow2(a, s.round(b)),
                7 => s.select(s.lt(a, b), a, b),
                8 => s.select(s.is_nan(a), b, a),
                _ => s.neg_mul_add(a, b, a),
            }
        }
    }

    /// Every op over two slices, concatenated; then the lane sums and maxima of `a`'s vectors.
    struct Probe<'a>(&'a [f32], &'a [f32]);

    impl SimdFn for Probe<'_> {
        type Output = (Vec<f32>, Vec<f32>);
        fn call<S: Simd>(self, s: S) -> Self::Output {
            let mut out = Vec::new();
            let mut y = vec![0.0; self.0.len()];
            for op in 0..OPS {
                zip_map(s, Op(op), self.0, self.1, &mut y);
                out.extend_from_slice(&y);
            }
            let reduced = self
                .0
                .chunks_exact(S::LANES)
                .flat_map(|c| [s.reduce_add(s.load(c)), s.reduce_max(s.load(c))])
                .collect();
            (out, reduced)
        }
    }

    #[test]
    fn lane_ops_agree_with_scalar() {
        let a = [
            1.5,
            -2.5,
            0.5,
            f32::NAN,
            -0.0,
            3.0,
            2.5,
            -7.25,
            1e30,
            -1e-30,
            100.0,
            f32::INFINITY,
            -3.5,
            0.0,
            6.0,
            4.0,
        ];
        let b = [
            2.0,
            -3.0,
            f32::NAN,
            1.0,
            2.0,
            -1.0,
            100.0,
            -120.0,
            4.0,
            5.0,
            -0.0,
            3.0,
            -1.0,
            8.0,
            -200.0,
            127.0,
        ];
        let (simd, _) = dispatch(Probe(&a, &b));
        let (scalar, _) = dispatch_on(Isa::Scalar, Probe(&a, &b));
        for (i, (x, y)) in simd.iter().zip(&scalar).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "op {} element {}: {x} vs {y}",
                i / a.len(),
                i % a.len()
            );
        }
        // Lane folds over NaN-free vectors.
        let c = [1.0f32, -2.0, 3.5, 0.25, 8.0, -1.0, 2.0, 4.0];
        let (_, r) = dispatch(Probe(&c, &c));
        let lanes = 2 * c.len() / r.len();
        for (k, v) in c.chunks_exact(lanes).enumerate() {
            assert_eq!(r[2 * k], v.iter().sum::<f32>());
            assert_eq!(r[2 * k + 1], v.iter().cloned().fold(f32::MIN, f32::max));
        }
    }

    #[test]
    fn mul_pow2_reaches_subnormals_and_infinity() {
        let s = Scalar;
        assert_eq!(s.mul_pow2(1.0, -149.0), f32::from_bits(1));
        assert_eq!(s.mul_pow2(1.5, 127.0), 1.5 * 2f32.powi(127));
        assert_eq!(s.mul_pow2(1.0, 128.0), f32::INFINITY);
        assert_eq!(s.round(2.5), 2.0);
        assert_eq!(s.round(-3.5), -4.0);
        assert_eq!(s.round(-0.4), -0.0);
    }
}
