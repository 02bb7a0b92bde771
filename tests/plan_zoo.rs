//! The fused inference plan against the executor (`Model::eval`) on whole zoo models: narrow
//! widths, random weights and non-trivial batch-norm statistics, batch 1 and 3; and on a
//! TLC-linearized model after collapse.

use tlc_engine::passes::{collapse, prune_dead_channels};
use tlc_engine::plan::{Plan, PlanOptions};
use tlc_engine::testing::assert_close;
use tlc_engine::tlc::{candidates, linearize, ChannelStats, LayerScore, ScoreSource};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::zoo::{randomized, Arch};

/// A narrow model of `arch` with random BN statistics and shifts.
fn model(arch: Arch, width: f32, image: usize) -> Model {
    randomized(arch, width, image, 7, 3).unwrap()
}

/// Compile for batches of 1 and 3 and compare two runs each with `Model::eval`; the step count.
fn check(m: &Model, what: &str) -> usize {
    check_with(m, what, &PlanOptions::default())
}

/// [`check`] with compile options.
fn check_with(m: &Model, what: &str, options: &PlanOptions) -> usize {
    let mut steps = 0;
    for batch in [1, 3] {
        let mut plan = Plan::compile_with(m, batch, options).unwrap();
        let mut shape = vec![batch];
        shape.extend_from_slice(m.graph().input_shape());
        for seed in [5, 6] {
            let x = Tensor::randn(&shape, &mut Rng::new(seed));
            let expect = m.eval(&x).unwrap();
            let y = plan.run(&x.to_vec()).to_vec();
            let y = Tensor::from_vec(y, expect.shape()).unwrap();
            assert_close(&y, &expect, 1e-4, &format!("{what}, batch {batch}"));
        }
        steps = plan.len();
    }
    steps
}

fn kinds(m: &Model) -> Vec<String> {
    kinds_with(m, &PlanOptions::default())
}

fn kinds_with(m: &Model, options: &PlanOptions) -> Vec<String> {
    Plan::compile_with(m, 1, options)
        .unwrap()
        .steps()
        .map(|s| s.kind.clone())
        .collect()
}

#[test]
fn resnet18_cifar_plan_matches_eval() {
    let m = model(Arch::Resnet18Cifar, 0.125, 16);
    // Stem conv, 8 blocks of two convs (+3 downsample convs), pool, fc: every BN, ReLU and
    // residual add is fused into a convolution. Where the CPU has the channels-last tiles, the
    // three stride-2 3x3 convs run channels-last, each with its input moved there and its
    // output back.
    let fast = tlc_kernels::conv::channels_last::fast();
    let moves = if fast { 6 } else { 0 };
    assert_eq!(check(&m, "resnet18-cifar"), 1 + 16 + 3 + 1 + 1 + moves);
    let k = kinds(&m);
    assert_eq!(
        k.iter().filter(|k| k.ends_with("+bias+add+relu")).count(),
        8
    );
    let strided_cl = k.iter().filter(|k| k.starts_with("conv3x3/s2 cl")).count();
    assert_eq!(strided_cl, if fast { 3 } else { 0 }, "{k:?}");
}

#[test]
fn winograd_steps_match_eval() {
    // Full width, so the layers are large enough for Winograd: layer 1's 64 channels at 32x32
    // run F(4x4, 3x3), layer 2's 128 at 16x16 and layer 3's 256 at 8x8 F(2x2, 3x3), with bias,
    // residual and ReLU fused; layer 4's 512 at 4x4 directly. Batch 1 only (its eval is the
    // costly part of this file, under qemu too).
    let m = model(Arch::Resnet18Cifar, 1.0, 32);
    let mut plan = Plan::compile(&m, 1).unwrap();
    let x = Tensor::randn(&[1, 3, 32, 32], &mut Rng::new(5));
    let expect = m.eval(&x).unwrap();
    let y = Tensor::from_vec(plan.run(&x.to_vec()).to_vec(), expect.shape()).unwrap();
    assert_close(&y, &expect, 1e-4, "resnet18-cifar, Winograd steps");
    let k = kinds(&m);
    for (kind, count) in [
        ("conv3x3/s1 winograd-f4 +bias+relu", 2),
        ("conv3x3/s1 winograd-f4 +bias+add+relu", 2),
        ("conv3x3/s1 winograd-f2 +bias", 2),
        ("conv3x3/s1 winograd-f2 +bias+relu", 2),
        ("conv3x3/s1 winograd-f2 +bias+add+relu", 2),
        ("conv3x3/s1 +bias+add+relu", 1),
    ] {
        assert_eq!(
            k.iter().filter(|k| *k == kind).count(),
            count,
            "{kind}: {k:?}"
        );
    }
}

