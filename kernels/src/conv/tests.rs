//! Every path against the naive f64 convolution, over many geometries; SIMD against scalar for
//! the depthwise row kernel; tiles that do not divide the pixel count; serial against parallel.

use super::depthwise::{self, PlaneJob};
use super::im2col::valid_range;
use super::*;
use crate::isa;

/// A small deterministic generator (xorshift64*), values uniform in [-1, 1).
struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
                r as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

/// `(batch, cin, h, w, cout, kh, kw, stride, padding, dilation, groups)`.
type Case = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    (usize, usize),
    (usize, usize),
    (usize, usize),
    usize,
);

fn shape_of(c: Case) -> Conv2dShape {
    let (batch, cin, h, w, cout, kh, kw, stride, padding, dilation, groups) = c;
    Conv2dShape {
        batch,
        in_channels: cin,
        in_h: h,
        in_w: w,
        out_channels: cout,
        kernel_h: kh,
        kernel_w: kw,
        params: Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        },
    }
}

/// Small geometries covering every path and option (odd sizes, asymmetric everything).
const CASES: &[Case] = &[
    (1, 3, 7, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 4, 11, 8, 6, 3, 5, (2, 1), (1, 2), (1, 1), 1),
    (1, 6, 13, 13, 4, 3, 3, (2, 2), (2, 2), (2, 2), 2),
    (2, 5, 9, 10, 7, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (1, 6, 8, 7, 9, 1, 1, (1, 1), (0, 0), (1, 1), 3),
    (1, 4, 9, 9, 8, 1, 1, (2, 2), (0, 0), (1, 1), 1),
    (1, 4, 6, 7, 5, 1, 1, (1, 1), (1, 0), (1, 1), 1),
    (1, 8, 15, 17, 8, 3, 3, (1, 1), (1, 1), (1, 1), 8),
    (2, 5, 14, 15, 10, 3, 3, (2, 2), (1, 1), (1, 1), 5),
    (1, 3, 12, 11, 3, 5, 5, (1, 1), (2, 2), (2, 2), 3),
    (1, 2, 20, 37, 6, 7, 7, (3, 3), (3, 3), (1, 1), 2),
    (1, 1, 9, 9, 3, 3, 3, (1, 1), (0, 0), (1, 1), 1),
    (3, 4, 6, 5, 4, 2, 3, (1, 2), (0, 1), (2, 1), 2),
    (1, 3, 5, 5, 2, 5, 5, (1, 1), (0, 0), (1, 1), 1),
    (1, 2, 4, 4, 3, 7, 7, (1, 1), (3, 3), (1, 1), 1),
    (1, 2, 5, 45, 2, 3, 3, (1, 1), (1, 1), (1, 1), 2),
    (2, 3, 6, 71, 3, 3, 3, (2, 2), (1, 1), (1, 1), 3),
    (1, 4, 7, 7, 8, 3, 3, (1, 2), (2, 0), (3, 1), 4),
    (1, 2, 3, 3, 2, 3, 3, (1, 1), (4, 4), (1, 1), 2),
    // Depthwise with small output planes (the per-pixel tap lists): 2x2 at stride 1 and 2, a
    // channel multiplier, a 5x5 kernel over a 3x3 plane.
    (2, 6, 2, 2, 6, 3, 3, (1, 1), (1, 1), (1, 1), 6),
    (1, 4, 4, 4, 8, 3, 3, (2, 2), (1, 1), (1, 1), 4),
    (1, 3, 3, 3, 3, 5, 5, (1, 1), (2, 2), (1, 1), 3),
    // Depthwise at stride 2 over column phases: a 5x5 kernel, and a dilated one with a channel
    // multiplier and a row stride of its own.
    (1, 4, 15, 19, 4, 5, 5, (2, 2), (2, 2), (1, 1), 4),
    (1, 3, 17, 21, 6, 3, 3, (1, 2), (2, 2), (2, 2), 3),
    // Rows wide enough for the AVX2 kernel's phases (more than 16 outputs), split 16 inputs at a
    // time plus a tail: odd and even widths, with and without padding.
    (1, 3, 9, 45, 3, 3, 3, (2, 2), (1, 1), (1, 1), 3),
    (2, 2, 6, 40, 4, 3, 3, (2, 2), (0, 0), (1, 1), 2),
    (2, 3, 6, 5, 4, 3, 2, (1, 1), (2, 1), (1, 1), 1),
    (1, 2, 5, 6, 3, 2, 4, (1, 1), (0, 3), (1, 1), 1),
    // One-pixel planes (a small image's last stages): pointwise as a matrix-vector product,
    // depthwise as one tap, with and without the tap landing on the pixel.
    (2, 6, 1, 1, 9, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (2, 4, 1, 1, 8, 3, 3, (1, 1), (1, 1), (1, 1), 4),
    (1, 3, 1, 1, 3, 3, 3, (2, 2), (1, 1), (1, 1), 3),
    (1, 2, 1, 1, 4, 5, 5, (1, 1), (2, 2), (1, 1), 2),
    // One output pixel of a dense conv: the patch column times the weights.
    (2, 3, 3, 3, 4, 3, 3, (1, 1), (0, 0), (1, 1), 1),
    (1, 2, 1, 1, 3, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 2, 4, 4, 3, 3, 3, (2, 2), (0, 0), (1, 1), 1),
    // Strided implicit GEMMs (few input channels): column phases with and without padding, row
    // stride alone, an odd-width 7x7 stem; and a 1x1 downsample, which stays on im2col.
    (2, 4, 9, 24, 6, 3, 3, (1, 2), (1, 0), (1, 1), 1),
    (1, 4, 10, 12, 5, 2, 3, (2, 1), (1, 1), (1, 1), 1),
    (1, 6, 8, 22, 7, 1, 1, (2, 2), (0, 0), (1, 1), 1),
    (1, 3, 23, 41, 8, 7, 7, (2, 2), (3, 3), (1, 1), 1),
    // A 1x1 depthwise (a 3x3 trimmed on a 1x1 plane): the depthwise kernel, not one GEMM per group.
    (2, 6, 5, 4, 12, 1, 1, (1, 1), (0, 0), (1, 1), 6),
];

/// Large enough to cross CONV_PAR_MIN_MACS: exercises every parallel split.
const PAR_CASES: &[Case] = &[
    (4, 16, 28, 28, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (3, 8, 14, 15, 12, 3, 5, (1, 1), (1, 2), (1, 1), 1),
    (1, 32, 20, 20, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (3, 16, 12, 13, 24, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (4, 16, 16, 17, 16, 3, 3, (2, 2), (1, 1), (1, 1), 2),
    (1, 64, 16, 17, 64, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (3, 32, 13, 13, 48, 1, 1, (1, 1), (0, 0), (1, 1), 2),
    (2, 64, 30, 29, 64, 3, 3, (1, 1), (1, 1), (1, 1), 64),
    (2, 96, 28, 29, 96, 3, 3, (2, 2), (1, 1), (1, 1), 96),
    (8, 32, 4, 5, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (5, 24, 6, 6, 40, 3, 3, (1, 1), (1, 1), (1, 1), 2),
    (1, 64, 6, 6, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 64, 5, 6, 96, 3, 3, (1, 1), (1, 1), (1, 1), 2),
    (1, 128, 7, 7, 96, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    // Prime channel counts (pruning makes them): channel blocks that do not divide the group.
    (1, 16, 32, 32, 17, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    (1, 17, 8, 8, 67, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 67, 9, 9, 31, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    (1, 74, 12, 12, 82, 1, 1, (1, 1), (0, 0), (1, 1), 2),
    // Channel blocks of packed weight rows start on a panel: 70 channels in two blocks.
    (1, 96, 7, 7, 70, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    // The implicit GEMM's narrowest rows (a full and a narrow tile, channel blocks) and a 7x7
    // kernel.
    (1, 24, 10, 10, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 8, 16, 16, 12, 7, 7, (1, 1), (3, 3), (1, 1), 1),
    // Pixel-major: every task all rows (weights outweigh the input), a ragged last panel, rows
    // narrower than a tile; and 1x1 tasks split by pixel ranges and by panels.
    (1, 48, 5, 7, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 40, 30, 30, 24, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (1, 160, 7, 7, 72, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    // Pixel-major at stride 2: column phases of a deep input, all rows per task and row runs.
    (1, 40, 13, 14, 48, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    (2, 24, 30, 31, 32, 3, 3, (2, 2), (1, 1), (1, 1), 1),
];

fn assert_near(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let tol = 1e-4 * (1.0 + e.abs());
        assert!(
            (a - e).abs() <= tol || (a.is_nan() && e.is_nan()),
            "{what}: element {i} is {a}, expected {e}"
        );
    }
}

fn paths(s: &Conv2dShape) -> Vec<ConvPath> {
    let mut p = vec![ConvPath::General];
    if s.path() == ConvPath::Pointwise {
        p.push(ConvPath::Pointwise);
    }
    if s.in_per_group() == 1 {
        p.push(ConvPath::Depthwise);
    }
    if shifted::supports(s) {
        p.push(ConvPath::Shifted);
    }
    if implicit::supports(s) {
        p.push(ConvPath::Implicit);
    }
    if s.params.groups == 1 {
        p.push(ConvPath::FewOutputs);
    }
    p
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    res: Vec<f32>,
    dy: Vec<f32>,
}

fn data(s: &Conv2dShape, seed: u64) -> Data {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    Data {
        x: r.vec(s.input_len()),
        w: r.vec(s.weight_len()),
        bias: r.vec(s.out_channels),
        res: r.vec(s.output_len()),
        dy: r.vec(s.output_len()),
    }
}

fn epilogues<'a>(d: &'a Data) -> Vec<(&'static str, Vec<ConvEpilogueOp<'a>>)> {
    use ConvEpilogueOp::*;
    vec![
        ("none", vec![]),
        (
            "bias+add+relu",
            vec![Bias(&d.bias), Add(&d.res), Act(Activation::Relu)],
        ),
        ("bias+relu6", vec![Bias(&d.bias), Act(Activation::Relu6)]),
        (
            "bias+clamp",
            vec![Bias(&d.bias), Act(Activation::Clamp { lo: -0.3, hi: 0.4 })],
        ),
        ("silu+bias", vec![Act(Activation::Silu), Bias(&d.bias)]),
        ("add+gelu", vec![Add(&d.res), Act(Activation::Gelu)]),
    ]
}

/// Pixel runs that do and do not divide the plane, and image groups that do and do not divide
/// the batch, besides the default.
fn tilings(s: &Conv2dShape) -> Vec<general::Tiling> {
    use general::Tiling::*;
    let (oh, ow) = s.out_hw();
    vec![
        general::tiling(s),
        Pixels(1),
        Pixels(7),
        Pixels(13),
        Pixels(oh * ow),
        Images(1),
        Images(2),
        Images(s.batch),
    ]
}

fn check_forward(c: Case, seed: u64) {
    let s = shape_of(c);
    let d = data(&s, seed);
    for (name, epi) in epilogues(&d) {
        let mut want = vec![0.0; s.output_len()];
        naive::forward(&s, &d.x, &d.w, &mut want, &epi);
        for path in paths(&s) {
            let mut got = vec![f32::NAN; s.output_len()];
            forward_with(path, &s, &d.x, &d.w, &mut got, &epi);
            assert_near(&got, &want, &format!("{c:?} {path:?} {name}"));
        }
        for tiling in tilings(&s) {
            let mut got = vec![f32::NAN; s.output_len()];
            general::forward_tiled(&s, tiling, &d.x, (&d.w).into(), &mut got, &epi);
            assert_near(&got, &want, &format!("{c:?} {tiling:?} {name}"));
        }
        let rows =
            crate::gemm::PackedRows::new(MatRef::row_major(&d.w, s.out_channels, s.patch_len()));
        for path in paths(&s).into_iter().filter(|&p| prepacked_runs(p, &s)) {
            let mut got = vec![f32::NAN; s.output_len()];
            forward_weights_with(path, &s, &d.x, Weights::Packed(&rows), &mut got, &epi);
            assert_near(&got, &want, &format!("{c:?} {path:?} packed rows {name}"));
        }
        if prepacked_runs(ConvPath::General, &s) {
            for tiling in tilings(&s) {
                let mut got = vec![f32::NAN; s.output_len()];
                let w = Weights::Packed(&rows);
                general::forward_tiled(&s, tiling, &d.x, w, &mut got, &epi);
                assert_near(&got, &want, &format!("{c:?} {tiling:?} packed rows {name}"));
            }
        }
        if pixel_major::supports(&s) {
            let packed = pixel_major::pack(&s, &d.w);
            let mut got = vec![f32::NAN; s.output_len()];
            pixel_major::forward(&s, &d.x, &packed, &mut got, &epi);
            assert_near(&got, &want, &format!("{c:?} pixel-major {name}"));
        }
        if winograd::supports(&s) {
            for tile in [winograd::TileSize::F2, winograd::TileSize::F4] {
                let packed = winograd::pack(&s, &d.w, tile);
                for isa in [isa::current(), isa::Isa::Scalar] {
                    let mut got = vec![f32::NAN; s.output_len()];
                    winograd::forward_on(isa, &s, &d.x, &packed, &mut got, &epi);
                    assert_near(
                        &got,
                        &want,
                        &format!("{c:?} Winograd {tile:?} {isa:?} {name}"),
                    );
                }
            }
        }
        if s.in_per_group() == 1 {
            for kernel in depthwise::Kernel::available() {
                let mut got = vec![f32::NAN; s.output_len()];
                depthwise::forward_on(kernel, &s, &d.x, (&d.w).into(), &mut got, &epi);
                assert_near(&got, &want, &format!("{c:?} depthwise {kernel:?} {name}"));
            }
        }
    }
}

fn check_backward(c: Case, seed: u64) {
    let s = shape_of(c);
    let d = data(&s, seed);
    let mut want_dx = vec![0.0; s.input_len()];
    let mut want_dw = vec![0.0; s.weight_len()];
    naive::backward_input(&s, &d.dy, &d.w, &mut want_dx);
    naive::backward_weight(&s, &d.x, &d.dy, &mut want_dw);
    for path in paths(&s) {
        let mut dx = vec![f32::NAN; s.input_len()];
        backward_input_with(path, &s, &d.dy, &d.w, &mut dx);
        assert_near(&dx, &want_dx, &format!("{c:?} {path:?} grad input"));
        let mut dw = vec![f32::NAN; s.weight_len()];
        backward_weight_with(path, &s, &d.x, &d.dy, &mut dw);
        assert_near(&dw, &want_dw, &format!("{c:?} {path:?} grad weight"));
    }
    for tiling in tilings(&s) {
        let mut dx = vec![f32::NAN; s.input_len()];
        general::backward_input_tiled(&s, tiling, &d.dy, &d.w, &mut dx);
        assert_near(&dx, &want_dx, &format!("{c:?} {tiling:?} grad input"));
        let mut dw = vec![0.0; s.weight_len()];
        general::backward_weight_tiled(&s, tiling, &d.x, &d.dy, &mut dw);
        assert_near(&dw, &want_dw, &format!("{c:?} {tiling:?} grad weight"));
    }
    let (oh, ow) = s.out_hw();
    let mut want_db = vec![0.0f32; s.out_channels];
    for (i, v) in d.dy.iter().enumerate() {
        want_db[(i / (oh * ow)) % s.out_channels] += v;
    }
    let mut db = vec![f32::NAN; s.out_channels];
    backward_bias(&s, &d.dy, &mut db);
    assert_near(&db, &want_db, &format!("{c:?} grad bias"));
}

#[test]
fn forward_matches_naive_on_every_path() {
    for (i, &c) in CASES.iter().enumerate() {
        check_forward(c, i as u64);
    }
}

#[test]
fn backward_matches_naive_on_every_path() {
    for (i, &c) in CASES.iter().enumerate() {
        check_backward(c, 100 + i as u64);
    }
}

#[test]
fn parallel_splits_match_naive() {
    for (i, &c) in PAR_CASES.iter().enumerate() {
        let s = shape_of(c);
        assert!(
            s.macs() >= crate::parallel::CONV_PAR_MIN_MACS,
            "{c:?} too small"
        );
        check_forward(c, 200 + i as u64);
        check_backward(c, 300 + i as u64);
    }
}

#[test]
fn dispatch_picks_the_specialised_paths() {
    assert_eq!(shape_of(CASES[3]).path(), ConvPath::Pointwise);
    assert_eq!(shape_of(CASES[4]).path(), ConvPath::Pointwise);
    assert_eq!(shape_of(CASES[5]).path(), ConvPath::General);
    assert_eq!(shape_of(CASES[7]).path(), ConvPath::Depthwise);
    assert_eq!(shape_of(CASES[11]).path(), ConvPath::Depthwise);
    assert_eq!(shape_of(CASES[0]).path(), ConvPath::General);
    assert_eq!(shape_of(CASES[CASES.len() - 1]).path(), ConvPath::Depthwise);
}

#[test]
fn output_size_follows_pytorch() {
    let p = Conv2dParams::default()
        .stride(2, 1)
        .padding(1, 0)
        .dilation(1, 2);
    // floor((H + 2p - d(k-1) - 1) / s) + 1
    assert_eq!(p.output_size(7, 9, 3, 3), Some((4, 5)));
    assert_eq!(Conv2dParams::default().output_size(2, 2, 3, 3), None);
    assert_eq!(
        Conv2dParams::default()
            .padding(1, 1)
            .output_size(2, 2, 3, 3),
        Some((2, 2))
    );
    assert_eq!(
        Conv2dParams::default().stride(0, 1).output_size(5, 5, 1, 1),
        None
    );
    assert_eq!(
        Conv2dParams::default()
            .dilation(1, 0)
            .output_size(5, 5, 1, 1),
        None
    );
    assert_eq!(Conv2dParams::default().output_size(5, 5, 0, 1), None);
}

#[test]
fn valid_range_brute_force() {
    for out_len in 0..6 {
        for in_len in 0..6 {
            for stride in 1..4 {
                for offset in 0..5 {
                    for pad in 0..4 {
                        let inside = |o: usize| {
                            let i = (o * stride + offset) as isize - pad as isize;
                            i >= 0 && i < in_len as isize
                        };
                        let (lo, hi) = valid_range(out_len, in_len, stride, offset, pad);
                        for o in 0..out_len {
                            assert_eq!(
                                (lo..hi).contains(&o),
                                inside(o),
                                "{out_len} {in_len} {stride} {offset} {pad} at {o}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn depthwise_simd_matches_scalar() {
    let mut r = Rng(7);
    let src = r.vec(20_000);
    let taps = r.vec(64);
    for (sy, sx) in [(1, 1), (2, 2), (1, 2), (2, 1), (3, 3)] {
        for (kh, kw) in [(1, 1), (3, 3), (5, 5), (7, 7), (2, 3)] {
            for (dy, dx) in [(1, 1), (2, 2), (1, 2)] {
                for nrows in [1, 2, 3, 4, 5, 9] {
                    for ow in [1usize, 2, 3, 4, 6, 7, 8, 9, 10, 15, 16, 17, 31, 33, 45] {
                        for (lo, hi) in [(f32::NEG_INFINITY, f32::INFINITY), (0.0, 0.5)] {
                            let ld = (ow + 8) * sx + kw * dx + 2;
                            // At stride 2 also rows split into two column phases.
                            let phase = (ld / 2).max(ow.next_multiple_of(16) + (kw - 1) * dx / 2);
                            let layouts: &[(usize, usize)] = if sx == 2 {
                                &[(ld, 0), (2 * phase, phase)]
                            } else {
                                &[(ld, 0)]
                            };
                            for &(ld, phase) in layouts {
                                let job = PlaneJob {
                                    src: &src[3..],
                                    ld,
                                    taps: &taps,
                                    kh,
                                    kw,
                                    sy,
                                    sx,
                                    dy,
                                    dx,
                                    init: 0.25,
                                    lo,
                                    hi,
                                    phase,
                                };
                                let oy0 = 1;
                                assert!((oy0 + nrows + kh * dy) * sy * ld < src.len() - 3);
                                let mut want = vec![0.0; ow * nrows];
                                let mut got = vec![f32::NAN; ow * nrows];
                                depthwise::rows_scalar(&job, oy0, ow, &mut want);
                                for kernel in depthwise::Kernel::available() {
                                    got.fill(f32::NAN);
                                    depthwise::rows_on(kernel, &job, oy0, ow, &mut got);
                                    let what = format!(
                                        "{kernel:?} s {sy},{sx} k {kh}x{kw} d {dy},{dx} rows \
                                         {nrows} ow {ow} phase {phase}"
                                    );
                                    assert_near(&got, &want, &what);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn depthwise_keeps_nan() {
    let mut src = vec![1.0f32; 64];
    src[3] = f32::NAN;
    let job = PlaneJob {
        src: &src,
        ld: 20,
        taps: &[1.0],
        kh: 1,
        kw: 1,
        sy: 1,
        sx: 1,
        dy: 1,
        dx: 1,
        init: 0.0,
        lo: 0.0,
        hi: 6.0,
        phase: 0,
    };
    let mut out = vec![0.0; 9];
    depthwise::rows(isa::current(), &job, 0, 9, &mut out);
    assert!(out[3].is_nan() && out[2] == 1.0);
}

#[test]
fn empty_batch_is_a_no_op() {
    let s = shape_of((0, 3, 5, 5, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1));
    let w = vec![1.0; s.weight_len()];
    let mut out = vec![];
    forward(&s, &[], &w, &mut out, &[]);
    let mut dw = vec![f32::NAN; s.weight_len()];
    backward_weight(&s, &[], &[], &mut dw);
    assert!(dw.iter().all(|&v| v == 0.0));
}

/// 16-bit weights: every path computes what it computes with the decoded weights in f32 (only
/// the storage differs; the 16-bit GEMM sums depth blocks in its own order).
#[test]
fn half_weights_match_their_decoded_f32_values_on_every_path() {
    use crate::half_weights::{HalfKind, HalfVec};
    for (i, &c) in CASES.iter().chain(PAR_CASES).enumerate() {
        let s = shape_of(c);
        let d = data(&s, 100 + i as u64);
        let kind = [HalfKind::F16, HalfKind::Bf16][i % 2];
        let h = HalfVec::encode(kind, &d.w).unwrap();
        let decoded = h.to_f32();
        for (name, epi) in epilogues(&d) {
            for path in paths(&s) {
                let mut want = vec![f32::NAN; s.output_len()];
                forward_with(path, &s, &d.x, &decoded, &mut want, &epi);
                let mut got = vec![f32::NAN; s.output_len()];
                let w = Weights::Half(h.as_slice());
                forward_weights_with(path, &s, &d.x, w, &mut got, &epi);
                assert_near(&got, &want, &format!("{c:?} {path:?} {kind:?} {name}"));
            }
        }
    }
}

#[test]
fn copy_even_takes_every_other_value() {
    // Every length around the vector widths (8 and 4 lanes) and their multiples, so both the
    // vector loop and the scalar tail run.
    for n in 1..=40 {
        let src: Vec<f32> = (0..2 * n - 1).map(|i| i as f32).collect();
        let mut dst = vec![f32::NAN; n];
        super::im2col::copy_even(&mut dst, &src);
        let want: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
        assert_eq!(dst, want, "n = {n}");
    }
}

/// Pixel ranges cover every pixel of every image once, start at whole column panels, and number
/// `per_image` unless the plane has fewer panels.
#[test]
fn pixel_ranges_are_whole_panels() {
    use std::sync::Mutex;
    let q = crate::gemm::column_panel();
    for (batch, plane, per_image) in [(1, 784, 8), (2, 49, 2), (1, 49, 8), (1, 7, 2), (3, 100, 3)] {
        let rows = 2;
        let mut out = vec![0f32; batch * rows * plane];
        let seen = Mutex::new(Vec::new());
        ranges_in_place(&mut out, batch, rows, plane, per_image, |n, p0, dst| {
            assert_eq!(dst.rows, rows);
            seen.lock().unwrap().push((n, p0, dst.cols));
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        let expect = per_image.min(plane.div_ceil(q));
        for n in 0..batch {
            let mine: Vec<_> = seen.iter().filter(|r| r.0 == n).collect();
            assert_eq!(mine.len(), expect, "{plane} pixels in {per_image}");
            let mut next = 0;
            for &&(_, p0, len) in &mine {
                assert_eq!(p0, next);
                assert!(p0.is_multiple_of(q) && len > 0);
                next = p0 + len;
            }
            assert_eq!(next, plane);
            // Balanced: whole panels each, counts differing by at most one.
            let panels: Vec<usize> = mine.iter().map(|r| r.2.div_ceil(q)).collect();
            let (lo, hi) = (panels.iter().min().unwrap(), panels.iter().max().unwrap());
            assert!(hi - lo <= 1, "{plane} pixels in {per_image}: {panels:?}");
        }
    }
}
