//! The channels-last kernels against the naive NCHW convolution (inputs, residuals and outputs
//! moved between layouts by [`layout`]), over geometries with border taps, channel counts that
//! leave partial registers and panels, tiles that do not divide the pixels, and epilogues applied
//! in registers or after the store.

use super::layout::{global_avg_pool, to_channels_last, to_nchw};
use super::*;
use crate::activation::Activation;
use crate::conv::{naive, Conv2dParams};

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn shape(
    batch: usize,
    cin: usize,
    hw: (usize, usize),
    cout: usize,
    k: (usize, usize),
    stride: usize,
    pad: usize,
    dilation: usize,
    groups: usize,
) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels: cin,
        in_h: hw.0,
        in_w: hw.1,
        out_channels: cout,
        kernel_h: k.0,
        kernel_w: k.1,
        params: Conv2dParams {
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (dilation, dilation),
            groups,
        },
    }
}

fn cl(x: &[f32], n: usize, c: usize, plane: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    to_channels_last(x, n, c, plane, &mut y);
    y
}

/// The epilogues tried: none, in registers (bias + residual + ReLU6), and one with an activation
/// the tiles apply after storing (GELU).
fn epilogues() -> [(bool, bool, Activation); 3] {
    [
        (false, false, Activation::Identity),
        (true, true, Activation::Relu6),
        (true, false, Activation::Gelu),
    ]
}

/// Runs `run(x, epi, out)` (all channels-last, or `x` NCHW when `nchw_input`) against the naive
/// convolution and compares.
fn check_against_naive(
    s: &Conv2dShape,
    seed: u64,
    nchw_input: bool,
    run: impl Fn(&[f32], &[ConvEpilogueOp], &mut [f32]),
) {
    let (oh, ow) = s.out_hw();
    let (plane_in, plane_out) = (s.in_h * s.in_w, oh * ow);
    let x = rand(s.input_len(), seed);
    let w = rand(s.weight_len(), seed + 1);
    let bias = rand(s.out_channels, seed + 2);
    let r = rand(s.output_len(), seed + 3);
    let r_cl = cl(&r, s.batch, s.out_channels, plane_out);
    let x_in = if nchw_input {
        x.clone()
    } else {
        cl(&x, s.batch, s.in_channels, plane_in)
    };
    for (with_bias, with_add, act) in epilogues() {
        let mut want_epi = vec![];
        let mut got_epi = vec![];
        if with_bias {
            want_epi.push(ConvEpilogueOp::Bias(&bias));
            got_epi.push(ConvEpilogueOp::Bias(&bias));
        }
        if with_add {
            want_epi.push(ConvEpilogueOp::Add(&r));
            got_epi.push(ConvEpilogueOp::Add(&r_cl));
        }
        want_epi.push(ConvEpilogueOp::Act(act));
        got_epi.push(ConvEpilogueOp::Act(act));
        let mut want = vec![0.0; s.output_len()];
        naive::forward(s, &x, &w, &mut want, &want_epi);
        let want = cl(&want, s.batch, s.out_channels, plane_out);
        let mut got = vec![f32::NAN; s.output_len()];
        run(&x_in, &got_epi, &mut got);
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "{s:?} {act:?}: output {i} is {g}, expected {e}"
            );
        }
    }
}

#[test]
fn pointwise_matches_naive() {
    for (batch, cin, hw, cout) in [
        (1, 16, (7, 7), 96),
        (2, 3, (3, 5), 5),
        (1, 27, (1, 1), 40),
        (2, 24, (9, 4), 17),
        (1, 160, (5, 5), 33),
        // More channels than pixels, large enough to split: tasks take panel groups.
        (1, 256, (7, 7), 632),
    ] {
        let s = shape(batch, cin, hw, cout, (1, 1), 1, 0, 1, 1);
        let w = rand(s.weight_len(), 11);
        let packed = pack(&s, &w);
        check_against_naive(&s, 10, false, |x, epi, out| {
            pointwise(&s, x, &packed, out, epi)
        });
    }
}

#[test]
fn gathered_convolutions_match_naive() {
    for (batch, cin, hw, cout, k, stride, pad, dil) in [
        (1, 3, (11, 9), 32, (3, 3), 2, 1, 1),
        (2, 5, (6, 7), 17, (3, 3), 1, 1, 1),
        (1, 8, (9, 9), 16, (5, 5), 1, 2, 1),
        (1, 4, (8, 8), 9, (3, 3), 1, 2, 2),
        (2, 6, (7, 5), 20, (1, 1), 2, 0, 1),
        (1, 7, (4, 6), 3, (2, 3), 1, 0, 1),
    ] {
        let s = shape(batch, cin, hw, cout, k, stride, pad, dil, 1);
        let w = rand(s.weight_len(), 11);
        let packed = pack(&s, &w);
        check_against_naive(&s, 10, false, |x, epi, out| conv(&s, x, &packed, out, epi));
    }
}

