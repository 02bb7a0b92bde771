//! The general path: tiled im2col + GEMM, for any kernel size, stride, padding, dilation and
//! groups.
//!
//! Forward: build the patch matrix `[Cin_g*kh*kw x P]` of a tile of `P` output pixels and multiply
//! `W_g[Cout_g x Cin_g*kh*kw]` by it. Backward input: `W_g^T @ dY_tile`, then col2im scatter-adds
//! the columns into the input gradient. Backward weight: `dY_tile @ patches^T`, accumulated over
//! tiles and images.
//!
//! Each GEMM call repacks the whole weight matrix, so a tile must cover enough pixels to amortise
//! that; the patch matrix must also stay bounded. [`Tiling`] picks, per shape, either tiles of
//! pixels within an image (large planes) or several whole images side by side (small planes, where
//! one image alone would give a GEMM too narrow to be efficient).

use super::im2col::{col2im_tile, copy_even, copy_run, im2col_planes, im2col_tile, Geom};
use super::{
    accumulate_in_parts, channel_block, epilogue_row, for_each_channel_block, gemm_weight_rows,
    gemm_weight_rows_raw, ranges_in_place, ranges_per_image, units_balance, with_gemm_epilogue,
    Conv2dShape, ConvEpilogueOp, Weights,
};
use crate::gemm::{gemm_serial as gemm, MatMut, MatPtr, MatRef};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_scratch;

/// Fewest output channels per parallel block of one image.
const MIN_CHANNEL_BLOCK: usize = 16;

/// Fewest pixels per parallel range of one image (four column panels of the GEMM).
const MIN_RANGE_PIXELS: usize = 64;

/// Target bytes of patch matrix per GEMM call: the tile lives in L2 between im2col and the GEMM.
pub const TILE_BYTES: usize = 256 * 1024;
/// Most output rows one pixel tile spans for [`Dims::tile_to_cols`]'s segment table.
const MAX_TILE_ROWS: usize = 64;
/// Fewest output pixels per GEMM call whatever the patch length: below this, repacking the
/// weights for every call costs more than the bounded buffer saves.
pub const MIN_TILE_PIXELS: usize = 128;

/// How the output pixels of a batch are grouped into GEMM calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// Runs of this many consecutive output pixels within one image (the last run shorter).
    Pixels(usize),
    /// This many whole images per call, their patch matrices side by side.
    Images(usize),
}

/// The tiling for `shape`: [`TILE_BYTES`] of patches, at least [`MIN_TILE_PIXELS`] pixels; whole
/// images when two or more fit, pixel runs otherwise.
pub fn tiling(shape: &Conv2dShape) -> Tiling {
    let (oh, ow) = shape.out_hw();
    let plane = (oh * ow).max(1);
    let target = (TILE_BYTES / 4 / shape.patch_len().max(1)).max(MIN_TILE_PIXELS);
    if shape.batch > 1 && 2 * plane <= target {
        // Keep at least one task per thread when the work is worth splitting.
        let tasks = if parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS) {
            parallel::num_threads()
        } else {
            1
        };
        Tiling::Images((target / plane).min(shape.batch.div_ceil(tasks)).max(1))
    } else {
        // Multiple of 8 for the GEMM's column panels, unless the plane is smaller.
        let t = if target >= 16 { target / 8 * 8 } else { target };
        Tiling::Pixels(t.min(plane))
    }
}

/// `(start, len)` of consecutive runs of `tile` covering `start..end`.
fn runs(start: usize, end: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    (start..end)
        .step_by(tile.max(1))
        .map(move |p| (p, tile.min(end - p)))
}

/// Dimensions shared by the three products.
struct Dims {
    g: Geom,
    plane_in: usize,
    plane_out: usize,
    cin: usize,
    cout: usize,
    cin_g: usize,
    cout_g: usize,
    groups: usize,
    k: usize,
}

impl Dims {
    fn new(s: &Conv2dShape) -> Dims {
        let g = Geom::new(s);
        Dims {
            g,
            plane_in: g.h * g.w,
            plane_out: g.oh * g.ow,
            cin: s.in_channels,
            cout: s.out_channels,
            cin_g: s.in_per_group(),
            cout_g: s.out_per_group(),
            groups: s.params.groups,
            k: s.patch_len(),
        }
    }

