//! The fused inference kernels (criterion), batch 1:
//!
//! - `fused_conv/<layer>/fused`: one conv step of the inference plan — the kernel the plan picks
//!   for the shape (Winograd F(4x4, 3x3) or F(2x2, 3x3) where `conv::winograd::preferred`,
//!   pixel-major tiles against weights packed once where `conv::pixel_major::preferred`, the
//!   channel-major paths otherwise, their weights packed once as the tiles' rows where
//!   `conv::prepacked_supported`) with bias, residual and activation applied in the store
//!   epilogue; `fused_weights_as_stored` is the same step on the weights as stored (A read in
//!   place or repacked per call), where the plan packs rows; `fused_direct` the direct path a
//!   Winograd step replaces (the plan's choice under `TLC_WINOGRAD=0`);
//! - `fused_conv/<layer>/unfused`: the same convolution with no epilogue, then one pass per graph
//!   node, as a node-by-node executor runs them: bias per channel, residual add into a new
//!   buffer, activation in place. The difference is what the fusion saves.
//! - `fused_conv/<layer>/fused_channels_last` (the MobileNetV2 layers): the same step on
//!   channels-last activations (`conv::channels_last`, weights packed once), as the plan runs
//!   networks with depthwise convolutions;
//! - `channels_last/<step>/{fused,two_steps}`: MobileNetV2's expansion + depthwise pairs of
//!   blocks 2 and 3 at 224 as the plan's one fused step (`conv::channels_last::block`, the
//!   expanded rows kept in an L2 ring) and as two channels-last steps through a 4.8 / 1.8 MB
//!   activation; `mnv2_stem.../{from_nchw,nchw_then_move}`: the image stem writing channels-last
//!   from the NCHW image, and the NCHW stem followed by the layout move it replaces;
//! - `plan/<network>`: a whole compiled plan (`tlc_engine::plan::Plan::run`) at batch 1, random
//!   weights, on the rayon pool (`RAYON_NUM_THREADS` sets its size; `tlc bench` prints the same
//!   network's per-step profile); `plan/mobilenet-v2 nchw` keeps its activations NCHW.
//!
//! The layers are ResNet-18's and MobileNetV2's at 224x224 (and ResNet-18's CIFAR form), chosen
//! so every conv path the plan uses at batch 1 appears: Winograd F4 and F2, pixel-major 3x3,
//! strided im2col, pointwise, depthwise.
//!
//! `cargo bench --bench fused -- --warm-up-time 1 --measurement-time 3 [filter]`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tlc::engine::plan::{Plan, PlanOptions};
use tlc::engine::{Model, Rng};
use tlc::kernels::conv::winograd::WinogradWeights;
use tlc::kernels::conv::{self, Conv2dParams, Conv2dShape, ConvEpilogueOp};
use tlc::kernels::elementwise::{binary, BinaryOp};
use tlc::kernels::gemm::{PackedPanels, PackedRows};
use tlc::kernels::half_weights::Weights;
use tlc::kernels::MatRef;
use tlc::kernels::{activation, Activation};
use tlc_models::zoo::{self, Arch, ArchSpec};

/// One plan step: a convolution and what its epilogue carries.
struct Layer {
    name: &'static str,
    /// (in channels, input side, out channels, kernel, stride, groups)
    geometry: (usize, usize, usize, usize, usize, usize),
    residual: bool,
    act: Activation,
}

