//! Convolutions of stride 1 or 2 as an implicit GEMM: the micro-kernels read a zero-padded copy
//! of the input through a table of row offsets, one per (input channel, ky, kx), and no patch
//! matrix is ever written (the tiled im2col writes and re-reads `kh * kw` copies of the input:
//! 12 % of a 64-channel 3x3 conv at 56x56).
//!
//! Each task pads the input rows its output rows need (a band) into its own scratch, each padded
//! row (`W + 2 pw` wide) split into `sw` column phases (phase `p` holds columns `p, p + sw, ...`;
//! one phase at stride 1), zero rows standing in for the rows above and below the image. For
//! output row `t` of the band, patch row `(c, ky, kx)` is then the window that starts at
//! `c * plane + (sh * t + ky) * rowlen + (kx % sw) * hp + kx / sw`, `OW` floats long: the B of a
//! GEMM `[Cout x Cin*kh*kw] x [Cin*kh*kw x OW]` whose product is that output row of every
//! channel, with the weights as A as they lie.
//!
//! A GEMM per output row keeps every tile inside one row, so tiles store in place; rows narrower
//! than [`MIN_OUT_W`] would leave most vector lanes idle and take the im2col path instead.
//! [`forward_pixel_major`] runs the same bands on the pixel-major tiles (output pixels in the
//! tile's rows, channels in its lanes: any row width), against weights packed once.

use super::im2col::fill_phases;
use super::{tasks_per_image, with_gemm_epilogue, Conv2dShape, ConvEpilogueOp, Weights};
use crate::gemm::{
    gemm_indirect_serial_raw, gemm_pixel_major_raw, indirect_row_reach, indirect_supported,
    pixel_major_supported, Epilogue, MatPtr, MatRef, OffsetRows, OffsetTable, PackedPanels,
    PixelRows, PANEL,
};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_scratch;

/// Narrowest output row for this path. Narrower rows run on the 8-lane narrow tiles, at half the
/// multiply-adds per instruction of the 16-lane ones the im2col path fills with several rows:
/// 512 channels at 7x7 ran 1.2x, 256 at 8x8 1.16x slower than the im2col there.
pub const MIN_OUT_W: usize = 10;

/// Output channels per task are a multiple of this (the widest register tile's rows).
const CHANNEL_QUANTUM: usize = 8;

/// Most input channels of a strided convolution on this path: image stems (3 channels) ran
/// 0.79-0.87x the im2col's time, but ResNet-18's 128->256 3x3 at stride 2 1.07-1.13x and its
/// 1x1 downsamples 1.8x (their bands split rows and columns the kernel never reads).
const MAX_STRIDED_IN_CHANNELS: usize = 4;

/// Whether the geometry fits this path: a kernel larger than 1x1, strides of 1 or 2 (2 only for
/// at most [`MAX_STRIDED_IN_CHANNELS`] input channels), no dilation, one group, padding smaller
/// than the kernel, output rows at least [`MIN_OUT_W`] wide, and a kernel family with indirect
/// tiles.
pub fn supports(s: &Conv2dShape) -> bool {
    geometry_fits(s) && s.out_hw().1 >= MIN_OUT_W && indirect_supported()
}

/// Whether [`forward_pixel_major`] runs `s`: strides of 1 or 2 whatever the channel count, a 1x1
/// kernel at stride 2 too, any row width (pixels fill the tile's rows, not its lanes), no
/// dilation, one group, padding smaller than the kernel, and a CPU with the pixel-major tiles.
pub fn supports_pixel_major(s: &Conv2dShape) -> bool {
    let strided = s.params.stride != (1, 1);
    band_fits(s) && (strided || s.kernel_h * s.kernel_w > 1) && pixel_major_supported()
}

/// [`supports`] without the row width and the kernel family.
fn geometry_fits(s: &Conv2dShape) -> bool {
    let strided = s.params.stride != (1, 1);
    band_fits(s)
        && (!strided || s.in_channels <= MAX_STRIDED_IN_CHANNELS)
        && s.kernel_h * s.kernel_w > 1
}

