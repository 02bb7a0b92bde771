//! Small-m GEMM without packing B: for a few rows (batch-1 and small-batch inference) packing B
//! would cost as much as the product itself, so the micro-kernels read row-major B in place
//! (`ldb` = B's row stride). A, at most a few rows, is packed once for all column panels; only a
//! ragged last panel of B is copied. No K blocking: each tile runs the whole depth and applies the
//! epilogue at once.

use super::driver::{needs_packing, ASource};
use super::spec::{Spec, TileEpi};
use super::{pack, Epilogue, MatPtr, MatRef};
use crate::parallel;
use crate::scratch::{PACK_A, PACK_B};

/// Rows up to which [`run`] always beats packing B (measured on Zen 4).
const DIRECT_ALWAYS_M: usize = 24;
/// Rows up to which [`run`] beats packing B while B is cache-sized (at most
/// [`DIRECT_MAX_B_FLOATS`]): on 2 threads 64x384x1536 runs 1.5x and 96x384x384 1.6x faster than
/// the blocked path, but 64x1024x1024 (B = 4 MiB) runs 1.5x slower on one thread.
const DIRECT_MAX_M: usize = 96;
const DIRECT_MAX_B_FLOATS: usize = 768 * 1024;

/// Whether the direct path applies: few rows and row-major (unit column stride) B.
pub(crate) fn applies(m: usize, b: &MatRef) -> bool {
    b.col_stride == 1
        && (m <= DIRECT_ALWAYS_M || (m <= DIRECT_MAX_M && b.rows * b.cols <= DIRECT_MAX_B_FLOATS))
}

/// Columns up to which a serial product takes the direct path whatever its rows, while B fits
/// L2 (at most [`NARROW_MAX_B_FLOATS`]): with one or two column panels the blocked path's K
/// blocks only cut A's stream into short runs, each starting cold (a 6-row panel's 256-deep
/// block is 6 KB, the next panel's 110 KB on), where here each panel is read whole in one
/// sequential stream. 512->512 3x3 convs at 4x4 and 2x2 (im2col, B = 4608 x 16 and x 4, 9.4 MB
/// of packed weights) ran 1.3-1.5x faster on one and two threads (0.93-1.0 -> 0.64-0.77 ms on
/// two). Serial only: [`run`] splits its work by column panels, which a narrow B has one or two
/// of.
const NARROW_MAX_N: usize = 32;
const NARROW_MAX_B_FLOATS: usize = 96 * 1024;

/// Whether a serial product with this B takes the direct path for any row count (see
/// [`NARROW_MAX_N`]).
pub(crate) fn narrow(b: &MatRef) -> bool {
    b.col_stride == 1 && b.cols <= NARROW_MAX_N && b.rows * b.cols <= NARROW_MAX_B_FLOATS
}

/// `C = beta * C + A * B` then `epi`, for `k > 0`, non-empty C (at `out`), [`applies`] and
/// checked shapes; A from `a_packed` when given (whole-depth panels from A's row 0:
/// [`super::PackedRows`]), `a` then only its shape.
///
/// # Safety
/// `out` is valid for reads and writes of C's elements, and they are this call's alone.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    spec: &Spec,
    a: &MatRef,
    a_packed: Option<&[f32]>,
    b: &MatRef,
    beta: f32,
    out: MatPtr,
    epi: &Epilogue,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (mr, nr) = (spec.mr, spec.nr);
    let panels = n.div_ceil(nr);
    let body = |asrc: ASource| {
        let tasks = if threads > 1 {
            panels.min(2 * threads)
        } else {
            1
        };
        let per = panels.div_ceil(tasks);
        parallel::for_each_index(tasks, threads > 1, |t| {
            let (p0, p1) = (t * per, panels.min((t + 1) * per));
            if p0 >= p1 {
                // More tasks than runs of `per` panels (7 panels in 6 tasks: 4 runs of 2). The
                // ragged-panel test below would otherwise hand the last panel to every such task,
                // whose epilogues then raced on it.
                return;
            }
            // Whole panels (every read b[p * row_stride + col .. + nr] of one ends at or before
            // column n - 1 of row p < k: inside B's view), in chunks of CHUNK_PANELS.
            let whole = if n % nr == 0 { p1 } else { p1.min(panels - 1) };
            let in_place = |jp: usize| (b.data[jp * nr..].as_ptr(), b.row_stride, nr);
            for c0 in (p0..whole).step_by(CHUNK_PANELS) {
                let c1 = whole.min(c0 + CHUNK_PANELS);
                chunk(spec, a, asrc, c0..c1, in_place, true, out, beta, epi);
            }
            if whole < p1 {
                // The ragged last panel, copied out zero-padded to nr columns.
                let jp = whole;
                PACK_A.with_aligned(k * nr, |edge| {
                    pack::pack_b(b, 0, k, 0, jp, nr, edge);
                    let ragged = |_| (edge.as_ptr(), nr, n - jp * nr);
                    chunk(spec, a, asrc, jp..jp + 1, ragged, false, out, beta, epi);
                });
            }
        });
    };
    if let Some(buf) = a_packed {
        body(ASource::Prepacked { buf, k });
    } else if needs_packing(spec, a) {
        PACK_B.with_aligned(m.div_ceil(mr) * k * mr, |abuf| {
            pack::pack_a(a, 0, m, 0, k, mr, abuf);
            body(ASource::Packed {
                buf: abuf,
                row0: 0,
                kc: k,
            });
        });
    } else {
        body(ASource::InPlace);
    }
}

