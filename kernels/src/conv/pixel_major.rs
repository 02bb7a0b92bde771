//! Convolutions on the pixel-major tiles ([`crate::gemm::gemm_pixel_major_raw`]): output pixels
//! fill the register tile's rows and 16 output channels its lanes, against weights packed once
//! (`W^T` in 16-channel panels, [`pack`]) by whoever runs the layer many times (the inference
//! plan). 1x1 convolutions read the input image in place; larger kernels read padded bands
//! through the implicit GEMM's offset table ([`super::implicit`]), whatever the row width.

use super::implicit::{self, bytes_as_u32};
use super::{tasks_per_image, with_gemm_epilogue, Conv2dShape, ConvEpilogueOp, ConvPath};
use crate::gemm::{
    gemm_pixel_major_raw, pixel_major_supported, wide_pixel_tiles, MatPtr, MatRef, OffsetTable,
    PackedPanels, PixelRows, PANEL,
};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_scratch;

/// Shortest patch (`Cin * kh * kw`) for which [`preferred`] picks this path: each tile's transpose
/// and 16 short stores cost about as much as a 16-deep product (16->96 at 112x112 ran 2.9x
/// slower than the channel-major tiles, 24->144 at 56x56 1.45x), while ResNet-18's 3x3 convs
/// ran 0.88-0.96x their time on one thread.
const MIN_PATCH: usize = 128;

/// Largest plane of a 1x1 convolution [`preferred`] puts here, on the AVX-512 tiles: at 7x7 and
/// 14x14 a channel-major tile leaves lanes idle (49 = 3 x 16 + 1) and MobileNetV2's 1x1 convs
/// there ran 0.85-0.95x their time, but 144->24 at 56x56 ran 1.5x and 192->32 at 28x28 1.07x
/// slower (a 24-channel layer fills one and a half panels, where the channel-major tile takes 3
/// rows of 8). The AVX2 tiles (6 pixels, two transposes per tile) lost on every 1x1 conv tried
/// (320->1280 at 7x7 1.5x, 160->960 1.25x, 960->320 1.1x the channel-major time on one thread).
const MAX_POINTWISE_PLANE: usize = 256;

/// Whether the plan should pack `s`'s weights for [`forward`]: [`supports`], a patch of at least
/// [`MIN_PATCH`], tiles about as full as the channel-major ones ([`fills_tiles`]); for a 1x1
/// convolution the AVX-512 tiles, stride 1 and a plane of at most [`MAX_POINTWISE_PLANE`]
/// pixels; otherwise stride 1, or stride 2 with more than 4 input channels on the AVX-512 tiles.
/// Not for one-pixel outputs: the channel-major paths run those as matrix-vector products
/// (MobileNetV2's last 1x1 convs on 28x28 images: 160->1280 0.014 ms against 0.018 in one
/// eighth of a pixel tile). At stride 2 ResNet-18's 3x3 convs ran 0.83-1.0x their im2col time on
/// two threads on the AVX-512 tiles, 1.0-1.1x on the AVX2 ones, but its 1x1 downsamples 1.5-1.7x
/// (their bands copy both column phases of the rows they read for a short product) and the
/// 3-channel image stems 1.1-1.3x. On AVX2, ResNet-18's stride-1 3x3 convs ran 0.86-0.99x
/// their channel-major time in the plan.
pub fn preferred(s: &Conv2dShape) -> bool {
    let stride1 = s.params.stride == (1, 1);
    let pointwise = s.kernel_h * s.kernel_w == 1;
    supports(s)
        && s.patch_len() >= MIN_PATCH
        && s.out_hw() != (1, 1)
        && fills_tiles(s)
        && if pointwise {
            stride1 && s.in_h * s.in_w <= MAX_POINTWISE_PLANE && wide_pixel_tiles()
        } else {
            stride1 || (s.in_channels > 4 && wide_pixel_tiles())
        }
}

/// Whether the pixel-major tiles (rows of `ow` pixels in tiles of 8 — a 1x1 convolution's whole
/// plane in one run — times channels in panels of 16) are filled at least 85 % as well as the
/// channel-major tiles (channels in rows of 8, whose tile costs shrink with them; the output
/// plane in 16 lanes). The tiles themselves ran ~15 % faster, but 4x4 planes (half-empty tiles
/// against full lanes) ran 1.25-1.3x slower, 2x2 ones (a quarter of either) 0.8x, 7x7 (7/8
/// against 49/64) 0.94x, and TLC-pruned layers of 3-5 channels (a third of a panel) 1.7-2.7x.
fn fills_tiles(s: &Conv2dShape) -> bool {
    let (oh, ow) = s.out_hw();
    let plane = oh * ow;
    let run = if s.kernel_h * s.kernel_w == 1 {
        plane
    } else {
        ow
    };
    let cout = s.out_channels;
    // run/ceil8(run) * cout/ceil16(cout) >= 0.85 * plane/ceil16(plane), in integers.
    100 * run * cout * plane.next_multiple_of(16)
        >= 85 * plane * run.next_multiple_of(8) * cout.next_multiple_of(PANEL)
}

