//! The channels-last kernels against the naive NCHW convolution (inputs, residuals and outputs
//! moved between layouts by [`layout`]), over geometries with border taps, channel counts that
//! leave partial registers and panels, tiles that do not divide the pixels, and epilogues applied
//! in registers or after the store.

use super::layout::{global_avg_pool, to_channels_last, to_nchw};
use super::*;
use crate::activation::Activation;
use crate::conv::{naive, Conv2dParams};

pub(super) fn rand(n: usize, seed: u64) -> Vec<f32> {
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
        // Two 16-channel registers and a partial one, tiles of 8 and 4 pixels in each row.
        (1, 37, (5, 15), (3, 3), 1, 1),
        (1, 40, (7, 30), (3, 3), 2, 1),
        (1, 21, (6, 14), (5, 5), 1, 2),
    ] {
        let s = shape(batch, c, hw, c, k, stride, pad, 1, c);
        let w = rand(s.weight_len(), 11);
        let taps = depthwise::pack(&s, &w);
        check_against_naive(&s, 10, false, |x, epi, out| {
            depthwise::forward(&s, x, &taps, out, epi)
        });
        // Every row kernel this CPU has, whichever the process picks.
        for (name, kernel) in depthwise::row_kernels(&s) {
            eprintln!("depthwise {name}: {s:?}");
            check_against_naive(&s, 10, false, |x, epi, out| {
                depthwise::forward_with(&s, x, &taps, out, epi, Some(kernel))
            });
        }
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
fn fused_blocks_match_their_layers_run_apart() {
    use super::block::{
        expands_into, feeds_from_image, forward, projects_from, Block, Depthwise, Feed, Pointwise,
    };
    use crate::conv::expand_dw::Stage;
    // (batch, cin, hw, cexp, k, stride, pad, cout, with bias and ReLU6): odd sizes, partial
    // registers and panels, stride 2 with odd and even rows, 5x5, images split across tasks,
    // projections gathering rows across images and ending in partial tiles.
    let cases = [
        (1, 16, (9, 11), 96, 3, 2, 1, 24, true),
        (2, 5, (7, 6), 20, 3, 1, 1, 5, true),
        (1, 8, (10, 10), 24, 5, 1, 2, 8, false),
        (1, 16, (40, 40), 96, 3, 1, 1, 16, true),
        (2, 24, (31, 30), 144, 3, 2, 1, 32, true),
        (1, 4, (1, 1), 8, 3, 1, 1, 4, true),
        (3, 32, (14, 14), 192, 3, 1, 1, 32, true),
    ];
    for (batch, cin, hw, cexp, k, stride, pad, cout, epi) in cases {
        let e = shape(batch, cin, hw, cexp, (1, 1), 1, 0, 1, 1);
        let d = shape(batch, cexp, hw, cexp, (k, k), stride, pad, 1, cexp);
        let p = shape(batch, cexp, d.out_hw(), cout, (1, 1), 1, 0, 1, 1);
        assert!(expands_into(&e, &d) && projects_from(&d, &p));
        let stage = |c, seed| Stage {
            bias: epi.then(|| rand(c, seed)),
            act: epi.then_some(Activation::Relu6),
        };
        let pointwise_layer = |s: &Conv2dShape, seed| Pointwise {
            shape: *s,
            w: pack(s, &rand(s.weight_len(), seed)),
            epi: Stage {
                act: None,
                ..stage(s.out_channels, seed + 1)
            },
        };
        let expand = Pointwise {
            epi: stage(cexp, 3),
            ..pointwise_layer(&e, 2)
        };
        let dw = Depthwise {
            shape: d,
            w: depthwise::pack(&d, &rand(d.weight_len(), 4)),
            epi: stage(cexp, 5),
        };
        let project = pointwise_layer(&p, 6);
        // The layers one by one.
        let x = rand(e.input_len(), 1);
        let residual = rand(p.output_len(), 8);
        let mut expanded = vec![0.0; e.output_len()];
        expand
            .epi
            .with_ops(|ops| pointwise(&e, &x, &expand.w, &mut expanded, ops));
        let mut dw_out = vec![0.0; d.output_len()];
        dw.epi
            .with_ops(|ops| depthwise::forward(&d, &expanded, &dw.w, &mut dw_out, ops));
        let mut projected = vec![0.0; p.output_len()];
        let bias = project.epi.bias.clone().unwrap_or_else(|| vec![0.0; cout]);
        let ops = [ConvEpilogueOp::Bias(&bias), ConvEpilogueOp::Add(&residual)];
        pointwise(&p, &dw_out, &project.w, &mut projected, &ops);
        // Each fusion: expansion + depthwise, depthwise + projection (with and without the
        // residual), all three.
        let check = |got: &[f32], want: &[f32], what: &str| {
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{what} {d:?}: output {i} is {g}, expected {w}"
                );
            }
        };
        let mut b = Block {
            feed: Some(Feed::Expand(expand)),
            dw,
            project: None,
        };
        let mut got = vec![f32::NAN; d.output_len()];
        forward(&b, &x, None, &mut got);
        check(&got, &dw_out, "expand+dw");
        b.project = Some(project);
        let mut got = vec![f32::NAN; p.output_len()];
        forward(&b, &x, Some(&residual), &mut got);
        check(&got, &projected, "expand+dw+project");
        b.feed = None;
        forward(&b, &expanded, Some(&residual), &mut got);
        check(&got, &projected, "dw+project");
        let unadded: Vec<f32> = projected
            .iter()
            .zip(&residual)
            .map(|(y, r)| y - r)
            .collect();
        forward(&b, &expanded, None, &mut got);
        for (i, (g, w)) in got.iter().zip(&unadded).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "dw+project {d:?}: {i}: {g} vs {w}"
            );
        }
    }
    // The stem reading an NCHW image as the feed: odd and even sizes, stride 1 and 2 stems,
    // the depthwise conv at stride 1 and 2, rows split across tasks.
    for (hw, stem_stride, dw_stride, cout) in [
        ((64, 64), 2, 1, 16),
        ((33, 30), 2, 2, 24),
        ((20, 17), 1, 1, 8),
        ((9, 9), 2, 1, 5),
    ] {
        let stem = shape(1, 3, hw, 32, (3, 3), stem_stride, 1, 1, 1);
        let d = shape(1, 32, stem.out_hw(), 32, (3, 3), dw_stride, 1, 1, 32);
        let p = shape(1, 32, d.out_hw(), cout, (1, 1), 1, 0, 1, 1);
        assert!(feeds_from_image(&stem, &d) && projects_from(&d, &p));
        let stage = |c, seed| Stage {
            bias: Some(rand(c, seed)),
            act: Some(Activation::Relu6),
        };
        let x = rand(stem.input_len(), 11);
        let feed = Pointwise {
            shape: stem,
            w: pack_nchw_input(&stem, &rand(stem.weight_len(), 12)),
            epi: stage(32, 13),
        };
        let dw = Depthwise {
            shape: d,
            w: depthwise::pack(&d, &rand(d.weight_len(), 14)),
            epi: stage(32, 15),
        };
        let project = Pointwise {
            shape: p,
            w: pack(&p, &rand(p.weight_len(), 16)),
            epi: Stage {
                act: None,
                ..stage(cout, 17)
            },
        };
        let mut stem_out = vec![0.0; stem.output_len()];
        feed.epi
            .with_ops(|ops| conv_from_nchw(&stem, &x, &feed.w, &mut stem_out, ops));
        let mut dw_out = vec![0.0; d.output_len()];
        dw.epi
            .with_ops(|ops| depthwise::forward(&d, &stem_out, &dw.w, &mut dw_out, ops));
        let mut want = vec![0.0; p.output_len()];
        project
            .epi
            .with_ops(|ops| pointwise(&p, &dw_out, &project.w, &mut want, ops));
        let b = Block {
            feed: Some(Feed::Image(feed)),
            dw,
            project: Some(project),
        };
        let mut got = vec![f32::NAN; p.output_len()];
        forward(&b, &x, None, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "stem block {hw:?}: output {i} is {g}, expected {w}"
            );
        }
    }
    // Not from a batch of images.
    let stem = shape(2, 3, (8, 8), 16, (3, 3), 2, 1, 1, 1);
    assert!(!feeds_from_image(
        &stem,
        &shape(2, 16, (4, 4), 16, (3, 3), 1, 1, 1, 16)
    ));
    // Not for a strided or padded "expansion", a depthwise conv reading another shape, nor a
    // projection of another shape or with a stride.
    let e = shape(1, 8, (6, 6), 16, (1, 1), 2, 0, 1, 1);
    let d = shape(1, 16, (3, 3), 16, (3, 3), 1, 1, 1, 16);
    assert!(!expands_into(&e, &d));
    let e = shape(1, 8, (6, 6), 16, (1, 1), 1, 0, 1, 1);
    assert!(!expands_into(
        &e,
        &shape(1, 16, (6, 5), 16, (3, 3), 1, 1, 1, 16)
    ));
    let d = shape(1, 16, (6, 6), 16, (3, 3), 2, 1, 1, 16);
    assert!(projects_from(
        &d,
        &shape(1, 16, (3, 3), 8, (1, 1), 1, 0, 1, 1)
    ));
    assert!(!projects_from(
        &d,
        &shape(1, 16, (6, 6), 8, (1, 1), 1, 0, 1, 1)
    ));
    assert!(!projects_from(
        &d,
        &shape(1, 16, (3, 3), 8, (1, 1), 2, 0, 1, 1)
    ));
}
