//! TLC then collapse on whole zoo models: linearize activations with TLC's own decisions, then
//! merge everything that became linear; the collapsed network must compute what the linearized
//! one does (evaluation mode), border pixels included, with fewer layers.

use tlc_engine::passes::collapse;
use tlc_engine::testing::assert_close;
use tlc_engine::tlc::{candidates, linearize, ChannelStats, LayerScore, ScoreSource};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::zoo::{randomized, Arch};

/// A narrow model of `arch` with random BN statistics and shifts (so channels are ON and OFF).
fn model(arch: Arch, width: f32, image: usize) -> Model {
    randomized(arch, width, image, 7, 3).unwrap()
}

/// Linearize every candidate picked by `pick` (by activation name), each with its BN's decisions.
fn linearize_where(m: &mut Model, pick: impl Fn(&str) -> bool) -> usize {
    let mut removed = 0;
    loop {
        let g = m.graph().clone();
        let next = candidates(&g)
            .unwrap()
            .into_iter()
            .find(|c| pick(&g.node(c.act).name) && matches!(c.source, ScoreSource::BatchNorm(_)));
        let Some(c) = next else { return removed };
        let ScoreSource::BatchNorm(bn) = c.source else {
            unreachable!()
        };
        let bn = &g.node(bn).name;
        let stats = ChannelStats {
            shift: m.get(&format!("{bn}.bias")).unwrap().to_vec(),
            scale: m.get(&format!("{bn}.weight")).unwrap().to_vec(),
        };
        linearize(m, &c, &LayerScore::new(&stats)).unwrap();
        removed += 1;
    }
}

/// Linearize, collapse, compare; the number of convolutions before and after, and adds after.
fn check(
    mut m: Model,
    input: &[usize],
    pick: impl Fn(&str) -> bool,
    removed: usize,
) -> (usize, usize, usize) {
    assert_eq!(linearize_where(&mut m, pick), removed);
    let x = Tensor::randn(input, &mut Rng::new(9));
    let c = collapse(&m).unwrap();
    assert_close(
        &c.eval(&x).unwrap(),
        &m.eval(&x).unwrap(),
        1e-4,
        "collapsed vs linearized",
    );
    let convs = |m: &Model| {
        m.graph()
            .nodes()
            .iter()
            .filter(|n| n.op.kind_name().starts_with("conv"))
            .count()
    };
    let adds = c
        .graph()
        .nodes()
        .iter()
        .filter(|n| n.op.kind_name() == "add")
        .count();
    (convs(&m), convs(&c), adds)
}

#[test]
fn resnet18_blocks_with_relu1_removed_collapse() {
    // Removing every block's relu1 makes each block's conv pair linear: 8 pairs merge, and the
    // three downsampling blocks also absorb their shortcut convolution.
    let m = model(Arch::Resnet18Cifar, 0.125, 16);
    let (before, after, adds) = check(m, &[2, 3, 16, 16], |n| n.ends_with("relu1"), 8);
    assert_eq!((before, after), (20, 20 - 8 - 3));
    // relu2 comes after the add, so the identity shortcuts fold into their block's merged conv
    // (x + conv(x)) and the downsample ones are summed into it: no add is left.
    assert_eq!(adds, 0);
}

#[test]
fn resnet18_imagenet_form_with_everything_removed_stays_exact() {
    let m = model(Arch::Resnet18, 0.0625, 40);
    let (before, after, _) = check(m, &[1, 3, 40, 40], |_| true, 17);
    assert!(after < before, "{after} convs left of {before}");
}

#[test]
fn mobilenet_v2_blocks_collapse_to_dense_convs() {
    // Every ReLU6 inside the inverted residuals removed: each block's pw -> dw -> pw chain becomes
    // one dense conv, and the stride-1 blocks fold their residual too. The last block also merges
    // with the unpadded 1x1 features.18.0 after it; other block boundaries keep two convs because
    // the next block's first conv carries relocated padding (merging would be wrong at borders).
    let m = model(Arch::MobilenetV2, 0.25, 32);
    let (before, after, adds) = check(m, &[2, 3, 32, 32], |n| n.contains(".conv."), 33);
    assert_eq!(before, 52);
    assert_eq!(adds, 0, "every residual folded into its block's conv");
    assert_eq!(after, 1 + 17 + 1 - 1);
}

#[test]
fn vgg16_bn_cifar_pairs_merge() {
    let m = model(Arch::Vgg16BnCifar, 0.0625, 32);
    // Every other conv ReLU inside a stage (features.2, 9, 19, ...): pairs become single convs.
    let pick = |n: &str| {
        [
            "features.2",
            "features.9",
            "features.19",
            "features.29",
            "features.39",
        ]
        .contains(&n)
    };
    let (before, after, _) = check(m, &[2, 3, 32, 32], pick, 5);
    assert_eq!((before, after), (13, 8));
}
