//! x86_64 AVX2+FMA micro-kernel: a 6x16 register tile (12 ymm accumulators, two B vectors and one
//! broadcast A value: 15 of the 16 ymm registers), two FMA ports busy every cycle on Zen 3/4.

use super::spec::{TileEpi, TileKernel};
use super::EpilogueOp;
use core::arch::x86_64::*;

pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;

/// Kernels for A with unit column stride (A(i, p) at `a + i * rsa + p`).
pub(crate) static ROWS: &[TileKernel] = &[
    tile::<1, true>,
    tile::<2, true>,
    tile::<3, true>,
    tile::<4, true>,
    tile::<5, true>,
    tile::<6, true>,
];

/// Kernels for A with unit row stride (A(i, p) at `a + p * csa + i`: packed panels, A^T views).
pub(crate) static COLS: &[TileKernel] = &[
    tile::<1, false>,
    tile::<2, false>,
    tile::<3, false>,
    tile::<4, false>,
    tile::<5, false>,
    tile::<6, false>,
];

/// An `R x 16` tile (`ROWS`: A has unit column stride, else unit row stride); see
/// [`TileKernel`] for the contract.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the pointers must satisfy the [`TileKernel`] contract.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const ROWS: bool>(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
    epi: TileEpi,
) {
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    // SAFETY (whole block): every pointer offset stays within the contract's ranges: A step p
    // reads A(i, p) for i < R, B step p reads b[p * ldb .. + 16].
    unsafe {
        // One k step into the accumulator pair (lo, hi).
        macro_rules! step {
            ($lo:ident, $hi:ident, $p:expr) => {{
                let bp = b.add($p * ldb);
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                let ap = if ROWS { a.add($p) } else { a.add($p * csa) };
                for i in 0..R {
                    let ai = _mm256_broadcast_ss(&*ap.add(if ROWS { i * rsa } else { i }));
                    $lo[i] = _mm256_fmadd_ps(ai, b0, $lo[i]);
                    $hi[i] = _mm256_fmadd_ps(ai, b1, $hi[i]);
                }
            }};
        }
        let mut p = 0;
        if R <= 2 {
            // Too few accumulators to cover the FMA latency: interleave a second set.
            let mut lo2 = [_mm256_setzero_ps(); MR];
            let mut hi2 = [_mm256_setzero_ps(); MR];
            while p + 2 <= k {
                step!(lo, hi, p);
                step!(lo2, hi2, p + 1);
                p += 2;
            }
            for i in 0..R {
                lo[i] = _mm256_add_ps(lo[i], lo2[i]);
                hi[i] = _mm256_add_ps(hi[i], hi2[i]);
            }
        }
        while p < k {
            step!(lo, hi, p);
            p += 1;
        }

        if cols == NR {
            let vbeta = _mm256_set1_ps(beta);
            for i in 0..R {
                let cp = c.add(i * ldc);
                if beta == 1.0 {
                    lo[i] = _mm256_add_ps(_mm256_loadu_ps(cp), lo[i]);
                    hi[i] = _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), hi[i]);
                } else if beta != 0.0 {
                    lo[i] = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(cp), lo[i]);
                    hi[i] = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(cp.add(8)), hi[i]);
                }
            }
            let fused = epi.ops.iter().all(in_registers);
            for i in 0..R {
                let cp = c.add(i * ldc);
                let (mut v0, mut v1) = (lo[i], hi[i]);
                if fused {
                    (v0, v1) = in_register_epilogue(epi, i, v0, v1);
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            }
            if !fused {
                // The tile's R rows of `cols` floats are ours and the operands cover them.
                super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols);
            }
        } else {
            let mut buf = [0.0f32; NR];
            for i in 0..R {
                _mm256_storeu_ps(buf.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(buf.as_mut_ptr().add(8), hi[i]);
                let row = std::slice::from_raw_parts_mut(c.add(i * ldc), cols);
                super::kernel_scalar::store_row(row, &buf[..cols], beta);
            }
            if !epi.ops.is_empty() {
                // The tile's R rows of `cols` floats are ours and the operands cover them.
                super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols);
            }
        }
    }
}

