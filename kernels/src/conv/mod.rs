//! 2-D convolution in NCHW (PyTorch's layout): the forward with a fused store epilogue, and the
//! three backward products (input, weight, bias).
//!
//! The forward dispatches to the most specialised path that fits ([`ConvPath`]):
//! - [`pointwise`]: 1x1, stride 1, no padding — one GEMM `W[Cout x Cin] @ X[Cin x HW]` per image
//!   and group, reading the input in place;
//! - [`depthwise`]: one input channel per group (channel multiplier allowed) — a direct SIMD kernel
//!   over a zero-padded copy of each input plane, several output rows at a time;
//! - [`general`]: anything else — a tiled im2col: the patch matrix of a bounded tile of output
//!   pixels at a time (or of a few whole images when planes are small), multiplied by the weights,
//!   so large inputs never materialise it whole.
//!
//! The epilogue ([`ConvEpilogueOp`]: bias per output channel, residual add, activation — a
//! conv+BN+activation+residual block folded for inference) rides on the GEMM's store, or is
//! applied in registers / on each finished row by the depthwise kernel.
//!
//! Threads: work is split (images, pixel ranges, channel blocks) only past
//! [`CONV_PAR_MIN_MACS`]; smaller convolutions run on the calling thread. Scratch buffers are
//! per thread and reused, so after warm-up the forward allocates nothing.
//!
//! Shapes: input `[N, C, H, W]`, weight `[Cout, C / groups, kh, kw]`, output `[N, Cout, OH, OW]`,
//! all dense row-major. The engine validates shapes; these functions `assert!` their contracts.

pub mod channels_last;
pub mod depthwise;
pub mod expand_dw;
pub mod few_outputs;
pub mod general;
pub mod im2col;
pub mod implicit;
pub mod naive;
pub mod pixel_major;
pub mod pointwise;
pub mod shifted;
#[cfg(test)]
mod tests;
pub mod winograd;

use crate::activation::Activation;
use crate::gemm::{
    gemm_half_a_serial_raw, gemm_prepacked_serial_raw, gemm_serial, gemm_serial_raw, EpilogueOp,
    MatMut, MatPtr, MatRef,
};
pub use crate::half_weights::Weights;
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use rayon::prelude::*;
use std::ops::Range;