/// Column panels per chunk of [`chunk`]: its B columns (k x 128 floats) stay in L1/L2 while the
/// row tiles sweep them.
const CHUNK_PANELS: usize = 8;

/// Every tile of the column panels `jps`, row tiles outer: each row of C is then written in runs
/// of a whole chunk, where panels outer scattered one tile's worth of columns over every row (96
/// rows of a 12544-pixel plane: 96 pages per panel, each line read for ownership separately).
/// `panel(jp)` is the panel's B pointer, row stride and column count; every `bp + p * ldb` must
/// hold `nr` readable floats for `p < k`. With `in_place` (B's rows read where they lie), each
/// panel's pointer also reaches the next panel's columns, `nr` floats on: two whole panels then
/// run as one pair tile where the family has them.
#[allow(clippy::too_many_arguments)]
fn chunk(
    spec: &Spec,
    a: &MatRef,
    asrc: ASource,
    jps: std::ops::Range<usize>,
    panel: impl Fn(usize) -> (*const f32, usize, usize),
    in_place: bool,
    out: MatPtr,
    beta: f32,
    epi: &Epilogue,
) {
    let (m, k, nr) = (a.rows, a.cols, spec.nr);
    let pairs = if in_place { asrc.pairs(spec, a) } else { &[] };
    for row in (0..m).step_by(spec.mr) {
        let rows = spec.mr.min(m - row);
        let mut jp = jps.start;
        while jp < jps.end {
            let (bp, ldb, cols) = panel(jp);
            let col = jp * nr;
            let pair = !pairs.is_empty() && jp + 1 < jps.end && cols == nr && panel(jp + 1).2 == nr;
            jp += if pair { 2 } else { 1 };
            let (kern, ap, rsa, csa) = asrc.tile(spec, a, (row, rows), 0, cols);
            let epi = TileEpi {
                ops: epi,
                row0: row,
                col0: col,
            };
            // SAFETY: the tile's rows and columns lie inside C, whose elements the caller hands
            // this call, and this column panel belongs to the calling task alone.
            let cp = unsafe { out.ptr.add(row * out.row_stride + col) };
            let ldc = out.row_stride;
            if pair {
                // SAFETY: as below, for panels jp and jp + 1, whole and `nr` floats apart in
                // every row of B (`in_place`), all 2 nr columns inside C; `pairs` serve A with
                // unit row stride (`asrc.pairs`).
                unsafe { pairs[rows - 1](k, ap, rsa, csa, bp, ldb, nr, cp, ldc, beta, epi) };
            } else {
                // SAFETY: `kern` reads A(i, p) for i < rows, p < k, inside A's view (or its
                // packed copy); `bp + p * ldb` holds nr readable floats for p < k (the caller's
                // `panel`); the tile's `cols` columns lie inside C.
                unsafe { kern(k, ap, rsa, csa, bp, ldb, cp, ldc, cols, beta, epi) };
            }
        }
    }
}
