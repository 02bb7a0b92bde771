//! tlc-kernels: the compute under tlc.
//!
//! Every kernel here is a pure function over slices with explicit dimensions; there is no tensor
//! type. SIMD paths (x86_64 AVX2+FMA, aarch64 NEON) are chosen once at runtime by [`isa`], and each
//! has a scalar reference beside it that the tests compare against; on CPUs with AVX-512 the GEMM
//! runs AVX-512 register tiles ([`gemm::kernel_name`]). Threading decisions live in
//! [`parallel`] only.

pub mod activation;
pub mod alloc;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod half_weights;
pub mod isa;
pub mod norm;
pub mod parallel;
pub mod pool;
pub mod reduce;
pub mod scratch;
pub mod simd;
pub mod softmax;
pub mod vmath;

pub use activation::Activation;
pub use gemm::{gemm, Epilogue, EpilogueOp, MatMut, MatRef};
pub use isa::Isa;
