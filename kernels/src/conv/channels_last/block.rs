//! An inverted residual's layers in one pass, channels-last: an optional layer feeding the
//! depthwise convolution (a 1x1 expansion, or the network's stem reading the NCHW image), the
//! depthwise convolution, an optional 1x1 projection (with the block's residual).
//!
//! Run as separate steps, each layer writes its whole output to memory and the next reads it
//! back; MobileNetV2's expanded activations (16 -> 96 channels at 112x112: 4.8 MB; 32 channels
//! at 112x112 after its first depthwise conv: 1.6 MB) do not fit in a core's L2. Here each task
//! walks its output rows: it makes only the input rows the next depthwise output row reads
//! (expanded, or convolved from the image's padded band) into a ring of `kh` rows (each input row
//! once), runs the depthwise row kernel on the ring (or on the input when nothing feeds it), and,
//! when a projection follows, collects a few depthwise rows in a small buffer and projects them
//! straight into the block's output. The fed and depthwise activations never leave L2, and the
//! plan's arena holds neither (MobileNetV2 at 224: the stem's 1.6 MB output).

use super::depthwise::{self, InputRows, Taps};
use super::tile::{self, Fused};
use super::{band_row, l1_run, supports_nchw_input, tile_rows};
use crate::conv::expand_dw::Stage;
use crate::conv::implicit::Band;
use crate::conv::{Conv2dParams, Conv2dShape, ConvEpilogueOp};
use crate::gemm::PackedPanels;
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_fused;

/// A 1x1 layer of a block: its shape, weights packed by [`super::pack`], bias and activation.
#[derive(Debug)]
pub struct Pointwise {
    pub shape: Conv2dShape,
    pub w: PackedPanels,
    pub epi: Stage,
}

/// The depthwise layer of a block: its shape, weights packed by [`depthwise::pack`], bias and
/// activation.
#[derive(Debug)]
pub struct Depthwise {
    pub shape: Conv2dShape,
    pub w: Taps,
    pub epi: Stage,
}

/// The layer making the depthwise convolution's input rows inside a [`Block`].
#[derive(Debug)]
pub enum Feed {
    /// A 1x1 expansion of the block's channels-last input ([`expands_into`]).
    Expand(Pointwise),
    /// A one-group convolution of the block's NCHW image (the network's stem; weights packed
    /// by [`super::pack_nchw_input`], [`feeds_from_image`]), read through padded bands as
    /// [`super::conv_from_nchw`] reads it.
    Image(Pointwise),
}

impl Feed {
    fn layer(&self) -> &Pointwise {
        match self {
            Feed::Expand(p) | Feed::Image(p) => p,
        }
    }
}

/// The fused layers; [`forward`] takes the residual added after the projection's bias.
#[derive(Debug)]
pub struct Block {
    pub feed: Option<Feed>,
    pub dw: Depthwise,
    pub project: Option<Pointwise>,
}

/// Whether `expand` can feed `dw` in a [`Block`]: a stride-1, unpadded, one-group 1x1
/// convolution whose whole output the depthwise convolution reads.
pub fn expands_into(expand: &Conv2dShape, dw: &Conv2dShape) -> bool {
    is_pointwise(expand)
        && depthwise::supports(dw)
        && dw.batch == expand.batch
        && (dw.in_channels, dw.in_h, dw.in_w) == (expand.out_channels, expand.in_h, expand.in_w)
}

/// Whether `stem` can feed `dw` in a [`Block`] from an NCHW image: a one-group convolution that
/// [`super::conv_from_nchw`] runs, whose whole output the depthwise convolution reads, one image
/// (a task's band is one image's rows).
pub fn feeds_from_image(stem: &Conv2dShape, dw: &Conv2dShape) -> bool {
    let (oh, ow) = stem.out_hw();
    supports_nchw_input(stem)
        && depthwise::supports(dw)
        && (stem.batch, dw.batch) == (1, 1)
        && (dw.in_channels, dw.in_h, dw.in_w) == (stem.out_channels, oh, ow)
}

/// Whether `project` can read `dw`'s output in a [`Block`]: a stride-1, unpadded, one-group 1x1
/// convolution of exactly that output.
pub fn projects_from(dw: &Conv2dShape, project: &Conv2dShape) -> bool {
    let (oh, ow) = dw.out_hw();
    is_pointwise(project)
        && depthwise::supports(dw)
        && project.batch == dw.batch
        && (project.in_channels, project.in_h, project.in_w) == (dw.out_channels, oh, ow)
}

