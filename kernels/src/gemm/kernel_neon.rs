//! aarch64 NEON micro-kernel: an 8x12 register tile (24 q accumulators, two A vectors and three B
//! vectors: 29 of the 32 q registers), using by-lane FMAs so A needs no broadcasts.

use super::spec::TileKernel;
use super::EpilogueOp;
use core::arch::aarch64::*;

pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 12;

pub(crate) static KERNELS: &[TileKernel] = &[
    tile::<1>, tile::<2>, tile::<3>, tile::<4>, tile::<5>, tile::<6>, tile::<7>, tile::<8>,
];

/// An `R x 12` tile; see [`TileKernel`] for the contract.
///
/// # Safety
/// The pointers must satisfy the [`TileKernel`] contract (NEON is part of every aarch64 target).
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
) {
    let mut acc = [[vdupq_n_f32(0.0); 3]; MR];
    // SAFETY (whole block): A step p reads a[p * MR .. + 8] (a packed panel is MR wide whatever
    // R is), B step p reads b[p * ldb .. + 12]; both inside the contract's ranges.
    unsafe {
        for p in 0..k {
            let bp = b.add(p * ldb);
            let b0 = vld1q_f32(bp);
            let b1 = vld1q_f32(bp.add(4));
            let b2 = vld1q_f32(bp.add(8));
            let ap = a.add(p * MR);
            let a0 = vld1q_f32(ap);
            let a1 = vld1q_f32(ap.add(4));
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
    }
}

/// The tile epilogue, compiled with NEON.
///
/// # Safety
/// As [`super::epilogue::apply_tile`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn epilogue(
    ops: &[EpilogueOp],
    c: *mut f32,
    ldc: usize,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
) {
    // SAFETY: forwarded contract.
    unsafe { super::epilogue::apply_tile(ops, c, ldc, row0, rows, col0, cols) }
}