    /// Group `gi`'s rows of the `[Cout x K]` weights.
    fn group_rows(&self, gi: usize) -> (usize, usize) {
        (gi * self.cout_g, self.cout_g)
    }

    /// Floats of the padded-plane scratch [`Dims::images_to_cols`] needs.
    fn pad_len(&self) -> usize {
        (self.g.h + 2 * self.g.ph) * (self.g.w + 2 * self.g.pw)
    }

    /// im2col of `mm` whole images from `n0`, group `gi`, side by side in `cols` (`K x mm*plane`),
    /// using `pad` ([`Dims::pad_len`] floats) for the padded planes.
    #[allow(clippy::too_many_arguments)]
    fn images_to_cols(
        &self,
        x: &[f32],
        n0: usize,
        mm: usize,
        gi: usize,
        cols: &mut [f32],
        pad: &mut [f32],
    ) {
        let ld = mm * self.plane_out;
        for j in 0..mm {
            let xg = &x[((n0 + j) * self.cin + gi * self.cin_g) * self.plane_in..];
            let dst = &mut cols[j * self.plane_out..];
            im2col_planes(&self.g, xg, self.cin_g, dst, ld, pad);
        }
    }

    /// Floats of the scratch [`Dims::tile_to_cols`] needs after the patches, for tiles of up to
    /// `tile` pixels: a zero-padded copy of the input rows they read (a whole padded plane at
    /// least, for [`im2col_planes`]).
    fn band_len(&self, tile: usize) -> usize {
        let g = &self.g;
        let out_rows = g.oh.min(tile.div_ceil(g.ow.max(1)) + 1).max(1);
        let rows = (out_rows - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        (self.cin_g * rows * (g.w + 2 * g.pw)).max(self.pad_len())
    }

    /// The patch matrix of output pixels `p0..p0 + len` of one image and group (`xg` its first
    /// input plane) into `buf` (`k x len`, then [`Dims::band_len`] floats of scratch). With
    /// padding, the input rows the tile reads are first copied into a zero-padded band; then
    /// each patch row is plain runs, one per output row, from a segment table computed once per
    /// tile: [`im2col_tile`]'s per-segment border logic and short memcpy calls cost more than the
    /// product on small planes (7x7 at batch 1) and a fifth of it on 32x32.
    fn tile_to_cols(&self, xg: &[f32], p0: usize, len: usize, buf: &mut [f32]) {
        let g = &self.g;
        let (cols, band) = buf.split_at_mut(self.k * len);
        let padded = g.ph > 0 || g.pw > 0;
        if padded && p0 == 0 && len == self.plane_out {
            im2col_planes(g, xg, self.cin_g, cols, len, band);
            return;
        }
        let (oy0, oy1) = (p0 / g.ow, (p0 + len - 1) / g.ow);
        // Where patch rows read: the padded band of the tile's input rows (rows of `rw`, planes
        // `pst` apart, output row `oy0` reading from its first row), or the input itself.
        let (src, pst, rw, oy_base) = if padded {
            let (wp, rows) = (g.w + 2 * g.pw, (oy1 - oy0) * g.sh + (g.kh - 1) * g.dh + 1);
            // Input row of the band's first row (negative: inside the top padding).
            let top = (oy0 * g.sh) as isize - g.ph as isize;
            let band = &mut band[..self.cin_g * rows * wp];
            for (c, bplane) in band.chunks_exact_mut(rows * wp).enumerate() {
                let src = &xg[c * self.plane_in..][..self.plane_in];
                for (r, brow) in bplane.chunks_exact_mut(wp).enumerate() {
                    let iy = top + r as isize;
                    if iy < 0 || iy >= g.h as isize {
                        brow.iter_mut().for_each(|v| *v = 0.0);
                        continue;
                    }
                    let (left, rest) = brow.split_at_mut(g.pw);
                    let (mid, right) = rest.split_at_mut(g.w);
                    left.iter_mut().chain(right).for_each(|v| *v = 0.0);
                    copy_run(mid, &src[iy as usize * g.w..][..g.w]);
                }
            }
            (&band[..], rows * wp, wp, oy0)
        } else {
            (&xg[..self.cin_g * self.plane_in], self.plane_in, g.w, 0)
        };
        // The tile's output-row segments `(q, n, offset of tap (0, 0))`, once for all K rows.
        let mut segs = [(0usize, 0usize, 0usize); MAX_TILE_ROWS];
        let mut nseg = 0;
        let mut q = 0;
        while q < len && nseg < MAX_TILE_ROWS {
            let (oy, ox0) = ((p0 + q) / g.ow, (p0 + q) % g.ow);
            let n = (g.ow - ox0).min(len - q);
            segs[nseg] = (q, n, (oy - oy_base) * g.sh * rw + ox0 * g.sw);
            nseg += 1;
            q += n;
        }
        if q < len {
            // A tile over more rows than the table holds (very narrow planes): the general walk.
            if !padded {
                im2col_tile(g, xg, self.cin_g, p0, len, cols, len);
                return;
            }
            let gb = Geom {
                h: pst / rw,
                w: rw,
                oh: oy1 - oy0 + 1,
                ph: 0,
                pw: 0,
                ..*g
            };
            im2col_tile(&gb, src, self.cin_g, p0 - oy0 * g.ow, len, cols, len);
            return;
        }
        let mut crows = cols.chunks_exact_mut(len);
        for c in 0..self.cin_g {
            let plane = &src[c * pst..(c + 1) * pst];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = crows.next().expect("k rows of patches");
                    let tap = ky * g.dh * rw + kx * g.dw;
                    for &(q, n, at) in &segs[..nseg] {
                        let src = &plane[tap + at..];
                        if g.sw == 1 {
                            copy_run(&mut row[q..q + n], &src[..n]);
                        } else if g.sw == 2 {
                            copy_even(&mut row[q..q + n], &src[..2 * n - 1]);
                        } else {
                            for (i, d) in row[q..q + n].iter_mut().enumerate() {
                                *d = src[i * g.sw];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Copy group `gi`'s output gradient of `mm` images from `n0` into `buf` (`Cout_g x mm*plane`).
    fn gather_images(&self, dy: &[f32], n0: usize, mm: usize, gi: usize, buf: &mut [f32]) {
        let (plane, ld) = (self.plane_out, mm * self.plane_out);
        for j in 0..mm {
            for c in 0..self.cout_g {
                let src = (n0 + j) * self.cout * plane + (gi * self.cout_g + c) * plane;
                copy_run(
                    &mut buf[c * ld + j * plane..][..plane],
                    &dy[src..src + plane],
                );
            }
        }
    }
}

/// Forward with the default tiling.
pub fn forward(
    shape: &Conv2dShape,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    forward_tiled(shape, tiling(shape), x, w, out, epi);
}

/// Forward with a given tiling.
pub fn forward_tiled(
    shape: &Conv2dShape,
    tiling: Tiling,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let d = Dims::new(shape);
    if d.plane_out == 1 && d.groups == 1 {
        // One output pixel: each image's patch column times the weights, a matrix-vector
        // product (a merged block on a small image's last 1x1 planes).
        return w.with_f32(|wf| {
            with_scratch(d.k + d.band_len(1), |buf| {
                for (n, o) in out.chunks_exact_mut(d.cout).enumerate() {
                    d.tile_to_cols(&x[n * d.cin * d.plane_in..], 0, 1, buf);
                    super::matvec_image(&buf[..d.k], wf, o, epi, n);
                }
            })
        });
    }
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    let img_out = d.cout * d.plane_out;
    match tiling {
        Tiling::Images(m) => {
            let m = m.max(1);
            parallel::for_each_chunk_mut(out, m * img_out, par, |ci, o| {
                let (n0, mm) = (ci * m, o.len() / img_out);
                let ld = mm * d.plane_out;
                with_scratch((d.k + d.cout) * ld + d.pad_len(), |buf| {
                    let (cols, rest) = buf.split_at_mut(d.k * ld);
                    let (cbuf, pad) = rest.split_at_mut(d.cout * ld);
                    for gi in 0..d.groups {
                        d.images_to_cols(x, n0, mm, gi, cols, pad);
                        let rows = &mut cbuf[gi * d.cout_g * ld..(gi + 1) * d.cout_g * ld];
                        gemm_weight_rows(
                            w,
                            d.group_rows(gi),
                            d.k,
                            MatRef::row_major(cols, d.k, ld),
                            0.0,
                            MatMut::row_major(rows, d.cout_g, ld),
                            &[],
                        );
                    }
                    // Into place, image by image, with the epilogue on each row.
                    for j in 0..mm {
                        for c in 0..d.cout {
                            let row = &mut o[(j * d.cout + c) * d.plane_out..][..d.plane_out];
                            copy_run(row, &cbuf[c * ld + j * d.plane_out..][..d.plane_out]);
                            epilogue_row(epi, row, c, ((n0 + j) * d.cout + c) * d.plane_out);
                        }
                    }
                })
            });
        }
        Tiling::Pixels(tile) => forward_pixel_tiles(shape, &d, tile, par, x, w, out, epi),
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_pixel_tiles(
    shape: &Conv2dShape,
    d: &Dims,
    tile: usize,
    par: bool,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let (plane_out, k) = (d.plane_out, d.k);
    let img_in = d.cin * d.plane_in;
    let img_out = d.cout * plane_out;
    let tile = tile.clamp(1, plane_out.max(1));

    // Pixels p0..p0+len of image n into `dst` (its cout rows, the run's first pixel at column
    // 0), using `cols` for the patches.
    //
    // SAFETY (of calls): `dst`'s elements are valid and the calling task's alone.
    let run_tile = |n: usize, p0: usize, len: usize, dst: MatPtr, cols: &mut [f32]| {
        for gi in 0..d.groups {
            let xg = &x[n * img_in + gi * d.cin_g * d.plane_in..];
            d.tile_to_cols(xg, p0, len, cols);
            let (c0, rows) = (gi * d.cout_g, d.cout_g);
            let c = dst.block(c0, 0, rows, len);
            with_gemm_epilogue(shape, epi, n, c0, rows, p0, len, |e| {
                let patches = MatRef::row_major(&cols[..k * len], k, len);
                // SAFETY: the closure's contract.
                unsafe { gemm_weight_rows_raw(w, d.group_rows(gi), k, patches, 0.0, c, e) }
            });
        }
    };

    if !par || units_balance(shape.batch) {
        // Whole images per task (or everything on this thread): tiles write in place.
        parallel::for_each_chunk_mut(out, img_out, par, |n, o| {
            let img = MatPtr::from(MatMut::row_major(o, d.cout, plane_out));
            with_scratch(k * tile + d.band_len(tile), |cols| {
                for (p0, len) in runs(0, plane_out, tile) {
                    run_tile(n, p0, len, img.block(0, p0, d.cout, len), cols);
                }
            })
        });
        return;
    }
    // With too few output channels for two channel blocks below (blocks of at least 16), ranges
    // may be shorter than a tile, down to MIN_RANGE_PIXELS: otherwise the whole image would run
    // on one thread, or in blocks that each repeat the whole im2col (a pruned 16->4 3x3 at 28x28
    // ran slower on two threads than on one).
    let min_len = if d.cout_g < 2 * MIN_CHANNEL_BLOCK {
        tile.min(MIN_RANGE_PIXELS)
    } else {
        tile
    };
    let per_image = ranges_per_image(shape, plane_out, min_len);
    let threads = parallel::num_threads();
    if shape.batch * per_image >= threads {
        // Few images: pixel ranges of at least one tile each.
        ranges_in_place(
            out,
            shape.batch,
            d.cout,
            plane_out,
            per_image,
            |n, p0, dst| {
                let len = dst.cols;
                // Equal tiles of whole column panels: a range just over one tile would end in a
                // sliver.
                let even = len
                    .div_ceil(len.div_ceil(tile))
                    .next_multiple_of(crate::gemm::column_panel())
                    .min(len);
                with_scratch(k * even + d.band_len(even), |cols| {
                    for (q0, qlen) in runs(p0, p0 + len, even) {
                        run_tile(n, q0, qlen, dst.block(0, q0 - p0, d.cout, qlen), cols);
                    }
                })
            },
        );
        return;
    }
    // Few images with small planes: blocks of output channels, each task multiplying its rows
    // of the weights by its own copy of the (small) patch matrix; one block per thread, as each
    // block repeats the im2col.
    let cb = w.align_rows(
        channel_block(shape, d.cout_g, MIN_CHANNEL_BLOCK, threads, par),
        d.cout_g,
    );
    for_each_channel_block(out, d.cout_g, plane_out, cb, par, |u, c0, o| {
        let (n, gi) = (u / d.groups, u % d.groups);
        let (c, cb) = (gi * d.cout_g + c0, o.len() / plane_out);
        with_scratch(k * tile + d.band_len(tile), |cols| {
            for (p0, len) in runs(0, plane_out, tile) {
                let xg = &x[n * img_in + gi * d.cin_g * d.plane_in..];
                d.tile_to_cols(xg, p0, len, cols);
                let dst = MatMut {
                    data: &mut o[p0..],
                    rows: cb,
                    cols: len,
                    row_stride: plane_out,
                };
                with_gemm_epilogue(shape, epi, n, c, cb, p0, len, |e| {
                    let patches = MatRef::row_major(&cols[..k * len], k, len);
                    gemm_weight_rows(w, (c, cb), k, patches, 0.0, dst, e)
                });
            }
        })
    });
}

/// Input gradient with the default tiling. For stride 1 (one group, padding below the kernel)
/// it is the forward of the transposed convolution on `dY`: an im2col and a GEMM, where the
/// tiled form below needs a GEMM and a col2im scatter-add, slower per element.
pub fn backward_input(shape: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    if super::shifted::supports(shape) {
        let ts = super::shifted::transposed(shape);
        let wf = super::shifted::flipped_weights(shape, w);
        forward(&ts, dy, Weights::F32(&wf), dx, &[]);
        return;
    }
    backward_input_tiled(shape, tiling(shape), dy, w, dx);
}

/// Input gradient (overwrites `dx`) with a given tiling.
///
/// Tasks own disjoint blocks of `dx` (whole images, or blocks of input channels of one image when
/// there are too few images), so the col2im scatter-adds never race.
pub fn backward_input_tiled(
    shape: &Conv2dShape,
    tiling: Tiling,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) {
    let d = Dims::new(shape);
    let (plane_in, plane_out, k) = (d.plane_in, d.plane_out, d.k);
    let khw = d.g.kh * d.g.kw;
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    // Rows `c0 * khw..` (`rows` of them) of W_g^T: columns of the row-major [Cout_g x K] weights.
    let wt = |gi: usize, c0: usize, rows: usize| MatRef {
        data: &w[gi * d.cout_g * k + c0 * khw..],
        rows,
        cols: d.cout_g,
        row_stride: 1,
        col_stride: k,
    };

    match tiling {
        Tiling::Images(m) => {
            let m = m.max(1);
            let img_in = d.cin * plane_in;
            parallel::for_each_chunk_mut(dx, m * img_in, par, |ci, dxc| {
                dxc.fill(0.0);
                let (n0, mm) = (ci * m, dxc.len() / img_in);
                let ld = mm * plane_out;
                with_scratch((k + d.cout_g) * ld, |buf| {
                    let (cols, dyb) = buf.split_at_mut(k * ld);
                    for gi in 0..d.groups {
                        d.gather_images(dy, n0, mm, gi, dyb);
                        gemm(
                            wt(gi, 0, k),
                            MatRef::row_major(dyb, d.cout_g, ld),
                            0.0,
                            MatMut::row_major(cols, k, ld),
                            &[],
                        );
                        for j in 0..mm {
                            let dxg = &mut dxc[j * img_in + gi * d.cin_g * plane_in..];
                            col2im_tile(
                                &d.g,
                                &cols[j * plane_out..],
                                ld,
                                d.cin_g,
                                0,
                                plane_out,
                                dxg,
                            );
                        }
                    }
                })
            });
        }
        Tiling::Pixels(tile) => {
            let tile = tile.clamp(1, plane_out.max(1));
            // Blocks of at least 32 GEMM rows (channels x taps).
            let want = parallel::pieces(shape.macs(), CONV_PAR_MIN_MACS);
            let cb = channel_block(shape, d.cin_g, 32usize.div_ceil(khw), want, par);
            for_each_channel_block(dx, d.cin_g, plane_in, cb, par, |u, c0, dxc| {
                dxc.fill(0.0);
                let (n, gi) = (u / d.groups, u % d.groups);
                let cb = dxc.len() / plane_in;
                with_scratch(cb * khw * tile, |cols| {
                    for (p0, len) in runs(0, plane_out, tile) {
                        let cols = &mut cols[..cb * khw * len];
                        let dyt = MatRef {
                            data: &dy[(n * d.cout + gi * d.cout_g) * plane_out + p0..],
                            rows: d.cout_g,
                            cols: len,
                            row_stride: plane_out,
                            col_stride: 1,
                        };
                        gemm(
                            wt(gi, c0, cb * khw),
                            dyt,
                            0.0,
                            MatMut::row_major(cols, cb * khw, len),
                            &[],
                        );
                        col2im_tile(&d.g, cols, len, cb, p0, len, dxc);
                    }
                })
            });
        }
    }
}

/// Weight gradient with the default tiling.
pub fn backward_weight(shape: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    backward_weight_tiled(shape, tiling(shape), x, dy, dw);
}

/// Weight gradient (accumulated into `dw`, which the caller zeroed) with a given tiling:
/// `dW_g += dY_g[:, tile] @ patches^T` over every tile of every image.
pub fn backward_weight_tiled(
    shape: &Conv2dShape,
    tiling: Tiling,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let d = Dims::new(shape);
    let (plane_out, k) = (d.plane_out, d.k);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);

    match tiling {
        Tiling::Images(m) => {
            let m = m.max(1);
            let chunks = shape.batch.div_ceil(m);
            // dW_g^T[K x Cout_g] += cols[K x P] @ dY_g^T[P x Cout_g]: the GEMM reads the patch
            // matrix in place and packs only the (smaller) dY, K / Cout_g times fewer floats than
            // packing the transposed patches; transposed into `dw` at the end.
            let mut acc_t = vec![0.0f32; dw.len()];
            accumulate_in_parts(chunks, par, &mut acc_t, |items, acc| {
                let ld = m * plane_out;
                with_scratch((k + d.cout_g) * ld + d.pad_len(), |buf| {
                    let (buf, pad) = buf.split_at_mut((k + d.cout_g) * ld);
                    for ci in items {
                        let (n0, mm) = (ci * m, m.min(shape.batch - ci * m));
                        let ld = mm * plane_out;
                        let (cols, dyb) = buf.split_at_mut(k * ld);
                        for gi in 0..d.groups {
                            d.images_to_cols(x, n0, mm, gi, cols, pad);
                            d.gather_images(dy, n0, mm, gi, dyb);
                            gemm(
                                MatRef::row_major(&cols[..k * ld], k, ld),
                                MatRef::row_major(&dyb[..d.cout_g * ld], d.cout_g, ld).t(),
                                1.0,
                                MatMut::row_major(
                                    &mut acc[gi * d.cout_g * k..(gi + 1) * d.cout_g * k],
                                    k,
                                    d.cout_g,
                                ),
                                &[],
                            );
                        }
                    }
                })
            });
            for (dst, src) in dw
                .chunks_exact_mut(d.cout_g * k)
                .zip(acc_t.chunks_exact(d.cout_g * k))
            {
                for (c, row) in dst.chunks_exact_mut(k).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v += src[j * d.cout_g + c];
                    }
                }
            }
        }
        Tiling::Pixels(tile) => {
            let tile = tile.clamp(1, plane_out.max(1));
            let ntiles = plane_out.div_ceil(tile);
            accumulate_in_parts(shape.batch * ntiles, par, dw, |items, acc| {
                with_scratch(k * tile, |cols| {
                    for item in items {
                        let (n, t) = (item / ntiles, item % ntiles);
                        let p0 = t * tile;
                        let len = tile.min(plane_out - p0);
                        let cols = &mut cols[..k * len];
                        for gi in 0..d.groups {
                            let xg = &x[(n * d.cin + gi * d.cin_g) * d.plane_in..];
                            im2col_tile(&d.g, xg, d.cin_g, p0, len, cols, len);
                            let dyt = MatRef {
                                data: &dy[(n * d.cout + gi * d.cout_g) * plane_out + p0..],
                                rows: d.cout_g,
                                cols: len,
                                row_stride: plane_out,
                                col_stride: 1,
                            };
                            gemm(
                                dyt,
                                MatRef::row_major(cols, k, len).t(),
                                1.0,
                                MatMut::row_major(
                                    &mut acc[gi * d.cout_g * k..(gi + 1) * d.cout_g * k],
                                    d.cout_g,
                                    k,
                                ),
                                &[],
                            );
                        }
                    }
                })
            });
        }
    }
}