// One row a layer: name, (in channels, input side, out channels, kernel, stride, groups),
// residual, activation.
#[rustfmt::skip]
const LAYERS: [Layer; 9] = [
    layer("r18_224_layer2_3x3_128@28_add_relu", (128, 28, 128, 3, 1, 1), true, Activation::Relu),
    layer("r18_224_layer4_3x3_512@7_add_relu", (512, 7, 512, 3, 1, 1), true, Activation::Relu),
    layer("r18_224_layer3_3x3s2_128to256@28_relu", (128, 28, 256, 3, 2, 1), false, Activation::Relu),
    layer("r18_cifar_layer1_3x3_64@32_add_relu", (64, 32, 64, 3, 1, 1), true, Activation::Relu),
    layer("mnv2_expand_1x1_160to960@7_relu6", (160, 7, 960, 1, 1, 1), false, Activation::Relu6),
    layer("mnv2_project_1x1_960to160@7_add", (960, 7, 160, 1, 1, 1), true, Activation::Identity),
    layer("mnv2_dw_3x3_576@14_relu6", (576, 14, 576, 3, 1, 576), false, Activation::Relu6),
    layer("mnv2_expand_1x1_16to96@112_relu6", (16, 112, 96, 1, 1, 1), false, Activation::Relu6),
    layer("mnv2_dw_3x3s2_96@112_relu6", (96, 112, 96, 3, 2, 96), false, Activation::Relu6),
];

const fn layer(
    name: &'static str,
    geometry: (usize, usize, usize, usize, usize, usize),
    residual: bool,
    act: Activation,
) -> Layer {
    Layer {
        name,
        geometry,
        residual,
        act,
    }
}

impl Layer {
    fn shape(&self) -> Conv2dShape {
        let (cin, side, cout, k, s, groups) = self.geometry;
        Conv2dShape {
            batch: 1,
            in_channels: cin,
            in_h: side,
            in_w: side,
            out_channels: cout,
            kernel_h: k,
            kernel_w: k,
            params: Conv2dParams {
                stride: (s, s),
                padding: (k / 2, k / 2),
                dilation: (1, 1),
                groups,
            },
        }
    }
}

/// Deterministic values in [-0.5, 0.5) (a multiplicative hash; no RNG state to thread through).
fn values(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i.wrapping_mul(2654435761) ^ salt) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// The convolution as the plan runs it: weights transformed for Winograd, packed once for the
/// pixel-major tiles or as the channel-major tiles' rows where the plan packs them, as stored
/// otherwise.
enum PlanConv {
    Winograd(WinogradWeights),
    PixelMajor(PackedPanels),
    Rows(PackedRows),
    Stored(Vec<f32>),
}

impl PlanConv {
    fn new(s: &Conv2dShape, w: Vec<f32>) -> PlanConv {
        match conv::winograd::preferred(s) {
            Some(tile) => PlanConv::Winograd(conv::winograd::pack(s, &w, tile)),
            None => PlanConv::direct(s, w),
        }
    }

    /// The plan's choice without Winograd.
    fn direct(s: &Conv2dShape, w: Vec<f32>) -> PlanConv {
        if conv::pixel_major::preferred(s) {
            PlanConv::PixelMajor(conv::pixel_major::pack(s, &w))
        } else if conv::prepacked_supported(s) {
            let rows = MatRef::row_major(&w, s.out_channels, s.patch_len());
            PlanConv::Rows(PackedRows::new(rows))
        } else {
            PlanConv::Stored(w)
        }
    }

    fn run(&self, s: &Conv2dShape, x: &[f32], y: &mut [f32], epi: &[ConvEpilogueOp]) {
        match self {
            PlanConv::Winograd(p) => conv::winograd::forward(s, x, p, y, epi),
            PlanConv::PixelMajor(p) => conv::pixel_major::forward(s, x, p, y, epi),
            PlanConv::Rows(p) => conv::forward_weights(s, x, Weights::Packed(p), y, epi),
            PlanConv::Stored(w) => conv::forward(s, x, w, y, epi),
        }
    }
}

/// A MobileNet layer on the channels-last kernels.
enum ChannelsLast {
    Rows(PackedPanels),
    Depthwise(conv::channels_last::depthwise::Taps),
}

impl ChannelsLast {
    fn run(&self, s: &Conv2dShape, x: &[f32], y: &mut [f32], epi: &[ConvEpilogueOp]) {
        use conv::channels_last as cl;
        match self {
            ChannelsLast::Rows(w) => cl::conv(s, x, w, y, epi),
            ChannelsLast::Depthwise(t) => cl::depthwise::forward(s, x, t, y, epi),
        }
    }
}