#[test]
fn resnet18_imagenet_form_plan_matches_eval() {
    let m = model(Arch::Resnet18, 0.0625, 40);
    check(&m, "resnet18");
    assert!(kinds(&m).iter().any(|k| k.starts_with("max_pool")));
}

#[test]
fn vgg16_bn_plan_matches_eval() {
    check(&model(Arch::Vgg16BnCifar, 0.0625, 32), "vgg16-bn-cifar");
    let m = model(Arch::Vgg16Bn, 0.0625, 32);
    check(&m, "vgg16-bn");
    let k = kinds(&m);
    assert_eq!(
        k.iter()
            .filter(|k| k.starts_with("conv3x3/s1") && k.ends_with(" +bias+relu"))
            .count(),
        13
    );
    assert_eq!(k.iter().filter(|k| k.starts_with("linear")).count(), 3);
}

#[test]
fn weight_streaming_convs_run_channels_last_in_nchw_plans() {
    // At width 0.5 VGG-16-bn CIFAR's last three convs (2x2, 256 channels) hold 2.4 MB of weights
    // each: at batch 1 (4 pixels) its NCHW plan runs them channels-last, the activation moved
    // there before them and back after; at batch 3 (12 pixels), or with NCHW forced, they stay.
    let m = model(Arch::Vgg16BnCifar, 0.5, 32);
    check(&m, "vgg16-bn-cifar w0.5");
    let cl = |k: &[String]| k.iter().filter(|k| k.contains(" cl ")).count();
    let k = kinds(&m);
    if tlc_kernels::conv::channels_last::fast() {
        assert_eq!(cl(&k), 3, "{k:?}");
        assert_eq!(
            k.iter().filter(|k| k.starts_with("to_")).count(),
            2,
            "{k:?}"
        );
    } else {
        assert_eq!(cl(&k), 0, "{k:?}");
    }
    assert_eq!(cl(&kinds_with(&m, &layout(false))), 0);
    let batch3 = Plan::compile_with(&m, 3, &PlanOptions::default()).unwrap();
    let k3: Vec<String> = batch3.steps().map(|s| s.kind.clone()).collect();
    assert_eq!(cl(&k3), 0, "{k3:?}");
}

/// Options forcing NCHW (`false`) or channels-last (`true`) activations.
fn layout(channels_last: bool) -> PlanOptions {
    PlanOptions {
        channels_last: Some(channels_last),
        ..PlanOptions::default()
    }
}

#[test]
fn mobilenet_v2_stem_block_matches_eval() {
    let m = model(Arch::MobilenetV2, 0.5, 32);
    check_with(&m, "mobilenet-v2 w0.5 cl", &layout(true));
    let first = |batch| {
        Plan::compile_with(&m, batch, &layout(true))
            .unwrap()
            .steps()
            .next()
            .unwrap()
            .kind
            .clone()
    };
    let fused = "nchw>cl +bias+relu6 > conv3x3/s1 dw cl +bias+relu6 > conv1x1/s1 cl +bias";
    assert!(first(1).ends_with(fused), "{}", first(1));
    // A band holds one image: at batch 3 the stem is a step of its own.
    assert!(first(3).ends_with("nchw>cl +bias+relu6"), "{}", first(3));
}

