//! Convolutions on channels-last activations: each image `[H][W][C]`, a pixel's channels
//! contiguous (NHWC), for the inference plan's MobileNet-style networks.
//!
//! Why a second layout: in NCHW a 1x1 convolution's tile reads its input from `Cin` rows a whole
//! plane apart and writes its output to 6-16 rows a plane apart, and MobileNetV2's pointwise
//! layers, which are most of its time, spent it waiting on memory (BENCHMARKS.md, session 11:
//! 1.1-1.6x ONNX Runtime's time per layer in the network, 0.9-1.1x with warm caches). Channels
//! last, a 1x1 convolution is a plain GEMM over pixel rows: a tile reads 6 contiguous rows of
//! `Cin` floats and writes 6 contiguous runs of 16 channels, and a depthwise convolution
//! vectorises over channels with every load contiguous.
//!
//! - [`pointwise`]: 1x1, stride 1, one group — `out[P x Cout] = x[P x Cin] * W^T`.
//! - [`conv`]: any one-group convolution, its patches gathered into pixel rows in `(ky, kx, c)`
//!   order, a kernel row's taps copied as one run.
//! - [`conv_from_nchw`]: a one-group convolution of an NCHW input (the image stem), read through
//!   the implicit GEMM's padded bands, so its output needs no move (gathering the stem's 27-float
//!   patches cost more than running it NCHW and moving the output).
//! - [`depthwise`]: one channel per group, vectorised over channels.
//! - [`block`]: an inverted residual's expansion, depthwise conv and projection in one pass.
//! - [`layout`]: NCHW <-> channels-last transposes and the global average pool.
//!
//! The weights are packed once by whoever runs the layer many times ([`pack`],
//! [`depthwise::pack`]). The epilogue (bias, residual of the output's shape and layout, clamping
//! activation) is applied in registers as each tile is stored.

pub mod block;
pub mod depthwise;
pub mod layout;
#[cfg(test)]
mod tests;
mod tile;

use super::implicit::{self, Band};
use super::{Conv2dShape, ConvEpilogueOp, ConvPath};
use crate::gemm::{even_tiles, MatRef, PackedPanels, PANEL};
use crate::parallel::{self, CONV_PAR_MIN_MACS, GEMM_PAR_MIN_MACS};
use crate::scratch::with_scratch;
use tile::{Fused, Lhs, TileEpi};

/// Whether the plan should switch layout on this CPU: x86_64 with AVX2 or AVX-512, where the
/// channels-last kernels were measured against the NCHW ones. aarch64 has NEON tiles and row
/// kernels too (`--layout channels-last` runs them), but no ARM hardware has timed them against
/// the NEON NCHW path, so the plan's default stays NCHW there.
pub fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::isa::current() == crate::isa::Isa::Avx2Fma
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`conv`] runs `s` (one group; depthwise layers go to [`depthwise`]).
pub fn supports(s: &Conv2dShape) -> bool {
    s.params.groups == 1
}

/// The weights (`[Cout][Cin][kh][kw]`) packed for [`conv`] or [`pointwise`]: `W^T` in
/// 16-channel panels, the patch in the order [`conv`] gathers it.
pub fn pack(s: &Conv2dShape, w: &[f32]) -> PackedPanels {
    let (cout, cin, kk) = (s.out_channels, s.in_channels, s.kernel_h * s.kernel_w);
    let k = cin * kk;
    assert_eq!(w.len(), cout * k, "conv2d: weight length");
    if kk == 1 {
        return PackedPanels::new(MatRef::row_major(w, cout, k).t());
    }
    // Patch element (tap t, channel c) at t * cin + c.
    let mut reordered = vec![0f32; w.len()];
    for o in 0..cout {
        for c in 0..cin {
            for t in 0..kk {
                reordered[o * k + t * cin + c] = w[o * k + c * kk + t];
            }
        }
    }
    PackedPanels::new(MatRef::row_major(&reordered, cout, k).t())
}

/// A 1x1, stride-1, unpadded convolution on channels-last `x` (`[N*H*W][Cin]`) into `out`
/// (`[N*H*W][Cout]`), weights from [`pack`]; a residual in `epi` is channels-last too.
pub fn pointwise(
    s: &Conv2dShape,
    x: &[f32],
    w: &PackedPanels,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    assert!(
        s.path() == ConvPath::Pointwise && s.params.stride == (1, 1) && s.params.groups == 1,
        "conv2d: not a stride-1 pointwise convolution"
    );
    check(s, x, w, out, epi);
    let rows = s.batch * s.in_h * s.in_w;
    let cin = s.in_channels;
    gemm_rows(rows, cin, w, out, epi, false, |r0, _, f| f(&x[r0 * cin..]));
}