/// Stride, padding, dilation (each as `(height, width)`) and groups of a 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dParams {
    /// Stride 1, no padding, no dilation, one group (PyTorch's defaults).
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// With stride `(h, w)`.
    pub fn stride(mut self, h: usize, w: usize) -> Self {
        self.stride = (h, w);
        self
    }

    /// With zero padding `(h, w)` on both sides of each axis.
    pub fn padding(mut self, h: usize, w: usize) -> Self {
        self.padding = (h, w);
        self
    }

    /// With dilation `(h, w)`.
    pub fn dilation(mut self, h: usize, w: usize) -> Self {
        self.dilation = (h, w);
        self
    }

    /// With `groups` groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Output `(height, width)` for an `in_h x in_w` input and a `kh x kw` kernel; `None` when a
    /// stride, dilation or kernel dimension is zero or the dilated kernel is larger than the padded
    /// input.
    pub fn output_size(
        &self,
        in_h: usize,
        in_w: usize,
        kh: usize,
        kw: usize,
    ) -> Option<(usize, usize)> {
        let axis = |len: usize, k: usize, s: usize, p: usize, d: usize| {
            if s == 0 || d == 0 || k == 0 {
                return None;
            }
            let span = d * (k - 1) + 1;
            let padded = len + 2 * p;
            (span <= padded).then(|| (padded - span) / s + 1)
        };
        Some((
            axis(in_h, kh, self.stride.0, self.padding.0, self.dilation.0)?,
            axis(in_w, kw, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

/// Every dimension of one convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub params: Conv2dParams,
}

impl Conv2dShape {
    /// Output `(height, width)`. Panics on a geometry [`Conv2dParams::output_size`] rejects.
    pub fn out_hw(&self) -> (usize, usize) {
        self.params
            .output_size(self.in_h, self.in_w, self.kernel_h, self.kernel_w)
            .expect("conv2d: invalid geometry (zero stride/dilation or kernel larger than input)")
    }

    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.params.groups
    }

    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.params.groups
    }

    /// Length of one patch: `in_per_group * kh * kw` (the GEMM's inner dimension).
    pub fn patch_len(&self) -> usize {
        self.in_per_group() * self.kernel_h * self.kernel_w
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_h * self.in_w
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }

    pub fn output_len(&self) -> usize {
        let (oh, ow) = self.out_hw();
        self.batch * self.out_channels * oh * ow
    }

    /// Multiply-adds of the forward (each backward product costs the same).
    pub fn macs(&self) -> usize {
        self.output_len() * self.patch_len()
    }

    /// The forward path [`forward`] takes for this shape.
    pub fn path(&self) -> ConvPath {
        let p = &self.params;
        // A grouped 1x1 with one channel per group is a per-channel scale: the depthwise kernel's
        // (the pointwise path would run one GEMM per group).
        let depthwise = self.in_per_group() == 1 && p.groups > 1;
        if depthwise {
            ConvPath::Depthwise
        } else if self.kernel_h == 1
            && self.kernel_w == 1
            && p.stride == (1, 1)
            && p.padding == (0, 0)
        {
            ConvPath::Pointwise
        } else if self.in_per_group() == 1 {
            ConvPath::Depthwise
        } else if shifted::preferred(self) {
            ConvPath::Shifted
        } else {
            ConvPath::General
        }
    }

    /// The path the forward takes: [`Conv2dShape::path`], except that the convolutions the
    /// implicit GEMM supports take it (pointwise and depthwise ones keep their own kernels).
    pub fn forward_path(&self) -> ConvPath {
        if few_outputs::preferred(self) {
            return ConvPath::FewOutputs;
        }
        match self.path() {
            ConvPath::General | ConvPath::Shifted if implicit::supports(self) => ConvPath::Implicit,
            p => p,
        }
    }

    /// Assert the shape is well-formed and the slices have its lengths.
    fn check(&self, input: usize, weight: usize, output: usize) {
        let g = self.params.groups;
        assert!(g > 0, "conv2d: zero groups");
        assert!(
            self.in_channels.is_multiple_of(g) && self.out_channels.is_multiple_of(g),
            "conv2d: channels not divisible by groups"
        );
        assert_eq!(input, self.input_len(), "conv2d: input length");
        assert_eq!(weight, self.weight_len(), "conv2d: weight length");
        assert_eq!(output, self.output_len(), "conv2d: output length");
    }
}

/// Whether the forward of `s` takes weights packed once as GEMM rows
/// ([`crate::gemm::PackedRows`] of `[Cout x Cin*kh*kw]`, as [`Weights::Packed`]): one group, on
/// the pointwise or im2col path, with more than one output pixel (one pixel runs as a
/// matrix-vector product over the weights as they lie).
pub fn prepacked_supported(s: &Conv2dShape) -> bool {
    prepacked_runs(s.forward_path(), s)
}

fn prepacked_runs(path: ConvPath, s: &Conv2dShape) -> bool {
    s.params.groups == 1
        && matches!(path, ConvPath::Pointwise | ConvPath::General)
        && s.out_hw() != (1, 1)
}

/// The specialised forward implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// 1x1, stride 1, no padding: a GEMM on the input as it lies.
    Pointwise,
    /// One input channel per group: direct SIMD kernel.
    Depthwise,
    /// Tiled im2col + GEMM: any geometry.
    General,
    /// Stride 1, one group: GEMMs over shifted views of a padded plane, no im2col.
    Shifted,
    /// Stride 1 or 2, one group, output rows of at least [`implicit::MIN_OUT_W`]: an implicit
    /// GEMM reading a padded band of the input through row offsets. Forward only: its gradients are the
    /// [`ConvPath::General`] ones.
    Implicit,
    /// One group, at most [`few_outputs::MAX_OUT_CHANNELS`] output channels: per output channel
    /// a depthwise convolution with its kernels, its planes summed. Forward only.
    FewOutputs,
}