#[test]
fn mobilenet_v2_plan_matches_eval() {
    let m = model(Arch::MobilenetV2, 0.25, 32);
    for cl in [false, true] {
        let tag = if cl { " cl" } else { "" };
        check_with(&m, &format!("mobilenet-v2{tag}"), &layout(cl));
        let k = kinds_with(&m, &layout(cl));
        assert!(
            k.iter()
                .any(|k| *k == format!("conv3x3/s1 dw{tag} +bias+relu6")),
            "{k:?}"
        );
        // On the 1x1 planes of the last stages the depthwise 3x3s run trimmed to their centre
        // tap (and still match the executor above).
        assert!(
            k.iter().any(|k| k.starts_with("conv1x1/s1 (of 3x3) dw")),
            "{k:?}"
        );
        // Inverted residuals: the projection conv takes the block input in its epilogue (10
        // blocks, and at width 0.25 the first block too, its 32 and 16 channels both rounding
        // to 8).
        // Channels-last, most projections run in one step with their depthwise conv.
        let add = format!("conv1x1/s1{tag} +bias+add");
        assert_eq!(k.iter().filter(|k| k.ends_with(&add)).count(), 11, "{k:?}");
        let dw_project = k
            .iter()
            .filter(|k| k.contains(" dw cl +bias+relu6 > conv1x1/s1 cl +bias"))
            .count();
        assert_eq!(dw_project > 0, cl, "{k:?}");
        // Channels-last: the image stem reads the NCHW image and writes channels-last, and
        // nothing moves (the pool reads channels-last). Here its output is also block 1's
        // residual (16 and 8 channels rounding alike), so it is stored; at width 0.5 below the
        // stem, block 1's depthwise conv and projection run as one step at batch 1.
        assert!(!k.iter().any(|k| k.starts_with("to_")), "{k:?}");
        let stem = if cl {
            "conv3x3/s2 nchw>cl"
        } else {
            "conv3x3/s2"
        };
        assert_eq!(k[0], format!("{stem} +bias+relu6"), "{k:?}");
    }
    // Chosen automatically where the CPU has the channels-last tiles.
    let auto = kinds(&m);
    let cl = auto.iter().any(|k| k.contains(" cl"));
    assert_eq!(cl, tlc_kernels::conv::channels_last::fast(), "{auto:?}");
}

#[test]
fn channels_last_plan_matches_eval_on_resnet18_and_vgg() {
    // Forced onto a network without depthwise layers: the 7x7 image stem and the max-pool run
    // NCHW, one step moves the pooled activation, and from there the 3x3 convs and the strided
    // 1x1 downsamples gather their patches, the residual adds take channels-last operands and
    // the pool reads channels-last.
    let m = model(Arch::Resnet18, 0.125, 64);
    check_with(&m, "resnet18 cl", &layout(true));
    let k = kinds_with(&m, &layout(true));
    assert_eq!(
        k.iter().filter(|k| k.starts_with("to_")).count(),
        1,
        "{k:?}"
    );
    assert_eq!(k[2], "to_channels_last", "{k:?}");
    let adds = k.iter().filter(|k| k.ends_with(" cl +bias+add+relu"));
    assert_eq!(adds.count(), 8, "{k:?}");
    assert!(k.iter().any(|k| k == "adaptive_avg_pool1x1 cl"), "{k:?}");
    // Chosen automatically for its stride-2 3x3 convs only.
    let auto = kinds(&m);
    let cl: Vec<&String> = auto.iter().filter(|k| k.contains(" cl")).collect();
    assert!(
        cl.iter().all(|k| k.starts_with("conv3x3/s2 cl")),
        "{auto:?}"
    );
    // VGG: each max-pool reads NCHW, so activations move back and forth between the blocks.
    let vgg = model(Arch::Vgg16BnCifar, 0.0625, 32);
    check_with(&vgg, "vgg16-bn-cifar cl", &layout(true));
    let k = kinds_with(&vgg, &layout(true));
    assert!(k.iter().filter(|k| *k == "to_nchw").count() >= 4, "{k:?}");
}

