//! One SIMD register of f32 lanes as a type, so a kernel body is written once and compiled per
//! vector width: `__m256` (AVX2+FMA, 8 lanes) and `__m512` (AVX-512F, 16) on x86_64,
//! `float32x4_t` (NEON, 4) on aarch64.

#[cfg(target_arch = "aarch64")]
use core::arch::aarch64::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

/// One SIMD register of f32 lanes. Every method is one intrinsic (or a short fixed sequence),
/// inlined into a caller compiled with the features it needs.
pub(crate) trait Lanes: Copy {
    /// f32 lanes per register.
    const N: usize;
    /// # Safety
    /// The caller's target features include the type's.
    unsafe fn zero() -> Self;
    /// # Safety
    /// As [`Lanes::zero`].
    unsafe fn splat(x: f32) -> Self;
    /// # Safety
    /// As [`Lanes::zero`]; `p` is readable.
    // Used by the x86 GEMM tile only; NEON kernels multiply by lane instead.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    unsafe fn broadcast(p: *const f32) -> Self;
    /// # Safety
    /// As [`Lanes::zero`]; `N` floats at `p` are readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// As [`Lanes::zero`]; `N` floats at `p` are writable.
    unsafe fn store(p: *mut f32, v: Self);
    /// The first `n < N` floats at `p`, the other lanes zero; nothing past them is read.
    /// # Safety
    /// As [`Lanes::zero`]; `n` floats at `p` are readable.
    unsafe fn load_part(p: *const f32, n: usize) -> Self;
    /// The first `n < N` lanes of `v` to `p`; nothing past them is written.
    /// # Safety
    /// As [`Lanes::zero`]; `n` floats at `p` are writable.
    unsafe fn store_part(p: *mut f32, n: usize, v: Self);
    /// `a * b + c`.
    /// # Safety
    /// As [`Lanes::zero`].
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// # Safety
    /// As [`Lanes::zero`].
    unsafe fn add(a: Self, b: Self) -> Self;
    /// Lane-wise max with `x` second, as the activation kernels (NaN in `x` propagates alike).
    /// # Safety
    /// As [`Lanes::zero`].
    unsafe fn max(lo: Self, x: Self) -> Self;
    /// # Safety
    /// As [`Lanes::zero`].
    unsafe fn min(hi: Self, x: Self) -> Self;
}

// SAFETY (both impls): each method is one intrinsic; the trait's contract (caller compiled with
// AVX2+FMA, resp. AVX-512F, and the pointer ranges) is exactly the intrinsic's.
#[cfg(target_arch = "x86_64")]
impl Lanes for __m256 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self {
        // Through a stack copy: AVX2's masked moves are slow on AMD.
        let mut t = [0f32; 8];
        unsafe {
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n.min(8));
            _mm256_loadu_ps(t.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self) {
        let mut t = [0f32; 8];
        unsafe {
            _mm256_storeu_ps(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, n.min(8));
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(lo: Self, x: Self) -> Self {
        unsafe { _mm256_max_ps(lo, x) }
    }
    #[inline(always)]
    unsafe fn min(hi: Self, x: Self) -> Self {
        unsafe { _mm256_min_ps(hi, x) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for __m512 {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self {
        // Masked-off lanes are neither read nor faulted on.
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n.min(16)) - 1) as __mmask16, p) }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self) {
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n.min(16)) - 1) as __mmask16, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(lo: Self, x: Self) -> Self {
        unsafe { _mm512_max_ps(lo, x) }
    }
    #[inline(always)]
    unsafe fn min(hi: Self, x: Self) -> Self {
        unsafe { _mm512_min_ps(hi, x) }
    }
}

// SAFETY: each method is one NEON intrinsic (the partial forms copy through a stack array); the
// trait's contract (caller compiled with NEON, the pointer ranges) is exactly the intrinsics'.
#[cfg(target_arch = "aarch64")]
impl Lanes for float32x4_t {
    const N: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        unsafe { vld1q_dup_f32(p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self {
        let mut t = [0f32; 4];
        unsafe {
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n.min(4));
            vld1q_f32(t.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self) {
        let mut t = [0f32; 4];
        unsafe {
            vst1q_f32(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, n.min(4));
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // vfmaq_f32(c, a, b) = c + a * b.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn max(lo: Self, x: Self) -> Self {
        unsafe { vmaxq_f32(lo, x) }
    }
    #[inline(always)]
    unsafe fn min(hi: Self, x: Self) -> Self {
        unsafe { vminq_f32(hi, x) }
    }
}
