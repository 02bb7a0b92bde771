//! The store epilogue applied to one output tile right after its last K block is stored, while
//! the tile is still in L1. Cheap steps (bias, residual, ReLU/ReLU6/Clamp) are inlined here so
//! they vectorise with the calling kernel's target features; the others go to
//! [`activation::apply_inplace`] one tile row at a time.

use super::EpilogueOp;
use crate::activation::{self, Activation};

/// Apply `ops` to one output row segment: global row `i`, columns `col0..col0 + row.len()`.
#[inline(always)]
pub(crate) fn apply_row(ops: &[EpilogueOp], row: &mut [f32], i: usize, col0: usize) {
    let len = row.len();
    for op in ops {
        match *op {
            EpilogueOp::BiasPerCol(bias) => {
                for (c, b) in row.iter_mut().zip(&bias[col0..col0 + len]) {
                    *c += b;
                }
            }
            EpilogueOp::BiasPerRow(bias) => {
                let b = bias[i];
                row.iter_mut().for_each(|c| *c += b);
            }
            EpilogueOp::Add(r) if r.col_stride == 1 => {
                let s = i * r.row_stride + col0;
                for (c, v) in row.iter_mut().zip(&r.data[s..s + len]) {
                    *c += v;
                }
            }
            EpilogueOp::Add(r) => {
                for (j, c) in row.iter_mut().enumerate() {
                    *c += r.at(i, col0 + j);
                }
            }
            // The same expressions as `Activation::apply`, so results match bit for bit.
            EpilogueOp::Act(Activation::Identity) => {}
            EpilogueOp::Act(Activation::Relu) => row.iter_mut().for_each(|c| *c = c.max(0.0)),
            EpilogueOp::Act(Activation::Relu6) => {
                row.iter_mut().for_each(|c| *c = c.clamp(0.0, 6.0))
            }
            EpilogueOp::Act(Activation::Clamp { lo, hi }) => {
                row.iter_mut().for_each(|c| *c = c.max(lo).min(hi))
            }
            EpilogueOp::Act(act) => activation::apply_inplace(act, row),
        }
    }
}

/// Apply `ops` to the `rows x cols` tile at `c` (row stride `ldc`), whose top-left element is
/// output element (`row0`, `col0`).
///
/// # Safety
/// The `rows` row segments `c + i * ldc .. + cols` must be valid for writes and not accessed by
/// anyone else during the call.
#[inline(always)]
pub(crate) unsafe fn apply_tile(
    ops: &[EpilogueOp],
    c: *mut f32,
    ldc: usize,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
) {
    for i in 0..rows {
        // SAFETY: the caller guarantees row segment i is valid and exclusively ours.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        apply_row(ops, row, row0 + i, col0);
    }
}
