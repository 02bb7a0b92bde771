//! aarch64 NEON micro-kernel: an 8x12 register tile (24 q accumulators, two A vectors and three B
//! vectors: 29 of the 32 q registers), using by-lane FMAs so A needs no broadcasts.

use super::spec::{TileEpi, TileKernel};
use super::EpilogueOp;
use core::arch::aarch64::*;

pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 12;

/// Kernels for A with unit column stride (A(i, p) at `a + i * rsa + p`).
pub(crate) static ROWS: &[TileKernel] = &[
    tile::<1, true>,
    tile::<2, true>,
    tile::<3, true>,
    tile::<4, true>,
    tile::<5, true>,
    tile::<6, true>,
    tile::<7, true>,
    tile::<8, true>,
];

/// Kernels for A with unit row stride (A(i, p) at `a + p * csa + i`: packed panels, A^T views).
pub(crate) static COLS: &[TileKernel] = &[
    tile::<1, false>,
    tile::<2, false>,
    tile::<3, false>,
    tile::<4, false>,
    tile::<5, false>,
    tile::<6, false>,
    tile::<7, false>,
    tile::<8, false>,
];

/// An `R x 12` tile (`ROWS`: A has unit column stride, else unit row stride); see
/// [`TileKernel`] for the contract.
///
/// # Safety
/// The pointers must satisfy the [`TileKernel`] contract (NEON is part of every aarch64 target).
#[target_feature(enable = "neon")]
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
    let mut acc = [[vdupq_n_f32(0.0); 3]; MR];
    // SAFETY (whole block): A step p reads A(i, p) for i < R only, B step p reads
    // b[p * ldb .. + 12]; both inside the contract's ranges.
    unsafe {
        for p in 0..k {
            let bp = b.add(p * ldb);
            let b0 = vld1q_f32(bp);
            let b1 = vld1q_f32(bp.add(4));
            let b2 = vld1q_f32(bp.add(8));
            let (a0, a1) = if !ROWS && R == MR {
                let ap = a.add(p * csa);
                (vld1q_f32(ap), vld1q_f32(ap.add(4)))
            } else {
                // Gather exactly R values: lanes past R would read outside A.
                let mut v = [0.0f32; MR];
                for (i, x) in v.iter_mut().enumerate().take(R) {
                    *x = *a.add(if ROWS { i * rsa + p } else { p * csa + i });
                }
                (vld1q_f32(v.as_ptr()), vld1q_f32(v.as_ptr().add(4)))
            };
            macro_rules! row {
                ($i:literal, $av:ident, $lane:literal) => {
                    if R > $i {
                        acc[$i][0] = vfmaq_laneq_f32::<$lane>(acc[$i][0], b0, $av);
                        acc[$i][1] = vfmaq_laneq_f32::<$lane>(acc[$i][1], b1, $av);
                        acc[$i][2] = vfmaq_laneq_f32::<$lane>(acc[$i][2], b2, $av);
                    }
                };
            }
            row!(0, a0, 0);
            row!(1, a0, 1);
            row!(2, a0, 2);
            row!(3, a0, 3);
            row!(4, a1, 0);
            row!(5, a1, 1);
            row!(6, a1, 2);
            row!(7, a1, 3);
        }

        if cols == NR {
            for (i, acc_i) in acc.iter().enumerate().take(R) {
                let cp = c.add(i * ldc);
                for (v, s) in acc_i.iter().enumerate() {
                    let mut r = *s;
                    if beta == 1.0 {
                        r = vaddq_f32(vld1q_f32(cp.add(4 * v)), r);
                    } else if beta != 0.0 {
                        r = vfmaq_n_f32(r, vld1q_f32(cp.add(4 * v)), beta);
                    }
                    vst1q_f32(cp.add(4 * v), r);
                }
            }
        } else {
            let mut buf = [0.0f32; NR];
            for (i, acc_i) in acc.iter().enumerate().take(R) {
                for (v, s) in acc_i.iter().enumerate() {
                    vst1q_f32(buf.as_mut_ptr().add(4 * v), *s);
                }
                let row = std::slice::from_raw_parts_mut(c.add(i * ldc), cols);
                super::kernel_scalar::store_row(row, &buf[..cols], beta);
            }
        }
        if !epi.ops.is_empty() {
            // The tile's R rows of `cols` floats are ours and the operands cover them (contract).
            super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols);
        }
    }
}

/// The m = 1 path ([`super::gemv`]) compiled for this kernel family.
///
/// # Safety
/// The CPU must support this family's target features; the [`super::gemv::GemvFn`] contract.
#[target_feature(enable = "neon")]
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
