//! x86_64 AVX2+FMA micro-kernel: a 6x16 register tile (12 ymm accumulators, two B vectors and one
//! broadcast A value: 15 of the 16 ymm registers), two FMA ports busy every cycle on Zen 3/4;
//! and a 6x8 one for ragged last panels (a 49-pixel plane is three full panels and one column).

use super::spec::{TileEpi, TileKernel};
use super::EpilogueOp;
use core::arch::x86_64::*;

pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;
/// Columns of the narrow tile (one vector), for ragged last panels of at most 8 columns.
pub(crate) const NARROW_NR: usize = 8;

/// Kernels for A with unit column stride (A(i, p) at `a + i * rsa + p`).
pub(crate) static ROWS: &[TileKernel] = &[
    tile::<1, true, 2>,
    tile::<2, true, 2>,
    tile::<3, true, 2>,
    tile::<4, true, 2>,
    tile::<5, true, 2>,
    tile::<6, true, 2>,
];

/// Kernels for A with unit row stride (A(i, p) at `a + p * csa + i`: packed panels, A^T views).
pub(crate) static COLS: &[TileKernel] = &[
    tile::<1, false, 2>,
    tile::<2, false, 2>,
    tile::<3, false, 2>,
    tile::<4, false, 2>,
    tile::<5, false, 2>,
    tile::<6, false, 2>,
];

/// [`ROWS`], 8 columns wide.
pub(crate) static NARROW_ROWS: &[TileKernel] = &[
    tile::<1, true, 1>,
    tile::<2, true, 1>,
    tile::<3, true, 1>,
    tile::<4, true, 1>,
    tile::<5, true, 1>,
    tile::<6, true, 1>,
];

/// [`COLS`], 8 columns wide.
pub(crate) static NARROW_COLS: &[TileKernel] = &[
    tile::<1, false, 1>,
    tile::<2, false, 1>,
    tile::<3, false, 1>,
    tile::<4, false, 1>,
    tile::<5, false, 1>,
    tile::<6, false, 1>,
];

/// An `R x 8V` tile (`ROWS`: A has unit column stride, else unit row stride); see
/// [`TileKernel`] for the contract (with `8V` for `NR`).
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the pointers must satisfy the [`TileKernel`] contract.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const ROWS: bool, const V: usize>(
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
    let mut acc = [[_mm256_setzero_ps(); V]; MR];
    // SAFETY (whole block): every pointer offset stays within the contract's ranges: A step p
    // reads A(i, p) for i < R, B step p reads b[p * ldb .. + 8V].
    unsafe {
        // One k step into the accumulators `$acc`.
        macro_rules! step {
            ($acc:ident, $p:expr) => {{
                let bp = b.add($p * ldb);
                let mut bv = [_mm256_setzero_ps(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(bp.add(8 * v));
                }
                let ap = if ROWS { a.add($p) } else { a.add($p * csa) };
                for i in 0..R {
                    let ai = _mm256_broadcast_ss(&*ap.add(if ROWS { i * rsa } else { i }));
                    for v in 0..V {
                        $acc[i][v] = _mm256_fmadd_ps(ai, bv[v], $acc[i][v]);
                    }
                }
            }};
        }
        let mut p = 0;
        if R * V <= 4 {
            // Too few accumulators to cover the FMA latency: interleave a second set.
            let mut acc2 = [[_mm256_setzero_ps(); V]; MR];
            while p + 2 <= k {
                step!(acc, p);
                step!(acc2, p + 1);
                p += 2;
            }
            for i in 0..R {
                for v in 0..V {
                    acc[i][v] = _mm256_add_ps(acc[i][v], acc2[i][v]);
                }
            }
        }
        while p < k {
            step!(acc, p);
            p += 1;
        }

        if cols == 8 * V {
            let vbeta = _mm256_set1_ps(beta);
            for (i, row) in acc.iter_mut().enumerate().take(R) {
                let cp = c.add(i * ldc);
                for (v, x) in row.iter_mut().enumerate() {
                    if beta == 1.0 {
                        *x = _mm256_add_ps(_mm256_loadu_ps(cp.add(8 * v)), *x);
                    } else if beta != 0.0 {
                        *x = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(cp.add(8 * v)), *x);
                    }
                }
            }
            let fused = epi.ops.iter().all(in_registers);
            for (i, row) in acc.iter().enumerate().take(R) {
                let cp = c.add(i * ldc);
                let mut out = *row;
                if fused {
                    out = in_register_epilogue(epi, i, out);
                }
                for (v, x) in out.iter().enumerate() {
                    _mm256_storeu_ps(cp.add(8 * v), *x);
                }
            }
            if !fused {
                // The tile's R rows of `cols` floats are ours and the operands cover them.
                super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols);
            }
        } else {
            let mut buf = [0.0f32; NR];
            for (i, row) in acc.iter().enumerate().take(R) {
                for (v, x) in row.iter().enumerate() {
                    _mm256_storeu_ps(buf.as_mut_ptr().add(8 * v), *x);
                }
                let out = std::slice::from_raw_parts_mut(c.add(i * ldc), cols);
                super::kernel_scalar::store_row(out, &buf[..cols], beta);
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

/// `epi` applied to row `i` of a full `8V`-wide tile, held in `V` vectors, before its one store.
/// Clamps take the data second, as [`crate::activation`]'s vector lanes do, so NaN propagates
/// alike.
///
/// # Safety
/// AVX2 and FMA; every op passes [`in_registers`] and its operand covers row `row0 + i` and
/// columns `col0 .. + 8V` (the GEMM entry checks operands against C).
#[inline(always)]
unsafe fn in_register_epilogue<const V: usize>(
    epi: TileEpi,
    i: usize,
    mut vs: [__m256; V],
) -> [__m256; V] {
    use crate::activation::Activation as A;
    let (row, col0) = (epi.row0 + i, epi.col0);
    // SAFETY (whole block): the loads read operand row `row`, columns `col0 .. + 8V`, which the
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
            match *op {
                EpilogueOp::BiasPerCol(b) => {
                    let bp = b[col0..col0 + 8 * V].as_ptr();
                    for (v, x) in vs.iter_mut().enumerate() {
                        *x = _mm256_add_ps(*x, _mm256_loadu_ps(bp.add(8 * v)));
                    }
                }
                EpilogueOp::BiasPerRow(b) => {
                    let bi = _mm256_set1_ps(b[row]);
                    for x in vs.iter_mut() {
                        *x = _mm256_add_ps(*x, bi);
                    }
                }
                EpilogueOp::Add(m) => {
                    let s = row * m.row_stride + col0;
                    let rp = m.data[s..s + 8 * V].as_ptr();
                    for (v, x) in vs.iter_mut().enumerate() {
                        *x = _mm256_add_ps(*x, _mm256_loadu_ps(rp.add(8 * v)));
                    }
                }
                EpilogueOp::Act(A::Relu) => vs.iter_mut().for_each(|x| *x = clamp(*x, 0.0, None)),
                EpilogueOp::Act(A::Relu6) => {
                    vs.iter_mut().for_each(|x| *x = clamp(*x, 0.0, Some(6.0)))
                }
                EpilogueOp::Act(A::Clamp { lo, hi }) => {
                    vs.iter_mut().for_each(|x| *x = clamp(*x, lo, Some(hi)))
                }
                _ => {}
            }
        }
    }
    vs
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