/// Any one-group convolution of channels-last `x` into channels-last `out`: each task gathers
/// the patches of a run of output pixels into pixel rows (zeros where the window passes the
/// border) and multiplies them by the weights from [`pack`].
pub fn conv(s: &Conv2dShape, x: &[f32], w: &PackedPanels, out: &mut [f32], epi: &[ConvEpilogueOp]) {
    assert!(
        supports(s),
        "conv2d: grouped convolution on the channels-last rows"
    );
    check(s, x, w, out, epi);
    if s.path() == ConvPath::Pointwise && s.params.stride == (1, 1) {
        return pointwise(s, x, w, out, epi);
    }
    let (oh, ow) = s.out_hw();
    let k = s.patch_len();
    let plane = oh * ow;
    gemm_rows(s.batch * plane, k, w, out, epi, true, |r0, rows, f| {
        with_scratch(rows * k, |patches| {
            let (mut n, mut oy, mut ox) = (r0 / plane, r0 % plane / ow, r0 % ow);
            for row in patches.chunks_exact_mut(k) {
                if !gather_inside(s, x, n, oy, ox, row) {
                    gather_patch(s, x, n, oy, ox, row);
                }
                ox += 1;
                if ox == ow {
                    ox = 0;
                    oy += 1;
                    if oy == oh {
                        oy = 0;
                        n += 1;
                    }
                }
            }
            f(patches)
        })
    });
}

/// Whether [`conv_from_nchw`] runs `s`: one group and the implicit GEMM's band geometry
/// (strides of 1 or 2, no dilation, padding smaller than the kernel).
pub fn supports_nchw_input(s: &Conv2dShape) -> bool {
    s.params.groups == 1 && implicit::band_fits(s)
}

/// The weights (`[Cout][Cin][kh][kw]`) packed for [`conv_from_nchw`]: `W^T` in 16-channel
/// panels, the patch in the weights' own `(c, ky, kx)` order (the band's offset table's).
pub fn pack_nchw_input(s: &Conv2dShape, w: &[f32]) -> PackedPanels {
    let k = s.patch_len();
    assert_eq!(w.len(), s.out_channels * k, "conv2d: weight length");
    PackedPanels::new(MatRef::row_major(w, s.out_channels, k).t())
}

/// A one-group convolution of NCHW `x` into channels-last `out`, weights from
/// [`pack_nchw_input`]; [`supports_nchw_input`] must hold. Each task pads the input rows its
/// output rows read into a band (column phases at stride 2, as [`super::implicit`] does), where
/// a patch element's pixels lie adjacent, and the tiles read them through the band's offset
/// table: the image stem writes its output in the layout its readers want without a move.
pub fn conv_from_nchw(
    s: &Conv2dShape,
    x: &[f32],
    w: &PackedPanels,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    assert!(
        supports_nchw_input(s),
        "conv2d: no channels-last path from an NCHW input for this shape"
    );
    check(s, x, w, out, epi);
    let (oh, ow) = s.out_hw();
    let cout = s.out_channels;
    let img_in = s.in_channels * s.in_h * s.in_w;
    let par = parallel::worth_splitting(s.macs(), CONV_PAR_MIN_MACS);
    let runs = if par {
        super::tasks_per_image(s).clamp(1, oh)
    } else {
        1
    };
    let rows = oh.div_ceil(runs);
    let runs = oh.div_ceil(rows);
    let band = Band::new(s, rows);
    let base = crate::gemm::MatPtr {
        ptr: out.as_mut_ptr(),
        rows: s.batch * oh * ow,
        cols: cout,
        row_stride: cout,
    };
    let fused = Fused::of(epi);
    parallel::for_each_index(s.batch * runs, par && s.batch * runs > 1, |t| {
        let (n, oy0) = (t / runs, t % runs * rows);
        let rows = rows.min(oh - oy0);
        band.prepare(
            s,
            &x[n * img_in..(n + 1) * img_in],
            oy0,
            rows,
            |data, offs| {
                for t in 0..rows {
                    let at = (n * oh + oy0 + t) * ow * cout;
                    // SAFETY: output row (n, oy0 + t) lies inside `out`, this task's alone
                    // (tasks split images and output rows); the epilogue's operands have the
                    // output's shape (checked), indexed from the row's flat position.
                    unsafe {
                        band_row(
                            s,
                            w,
                            &band,
                            data,
                            &offs,
                            t,
                            element(&base, at),
                            at,
                            epi,
                            fused,
                        )
                    }
                }
            },
        )
    });
}