fn fused_conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("fused_conv");
    for layer in &LAYERS {
        let s = layer.shape();
        let (x, bias) = (values(s.input_len(), 1), values(s.out_channels, 3));
        let residual = values(s.output_len(), 4);
        let w = values(s.weight_len(), 2);
        let op = PlanConv::new(&s, w.clone());
        let (mut y, mut sum) = (vec![0f32; s.output_len()], vec![0f32; s.output_len()]);
        let plane = s.output_len() / s.out_channels;
        g.throughput(Throughput::Elements(s.macs() as u64));

        let mut epi = vec![ConvEpilogueOp::Bias(&bias)];
        if layer.residual {
            epi.push(ConvEpilogueOp::Add(&residual));
        }
        epi.push(ConvEpilogueOp::Act(layer.act));
        g.bench_function(BenchmarkId::new(layer.name, "fused"), |b| {
            b.iter(|| op.run(&s, black_box(&x), &mut y, &epi))
        });

        if matches!(op, PlanConv::Winograd(_)) {
            // What Winograd saves: the direct path the plan takes without it, same epilogue.
            let direct = PlanConv::direct(&s, w.clone());
            g.bench_function(BenchmarkId::new(layer.name, "fused_direct"), |b| {
                b.iter(|| direct.run(&s, black_box(&x), &mut y, &epi))
            });
        }

        if layer.name.starts_with("mnv2") {
            // The plan's choice for MobileNets: channels-last activations (the values' order
            // does not matter to the timing).
            let cl = if s.params.groups > 1 {
                let taps = conv::channels_last::depthwise::pack(&s, &w);
                ChannelsLast::Depthwise(taps)
            } else {
                ChannelsLast::Rows(conv::channels_last::pack(&s, &w))
            };
            g.bench_function(BenchmarkId::new(layer.name, "fused_channels_last"), |b| {
                b.iter(|| cl.run(&s, black_box(&x), &mut y, &epi))
            });
        }

        if matches!(op, PlanConv::Rows(_)) {
            // What packing the rows once saves: the same fused step on the weights as stored.
            g.bench_function(
                BenchmarkId::new(layer.name, "fused_weights_as_stored"),
                |b| b.iter(|| conv::forward(&s, black_box(&x), &w, &mut y, &epi)),
            );
        }

        g.bench_function(BenchmarkId::new(layer.name, "unfused"), |b| {
            b.iter(|| {
                op.run(&s, black_box(&x), &mut y, &[]);
                for (p, &bc) in y.chunks_exact_mut(plane).zip(&bias) {
                    p.iter_mut().for_each(|v| *v += bc);
                }
                let out = if layer.residual {
                    binary(BinaryOp::Add, &y, &residual, &mut sum);
                    &mut sum
                } else {
                    &mut y
                };
                activation::apply_inplace(layer.act, out);
            })
        });
    }
    g.finish();
}

fn plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    let nets = [
        (Arch::Resnet18Cifar, None),
        (Arch::MobilenetV2, None),
        (Arch::MobilenetV2, Some(false)),
        (Arch::Resnet18, None),
    ];
    for (arch, channels_last) in nets {
        let spec = ArchSpec::new(arch);
        let (graph, init) = zoo::build(&spec).expect("zoo network");
        let model = Model::init(graph, init, &mut Rng::new(0)).expect("initialised weights");
        let options = PlanOptions {
            channels_last,
            ..PlanOptions::default()
        };
        let mut plan = Plan::compile_with(&model, 1, &options).expect("compiled plan");
        let x = values(plan.input_shape().iter().product(), 5);
        let name = match channels_last {
            Some(false) => format!("{} nchw", arch.name()),
            _ => arch.name().to_string(),
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(plan.run(black_box(&x)));
            })
        });
    }
    g.finish();
}

