//! Convolutions with one or two output channels: the narrowest layers TLC's pruning leaves in
//! the middle of a residual block.
//!
//! Output channel `o` is the sum over input channels `c` of `c`'s plane convolved with kernel
//! `w[o, c]`: a depthwise convolution with `o`'s kernels, then one pass summing its planes. The
//! depthwise row kernels vectorise over output columns with many independent rows in flight. The
//! GEMM paths instead put output channels on the tile's rows: one row is one dependent chain of
//! FMAs per patch element (32->1 3x3 at 14x14 ran at 12 GFLOP/s on the implicit GEMM).

use super::{depthwise, epilogue_row, Conv2dShape, ConvEpilogueOp, Weights};
use crate::scratch::with_staging;

/// Most output channels this path takes: each output channel pads the input again and re-reads
/// it, which the GEMM paths do once. One thread, 3x3: 1 and 2 channels ran 1.3-3.8x faster than
/// the best GEMM path (16->1 at 28x28 5.2 against 12.7 us, 64->1 at 7x7 3.8 against 7.3), 3 even,
/// 4 and 6 up to 1.4x slower.
pub const MAX_OUT_CHANNELS: usize = 2;

/// Whether this path runs `s` (and beats the GEMM paths): one group, at least two input channels,
/// a kernel larger than 1x1, at most [`MAX_OUT_CHANNELS`] output channels.
pub fn preferred(s: &Conv2dShape) -> bool {
    s.params.groups == 1
        && s.in_channels > 1
        && s.kernel_h * s.kernel_w > 1
        && s.out_channels <= MAX_OUT_CHANNELS
}

/// Forward (`s` has one group).
pub fn forward(s: &Conv2dShape, x: &[f32], w: Weights, out: &mut [f32], epi: &[ConvEpilogueOp]) {
    assert_eq!(s.params.groups, 1, "few-outputs conv: grouped shape");
    let (cin, cout) = (s.in_channels, s.out_channels);
    let (oh, ow) = s.out_hw();
    let plane = oh * ow;
    let img_in = cin * s.in_h * s.in_w;
    let per_out = s.patch_len();
    // One image's input channels, each convolved with one output channel's kernels.
    let dw = Conv2dShape {
        batch: 1,
        out_channels: cin,
        params: s.params.groups(cin),
        ..*s
    };
    with_staging(cin * plane, |planes| {
        for (n, img) in out.chunks_exact_mut(cout * plane).enumerate() {
            let xn = &x[n * img_in..(n + 1) * img_in];
            for (o, dst) in img.chunks_exact_mut(plane).enumerate() {
                let wo = w.range(o * per_out..(o + 1) * per_out);
                depthwise::forward(&dw, xn, wo, planes, &[]);
                sum_planes(planes, dst);
                epilogue_row(epi, dst, o, (n * cout + o) * plane);
            }
        }
    })
}

/// `dst = the sum of the planes of dst's length in planes`, four planes per pass over `dst`.
fn sum_planes(planes: &[f32], dst: &mut [f32]) {
    let len = dst.len();
    let mut rest = planes.chunks_exact(len);
    dst.copy_from_slice(rest.next().expect("at least one plane"));
    let mut rest = rest.peekable();
    while rest.peek().is_some() {
        let group: [Option<&[f32]>; 4] = std::array::from_fn(|_| rest.next());
        match group {
            [Some(a), Some(b), Some(c), Some(d)] => {
                let quads = a.iter().zip(b).zip(c).zip(d);
                for (v, (((a, b), c), d)) in dst.iter_mut().zip(quads) {
                    *v += (a + b) + (c + d);
                }
            }
            _ => {
                for p in group.into_iter().flatten() {
                    dst.iter_mut().zip(p).for_each(|(v, x)| *v += x);
                }
            }
        }
    }
}
