//! The general path: tiled im2col + GEMM, for any kernel size, stride, padding, dilation and
//! groups.
//!
//! Forward: for a tile of output pixels, build the patch matrix `[Cin_g*kh*kw x tile]` (bounded by
//! [`TILE_BYTES`]) and multiply `W_g[Cout_g x Cin_g*kh*kw]` by it, the conv epilogue riding on the
//! GEMM's store. Backward input: `W_g^T @ dY_tile`, then col2im scatter-adds the columns into the
//! input gradient. Backward weight: `dY_tile @ patches^T`, accumulated over tiles and images.

use super::im2col::{col2im_tile, im2col_tile, Geom};
use super::scratch::with_scratch;
use super::{accumulate_in_parts, channel_block, gemm_epilogue, Conv2dShape, ConvEpilogueOp};
use crate::gemm::{gemm, MatMut, MatRef};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use rayon::prelude::*;

/// Bytes of patch matrix built per tile: enough output pixels per GEMM call to amortise packing
/// the weights, while the tile stays in L2 between im2col and GEMM.
pub const TILE_BYTES: usize = 256 * 1024;
/// Fewest pixels per tile whatever the patch length (very deep patches would otherwise give GEMM
/// calls too narrow to be efficient); the tile then exceeds [`TILE_BYTES`] a little.
const MIN_TILE: usize = 16;

/// Output pixels per tile for this shape: `TILE_BYTES` of patches (rounded to a multiple of 8
/// for the GEMM's column panels), at least [`MIN_TILE`], at most the whole output plane.
pub fn tile_pixels(shape: &Conv2dShape) -> usize {
    let (oh, ow) = shape.out_hw();
    let k = shape.patch_len().max(1);
    let t = (TILE_BYTES / 4 / k).max(MIN_TILE);
    let t = if t >= 16 { t / 8 * 8 } else { t };
    t.min(oh * ow).max(1)
}

/// `tiles(total, tile)`: the `(start, len)` of consecutive tiles covering `0..total`.
fn tiles(start: usize, end: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    (start..end)
        .step_by(tile.max(1))
        .map(move |p| (p, tile.min(end - p)))
}

/// Forward with the default tile size.
pub fn forward(shape: &Conv2dShape, x: &[f32], w: &[f32], out: &mut [f32], epi: &[ConvEpilogueOp]) {
    forward_tiled(shape, tile_pixels(shape), x, w, out, epi);
}

/// Forward with `tile` output pixels per patch matrix.
pub fn forward_tiled(
    shape: &Conv2dShape,
    tile: usize,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let g = Geom::new(shape);
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let (cin_g, cout_g, groups) = (
        shape.in_per_group(),
        shape.out_per_group(),
        shape.params.groups,
    );
    let k = shape.patch_len();
    let (img_in, img_out) = (shape.in_channels * plane_in, shape.out_channels * plane_out);
    let tile = tile.clamp(1, plane_out.max(1));

    // Pixels p0..p0+len of image n into `dst` (channel c at dst[c * ld..], the tile's first pixel
    // at column 0), using `cols` for the patches.
    let run_tile =
        |n: usize, p0: usize, len: usize, dst: &mut [f32], ld: usize, cols: &mut [f32]| {
            let cols = &mut cols[..k * len];
            for gi in 0..groups {
                let xg = &x[n * img_in + gi * cin_g * plane_in..];
                im2col_tile(&g, xg, cin_g, p0, len, cols);
                gemm(
                    MatRef::row_major(&w[gi * cout_g * k..(gi + 1) * cout_g * k], cout_g, k),
                    MatRef::row_major(cols, k, len),
                    0.0,
                    MatMut {
                        data: &mut dst[gi * cout_g * ld..],
                        rows: cout_g,
                        cols: len,
                        row_stride: ld,
                    },
                    &gemm_epilogue(shape, epi, n, gi * cout_g, cout_g, p0, len),
                );
            }
        };

    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    let threads = parallel::num_threads();
    let batch = shape.batch;
    if !par || (batch >= threads && (batch % threads == 0 || batch >= 4 * threads)) {
        // Whole images per task (or everything on this thread): tiles write in place.
        parallel::for_each_chunk_mut(out, img_out, par, |n, o| {
            with_scratch(k * tile, |cols| {
                for (p0, len) in tiles(0, plane_out, tile) {
                    run_tile(n, p0, len, &mut o[p0..], plane_out, cols);
                }
            })
        });
        return;
    }

    // Few images: split each image's pixels into ranges. A range's outputs are columns of the
    // `[Cout x OH*OW]` plane, not a contiguous slice, so each range computes into its own buffer
    // and the buffers are copied into place afterwards (one extra write per output element).
    let want = parallel::pieces(shape.macs(), CONV_PAR_MIN_MACS).max(threads);
    let per_image = want.div_ceil(batch).min(plane_out.div_ceil(tile)).max(1);
    let span = plane_out.div_ceil(per_image);
    let ranges: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|n| tiles(0, plane_out, span).map(move |(p0, len)| (n, p0, len)))
        .collect();
    let parts: Vec<Vec<f32>> = ranges
        .par_iter()
        .map(|&(n, p0, len)| {
            let mut buf = vec![0.0f32; shape.out_channels * len];
            with_scratch(k * tile.min(len), |cols| {
                for (q0, qlen) in tiles(p0, p0 + len, tile) {
                    run_tile(n, q0, qlen, &mut buf[q0 - p0..], len, cols);
                }
            });
            buf
        })
        .collect();
    for (&(n, p0, len), buf) in ranges.iter().zip(&parts) {
        for (c, row) in buf.chunks_exact(len).enumerate() {
            let at = n * img_out + c * plane_out + p0;
            out[at..at + len].copy_from_slice(row);
        }
    }
}

