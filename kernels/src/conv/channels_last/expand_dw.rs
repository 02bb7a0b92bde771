//! An inverted residual's 1x1 expansion and depthwise convolution in one pass, channels-last.
//!
//! Run as two steps, the expanded activation (MobileNetV2: 16 -> 96 channels at 112x112, 4.8 MB)
//! is written to memory whole and read back by the depthwise step; those two layers ran at half
//! their speed with warm caches when the machine's memory was busy. Here each task walks its
//! output rows and expands only the input rows the next depthwise output row reads into a ring of
//! `kh` rows (at 112 pixels x 96 channels, 129 KB: in L2), each input row once; the depthwise row
//! kernel reads the ring in place of the image. The expanded activation never leaves L2.

use super::depthwise::{self, InputRows, Taps};
use super::tile::Fused;
use super::tile_rows;
use crate::conv::expand_dw::Stage;
use crate::conv::{Conv2dParams, Conv2dShape, ConvEpilogueOp};
use crate::gemm::PackedPanels;
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_scratch;

/// The fused layers: a 1x1 expansion (weights packed by [`super::pack`]) and the depthwise
/// convolution reading its output (weights by [`depthwise::pack`]), each with its bias and
/// activation.
#[derive(Debug)]
pub struct ExpandDw {
    pub expand: Conv2dShape,
    pub expand_w: PackedPanels,
    pub expand_epi: Stage,
    pub dw: Conv2dShape,
    pub dw_w: Taps,
    pub dw_epi: Stage,
}

/// Whether [`forward`] runs `expand` followed by `dw`: a stride-1, unpadded, one-group 1x1
/// convolution whose whole output a depthwise convolution reads.
pub fn supports(expand: &Conv2dShape, dw: &Conv2dShape) -> bool {
    expand.kernel_h == 1
        && expand.kernel_w == 1
        && expand.params == Conv2dParams::default()
        && depthwise::supports(dw)
        && dw.batch == expand.batch
        && (dw.in_channels, dw.in_h, dw.in_w) == (expand.out_channels, expand.in_h, expand.in_w)
}

impl ExpandDw {
    /// Bytes of both layers' weights (biases not counted).
    pub fn weight_bytes(&self) -> usize {
        4 * self.expand_w.rows() * self.expand_w.cols() + self.dw_w.bytes()
    }

    /// Floats of both layers' biases.
    pub fn bias_len(&self) -> usize {
        [&self.expand_epi.bias, &self.dw_epi.bias]
            .iter()
            .map(|b| b.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// Channels-last `x` (`[N][H][W][Cin]`) through both layers into `out` (`[N][OH][OW][C]`).
/// Tasks split the output rows, one range per thread (each expands the rows its range reads,
/// the one or two rows its neighbour reads too included).
pub fn forward(f: &ExpandDw, x: &[f32], out: &mut [f32]) {
    f.expand_epi.with_ops(|expand_epi| {
        f.dw_epi
            .with_ops(|dw_epi| forward_with(f, x, out, expand_epi, dw_epi))
    })
}

fn forward_with(
    f: &ExpandDw,
    x: &[f32],
    out: &mut [f32],
    expand_epi: &[ConvEpilogueOp],
    dw_epi: &[ConvEpilogueOp],
) {
    let (e, d) = (&f.expand, &f.dw);
    assert!(
        supports(e, d),
        "conv2d: not an expansion and depthwise pair"
    );
    assert!(f.dw_w.fits(d), "conv2d: depthwise weights of another shape");
    assert!(
        f.expand_w.rows() == e.in_channels && f.expand_w.cols() == e.out_channels,
        "conv2d: expansion weights of another shape"
    );
    assert_eq!(x.len(), e.input_len(), "conv2d: input length");
    assert_eq!(out.len(), d.output_len(), "conv2d: output length");
    crate::conv::check_epilogue(e, expand_epi);
    crate::conv::check_epilogue(d, dw_epi);
    let (oh, ow) = d.out_hw();
    let (h, w, c) = (d.in_h, d.in_w, d.in_channels);
    let (row_in, row_out) = (w * c, ow * c);
    let rows = d.batch * oh;
    if rows == 0 || row_out == 0 {
        return;
    }
    // Input rows one output row reads.
    let ring = (d.kernel_h - 1) * d.params.dilation.0 + 1;
    let macs = e.macs() + d.macs();
    let par = parallel::worth_splitting(macs, CONV_PAR_MIN_MACS);
    let pieces = if par {
        parallel::num_threads().min(rows)
    } else {
        1
    };
    let per = rows.div_ceil(pieces);
    let row_kernel = depthwise::pick_row_kernel(d);
    let expand_fused = Fused::of(expand_epi);
    let panels = f.expand_w.panels();
    let image_in = h * w * e.in_channels;
    parallel::for_each_chunk_mut(out, per * row_out, par && pieces > 1, |i, chunk| {
        with_scratch(ring * row_in, |held| {
            // Rows of image `image` before `next` are expanded; the ring holds the last `ring`.
            let (mut image, mut next) = (usize::MAX, 0);
            for (j, dst) in chunk.chunks_exact_mut(row_out).enumerate() {
                let r = i * per + j;
                let (n, oy) = (r / oh, r % oh);
                let (lo, hi) = input_rows(d, oy);
                if n != image || next < lo {
                    (image, next) = (n, lo);
                }
                // Rows `lo..next` are still in the ring: row `iy < hi <= lo + ring` expanded
                // below takes the slot of row `iy - ring`, which lies before `lo`.
                for iy in next..hi {
                    let a = &x[n * image_in + iy * w * e.in_channels..][..w * e.in_channels];
                    let slot = &mut held[(iy % ring) * row_in..][..row_in];
                    // SAFETY: `slot` holds one expanded row (w pixels x c channels), this
                    // task's own; the expansion's epilogue is a bias and an activation.
                    unsafe {
                        tile_rows(
                            a,
                            w,
                            &f.expand_w,
                            0..panels,
                            slot.as_mut_ptr(),
                            0,
                            expand_epi,
                            expand_fused,
                        )
                    }
                }
                next = next.max(hi);
                let input = InputRows {
                    data: held,
                    held: ring,
                };
                row_kernel(d, input, &f.dw_w, oy, dst, r * row_out, dw_epi);
            }
        })
    });
}

/// The input rows `lo .. hi` (inside the image) that output row `oy` of `d` reads.
fn input_rows(d: &Conv2dShape, oy: usize) -> (usize, usize) {
    let p = d.params;
    let top = (oy * p.stride.0) as isize - p.padding.0 as isize;
    let extent = ((d.kernel_h - 1) * p.dilation.0 + 1) as isize;
    let clamp = |v: isize| v.clamp(0, d.in_h as isize) as usize;
    (clamp(top), clamp(top + extent))
}