#[test]
fn expand_dw_steps_match_eval() {
    // With `fuse_expand_dw`, at full width and 128x128: the expansions of blocks 2 (96 channels
    // at 64x64, depthwise stride 2), 3 (144 at 32x32, stride 1) and 4 (144 at 32x32, stride 2)
    // are large enough to run fused with their depthwise convs; the others stay two steps.
    let m = model(Arch::MobilenetV2, 1.0, 128);
    let fuse = PlanOptions {
        fuse_expand_dw: true,
        ..PlanOptions::default()
    };
    check_with(&m, "mobilenet-v2 at 128x128, fused", &fuse);
    let k: Vec<String> = Plan::compile_with(&m, 1, &fuse)
        .unwrap()
        .steps()
        .map(|s| s.kind.clone())
        .collect();
    let fused: Vec<&String> = k.iter().filter(|k| k.contains(" > conv3x3/s")).collect();
    assert_eq!(
        fused,
        [
            "conv1x1/s1 +bias+relu6 > conv3x3/s2 dw +bias+relu6",
            "conv1x1/s1 +bias+relu6 > conv3x3/s1 dw +bias+relu6",
            "conv1x1/s1 +bias+relu6 > conv3x3/s2 dw +bias+relu6"
        ],
        "{k:?}"
    );
    // Channels-last plans fuse the pairs whose expanded activation passes 1 MB on their own
    // (here block 2, 64x64x96; at 224 blocks 2-4), with the projection after them, the others
    // not; NCHW ones only when asked.
    let cl_fused =
        ["conv1x1/s1 cl +bias+relu6 > conv3x3/s2 dw cl +bias+relu6 > conv1x1/s1 cl +bias"];
    let expansions = |k: &[String]| -> Vec<String> {
        k.iter()
            .filter(|k| k.starts_with("conv1x1") && k.contains(" > "))
            .cloned()
            .collect()
    };
    check_with(&m, "mobilenet-v2 at 128x128, channels-last", &layout(true));
    assert_eq!(expansions(&kinds_with(&m, &layout(true))), cl_fused);
    assert!(!kinds_with(&m, &layout(false))
        .iter()
        .any(|k| k.contains(" > ")));
    let fused = expansions(&kinds(&m));
    let expected: &[&str] = if tlc_kernels::conv::channels_last::fast() {
        &cl_fused
    } else {
        &[]
    };
    assert_eq!(fused, expected);
}

/// Linearize every candidate whose activation name `pick` accepts (TLC's own ON/OFF decisions).
fn linearize_where(m: &mut Model, pick: impl Fn(&str) -> bool) {
    loop {
        let g = m.graph().clone();
        let next = candidates(&g)
            .unwrap()
            .into_iter()
            .find(|c| pick(&g.node(c.act).name) && matches!(c.source, ScoreSource::BatchNorm(_)));
        let Some(c) = next else { return };
        let ScoreSource::BatchNorm(bn) = c.source else {
            unreachable!()
        };
        let bn = &g.node(bn).name;
        let stats = ChannelStats {
            shift: m.get(&format!("{bn}.bias")).unwrap().to_vec(),
            scale: m.get(&format!("{bn}.weight")).unwrap().to_vec(),
        };
        linearize(m, &c, &LayerScore::new(&stats)).unwrap();
    }
}

#[test]
fn collapsed_tlc_models_plan_matches_eval() {
    let mut m = model(Arch::Resnet18Cifar, 0.125, 16);
    linearize_where(&mut m, |n| n.ends_with("relu1"));
    let c = prune_dead_channels(&collapse(&m).unwrap()).unwrap();
    let full = check(&m, "linearized resnet18-cifar");
    let collapsed = check(&c, "collapsed resnet18-cifar");
    assert!(collapsed < full, "{collapsed} steps vs {full}");

    let mut m = model(Arch::MobilenetV2, 0.25, 32);
    linearize_where(&mut m, |n| n.contains(".conv."));
    let c = prune_dead_channels(&collapse(&m).unwrap()).unwrap();
    check(&c, "collapsed mobilenet-v2");
}