fn is_pointwise(s: &Conv2dShape) -> bool {
    s.kernel_h == 1 && s.kernel_w == 1 && s.params == Conv2dParams::default()
}

impl Block {
    /// Bytes of the layers' weights (biases not counted).
    pub fn weight_bytes(&self) -> usize {
        let bytes = |p: Option<&Pointwise>| p.map_or(0, |p| 4 * p.w.rows() * p.w.cols());
        bytes(self.feed.as_ref().map(Feed::layer))
            + self.dw.w.bytes()
            + bytes(self.project.as_ref())
    }

    /// Floats of the layers' biases.
    pub fn bias_len(&self) -> usize {
        let stages = [
            self.feed.as_ref().map(|f| &f.layer().epi),
            Some(&self.dw.epi),
            self.project.as_ref().map(|p| &p.epi),
        ];
        stages
            .iter()
            .flatten()
            .map(|s| s.bias.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// Multiply-adds of the block.
    pub fn macs(&self) -> usize {
        let macs = |p: Option<&Pointwise>| p.map_or(0, |p| p.shape.macs());
        macs(self.feed.as_ref().map(Feed::layer))
            + self.dw.shape.macs()
            + macs(self.project.as_ref())
    }

    /// The shape of the block's output (the projection's, else the depthwise layer's).
    pub fn output_shape(&self) -> &Conv2dShape {
        self.project.as_ref().map_or(&self.dw.shape, |p| &p.shape)
    }
}

/// Pixels a task gathers from the depthwise layer before projecting them: enough for whole
/// 6-pixel tiles to dominate (a 7- or 14-pixel row alone ends in a 1- or 2-pixel tile), few
/// enough that the rows stay in L1 or L2.
const PROJECT_MIN_PIXELS: usize = 48;

/// `x` (channels-last `[N][H][W][Cin]`, or the NCHW image for [`Feed::Image`]) through the block
/// into channels-last `out` (`[N][OH][OW][Cout]`), `residual` (of the output's shape) added
/// after the projection's bias. Tasks split the output
/// rows, one range per thread (each makes the fed rows its range reads, the one or two rows
/// its neighbour reads too included).
pub fn forward(b: &Block, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) {
    let d = &b.dw.shape;
    let feeds = match &b.feed {
        None => true,
        Some(Feed::Expand(e)) => expands_into(&e.shape, d),
        Some(Feed::Image(s)) => feeds_from_image(&s.shape, d),
    };
    assert!(feeds, "conv2d: a layer that cannot feed the depthwise conv");
    assert!(
        b.project
            .as_ref()
            .is_none_or(|p| projects_from(d, &p.shape)),
        "conv2d: not a depthwise and projection pair"
    );
    assert!(b.dw.w.fits(d), "conv2d: depthwise weights of another shape");
    for p in b.feed.iter().map(Feed::layer).chain(&b.project) {
        assert!(
            p.w.rows() == p.shape.patch_len() && p.w.cols() == p.shape.out_channels,
            "conv2d: weights of another shape"
        );
    }
    let input_len = b
        .feed
        .as_ref()
        .map_or(d.input_len(), |f| f.layer().shape.input_len());
    assert_eq!(x.len(), input_len, "conv2d: input length");
    assert_eq!(
        out.len(),
        b.output_shape().output_len(),
        "conv2d: output length"
    );
    assert!(
        residual.is_none_or(|r| r.len() == out.len()),
        "conv2d: residual length"
    );
    assert!(
        residual.is_none() || b.project.is_some(),
        "conv2d: a residual without a projection"
    );
    let none = Stage {
        bias: None,
        act: None,
    };
    let feed_stage = b.feed.as_ref().map_or(&none, |f| &f.layer().epi);
    let project_stage = b.project.as_ref().map_or(&none, |p| &p.epi);
    feed_stage.with_ops(|feed_ops| {
        b.dw.epi.with_ops(|dw_ops| {
            project_stage.with_ops_adding(residual, |project_ops| {
                forward_with(b, x, out, feed_ops, dw_ops, project_ops)
            })
        })
    })
}

fn forward_with(
    b: &Block,
    x: &[f32],
    out: &mut [f32],
    feed_ops: &[ConvEpilogueOp],
    dw_ops: &[ConvEpilogueOp],
    project_ops: &[ConvEpilogueOp],
) {
    let d = &b.dw.shape;
    if let Some(f) = &b.feed {
        crate::conv::check_epilogue(&f.layer().shape, feed_ops);
    }
    if let Some(p) = &b.project {
        crate::conv::check_epilogue(&p.shape, project_ops);
    }
    crate::conv::check_epilogue(d, dw_ops);
    let (oh, ow) = d.out_hw();
    let row_in = d.in_w * d.in_channels;
    let row_out = ow * b.output_shape().out_channels;
    let rows = d.batch * oh;
    if rows == 0 || row_out == 0 {
        return;
    }
    let par = parallel::worth_splitting(b.macs(), CONV_PAR_MIN_MACS);
    let pieces = if par {
        parallel::num_threads().min(rows)
    } else {
        1
    };
    let per = rows.div_ceil(pieces);
    // The depthwise rows gathered for one projection.
    let gathered = match b.project {
        Some(_) => PROJECT_MIN_PIXELS.div_ceil(ow).min(per),
        None => 0,
    };
    let fused = |p: Option<&Pointwise>, ops| p.and_then(|_| Fused::of(ops));
    let task = Task {
        b,
        x,
        dw_ops,
        project_ops,
        project_fused: fused(b.project.as_ref(), project_ops),
        row_kernel: depthwise::pick_row_kernel(d),
        // The fed rows one output row reads.
        ring: match b.feed {
            Some(_) => (d.kernel_h - 1) * d.params.dilation.0 + 1,
            None => 0,
        },
        gathered,
        run: b.project.as_ref().map_or(0, |p| l1_run(p.w.rows())),
        row_out,
    };
    let feed_fused = fused(b.feed.as_ref().map(Feed::layer), feed_ops);
    // Room for the gathered rows and the few pixels short of a whole tile left from before.
    let pending_len = match b.project {
        Some(_) => (gathered * ow + tile::pixels() - 1) * d.in_channels,
        None => 0,
    };
    parallel::for_each_chunk_mut(out, per * row_out, par && pieces > 1, |i, chunk| {
        // The fused slot: the stem's band takes the task-level one meanwhile.
        with_fused(task.ring * row_in + pending_len, |scratch| {
            let (held, pending) = scratch.split_at_mut(task.ring * row_in);
            let r0 = i * per;
            match &b.feed {
                Some(Feed::Image(stem)) => {
                    // One image (checked): output row r reads stem rows of row r.
                    let last = r0 + chunk.len() / row_out - 1;
                    let (lo, hi) = (input_rows(d, r0).0, input_rows(d, last).1);
                    let band = Band::new(&stem.shape, hi - lo);
                    band.prepare(&stem.shape, x, lo, hi - lo, |data, offs| {
                        let mut make = |_: usize, iy: usize, slot: &mut [f32]| {
                            // SAFETY: `slot` holds one stem output row (its `ow` pixels are
                            // the depthwise conv's `w`, its channels `c`), this task's own; the
                            // stem's epilogue is a bias and an activation (checked above).
                            unsafe {
                                band_row(
                                    &stem.shape,
                                    &stem.w,
                                    &band,
                                    data,
                                    &offs,
                                    iy - lo,
                                    slot.as_mut_ptr(),
                                    0,
                                    feed_ops,
                                    feed_fused,
                                )
                            }
                        };
                        task.rows(r0, chunk, held, pending, Some(&mut make))
                    })
                }
                Some(Feed::Expand(e)) => {
                    let (h, w, cin) = (d.in_h, d.in_w, e.shape.in_channels);
                    let mut make = |n: usize, iy: usize, slot: &mut [f32]| {
                        let a = &x[(n * h + iy) * w * cin..][..w * cin];
                        // SAFETY: `slot` holds one expanded row (w pixels x c channels), this
                        // task's own; the expansion's epilogue is a bias and an activation
                        // (checked above).
                        unsafe {
                            tile_rows(
                                a,
                                w,
                                &e.w,
                                0..e.w.panels(),
                                slot.as_mut_ptr(),
                                0,
                                feed_ops,
                                feed_fused,
                            )
                        }
                    };
                    task.rows(r0, chunk, held, pending, Some(&mut make))
                }
                None => task.rows(r0, chunk, held, pending, None),
            }
        })
    });
}

/// What every task of one [`forward`] call shares.
struct Task<'a, 'e> {
    b: &'a Block,
    x: &'a [f32],
    dw_ops: &'a [ConvEpilogueOp<'e>],
    project_ops: &'a [ConvEpilogueOp<'e>],
    project_fused: Option<Fused<'e>>,
    row_kernel: depthwise::RowKernel,
    ring: usize,
    gathered: usize,
    run: usize,
    row_out: usize,
}