/// The geometry the band covers: strides of 1 or 2, no dilation, one group, padding smaller than
/// the kernel.
pub(crate) fn band_fits(s: &Conv2dShape) -> bool {
    let p = &s.params;
    (1..=2).contains(&p.stride.0)
        && (1..=2).contains(&p.stride.1)
        && p.dilation == (1, 1)
        && p.groups == 1
        && p.padding.0 < s.kernel_h
        && p.padding.1 < s.kernel_w
}

/// The band geometry every task of one call shares.
#[derive(Clone, Copy)]
pub(crate) struct Band {
    /// Floats per column phase of a padded row (`ceil((W + 2 pw) / sw)`).
    hp: usize,
    /// Floats per padded row: its `sw` phases.
    pub(crate) rowlen: usize,
    /// Floats per padded channel of a band.
    plane: usize,
    /// Floats of one band: every channel, plus the reach of the last tile past its last row.
    pub(crate) len: usize,
}

impl Band {
    /// The band of `rows` output rows (the most any task has).
    pub(crate) fn new(s: &Conv2dShape, rows: usize) -> Band {
        let (sh, sw) = s.params.stride;
        let hp = (s.in_w + 2 * s.params.padding.1).div_ceil(sw);
        let rowlen = sw * hp;
        let plane = ((rows - 1) * sh + s.kernel_h) * rowlen;
        // A tile of output row t reads at most offset (Cin - 1, kh - 1, kw - 1) + sh * t * rowlen
        // + reach - 1, which is below Cin * plane - hp + (kw - 1) / sw + reach: inside `len`.
        let len = s.in_channels * plane + indirect_row_reach(s.out_hw().1);
        Band {
            hp,
            rowlen,
            plane,
            len,
        }
    }

    /// Row offsets of the patch rows `(c, ky, kx)`, in the weights' order: padded column
    /// `sw * i + p` of a row is element `i` of its phase `p`, so a window of output columns at
    /// stride `sw` is contiguous.
    pub(crate) fn offsets(&self, s: &Conv2dShape, offs: &mut [u32]) {
        let (kh, kw, sw) = (s.kernel_h, s.kernel_w, s.params.stride.1);
        for c in 0..s.in_channels {
            for ky in 0..kh {
                for kx in 0..kw {
                    let o = c * self.plane + ky * self.rowlen + (kx % sw) * self.hp + kx / sw;
                    offs[(c * kh + ky) * kw + kx] = u32::try_from(o).expect("band within 4 G");
                }
            }
        }
    }

    /// `f(data, offs)` with this thread's scratch holding the patch offsets ([`Band::offsets`])
    /// and the band of output rows `oy0..oy0 + rows` of image `x` ([`Band::fill`]).
    pub(crate) fn prepare<R>(
        &self,
        s: &Conv2dShape,
        x: &[f32],
        oy0: usize,
        rows: usize,
        f: impl FnOnce(&[f32], OffsetTable) -> R,
    ) -> R {
        let k = s.patch_len();
        with_scratch(k + self.len, |buf| {
            let (offs, data) = buf.split_at_mut(k);
            // The offsets live in the f32 scratch as their bit patterns.
            let offs: &mut [u32] = bytes_as_u32(offs);
            self.offsets(s, offs);
            self.fill(s, x, oy0, rows, data);
            f(data, OffsetTable::new(offs))
        })
    }

    /// Pad the input rows that output rows `oy0..oy0 + rows` read from image `x` into `band`.
    pub(crate) fn fill(
        &self,
        s: &Conv2dShape,
        x: &[f32],
        oy0: usize,
        rows: usize,
        band: &mut [f32],
    ) {
        let (h, w, ph) = (s.in_h, s.in_w, s.params.padding.0);
        let sh = s.params.stride.0;
        let used = ((rows - 1) * sh + s.kernel_h) * self.rowlen;
        // Not past the last channel: the reach behind it can hold a whole plane of a narrow band.
        for (c, plane) in band
            .chunks_exact_mut(self.plane)
            .take(s.in_channels)
            .enumerate()
        {
            let src = &x[c * h * w..(c + 1) * h * w];
            for (r, row) in plane[..used].chunks_exact_mut(self.rowlen).enumerate() {
                // Padded row sh * oy0 + r is input row sh * oy0 + r - ph.
                match (sh * oy0 + r).checked_sub(ph).filter(|&y| y < h) {
                    Some(y) => self.fill_row(s, &src[y * w..(y + 1) * w], row),
                    None => row.fill(0.0),
                }
            }
        }
    }