/// Input gradient with the default tile size.
pub fn backward_input(shape: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    backward_input_tiled(shape, tile_pixels(shape), dy, w, dx);
}

/// Input gradient (accumulated into `dx`, which the caller zeroed) with `tile` pixels per tile.
///
/// Tasks own disjoint blocks of input channels of one image (whole images when there are enough),
/// so the col2im scatter-adds never race.
pub fn backward_input_tiled(
    shape: &Conv2dShape,
    tile: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) {
    let g = Geom::new(shape);
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let (cin_g, cout_g) = (shape.in_per_group(), shape.out_per_group());
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let k = shape.patch_len();
    let khw = g.kh * g.kw;
    let tile = tile.clamp(1, plane_out.max(1));
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    let cb = channel_block(shape, cin_g, par);

    parallel::for_each_chunk_mut(dx, cb * plane_in, par, |i, dxc| {
        let (n, c) = (i * cb / cin, i * cb % cin);
        let (gi, c0) = (c / cin_g, c % cin_g);
        // Rows c0*khw.. of W_g^T, i.e. columns of the row-major [Cout_g x K] group weights.
        let wt = MatRef {
            data: &w[gi * cout_g * k + c0 * khw..],
            rows: cb * khw,
            cols: cout_g,
            row_stride: 1,
            col_stride: k,
        };
        with_scratch(cb * khw * tile, |cols| {
            for (p0, len) in tiles(0, plane_out, tile) {
                let cols = &mut cols[..cb * khw * len];
                let dyt = MatRef {
                    data: &dy[(n * cout + gi * cout_g) * plane_out + p0..],
                    rows: cout_g,
                    cols: len,
                    row_stride: plane_out,
                    col_stride: 1,
                };
                gemm(wt, dyt, 0.0, MatMut::row_major(cols, cb * khw, len), &[]);
                col2im_tile(&g, cols, cb, p0, len, dxc);
            }
        })
    });
}

/// Weight gradient with the default tile size.
pub fn backward_weight(shape: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    backward_weight_tiled(shape, tile_pixels(shape), x, dy, dw);
}

/// Weight gradient (accumulated into `dw`, which the caller zeroed) with `tile` pixels per tile:
/// `dW_g += dY_g[:, tile] @ patches^T`, over every (image, tile).
pub fn backward_weight_tiled(
    shape: &Conv2dShape,
    tile: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let g = Geom::new(shape);
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let (cin_g, cout_g, groups) = (
        shape.in_per_group(),
        shape.out_per_group(),
        shape.params.groups,
    );
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let k = shape.patch_len();
    let tile = tile.clamp(1, plane_out.max(1));
    let ntiles = plane_out.div_ceil(tile);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);

    accumulate_in_parts(shape.batch * ntiles, par, dw, |items, acc| {
        with_scratch(k * tile, |cols| {
            for item in items {
                let (n, t) = (item / ntiles, item % ntiles);
                let p0 = t * tile;
                let len = tile.min(plane_out - p0);
                let cols = &mut cols[..k * len];
                for gi in 0..groups {
                    let xg = &x[(n * cin + gi * cin_g) * plane_in..];
                    im2col_tile(&g, xg, cin_g, p0, len, cols);
                    let dyt = MatRef {
                        data: &dy[(n * cout + gi * cout_g) * plane_out + p0..],
                        rows: cout_g,
                        cols: len,
                        row_stride: plane_out,
                        col_stride: 1,
                    };
                    gemm(
                        dyt,
                        MatRef::row_major(cols, k, len).t(),
                        1.0,
                        MatMut::row_major(
                            &mut acc[gi * cout_g * k..(gi + 1) * cout_g * k],
                            cout_g,
                            k,
                        ),
                        &[],
                    );
                }
            }
        })
    });
}