/// MobileNetV2's channels-last steps that replace two: the stem and the fused expansions.
fn channels_last_steps(c: &mut Criterion) {
    use conv::channels_last::{self as cl, block};
    use tlc::kernels::conv::expand_dw::Stage;
    let mut g = c.benchmark_group("channels_last");
    let stage = |c: usize, salt: usize| Stage {
        bias: Some(values(c, salt)),
        act: Some(Activation::Relu6),
    };
    // (name, expansion input channels, side, expanded channels, depthwise stride)
    let pairs = [
        ("mnv2_block2_16to96@112_dw_s2", 16, 112, 96, 2),
        ("mnv2_block3_24to144@56_dw_s1", 24, 56, 144, 1),
    ];
    for (name, cin, side, cexp, stride) in pairs {
        let e = layer(
            "expand",
            (cin, side, cexp, 1, 1, 1),
            false,
            Activation::Relu6,
        )
        .shape();
        let d = layer(
            "dw",
            (cexp, side, cexp, 3, stride, cexp),
            false,
            Activation::Relu6,
        )
        .shape();
        let f = block::Block {
            feed: Some(block::Feed::Expand(block::Pointwise {
                shape: e,
                w: cl::pack(&e, &values(e.weight_len(), 2)),
                epi: stage(cexp, 3),
            })),
            dw: block::Depthwise {
                shape: d,
                w: cl::depthwise::pack(&d, &values(d.weight_len(), 4)),
                epi: stage(cexp, 5),
            },
            project: None,
        };
        let Some(block::Feed::Expand(expand)) = &f.feed else {
            unreachable!("built with an expansion")
        };
        let dw = &f.dw;
        let x = values(e.input_len(), 1);
        let (mut mid, mut y) = (vec![0f32; e.output_len()], vec![0f32; d.output_len()]);
        g.throughput(Throughput::Elements((e.macs() + d.macs()) as u64));
        g.bench_function(BenchmarkId::new(name, "fused"), |b| {
            b.iter(|| block::forward(&f, black_box(&x), None, &mut y))
        });
        g.bench_function(BenchmarkId::new(name, "two_steps"), |b| {
            b.iter(|| {
                expand
                    .epi
                    .with_ops(|epi| cl::pointwise(&e, black_box(&x), &expand.w, &mut mid, epi));
                dw.epi
                    .with_ops(|epi| cl::depthwise::forward(&d, &mid, &dw.w, &mut y, epi));
            })
        });
    }
    let s = layer("stem", (3, 224, 32, 3, 2, 1), false, Activation::Relu6).shape();
    let (x, w, bias) = (
        values(s.input_len(), 1),
        values(s.weight_len(), 2),
        values(32, 3),
    );
    let epi = [
        ConvEpilogueOp::Bias(&bias),
        ConvEpilogueOp::Act(Activation::Relu6),
    ];
    let packed = cl::pack_nchw_input(&s, &w);
    let nchw = PlanConv::new(&s, w.clone());
    let (mut y, mut moved) = (vec![0f32; s.output_len()], vec![0f32; s.output_len()]);
    let plane = s.output_len() / s.out_channels;
    g.throughput(Throughput::Elements(s.macs() as u64));
    let name = "mnv2_stem_3x3s2_3to32@224_relu6";
    g.bench_function(BenchmarkId::new(name, "from_nchw"), |b| {
        b.iter(|| cl::conv_from_nchw(&s, black_box(&x), &packed, &mut y, &epi))
    });
    g.bench_function(BenchmarkId::new(name, "nchw_then_move"), |b| {
        b.iter(|| {
            nchw.run(&s, black_box(&x), &mut y, &epi);
            cl::layout::to_channels_last(&y, 1, s.out_channels, plane, &mut moved);
        })
    });
    g.finish();
}

criterion_group!(benches, fused_conv, channels_last_steps, plan);
criterion_main!(benches);