/// Output row `t` of a band that [`Band::prepare`] filled for conv `s` (`data`, `offs`), times
/// the weights from [`pack_nchw_input`], stored channels-last to `dst` (`ow` pixels of `Cout`
/// channels) with `epi` (`fused`: [`Fused::of`] it), `dst` being flat index `at` of the output.
///
/// # Safety
/// `dst`'s `ow * Cout` floats are writable and the caller's alone, and `epi`'s operands cover
/// flat indices `at ..` of them.
#[allow(clippy::too_many_arguments)]
unsafe fn band_row(
    s: &Conv2dShape,
    w: &PackedPanels,
    band: &Band,
    data: &[f32],
    offs: &crate::gemm::OffsetTable,
    t: usize,
    dst: *mut f32,
    at: usize,
    epi: &[ConvEpilogueOp],
    fused: Option<Fused>,
) {
    let ow = s.out_hw().1;
    let (k, cout) = (s.patch_len(), s.out_channels);
    let row = &data[s.params.stride.0 * t * band.rowlen..];
    assert!(offs.fits(ow, row.len()), "conv_from_nchw: band too short");
    for j in 0..w.panels() {
        let ch0 = j * PANEL;
        let nch = PANEL.min(cout - ch0);
        let tiles = tile::family::<true>(nch);
        let mut tile_epi = TileEpi {
            ops: epi,
            fused,
            ch0,
            at,
            ldc: cout,
        };
        for (i0, r) in even_tiles(ow, tile::pixels()) {
            tile_epi.at = at + i0 * cout + ch0;
            let lhs = Lhs {
                a: row[i0..].as_ptr(),
                lda: 1,
                offs: offs.as_slice().as_ptr(),
            };
            // SAFETY: the tile reads row[i0 + offs[p] + i] for p < k, i < r <= ow - i0, inside
            // `row` (asserted), and panel j's k x 16 floats; it writes channels ch0 .. ch0 +
            // nch of pixels i0 .. i0 + r of `dst` (the caller's), with operands it covers.
            unsafe {
                tiles[r - 1](
                    k,
                    lhs,
                    w.panel(j).as_ptr(),
                    dst.add(i0 * cout + ch0),
                    nch,
                    &tile_epi,
                )
            }
        }
    }
}

fn check(s: &Conv2dShape, x: &[f32], w: &PackedPanels, out: &[f32], epi: &[ConvEpilogueOp]) {
    assert!(
        w.rows() == s.patch_len() && w.cols() == s.out_channels,
        "conv2d: packed weights of another shape"
    );
    assert_eq!(x.len(), s.input_len(), "conv2d: input length");
    assert_eq!(out.len(), s.output_len(), "conv2d: output length");
    super::check_epilogue(s, epi);
}

/// The patch of output pixel (`oy`, `ox`) of channels-last image `n` into `row` when its window
/// lies inside the image and its kernel rows are runs of adjacent pixels (undilated): one short
/// copy per kernel row. Whether it did.
fn gather_inside(
    s: &Conv2dShape,
    x: &[f32],
    n: usize,
    oy: usize,
    ox: usize,
    row: &mut [f32],
) -> bool {
    let p = s.params;
    let (cin, kh, kw, h, w) = (s.in_channels, s.kernel_h, s.kernel_w, s.in_h, s.in_w);
    if p.dilation.1 != 1 {
        return false;
    }
    let (Some(iy0), Some(ix0)) = (
        (oy * p.stride.0).checked_sub(p.padding.0),
        (ox * p.stride.1).checked_sub(p.padding.1),
    ) else {
        return false;
    };
    if iy0 + (kh - 1) * p.dilation.0 >= h || ix0 + kw > w {
        return false;
    }
    let image = &x[n * h * w * cin..(n + 1) * h * w * cin];
    let run = kw * cin;
    for (ky, dst) in row.chunks_exact_mut(run).enumerate() {
        let at = ((iy0 + ky * p.dilation.0) * w + ix0) * cin;
        copy_short(dst, &image[at..at + run]);
    }
    true
}

