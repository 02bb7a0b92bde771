//! Small-m GEMM without packing B: for a few rows (batch-1 and small-batch inference) packing B
//! would cost as much as the product itself, so the micro-kernels read row-major B in place
//! (`ldb` = B's row stride). A, at most a few rows, is packed once for all column panels; only a
//! ragged last panel of B is copied. No K blocking: each tile runs the whole depth and applies the
//! epilogue at once.

use super::driver::OutPtr;
use super::spec::Spec;
use super::{pack, scratch, Epilogue, MatMut, MatRef};
use crate::parallel;

/// Rows up to which [`run`] beats packing B (measured on Zen 4, see benches/sgemm.rs).
pub(crate) const DIRECT_MAX_M: usize = 24;

/// Whether the direct path applies: few rows and row-major (unit column stride) B.
pub(crate) fn applies(m: usize, b: &MatRef) -> bool {
    m <= DIRECT_MAX_M && b.col_stride == 1
}

/// `C = beta * C + A * B` then `epi`, for `k > 0`, non-empty C and [`applies`].
pub(crate) fn run(
    spec: &Spec,
    a: &MatRef,
    b: &MatRef,
    beta: f32,
    c: MatMut,
    epi: &Epilogue,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (mr, nr) = (spec.mr, spec.nr);
    let row_panels = m.div_ceil(mr);
    let panels = n.div_ceil(nr);
    let out = OutPtr {
        ptr: c.data.as_mut_ptr(),
        ldc: c.row_stride,
    };
    scratch::with(&scratch::B_BUF, row_panels * k * mr, |abuf| {
        pack::pack_a(a, 0, m, 0, k, mr, abuf);
        let abuf = &*abuf;
        let tasks = if threads > 1 {
            panels.min(2 * threads)
        } else {
            1
        };
        let per = panels.div_ceil(tasks);
        parallel::for_each_index(tasks, threads > 1, |t| {
            for jp in t * per..panels.min((t + 1) * per) {
                let col = jp * nr;
                let cols = nr.min(n - col);
                if cols == nr {
                    // Every read b[p * row_stride + col .. + nr] ends at or before column n - 1
                    // of row p < k: inside B's view.
                    let bp = b.data[col..].as_ptr();
                    tiles(
                        spec,
                        abuf,
                        bp,
                        b.row_stride,
                        out,
                        m,
                        k,
                        col,
                        cols,
                        beta,
                        epi,
                    );
                } else {
                    scratch::with(&scratch::A_BUF, k * nr, |edge| {
                        pack::pack_b(b, 0, k, 0, jp, nr, edge);
                        tiles(
                            spec,
                            abuf,
                            edge.as_ptr(),
                            nr,
                            out,
                            m,
                            k,
                            col,
                            cols,
                            beta,
                            epi,
                        );
                    });
                }
            }
        });
    });
}

/// All row tiles of one column panel.
#[allow(clippy::too_many_arguments)]
fn tiles(
    spec: &Spec,
    abuf: &[f32],
    bp: *const f32,
    ldb: usize,
    out: OutPtr,
    m: usize,
    k: usize,
    col: usize,
    cols: usize,
    beta: f32,
    epi: &Epilogue,
) {
    let mr = spec.mr;
    for ir in 0..m.div_ceil(mr) {
        let row = ir * mr;
        let rows = mr.min(m - row);
        let ap = abuf[ir * k * mr..(ir + 1) * k * mr].as_ptr();
        // SAFETY: `ap` holds k * mr packed floats; `bp + p * ldb` holds nr readable floats for
        // p < k (checked by the caller); the tile lies inside C and this column panel belongs to
        // the calling task alone.
        unsafe {
            let cp = out.ptr.add(row * out.ldc + col);
            (spec.kernels[rows - 1])(k, ap, bp, ldb, cp, out.ldc, cols, beta);
            if !epi.is_empty() {
                (spec.epilogue)(epi, cp, out.ldc, row, rows, col, cols);
            }
        }
    }
}