/// Whether [`forward`] runs `s` on this CPU: one group, and a pointwise convolution or one the
/// implicit GEMM's band covers.
pub fn supports(s: &Conv2dShape) -> bool {
    pixel_major_supported()
        && s.params.groups == 1
        && (s.path() == ConvPath::Pointwise || implicit::supports_pixel_major(s))
}

/// The weights (`[Cout x Cin*kh*kw]`, row-major) packed for [`forward`].
pub fn pack(s: &Conv2dShape, w: &[f32]) -> PackedPanels {
    let k = s.patch_len();
    PackedPanels::new(MatRef::row_major(&w[..s.out_channels * k], s.out_channels, k).t())
}

/// The forward with weights from [`pack`]; [`supports`] must hold.
pub fn forward(
    s: &Conv2dShape,
    x: &[f32],
    w: &PackedPanels,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    assert!(supports(s), "conv2d: no pixel-major path for this shape");
    let k = s.in_channels * s.kernel_h * s.kernel_w;
    assert!(
        w.rows() == k && w.cols() == s.out_channels,
        "conv2d: packed weights of another shape"
    );
    assert_eq!(x.len(), s.input_len(), "conv2d: input length");
    assert_eq!(out.len(), s.output_len(), "conv2d: output length");
    super::check_epilogue(s, epi);
    if s.path() == ConvPath::Pointwise {
        pointwise(s, x, w, out, epi)
    } else {
        implicit::forward_pixel_major(s, x, w, out, epi)
    }
}

/// Fewest pixels per parallel range of a 1x1 convolution (8 tiles).
const MIN_PIXELS: usize = 64;

/// 1x1, stride 1: pixel `i`'s patch element (input channel) `p` is `x[p * plane + i]`. Tasks
/// split each image's pixels into ranges of whole tiles and its channels into panel groups.
fn pointwise(
    s: &Conv2dShape,
    x: &[f32],
    w: &PackedPanels,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let plane = s.in_h * s.in_w;
    let (cin, cout, panels) = (s.in_channels, s.out_channels, w.panels());
    let par = parallel::worth_splitting(s.macs(), CONV_PAR_MIN_MACS);
    let want = if par { tasks_per_image(s) } else { 1 };
    let ranges = want.min(plane.div_ceil(MIN_PIXELS)).max(1);
    let len = plane.div_ceil(ranges).next_multiple_of(8).min(plane);
    let ranges = plane.div_ceil(len);
    // Panel groups as equal as possible: on a 7x7 plane the panels are all the work, and 10
    // panels in 5 groups of 2 left one of two threads idle for a fifth of the time.
    let groups = want.div_ceil(ranges).min(panels).max(1);
    let base = MatPtr {
        ptr: out.as_mut_ptr(),
        rows: s.batch * cout,
        cols: plane,
        row_stride: plane,
    };
    with_scratch(cin, |buf| {
        let offs: &mut [u32] = bytes_as_u32(buf);
        for (p, o) in offs.iter_mut().enumerate() {
            *o = u32::try_from(p * plane).expect("input plane within 4 G");
        }
        let offs = OffsetTable::new(offs);
        let tasks = s.batch * ranges * groups;
        parallel::for_each_index(tasks, par && tasks > 1, |t| {
            let (n, rest) = (t / (ranges * groups), t % (ranges * groups));
            let (r, g) = (rest / groups, rest % groups);
            let p0 = r * len;
            let pixels = len.min(plane - p0);
            let (j0, j1) = (g * panels / groups, (g + 1) * panels / groups);
            let (c0, c1) = (j0 * PANEL, cout.min(j1 * PANEL));
            let a = PixelRows {
                data: &x[n * cin * plane + p0..(n + 1) * cin * plane],
                offs,
                pixels,
            };
            let dst = base.block(n * cout + c0, p0, c1 - c0, pixels);
            with_gemm_epilogue(s, epi, n, c0, c1 - c0, p0, pixels, |e| {
                // SAFETY: `dst` is channels c0..c1 of pixels p0..p0 + pixels of image n: inside
                // `out`, and this task's alone (tasks split images, pixel ranges and panels).
                unsafe { gemm_pixel_major_raw(a, w, j0..j1, dst, e) }
            });
        });
    });
}