/// Output pixel (`oy`, `ox`) of image `n`: its patch into `row`, in [`pack`]'s order (zeros
/// where the window passes the border).
fn gather_patch(s: &Conv2dShape, x: &[f32], n: usize, oy: usize, ox: usize, row: &mut [f32]) {
    let (cin, kw) = (s.in_channels, s.kernel_w);
    let (h, w) = (s.in_h, s.in_w);
    let p = s.params;
    let image = &x[n * cin * h * w..(n + 1) * cin * h * w];
    let at = |ky: usize, kx: usize| -> Option<(usize, usize)> {
        let iy = (oy * p.stride.0 + ky * p.dilation.0).checked_sub(p.padding.0)?;
        let ix = (ox * p.stride.1 + kx * p.dilation.1).checked_sub(p.padding.1)?;
        (iy < h && ix < w).then_some((iy, ix))
    };
    for (ky, dst) in row.chunks_exact_mut(kw * cin).enumerate() {
        let iy = (oy * p.stride.0 + ky * p.dilation.0).checked_sub(p.padding.0);
        let Some(iy) = iy.filter(|&iy| iy < h) else {
            dst.fill(0.0);
            continue;
        };
        let line = &image[iy * w * cin..(iy + 1) * w * cin];
        match (at(ky, 0), at(ky, kw - 1)) {
            // The kernel row's taps are adjacent pixels: one run of kw * cin floats.
            (Some((_, ix0)), Some(_)) if p.dilation.1 == 1 => {
                copy_short(dst, &line[ix0 * cin..(ix0 + kw) * cin]);
            }
            _ => {
                for (kx, tap) in dst.chunks_exact_mut(cin).enumerate() {
                    match at(ky, kx) {
                        Some((_, ix)) => copy_short(tap, &line[ix * cin..(ix + 1) * cin]),
                        None => tap.fill(0.0),
                    }
                }
            }
        }
    }
}

/// `src` into `dst` (same length) in fixed 8-float pieces: a patch row is a few dozen floats,
/// for which a `memcpy` call per kernel row cost as much as the stem's whole GEMM.
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let len = dst.len();
    assert_eq!(len, src.len(), "copy_short: lengths");
    if len < 8 {
        dst.copy_from_slice(src);
        return;
    }
    let piece = |d: &mut [f32], s: &[f32]| {
        let s: &[f32; 8] = s.try_into().expect("8 floats");
        let d: &mut [f32; 8] = d.try_into().expect("8 floats");
        *d = *s;
    };
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        piece(d, s);
    }
    // The tail as the last 8 floats, overlapping the pieces before it.
    piece(&mut dst[len - 8..], &src[len - 8..]);
}

/// Element `i` of `m`'s storage (a function, so closures capture the whole `Sync` view).
fn element(m: &crate::gemm::MatPtr, i: usize) -> *mut f32 {
    m.ptr.wrapping_add(i)
}

/// Fewest rows per parallel range.
const MIN_ROWS: usize = 24;

/// Floats of `A` rows kept in L1 while every panel passes over them.
const L1_ROW_FLOATS: usize = 4096;

/// Rows of `k` floats of `A` a task multiplies by every panel before moving on: as many whole
/// tiles as fill [`L1_ROW_FLOATS`] (a panel deeper than L1 streams from L2 either way; the rows,
/// read once per panel, must not).
fn l1_run(k: usize) -> usize {
    let tile = tile::pixels();
    (L1_ROW_FLOATS / k.max(1)).clamp(tile, 16 * tile) / tile * tile
}