/// Makes fed row `iy` of image `n` into the slot given.
type MakeRow<'m> = &'m mut dyn FnMut(usize, usize, &mut [f32]);

impl Task<'_, '_> {
    /// Output rows `r0 ..` into `chunk` (whole rows): the depthwise rows read `held` (the ring
    /// `make` fills) or, with nothing feeding them, the block's input; with a projection they
    /// wait in `pending` until projected.
    fn rows(
        &self,
        r0: usize,
        chunk: &mut [f32],
        held: &mut [f32],
        pending: &mut [f32],
        mut make: Option<MakeRow>,
    ) {
        let d = &self.b.dw.shape;
        let (oh, ow) = d.out_hw();
        let (h, w, c) = (d.in_h, d.in_w, d.in_channels);
        let row_out = self.row_out;
        // Rows of image `image` before `next` are made; the ring holds the last `ring`.
        let (mut image, mut next) = (usize::MAX, 0);
        // Pixels of the chunk projected, and depthwise pixels waiting in `pending` (the next
        // ones).
        let (mut done, mut waiting) = (0, 0);
        let n_rows = chunk.len() / row_out;
        for j in 0..n_rows {
            let r = r0 + j;
            let (n, oy) = (r / oh, r % oh);
            let input = match make.as_deref_mut() {
                Some(make) => {
                    let (lo, hi) = input_rows(d, oy);
                    if n != image || next < lo {
                        (image, next) = (n, lo);
                    }
                    // Rows `lo..next` are still in the ring: row `iy < hi <= lo + ring` made
                    // below takes the slot of row `iy - ring`, before `lo`.
                    for iy in next..hi {
                        make(n, iy, &mut held[(iy % self.ring) * w * c..][..w * c]);
                    }
                    next = next.max(hi);
                    InputRows {
                        data: held,
                        held: self.ring,
                    }
                }
                None => InputRows {
                    data: &self.x[n * h * w * c..(n + 1) * h * w * c],
                    held: h,
                },
            };
            let Some(p) = &self.b.project else {
                let dst = &mut chunk[j * row_out..(j + 1) * row_out];
                (self.row_kernel)(d, input, &self.b.dw.w, oy, dst, r * row_out, self.dw_ops);
                continue;
            };
            let dst = &mut pending[waiting * c..(waiting + ow) * c];
            (self.row_kernel)(d, input, &self.b.dw.w, oy, dst, r * ow * c, self.dw_ops);
            waiting += ow;
            if waiting < self.gathered * ow && j + 1 < n_rows {
                continue;
            }
            // Whole tiles only until the chunk's last row: the rest of the pixels wait for the
            // next rows (a 14-pixel row gathered by fours ended each projection in a 2-pixel
            // tile, which loads each panel for a third of the work).
            let pixels = if j + 1 < n_rows {
                waiting / tile::pixels() * tile::pixels()
            } else {
                waiting
            };
            let (k, cout) = (p.w.rows(), p.w.cols());
            let dst = &mut chunk[done * cout..(done + pixels) * cout];
            let at = r0 * row_out + done * cout;
            // L1-sized runs of pixels, each through every panel (as `gemm_rows`).
            let mut start = 0;
            while start < pixels {
                let len = self.run.min(pixels - start);
                // SAFETY: `dst` holds the projection's output for pixels `done .. done +
                // pixels` of this task's chunk, its own, and pixels `start .. start + len` of
                // them lie inside; the epilogue's residual has the output's shape (checked by
                // `forward`), indexed from their flat position.
                unsafe {
                    tile_rows(
                        &pending[start * k..],
                        len,
                        &p.w,
                        0..p.w.panels(),
                        dst.as_mut_ptr().add(start * cout),
                        at + start * cout,
                        self.project_ops,
                        self.project_fused,
                    )
                }
                start += len;
            }
            pending.copy_within(pixels * c..waiting * c, 0);
            (done, waiting) = (done + pixels, waiting - pixels);
        }
    }
}

/// The input rows `lo .. hi` (inside the image) that output row `oy` of `d` reads.
fn input_rows(d: &Conv2dShape, oy: usize) -> (usize, usize) {
    let p = d.params;
    let top = (oy * p.stride.0) as isize - p.padding.0 as isize;
    let extent = ((d.kernel_h - 1) * p.dilation.0 + 1) as isize;
    let clamp = |v: isize| v.clamp(0, d.in_h as isize) as usize;
    (clamp(top), clamp(top + extent))
}