/// Whether [`in_register_epilogue`] does `op` (the cheap steps every conv/linear epilogue is made
/// of: bias, a dense residual, and the clamping activations).
fn in_registers(op: &EpilogueOp) -> bool {
    use crate::activation::Activation as A;
    match op {
        EpilogueOp::BiasPerCol(_) | EpilogueOp::BiasPerRow(_) => true,
        EpilogueOp::Add(r) => r.col_stride == 1,
        EpilogueOp::Act(a) => matches!(a, A::Identity | A::Relu | A::Relu6 | A::Clamp { .. }),
    }
}

/// `epi` applied to row `i` of a full 16-wide tile, held in two vectors, before its one store.
/// Clamps take the data second, as [`crate::activation`]'s vector lanes do, so NaN propagates
/// alike.
///
/// # Safety
/// AVX2 and FMA; every op passes [`in_registers`] and its operand covers row `row0 + i` and
/// columns `col0 .. + 16` (the GEMM entry checks operands against C).
#[inline(always)]
unsafe fn in_register_epilogue(
    epi: TileEpi,
    i: usize,
    mut v0: __m256,
    mut v1: __m256,
) -> (__m256, __m256) {
    use crate::activation::Activation as A;
    let (row, col0) = (epi.row0 + i, epi.col0);
    // SAFETY (whole block): the loads read operand row `row`, columns `col0 .. + 16`, which the
    // operands cover (contract); the slicing checks it again.
    unsafe {
        let clamp = |v: __m256, lo: f32, hi: Option<f32>| {
            let v = _mm256_max_ps(_mm256_set1_ps(lo), v);
            match hi {
                Some(hi) => _mm256_min_ps(_mm256_set1_ps(hi), v),
                None => v,
            }
        };
        for op in epi.ops {
            (v0, v1) = match *op {
                EpilogueOp::BiasPerCol(b) => {
                    let bp = b[col0..col0 + NR].as_ptr();
                    (
                        _mm256_add_ps(v0, _mm256_loadu_ps(bp)),
                        _mm256_add_ps(v1, _mm256_loadu_ps(bp.add(8))),
                    )
                }
                EpilogueOp::BiasPerRow(b) => {
                    let bi = _mm256_set1_ps(b[row]);
                    (_mm256_add_ps(v0, bi), _mm256_add_ps(v1, bi))
                }
                EpilogueOp::Add(m) => {
                    let s = row * m.row_stride + col0;
                    let rp = m.data[s..s + NR].as_ptr();
                    (
                        _mm256_add_ps(v0, _mm256_loadu_ps(rp)),
                        _mm256_add_ps(v1, _mm256_loadu_ps(rp.add(8))),
                    )
                }
                EpilogueOp::Act(A::Relu) => (clamp(v0, 0.0, None), clamp(v1, 0.0, None)),
                EpilogueOp::Act(A::Relu6) => (clamp(v0, 0.0, Some(6.0)), clamp(v1, 0.0, Some(6.0))),
                EpilogueOp::Act(A::Clamp { lo, hi }) => {
                    (clamp(v0, lo, Some(hi)), clamp(v1, lo, Some(hi)))
                }
                _ => (v0, v1),
            };
        }
    }
    (v0, v1)
}

/// The m = 1 path ([`super::gemv`]) compiled for this kernel family.
///
/// # Safety
/// The CPU must support this family's target features; the [`super::gemv::GemvFn`] contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv(
    a: &super::MatRef,
    b: &super::MatRef,
    beta: f32,
    out: &mut [f32],
    j0: usize,
    epi: &[EpilogueOp],
) {
    super::gemv::gemv::<true>(a, b, beta, out, j0, epi)
}