    /// One input row, zero-padded and split into its column phases.
    fn fill_row(&self, s: &Conv2dShape, src: &[f32], row: &mut [f32]) {
        fill_phases(src, s.params.padding.1, s.params.stride.1, self.hp, row)
    }
}

/// The forward (see the module docs); `w` row-major `[Cout x Cin*kh*kw]`. [`supports`] must
/// hold.
pub fn forward(s: &Conv2dShape, x: &[f32], w: Weights, out: &mut [f32], epi: &[ConvEpilogueOp]) {
    assert!(supports(s), "conv2d: implicit path needs stride 1 or 2");
    let k = s.in_channels * s.kernel_h * s.kernel_w;
    let ow = s.out_hw().1;
    w.with_f32(|wf| {
        let split = Split::Rows(CHANNEL_QUANTUM);
        for_each_row(s, x, out, epi, split, |data, offs, c0, cb, dst, e| {
            let weights = MatRef::row_major(&wf[c0 * k..(c0 + cb) * k], cb, k);
            let b = OffsetRows {
                data,
                offs,
                cols: ow,
            };
            // SAFETY: `for_each_row`'s contract for `dst`.
            unsafe { gemm_indirect_serial_raw(weights, b, dst, e) }
        })
    });
}

/// The forward on the pixel-major tiles, with the weights packed by
/// [`super::pixel_major::pack`].
/// [`supports_pixel_major`] must hold.
pub fn forward_pixel_major(
    s: &Conv2dShape,
    x: &[f32],
    w: &PackedPanels,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    assert!(
        supports_pixel_major(s),
        "conv2d: no pixel-major implicit path for this shape"
    );
    let k = s.in_channels * s.kernel_h * s.kernel_w;
    assert!(
        w.rows() == k && w.cols() == s.out_channels,
        "conv2d: packed weights of another shape"
    );
    let ow = s.out_hw().1;
    // Each task's weight panels (k x 16 floats, 295 KB at 512 input channels) stay in L2 while
    // they sweep its rows. Row runs each stream every panel of their channels, which costs more
    // than the products once the weights no longer stay in cache between runs (ResNet-18's 7x7
    // stage ran 1.1x slower); every task then takes all rows, if its band of the whole input
    // stays in L2 (128 channels at 28x28, 460 KB, ran 1.2x slower that way). At stride 2, whose
    // bands split every row into column phases, small weights keep the row runs, each padding a
    // share of the input: padding it whole in every task cost a TLC-pruned 32->64 3x3/2 at
    // 14x14 all of its second thread (at stride 1 all rows ran faster for small weights too).
    let padded =
        s.in_channels * (s.in_h + 2 * s.params.padding.0) * (s.in_w + 2 * s.params.padding.1);
    let weights = k * s.out_channels;
    let strided = s.params.stride != (1, 1);
    let big = weights >= padded && (!strided || weights >= MIN_STREAMED_WEIGHTS);
    let split = if big && padded <= MAX_WHOLE_BAND {
        Split::Channels
    } else {
        Split::Rows(PANEL)
    };
    for_each_row(s, x, out, epi, split, |data, offs, c0, cb, dst, e| {
        let a = PixelRows {
            data,
            offs,
            pixels: ow,
        };
        let panels = c0 / PANEL..(c0 + cb).div_ceil(PANEL);
        // SAFETY: `for_each_row`'s contract for `dst`.
        unsafe { gemm_pixel_major_raw(a, w, panels, dst, e) }
    });
}

/// Most floats of a padded input that [`forward_pixel_major`] hands every task whole (384 KB).
const MAX_WHOLE_BAND: usize = 96 * 1024;

/// Fewest weights (floats, 256 KB) for which [`forward_pixel_major`] gives every task all rows of
/// a strided convolution.
const MIN_STREAMED_WEIGHTS: usize = 64 * 1024;

/// How [`for_each_row`] splits a convolution into tasks.
#[derive(Clone, Copy)]
enum Split {
    /// Runs of output rows, times blocks of a multiple of this many channels when rows alone are
    /// too few; each task's rows one after another, all its channels at a time.
    Rows(usize),
    /// Blocks of whole [`PANEL`]s of channels, every output row each; within a task, panel by
    /// panel, each panel over every row.
    Channels,
}