#[test]
fn convolutions_of_nchw_inputs_match_naive() {
    for (batch, cin, hw, cout, k, stride, pad) in [
        (1, 3, (23, 21), 32, (3, 3), 2, 1),
        (2, 3, (9, 14), 17, (3, 3), 1, 1),
        (1, 4, (12, 11), 8, (2, 3), 2, 0),
        (1, 2, (13, 16), 40, (7, 7), 2, 3),
        (1, 5, (6, 5), 16, (1, 1), 2, 0),
    ] {
        let s = shape(batch, cin, hw, cout, k, stride, pad, 1, 1);
        assert!(supports_nchw_input(&s));
        let w = rand(s.weight_len(), 11);
        let packed = pack_nchw_input(&s, &w);
        check_against_naive(&s, 10, true, |x, epi, out| {
            conv_from_nchw(&s, x, &packed, out, epi)
        });
    }
    let dilated = shape(1, 3, (9, 9), 8, (3, 3), 1, 2, 2, 1);
    assert!(!supports_nchw_input(&dilated));
}

#[test]
fn depthwise_matches_naive() {
    for (batch, c, hw, k, stride, pad) in [
        (1, 32, (9, 10), (3, 3), 1, 1),
        (2, 13, (7, 7), (3, 3), 2, 1),
        (1, 8, (8, 6), (3, 3), 2, 1),
        (1, 24, (1, 1), (3, 3), 1, 1),
        (1, 16, (2, 3), (3, 3), 2, 1),
        (1, 20, (9, 9), (5, 5), 1, 2),
        (2, 12, (6, 5), (3, 3), 1, 0),
        (1, 9, (6, 6), (2, 4), 1, 1),
    ] {
        let s = shape(batch, c, hw, c, k, stride, pad, 1, c);
        let w = rand(s.weight_len(), 11);
        let taps = depthwise::pack(&s, &w);
        check_against_naive(&s, 10, false, |x, epi, out| {
            depthwise::forward(&s, x, &taps, out, epi)
        });
    }
}

#[test]
fn layouts_round_trip_and_pool() {
    let (n, c, plane) = (3, 13, 29);
    let x = rand(n * c * plane, 5);
    let y = cl(&x, n, c, plane);
    assert_eq!(y[(plane + 4) * c + 7], x[(c + 7) * plane + 4]);
    let mut back = vec![0.0; x.len()];
    to_nchw(&y, n, c, plane, &mut back);
    assert_eq!(back, x);
    let mut pooled = vec![0.0; n * c];
    global_avg_pool(&y, n, plane, c, &mut pooled);
    for (i, p) in pooled.iter().enumerate() {
        let mean = x[i * plane..(i + 1) * plane].iter().sum::<f32>() / plane as f32;
        assert!((p - mean).abs() < 1e-5, "channel {i}: {p} vs {mean}");
    }
}

#[test]
fn fused_expansion_and_depthwise_match_the_two_steps() {
    use super::expand_dw::{forward, supports, ExpandDw};
    use crate::conv::expand_dw::Stage;
    // (batch, cin, hw, cexp, k, stride, pad, with bias and ReLU6): odd sizes, partial
    // registers and panels, stride 2 with odd and even rows, 5x5, images split across tasks.
    for (batch, cin, hw, cexp, k, stride, pad, epi) in [
        (1, 16, (9, 11), 96, 3, 2, 1, true),
        (2, 5, (7, 6), 20, 3, 1, 1, true),
        (1, 8, (10, 10), 24, 5, 1, 2, false),
        (1, 16, (40, 40), 96, 3, 1, 1, true),
        (2, 24, (31, 30), 144, 3, 2, 1, true),
        (1, 4, (1, 1), 8, 3, 1, 1, true),
    ] {
        let e = shape(batch, cin, hw, cexp, (1, 1), 1, 0, 1, 1);
        let d = shape(batch, cexp, hw, cexp, (k, k), stride, pad, 1, cexp);
        assert!(supports(&e, &d));
        let x = rand(e.input_len(), 1);
        let (ew, dw) = (rand(e.weight_len(), 2), rand(d.weight_len(), 3));
        let stage = |seed| Stage {
            bias: epi.then(|| rand(cexp, seed)),
            act: epi.then_some(Activation::Relu6),
        };
        let f = ExpandDw {
            expand: e,
            expand_w: pack(&e, &ew),
            expand_epi: stage(4),
            dw: d,
            dw_w: depthwise::pack(&d, &dw),
            dw_epi: stage(5),
        };
        let mut mid = vec![0.0; e.output_len()];
        f.expand_epi
            .with_ops(|epi| pointwise(&e, &x, &f.expand_w, &mut mid, epi));
        let mut want = vec![0.0; d.output_len()];
        f.dw_epi
            .with_ops(|epi| depthwise::forward(&d, &mid, &f.dw_w, &mut want, epi));
        let mut got = vec![f32::NAN; d.output_len()];
        forward(&f, &x, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{d:?}: output {i} is {g}, expected {w}"
            );
        }
    }
    // Not for a strided or padded "expansion", nor a depthwise conv reading another shape.
    let e = shape(1, 8, (6, 6), 16, (1, 1), 2, 0, 1, 1);
    let d = shape(1, 16, (3, 3), 16, (3, 3), 1, 1, 1, 16);
    assert!(!supports(&e, &d));
    let e = shape(1, 8, (6, 6), 16, (1, 1), 1, 0, 1, 1);
    assert!(!supports(
        &e,
        &shape(1, 16, (6, 5), 16, (3, 3), 1, 1, 1, 16)
    ));
}