/// One step of the forward's store epilogue, applied in list order.
#[derive(Clone, Copy, Debug)]
pub enum ConvEpilogueOp<'a> {
    /// `out[n, c, :, :] += bias[c]` (length `out_channels`; a folded BatchNorm's shift lands here).
    Bias(&'a [f32]),
    /// `out += residual`, the residual having the output's shape `[N, Cout, OH, OW]`.
    Add(&'a [f32]),
    /// `out = act(out)`.
    Act(Activation),
}

fn check_epilogue(shape: &Conv2dShape, epilogue: &[ConvEpilogueOp]) {
    for op in epilogue {
        match op {
            ConvEpilogueOp::Bias(b) => {
                assert_eq!(b.len(), shape.out_channels, "conv2d: bias length")
            }
            ConvEpilogueOp::Add(r) => {
                assert_eq!(r.len(), shape.output_len(), "conv2d: residual length")
            }
            ConvEpilogueOp::Act(_) => {}
        }
    }
}

/// The most conv epilogue steps translated on the stack (longer lists are rare and allocate).
const EPILOGUE_INLINE: usize = 8;

/// The GEMM epilogue for an output block of image `n`: channels `c0..c0 + rows`, pixels
/// `p0..p0 + cols` (the weights-times-patches orientation: bias per row, the residual viewed with
/// the output's row stride `oh * ow`). Passed to `f` so it can live on the stack.
#[allow(clippy::too_many_arguments)]
pub(crate) fn with_gemm_epilogue<'a, R>(
    shape: &Conv2dShape,
    epilogue: &[ConvEpilogueOp<'a>],
    n: usize,
    c0: usize,
    rows: usize,
    p0: usize,
    cols: usize,
    f: impl FnOnce(&[EpilogueOp<'a>]) -> R,
) -> R {
    let (oh, ow) = shape.out_hw();
    let plane = oh * ow;
    let map = |op: &ConvEpilogueOp<'a>| -> EpilogueOp<'a> {
        match *op {
            ConvEpilogueOp::Bias(b) => EpilogueOp::BiasPerRow(&b[c0..c0 + rows]),
            ConvEpilogueOp::Add(r) => EpilogueOp::Add(MatRef {
                data: &r[(n * shape.out_channels + c0) * plane + p0..],
                rows,
                cols,
                row_stride: plane,
                col_stride: 1,
            }),
            ConvEpilogueOp::Act(a) => EpilogueOp::Act(a),
        }
    };
    with_mapped_epilogue(epilogue, map, f)
}

/// `epilogue` translated step by step by `map` into GEMM epilogue steps, passed to `f` (on the
/// stack unless the list is longer than [`EPILOGUE_INLINE`]).
fn with_mapped_epilogue<'a, R>(
    epilogue: &[ConvEpilogueOp<'a>],
    map: impl Fn(&ConvEpilogueOp<'a>) -> EpilogueOp<'a>,
    f: impl FnOnce(&[EpilogueOp<'a>]) -> R,
) -> R {
    if epilogue.len() <= EPILOGUE_INLINE {
        let mut ops = [EpilogueOp::Act(Activation::Identity); EPILOGUE_INLINE];
        for (o, e) in ops.iter_mut().zip(epilogue) {
            *o = map(e);
        }
        f(&ops[..epilogue.len()])
    } else {
        f(&epilogue.iter().map(map).collect::<Vec<_>>())
    }
}

/// Apply `epilogue` to one finished output row of channel `c` that starts at flat index `at` of
/// the output (for paths whose tiles are not laid out like the output, so the GEMM's store
/// epilogue cannot address the residual).
pub(crate) fn epilogue_row(epilogue: &[ConvEpilogueOp], row: &mut [f32], c: usize, at: usize) {
    let len = row.len();
    for op in epilogue {
        match *op {
            ConvEpilogueOp::Bias(b) => row.iter_mut().for_each(|v| *v += b[c]),
            ConvEpilogueOp::Add(r) => row
                .iter_mut()
                .zip(&r[at..at + len])
                .for_each(|(v, x)| *v += x),
            ConvEpilogueOp::Act(a) => crate::activation::apply_inplace(a, row),
        }
    }
}

/// Tasks per image for a split convolution: about one per [`CONV_PAR_MIN_MACS`] of work, a few
/// per thread at most, and a multiple of the thread count (3 tasks on 2 threads left a 7-row
/// output split 3 + 3 + 1, its critical path 6 rows where one thread took 7).
pub(crate) fn tasks_per_image(shape: &Conv2dShape) -> usize {
    let threads = parallel::num_threads();
    parallel::pieces(shape.macs(), CONV_PAR_MIN_MACS)
        .next_multiple_of(threads)
        .div_ceil(shape.batch)
}

/// Whether `units` equal pieces of work (images, or images x groups) keep the pool busy on their
/// own: at least one per thread, and either an even share each or enough that the last round's
/// imbalance is small.
pub(crate) fn units_balance(units: usize) -> bool {
    let t = parallel::num_threads();
    units >= t && (units.is_multiple_of(t) || units >= 4 * t)
}

/// Pixel ranges per image when images alone do not keep the pool busy: enough pieces for the
/// pool, none shorter than `min_len` pixels.
pub(crate) fn ranges_per_image(shape: &Conv2dShape, plane: usize, min_len: usize) -> usize {
    let threads = parallel::num_threads();
    let want = parallel::pieces(shape.macs(), CONV_PAR_MIN_MACS).max(threads);
    let n = want
        .div_ceil(shape.batch.max(1))
        .min(plane.div_ceil(min_len.max(1)))
        .max(1);
    // Whole rounds of ranges for the pool: three equal ranges on two threads take as long as
    // four (a 30x30 output at batch 1 ran 1.8x slower than a 28x28 one).
    let total = n * shape.batch;
    if total > threads && !total.is_multiple_of(threads) && shape.batch == 1 {
        n.next_multiple_of(threads)
    } else {
        n
    }
}

/// Compute outputs by pixel ranges in parallel, each task writing its range in place.
///
/// `out` holds `batch` images of `rows x plane`. Each image's pixels are cut into `per_image`
/// ranges (fewer when the plane has fewer column panels), each of whole column panels of the
/// GEMM but the last; `f(n, p0, dst)` writes image `n`'s outputs for pixels
/// `p0..p0 + dst.cols` through `dst`, the `rows x dst.cols` view of them (row stride `plane`).
/// A range's outputs are columns of the image, not a contiguous slice, so the view is raw:
/// tasks write disjoint columns of the same rows. (Staging each range in a block and copying it into place cost a third of a 16->96
/// pointwise conv at 112x112: three passes over a 4.8 MB output instead of one.)
pub(crate) fn ranges_in_place(
    out: &mut [f32],
    batch: usize,
    rows: usize,
    plane: usize,
    per_image: usize,
    f: impl Fn(usize, usize, MatPtr) + Sync,
) {
    assert!(
        out.len() >= batch * rows * plane,
        "ranges_in_place: output too short"
    );
    // Ranges of whole column panels of the GEMM: 784 pixels in 8 equal ranges of 98 (6 panels
    // + 2 columns) had spent 1/8 of the tiles' work on 2-column tails.
    if plane == 0 {
        return;
    }
    let ranges = parallel::UnitRanges::new(plane, crate::gemm::column_panel(), per_image);
    let per_image = ranges.count();
    let base = MatPtr {
        ptr: out.as_mut_ptr(),
        rows: batch * rows,
        cols: plane,
        row_stride: plane,
    };
    parallel::for_each_index(batch * per_image, true, |i| {
        let (n, r) = (i / per_image, i % per_image);
        let pixels = ranges.range(r);
        f(
            n,
            pixels.start,
            base.block(n * rows, pixels.start, rows, pixels.len()),
        )
    });
}

/// Channels per task when work is split into blocks of channels of one image and group: whole
/// groups when there are enough to keep the pool busy, else about `want` blocks in all, but
/// (where possible) at least `min_block` channels so each block's GEMM keeps some height. Blocks
/// need not divide `per_group` (see [`for_each_channel_block`]): insisting on a divisor made a
/// prime channel count — which pruning produces — one channel per block, each repeating the whole
/// im2col (17 output channels ran 13x slower than 16).
pub(crate) fn channel_block(
    shape: &Conv2dShape,
    per_group: usize,
    min_block: usize,
    want: usize,
    par: bool,
) -> usize {
    let units = shape.batch * shape.params.groups;
    let per_group = per_group.max(1);
    if !par || units_balance(units) {
        return per_group;
    }
    let target = (per_group * units / want.max(1))
        .max(min_block)
        .clamp(1, per_group);
    // Equal blocks (the last at most one channel shorter) rather than a short remainder.
    per_group.div_ceil(per_group.div_ceil(target))
}

/// Run `f(unit, c0, block)` over `buf` (units of `per_group` channel planes of `plane` floats:
/// one image's group each) cut into blocks of `cb` channels, the last block of each unit shorter
/// when `cb` does not divide `per_group`; `c0` is the block's first channel within its group and
/// `block.len() / plane` its channel count. Blocks run in parallel when `par`.
pub(crate) fn for_each_channel_block(
    buf: &mut [f32],
    per_group: usize,
    plane: usize,
    cb: usize,
    par: bool,
    f: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) {
    if per_group == 0 || plane == 0 {
        return;
    }
    let cb = cb.clamp(1, per_group);
    parallel::for_each_chunk_mut(buf, per_group * plane, par, |u, unit| {
        parallel::for_each_chunk_mut(unit, cb * plane, par, |b, block| f(u, b * cb, block));
    });
}

/// Sum `f(items, acc)` over `items` into `dst`: one part per thread when `par`, each accumulating
/// into its own buffer (the first into `dst`), the partial sums added in a fixed order.
pub(crate) fn accumulate_in_parts(
    items: usize,
    par: bool,
    dst: &mut [f32],
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) {
    let parts = if par {
        parallel::num_threads().min(items)
    } else {
        1
    };
    if parts <= 1 {
        f(0..items, dst);
        return;
    }
    let bound = |p: usize| p * items / parts;
    let len = dst.len();
    parallel::note_fork();
    let ((), partials) = rayon::join(
        || f(0..bound(1), dst),
        || {
            (1..parts)
                .into_par_iter()
                .map(|p| {
                    let mut acc = vec![0.0f32; len];
                    f(bound(p)..bound(p + 1), &mut acc);
                    acc
                })
                .collect::<Vec<_>>()
        },
    );
    for part in partials {
        dst.iter_mut().zip(&part).for_each(|(d, v)| *d += v);
    }
}

/// `output = conv2d(input, weight)`, then `epilogue`, choosing the path by [`Conv2dShape::path`].
pub fn forward(
    shape: &Conv2dShape,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
    epilogue: &[ConvEpilogueOp],
) {
    forward_with(shape.forward_path(), shape, input, weight, output, epilogue);
}

/// [`forward`] with the weights in f32 or in 16 bits ([`Weights`]; decoded block by block where
/// each path copies or multiplies them, into per-thread scratch).
pub fn forward_weights(
    shape: &Conv2dShape,
    input: &[f32],
    weight: Weights,
    output: &mut [f32],
    epilogue: &[ConvEpilogueOp],
) {
    forward_weights_with(shape.forward_path(), shape, input, weight, output, epilogue);
}

/// [`forward`] through a chosen path (benchmarks and tests compare paths on the same problem).
/// Panics if `path` cannot run `shape` (pointwise needs 1x1/stride 1/no padding; depthwise one
/// input channel per group; shifted [`shifted::supports`]); [`ConvPath::General`] runs anything.
pub fn forward_with(
    path: ConvPath,
    shape: &Conv2dShape,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
    epilogue: &[ConvEpilogueOp],
) {
    forward_weights_with(path, shape, input, Weights::F32(weight), output, epilogue);
}

/// [`forward_weights`] through a chosen path (see [`forward_with`]).
pub fn forward_weights_with(
    path: ConvPath,
    shape: &Conv2dShape,
    input: &[f32],
    weight: Weights,
    output: &mut [f32],
    epilogue: &[ConvEpilogueOp],
) {
    shape.check(input.len(), weight.len(), output.len());
    if let Weights::Packed(p) = weight {
        assert!(
            prepacked_runs(path, shape) && p.rows() == shape.out_channels,
            "conv2d: weights packed as rows on the {path:?} path of {shape:?}"
        );
    }
    check_epilogue(shape, epilogue);
    if output.is_empty() {
        return;
    }
    match path {
        ConvPath::Pointwise => pointwise::forward(shape, input, weight, output, epilogue),
        ConvPath::Depthwise => depthwise::forward(shape, input, weight, output, epilogue),
        ConvPath::General => general::forward(shape, input, weight, output, epilogue),
        ConvPath::Shifted => {
            assert!(
                shifted::supports(shape),
                "conv2d: shifted path needs stride 1"
            );
            shifted::forward(shape, input, weight, output, epilogue)
        }
        ConvPath::Implicit => implicit::forward(shape, input, weight, output, epilogue),
        ConvPath::FewOutputs => few_outputs::forward(shape, input, weight, output, epilogue),
    }
}

/// `grad_input = d conv2d / d input` applied to `grad_out` (overwrites `grad_input`).
pub fn backward_input(
    shape: &Conv2dShape,
    grad_out: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    backward_input_with(shape.path(), shape, grad_out, weight, grad_input);
}

/// [`backward_input`] through a chosen path.
pub fn backward_input_with(
    path: ConvPath,
    shape: &Conv2dShape,
    grad_out: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    shape.check(grad_input.len(), weight.len(), grad_out.len());
    if grad_out.is_empty() {
        grad_input.fill(0.0);
        return;
    }
    match path {
        ConvPath::Pointwise => pointwise::backward_input(shape, grad_out, weight, grad_input),
        ConvPath::Depthwise => depthwise::backward_input(shape, grad_out, weight, grad_input),
        ConvPath::General | ConvPath::Implicit | ConvPath::FewOutputs => {
            general::backward_input(shape, grad_out, weight, grad_input)
        }
        ConvPath::Shifted => {
            assert!(
                shifted::supports(shape),
                "conv2d: shifted path needs stride 1"
            );
            shifted::backward_input(shape, grad_out, weight, grad_input)
        }
    }
}

/// `grad_weight = d conv2d / d weight` applied to `grad_out`, summed over the batch (overwrites).
pub fn backward_weight(
    shape: &Conv2dShape,
    input: &[f32],
    grad_out: &[f32],
    grad_weight: &mut [f32],
) {
    backward_weight_with(shape.path(), shape, input, grad_out, grad_weight);
}

/// [`backward_weight`] through a chosen path.
pub fn backward_weight_with(
    path: ConvPath,
    shape: &Conv2dShape,
    input: &[f32],
    grad_out: &[f32],
    grad_weight: &mut [f32],
) {
    shape.check(input.len(), grad_weight.len(), grad_out.len());
    grad_weight.fill(0.0);
    if grad_out.is_empty() {
        return;
    }
    match path {
        ConvPath::Pointwise => pointwise::backward_weight(shape, input, grad_out, grad_weight),
        ConvPath::Depthwise => depthwise::backward_weight(shape, input, grad_out, grad_weight),
        ConvPath::General | ConvPath::Implicit | ConvPath::FewOutputs => {
            general::backward_weight(shape, input, grad_out, grad_weight)
        }
        ConvPath::Shifted => {
            assert!(
                shifted::supports(shape),
                "conv2d: shifted path needs stride 1"
            );
            shifted::backward_weight(shape, input, grad_out, grad_weight)
        }
    }
}

/// `grad_bias[c] = sum over n, y, x of grad_out[n, c, y, x]` (overwrites).
pub fn backward_bias(shape: &Conv2dShape, grad_out: &[f32], grad_bias: &mut [f32]) {
    assert_eq!(
        grad_out.len(),
        shape.output_len(),
        "conv2d: grad_out length"
    );
    assert_eq!(
        grad_bias.len(),
        shape.out_channels,
        "conv2d: grad_bias length"
    );
    let (oh, ow) = shape.out_hw();
    let plane = oh * ow;
    grad_bias.fill(0.0);
    if plane == 0 {
        return;
    }
    for (i, p) in grad_out.chunks_exact(plane).enumerate() {
        grad_bias[i % shape.out_channels] += sum(p);
    }
}

/// `C = beta * C + W[r0..r0 + rows] * B` on the calling thread, for rows `r0..r0 + rows` of the
/// row-major `[Cout x k]` weights, whatever their storage.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_weight_rows(
    w: Weights,
    rows: (usize, usize),
    k: usize,
    b: MatRef,
    beta: f32,
    c: MatMut,
    epilogue: &[EpilogueOp],
) {
    assert!(c.in_bounds(), "conv: output view out of bounds");
    // SAFETY: `c` borrows its elements uniquely for the whole call and is in bounds.
    unsafe { gemm_weight_rows_raw(w, rows, k, b, beta, c.into(), epilogue) }
}

/// [`gemm_weight_rows`] into an output view by raw parts (a range of [`ranges_in_place`]).
///
/// # Safety
/// As [`gemm_serial_raw`]: `c`'s elements are valid and this call's alone.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_weight_rows_raw(
    w: Weights,
    (r0, rows): (usize, usize),
    k: usize,
    b: MatRef,
    beta: f32,
    c: MatPtr,
    epilogue: &[EpilogueOp],
) {
    let elems = r0 * k..(r0 + rows) * k;
    // SAFETY (every arm): the caller's contract; packed rows start on a panel (callers align
    // their channel blocks with `Weights::align_rows`), which that call asserts.
    match w {
        Weights::F32(w) => unsafe {
            gemm_serial_raw(MatRef::row_major(&w[elems], rows, k), b, beta, c, epilogue)
        },
        Weights::Half(h) => unsafe { gemm_half_a_serial_raw(h.range(elems), b, beta, c, epilogue) },
        Weights::Packed(p) => unsafe {
            gemm_prepacked_serial_raw(p, r0, rows, b, beta, c, epilogue)
        },
    }
}

/// `out = W v`, then `epilogue`, for image `n` of a convolution whose output plane is one pixel:
/// `W` row-major `[out.len() x v.len()]` (the weights, or the patch weights), run as the row
/// vector `v^T` times the view `W^T`, the GEMM's m = 1 path (dot products over W's contiguous
/// rows); the conv epilogue maps to per-column steps.
pub(crate) fn matvec_image<'a>(
    v: &[f32],
    w: &[f32],
    out: &mut [f32],
    epi: &[ConvEpilogueOp<'a>],
    n: usize,
) {
    let (k, cout) = (v.len(), out.len());
    let wt = MatRef {
        data: &w[..k * cout],
        rows: k,
        cols: cout,
        row_stride: 1,
        col_stride: k,
    };
    let map = |op: &ConvEpilogueOp<'a>| -> EpilogueOp<'a> {
        match *op {
            ConvEpilogueOp::Bias(b) => EpilogueOp::BiasPerCol(b),
            ConvEpilogueOp::Add(r) => {
                EpilogueOp::Add(MatRef::row_major(&r[n * cout..(n + 1) * cout], 1, cout))
            }
            ConvEpilogueOp::Act(a) => EpilogueOp::Act(a),
        }
    };
    let (v, c) = (MatRef::row_major(v, 1, k), MatMut::row_major(out, 1, cout));
    with_mapped_epilogue(epi, map, |ops| gemm_serial(v, wt, 0.0, c, ops));
}

/// Sum with eight running partial sums (vectorises, and rounds better than one long chain).
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with eight running partial sums.
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a8, b8) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a8[i] * b8[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