/// Split the output into tasks, pad each task's band, and call `gemm(data, offs, c0, cb, dst,
/// epi)` for each of its output rows (and, with [`Split::Channels`], each panel): patch element
/// `p` of output pixel `i` is `data[offs[p] + i]` (at least `indirect_row_reach(ow)` floats
/// readable behind each offset), and `dst` is channels `c0..c0 + cb` of that row, valid and the
/// calling task's alone.
fn for_each_row(
    s: &Conv2dShape,
    x: &[f32],
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
    split: Split,
    gemm: impl Fn(&[f32], OffsetTable, usize, usize, MatPtr, &Epilogue) + Sync,
) {
    let (oh, ow) = s.out_hw();
    let (cin, cout) = (s.in_channels, s.out_channels);
    let (plane_out, img_in) = (oh * ow, cin * s.in_h * s.in_w);

    let par = parallel::worth_splitting(s.macs(), CONV_PAR_MIN_MACS);
    let want = if par { tasks_per_image(s) } else { 1 };
    let base = MatPtr {
        ptr: out.as_mut_ptr(),
        rows: s.batch * cout,
        cols: plane_out,
        row_stride: plane_out,
    };
    // Tasks: runs of output rows times channel blocks; with `Split::Channels` one run of every
    // row and one block per thread (each pads the whole input). Each task pads its own band (a
    // band shared by the tasks ran 1.05-1.2x slower: each task read half of it from the other
    // core's cache, and two fork-joins instead of one).
    let (quantum, row_runs) = match split {
        Split::Rows(q) => (q, want.min(oh).max(1)),
        Split::Channels => (PANEL, 1),
    };
    let rows = oh.div_ceil(row_runs);
    let row_runs = oh.div_ceil(rows);
    let blocks = match split {
        Split::Rows(_) => want.div_ceil(row_runs),
        Split::Channels if par => parallel::num_threads(),
        Split::Channels => 1,
    };
    let blocks = blocks.min(cout.div_ceil(quantum)).max(1);
    let cb = cout.div_ceil(blocks).next_multiple_of(quantum).min(cout);
    let blocks = cout.div_ceil(cb);
    // Channels per GEMM call: all of the task's, or (`Split::Channels`) a panel over every row.
    let chunk = match split {
        Split::Rows(_) => cb,
        Split::Channels => PANEL,
    };
    let band = Band::new(s, rows);
    let tasks = s.batch * row_runs * blocks;
    parallel::for_each_index(tasks, par && tasks > 1, |t| {
        let (n, rest) = (t / (row_runs * blocks), t % (row_runs * blocks));
        let (oy0, c0) = ((rest / blocks) * rows, (rest % blocks) * cb);
        let (rows, cb) = (rows.min(oh - oy0), cb.min(cout - c0));
        band.prepare(
            s,
            &x[n * img_in..(n + 1) * img_in],
            oy0,
            rows,
            |data, offs| {
                for c in (c0..c0 + cb).step_by(chunk) {
                    let cc = chunk.min(c0 + cb - c);
                    for t in 0..rows {
                        let oy = oy0 + t;
                        let row = &data[s.params.stride.0 * t * band.rowlen..];
                        let dst = base.block(n * cout + c, oy * ow, cc, ow);
                        // `dst` is channels c..c + cc of output row oy of image n: inside `out`, and
                        // this task's alone (tasks split images, rows and channels).
                        with_gemm_epilogue(s, epi, n, c, cc, oy * ow, ow, |e| {
                            gemm(row, offs, c, cc, dst, e)
                        });
                    }
                }
            },
        )
    });
}

/// An f32 scratch slice reused for u32 values (same size and alignment; every bit pattern is a
/// valid value of either type).
pub(crate) fn bytes_as_u32(v: &mut [f32]) -> &mut [u32] {
    // SAFETY: f32 and u32 have the same size and alignment and no invalid bit patterns; the
    // returned slice reborrows `v` mutably, so nothing else reads it as f32 meanwhile.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u32>(), v.len()) }
}
