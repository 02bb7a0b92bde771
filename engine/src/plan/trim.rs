//! Kernel taps that never touch the input.
//!
//! On a plane smaller than its kernel's reach, a convolution's border taps read only padding: a
//! 3x3 convolution (padding 1) on a 1x1 plane uses its centre tap alone. MobileNetV2 on 28x28
//! images ends on 1x1 planes, where a TLC-collapsed block is a dense 3x3 conv: trimming it to
//! 1x1 streams a ninth of its weights. The plan runs the trimmed convolution; its outputs are the
//! same products, minus the ones with zeros.

use std::ops::Range;
use tlc_kernels::conv::Conv2dShape;

/// The kernel rows and columns `s` ever applies to the input, when that is fewer than all of them
/// and the rest can drop symmetrically (the padding is one value per axis): the shape to run
/// instead, and the kept ranges.
pub(super) fn trimmed(s: &Conv2dShape) -> Option<(Conv2dShape, Range<usize>, Range<usize>)> {
    let (oh, ow) = s.out_hw();
    let p = &s.params;
    let (rows, pad_h) = axis(
        s.in_h,
        oh,
        s.kernel_h,
        p.stride.0,
        p.padding.0,
        p.dilation.0,
    )?;
    let (cols, pad_w) = axis(
        s.in_w,
        ow,
        s.kernel_w,
        p.stride.1,
        p.padding.1,
        p.dilation.1,
    )?;
    if rows.len() == s.kernel_h && cols.len() == s.kernel_w {
        return None;
    }
    let t = Conv2dShape {
        kernel_h: rows.len(),
        kernel_w: cols.len(),
        params: p.padding(pad_h, pad_w),
        ..*s
    };
    // The output grid must not move (it cannot when the drop is symmetric; checked all the same).
    (t.out_hw() == (oh, ow)).then_some((t, rows, cols))
}

/// Along one axis: the taps some output reads a real input with, and the padding that keeps them
/// aligned, or `None` when the unused taps do not drop evenly from both ends.
fn axis(
    input: usize,
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> Option<(Range<usize>, usize)> {
    let reads = |t: usize| {
        (0..out).any(|o| {
            let i = (o * stride + t * dil) as isize - pad as isize;
            (0..input as isize).contains(&i)
        })
    };
    let first = (0..k).find(|&t| reads(t))?;
    let last = (0..k).rev().find(|&t| reads(t))?;
    let dropped = first;
    (dropped == k - 1 - last && dropped * dil <= pad)
        .then(|| (first..last + 1, pad - dropped * dil))
}

/// The kept taps `rows x cols` of weights `[out, in_per_group, kh, kw]`, in the same layout.
pub(super) fn weights(
    s: &Conv2dShape,
    w: &[f32],
    rows: &Range<usize>,
    cols: &Range<usize>,
) -> Vec<f32> {
    let (kh, kw) = (s.kernel_h, s.kernel_w);
    let mut out = Vec::with_capacity(w.len() / (kh * kw) * rows.len() * cols.len());
    for kernel in w.chunks_exact(kh * kw) {
        for r in rows.clone() {
            out.extend_from_slice(&kernel[r * kw + cols.start..r * kw + cols.end]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlc_kernels::conv::{self, Conv2dParams};

    fn shape(
        c: usize,
        hw: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Conv2dShape {
        Conv2dShape {
            batch: 2,
            in_channels: c,
            in_h: hw,
            in_w: hw,
            out_channels: c,
            kernel_h: k,
            kernel_w: k,
            params: Conv2dParams::default()
                .stride(stride, stride)
                .padding(pad, pad)
                .groups(groups),
        }
    }

    #[test]
    fn trims_only_taps_that_read_padding() {
        // 3x3 pad 1 on 1x1: the centre. 5x5 pad 2 on 1x1 and on 2x2 (3 middle taps).
        let t = trimmed(&shape(4, 1, 3, 1, 1, 1)).unwrap();
        assert_eq!(
            (t.0.kernel_h, t.0.params.padding, t.1, t.2),
            (1, (0, 0), 1..2, 1..2)
        );
        assert_eq!(trimmed(&shape(4, 1, 5, 1, 2, 1)).unwrap().1, 2..3);
        let t = trimmed(&shape(4, 2, 5, 1, 2, 1)).unwrap();
        assert_eq!((t.0.kernel_h, t.0.params.padding.0), (3, 1));
        // Every tap reads the input: nothing to trim.
        assert!(trimmed(&shape(4, 2, 3, 1, 1, 1)).is_none());
        assert!(trimmed(&shape(4, 7, 3, 2, 1, 1)).is_none());
        // Stride 2 on 2x2 with 3x3 pad 1: the one output reads taps 1 and 2 only (uneven).
        assert!(trimmed(&shape(4, 2, 3, 2, 1, 1)).is_none());
    }

    /// The trimmed convolution computes the original's outputs, dense and depthwise, strided.
    #[test]
    fn trimmed_conv_matches_the_full_one() {
        for s in [
            shape(6, 1, 3, 1, 1, 1),
            shape(6, 1, 3, 1, 1, 6),
            shape(6, 2, 5, 1, 2, 1),
            shape(6, 1, 5, 2, 2, 3),
            shape(6, 1, 7, 1, 3, 1),
        ] {
            let (t, rows, cols) = trimmed(&s).expect("trims");
            let val = |i: usize| ((i * 7919) % 997) as f32 / 997.0 - 0.5;
            let x: Vec<f32> = (0..s.input_len()).map(val).collect();
            let w: Vec<f32> = (0..s.weight_len()).map(|i| val(i + 13)).collect();
            let mut full = vec![0.0; s.output_len()];
            conv::forward(&s, &x, &w, &mut full, &[]);
            let tw = weights(&s, &w, &rows, &cols);
            assert_eq!(tw.len(), t.weight_len());
            let mut cut = vec![0.0; t.output_len()];
            conv::forward(&t, &x, &tw, &mut cut, &[]);
            for (a, b) in full.iter().zip(&cut) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{s:?}: {a} vs {b}");
            }
        }
    }
}
