//! TLC finds its candidates from the graph alone: the counts TLC.md gives per architecture.

use tlc_engine::tlc::{candidates, ScoreSource};
use tlc_models::zoo::{build, Arch, ArchSpec};

fn count(arch: Arch) -> (usize, usize) {
    let (g, _) = build(&ArchSpec::new(arch)).unwrap();
    let c = candidates(&g).unwrap();
    let with_bn = c
        .iter()
        .filter(|c| matches!(c.source, ScoreSource::BatchNorm(_)))
        .count();
    // No candidate is ever scored by a downsample shortcut's batch-norm.
    for cand in &c {
        if let ScoreSource::BatchNorm(bn) = cand.source {
            assert!(
                !g.node(bn).name.contains("downsample"),
                "{} scored by {}",
                g.node(cand.act).name,
                g.node(bn).name
            );
        }
    }
    (c.len(), with_bn)
}

#[test]
fn resnet_candidates() {
    assert_eq!(count(Arch::Resnet18), (17, 17));
    assert_eq!(count(Arch::Resnet18Cifar), (17, 17));
    assert_eq!(count(Arch::Resnet34), (33, 33));
}

#[test]
fn vgg_candidates_include_the_classifier_relus() {
    // 13 conv ReLUs after BN, 2 classifier ReLUs after linear layers (scored on calibration data).
    assert_eq!(count(Arch::Vgg16Bn), (15, 13));
    assert_eq!(count(Arch::Vgg16BnCifar), (15, 13));
}

#[test]
fn mobilenet_v2_candidates() {
    assert_eq!(count(Arch::MobilenetV2), (35, 35));
}