/// `out[rows x Cout] = A[rows x k] * W^T`, with `epi`. `rows_of(r0, len, f)` calls `f` with `A`'s
/// rows `r0 .. r0 + len` (row stride `k`): a slice of the input, or patches it gathered
/// (`gathers`). Tasks split the rows into ranges and, when there are few rows or more output
/// channels than rows, the panels into groups; each task takes L1-sized runs of rows and passes
/// every panel of its group over them.
fn gemm_rows<F>(
    rows: usize,
    k: usize,
    w: &PackedPanels,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
    gathers: bool,
    rows_of: F,
) where
    F: Fn(usize, usize, &mut dyn FnMut(&[f32])) + Sync,
{
    let cout = w.cols();
    let panels = w.panels();
    let macs = rows * k * cout;
    // A few rows are a matrix-vector product, split (by panels) only when as large as the
    // GEMV's threshold: a one-pixel 320 -> 2880 conv of a collapsed MobileNetV2 (0.9 M
    // multiply-adds) split on two threads pulled its whole 0.1 ms network onto the pool.
    let threshold = if rows < MIN_ROWS {
        GEMM_PAR_MIN_MACS
    } else {
        CONV_PAR_MIN_MACS
    };
    let par = parallel::worth_splitting(macs, threshold);
    let want = if par {
        parallel::pieces(macs, threshold).next_multiple_of(parallel::num_threads())
    } else {
        1
    };
    // Tasks split the larger operand. Weights larger than the rows (more output channels than
    // pixels: the 7x7 and 14x14 expansions) go in panel groups over all rows, so each weight is
    // read by one task and the rows (in L2) by all: MobileNetV2's 96->576 at 14x14 and 960->320
    // at 7x7 alone, their weights cold, ran 0.9-0.95x their time split by rows on two threads
    // (in the network within the noise). Not when `rows_of` gathers patches, which every task
    // would repeat.
    let ranges = if cout > rows && !gathers {
        1
    } else {
        want.min(rows.div_ceil(MIN_ROWS)).max(1)
    };
    // Ranges of whole tiles: 196 pixels in 8 equal ranges of 25 had ended each in a 1-pixel
    // tile, which loads the panel for a sixth of the multiply-adds.
    let split = parallel::UnitRanges::new(rows, tile::pixels(), ranges);
    let ranges = split.count();
    let groups = want.div_ceil(ranges).min(panels).max(1);
    let run = l1_run(k);
    let base = crate::gemm::MatPtr {
        ptr: out.as_mut_ptr(),
        rows,
        cols: cout,
        row_stride: cout,
    };
    let fused = Fused::of(epi);
    parallel::for_each_index(ranges * groups, par && ranges * groups > 1, |t| {
        let (r, g) = (t / groups, t % groups);
        let std::ops::Range { start: r0, end: r1 } = split.range(r);
        let (j0, j1) = (g * panels / groups, (g + 1) * panels / groups);
        let mut start = r0;
        while start < r1 {
            let n_rows = run.min(r1 - start);
            rows_of(start, n_rows, &mut |a: &[f32]| {
                let at = start * cout;
                // SAFETY: output rows start .. start + n_rows are inside `out`, and their
                // channels in panels j0 .. j1 this task's alone (tasks split rows and panels);
                // the epilogue's operands have the output's shape (checked by the caller).
                unsafe { tile_rows(a, n_rows, w, j0..j1, element(&base, at), at, epi, fused) }
            });
            start += n_rows;
        }
    });
}

/// `n_rows` rows of `A` (`a`, row stride `w.rows()`) times panels `panels` of `w`, on this
/// thread, stored to `dst` (row stride `w.cols()`, channel 0 of the first row; the panels'
/// channels written) with `epi` (`fused`: [`Fused::of`] it), `dst` being flat index `at` of the
/// output (a residual's index).
///
/// # Safety
/// Those channels of `dst`'s `n_rows` rows are writable and the caller's alone, and `epi`'s
/// operands cover flat indices `at ..` of them.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(
    a: &[f32],
    n_rows: usize,
    w: &PackedPanels,
    panels: std::ops::Range<usize>,
    dst: *mut f32,
    at: usize,
    epi: &[ConvEpilogueOp],
    fused: Option<Fused>,
) {
    let (k, cout) = (w.rows(), w.cols());
    assert!(
        n_rows == 0 || a.len() >= (n_rows - 1) * k + k,
        "gemm_rows: rows out of bounds"
    );
    let pairs = tile::pair_family();
    let mut j = panels.start;
    while j < panels.end {
        let panel = w.panel(j).as_ptr();
        let ch0 = j * PANEL;
        // Two panels at once where the family has such tiles and a whole panel and some of
        // the next are left.
        let (tiles, width) = match pairs {
            Some(p) if j + 1 < panels.end => (p, 2 * PANEL),
            _ => (tile::family::<false>(PANEL.min(cout - ch0)), PANEL),
        };
        let n = width.min(cout - ch0);
        j += width / PANEL;
        // One epilogue per panel, its place moved tile by tile: built per tile, its copy into
        // the call had the tile's reads of it wait on store forwarding.
        let mut epi = TileEpi {
            ops: epi,
            fused,
            ch0,
            at: at + ch0,
            ldc: cout,
        };
        let mut i = 0;
        while i < n_rows {
            let r = tiles.len().min(n_rows - i);
            epi.at = at + i * cout + ch0;
            let lhs = Lhs {
                // SAFETY: row i lies inside `a` (asserted).
                a: unsafe { a.as_ptr().add(i * k) },
                lda: k,
                offs: std::ptr::null(),
            };
            // SAFETY: the tile reads rows i .. i + r of `a` (k floats each, inside `a`) and the
            // k x 16 floats of its panel (of the two adjacent ones for a pair, which lie one
            // after the other in `w`); it writes channels ch0 .. ch0 + n of rows i .. i + r of
            // `dst`, which the caller gives this call alone, with operands it covers.
            unsafe { tiles[r - 1](k, lhs, panel, dst.add(i * cout + ch0), n, &epi) }
            i += r;
        }
    }
}
