//! Packing A and B into the micro-kernels' panel layouts, from views with any strides.
//!
//! A block (rows `i0..i0+mc`, depth `p0..p0+kc`) becomes `ceil(mc / MR)` micro-panels of `kc * MR`
//! floats, `panel[p * MR + i] = A(i0 + panel_row0 + i, p0 + p)`. A B block becomes micro-panels of
//! `kc * NR` floats, `panel[p * NR + j] = B(p0 + p, j0 + panel_col0 + j)`. Rows/columns past the
//! matrix edge are zero, so edge tiles run the same kernels.

use super::MatRef;

/// Pack rows `i0..i0 + mc` and depth `p0..p0 + kc` of `a` into `dst` (`ceil(mc/mr) * kc * mr`).
pub(crate) fn pack_a(
    a: &MatRef,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    dst: &mut [f32],
) {
    let panels = mc.div_ceil(mr);
    for (ip, panel) in dst.chunks_exact_mut(kc * mr).take(panels).enumerate() {
        let r0 = i0 + ip * mr;
        let rows = mr.min(i0 + mc - r0);
        if a.row_stride == 1 && rows == mr {
            // A^T views: the mr values of one depth step are contiguous.
            for (p, d) in panel.chunks_exact_mut(mr).enumerate() {
                let s = (p0 + p) * a.col_stride + r0;
                d.copy_from_slice(&a.data[s..s + mr]);
            }
        } else if a.col_stride == 1 {
            // Row-major A: interleave `rows` contiguous row segments.
            for i in 0..rows {
                let s = (r0 + i) * a.row_stride + p0;
                let src = &a.data[s..s + kc];
                for (d, &v) in panel[i..].iter_mut().step_by(mr).zip(src) {
                    *d = v;
                }
            }
            zero_rows(panel, rows, mr);
        } else {
            for (p, d) in panel.chunks_exact_mut(mr).enumerate() {
                for (i, v) in d.iter_mut().enumerate().take(rows) {
                    *v = a.at(r0 + i, p0 + p);
                }
            }
            zero_rows(panel, rows, mr);
        }
    }
}

/// Zero lanes `rows..mr` of every depth step of an A panel.
fn zero_rows(panel: &mut [f32], rows: usize, mr: usize) {
    if rows < mr {
        for d in panel.chunks_exact_mut(mr) {
            d[rows..].fill(0.0);
        }
    }
}

/// Pack depth `p0..p0 + kc` of B's column panels `jp0..jp0 + dst.len() / (kc * nr)`, panel `jp`
/// starting at column `j0 + jp * nr`, into `dst`.
pub(crate) fn pack_b(
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    jp0: usize,
    nr: usize,
    dst: &mut [f32],
) {
    for (q, panel) in dst.chunks_exact_mut(kc * nr).enumerate() {
        let c0 = j0 + (jp0 + q) * nr;
        let cols = nr.min(b.cols - c0);
        if b.col_stride == 1 {
            for (p, d) in panel.chunks_exact_mut(nr).enumerate() {
                let s = (p0 + p) * b.row_stride + c0;
                d[..cols].copy_from_slice(&b.data[s..s + cols]);
                d[cols..].fill(0.0);
            }
        } else if b.row_stride == 1 {
            // B^T views (Linear's W^T): each column is contiguous along the depth.
            for j in 0..cols {
                let s = (c0 + j) * b.col_stride + p0;
                let src = &b.data[s..s + kc];
                for (d, &v) in panel[j..].iter_mut().step_by(nr).zip(src) {
                    *d = v;
                }
            }
            if cols < nr {
                for d in panel.chunks_exact_mut(nr) {
                    d[cols..].fill(0.0);
                }
            }
        } else {
            for (p, d) in panel.chunks_exact_mut(nr).enumerate() {
                for (j, v) in d.iter_mut().enumerate() {
                    *v = if j < cols { b.at(p0 + p, c0 + j) } else { 0.0 };
                }
            }
        }
    }
}

/// Set subnormal values to zero: packed weights are read by every multiply-add of a layer, and a
/// subnormal operand makes each one that reads it slow on x86 cores.
pub(crate) fn flush_subnormals(dst: &mut [f32]) {
    dst.iter_mut()
        .filter(|x| x.is_subnormal())
        .for_each(|x| *x = 0.0);
}
