//! Instruction-set selection, decided once per process.
//!
//! `TLC_ISA=scalar` forces the scalar reference paths (useful to bisect a SIMD bug or to measure the
//! SIMD gain); any other value, or none, picks the best the CPU supports. Within AVX2, the GEMM,
//! pixel-major and channels-last tiles and the depthwise kernels use AVX-512 where the CPU has it
//! ([`avx512`]); `TLC_AVX512=0` keeps them on AVX2 (for comparisons). On aarch64 every family
//! (GEMM, channels-last tiles and depthwise rows included) runs NEON.

use std::sync::OnceLock;

/// The SIMD family a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, no explicit SIMD; the reference every other path is tested against.
    Scalar,
    /// x86_64 with AVX2 and FMA (8 f32 lanes, fused multiply-add).
    Avx2Fma,
    /// aarch64 Advanced SIMD (4 f32 lanes, fused multiply-add).
    Neon,
}

impl Isa {
    /// Human-readable name, used in benchmark reports and `tlc` banners.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Neon => "neon",
        }
    }
}

/// The best ISA this CPU supports (ignores `TLC_ISA`).
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
    }
    Isa::Scalar
}

/// The ISA kernels dispatch on: detected once, overridable with `TLC_ISA=scalar`.
pub fn current() -> Isa {
    static CURRENT: OnceLock<Isa> = OnceLock::new();
    *CURRENT.get_or_init(|| match std::env::var("TLC_ISA").as_deref() {
        Ok("scalar") => Isa::Scalar,
        _ => detect(),
    })
}

/// Whether this CPU has AVX-512F and AVX-512VL (whatever `TLC_ISA` and `TLC_AVX512` say).
pub fn detect_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        detect() == Isa::Avx2Fma
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the kernels that have AVX-512 variants use them: [`current`] is AVX2, the CPU has
/// AVX-512F/VL ([`detect_avx512`]) and `TLC_AVX512` is not `0`. Decided once.
pub fn avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        current() == Isa::Avx2Fma
            && detect_avx512()
            && std::env::var("TLC_AVX512").as_deref() != Ok("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_is_supported_by_this_cpu() {
        let isa = current();
        assert!(isa == detect() || isa == Isa::Scalar);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(detect(), Isa::Neon, "every aarch64 Linux target has NEON");
    }
}
