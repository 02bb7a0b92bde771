//! VGG-16 with batch norm (torchvision's `vgg16_bn`, configuration D): `features.{i}` holds the
//! conv (with bias) / BN / ReLU triples and the 2x2 max-pools at torchvision's indices, then
//! `avgpool`, `flatten` and `classifier.{0..6}` (Linear, ReLU, Dropout, Linear, ReLU, Dropout,
//! Linear).
//!
//! The ImageNet form pools to 7x7 before a 512*7*7 -> 4096 classifier, exactly as torchvision
//! (inputs smaller than 224 work: the adaptive pool then repeats values, as PyTorch's does). The
//! CIFAR form used by the TLC authors pools to 1x1 and starts the classifier at 512 -> 4096.
//!
//! `--width` scales every channel count, the classifier's hidden 4096 included, so a narrow VGG
//! stays proportioned (its head would otherwise dwarf the convolutions); at width 1 both forms are
//! torchvision's exactly.

use super::{scaled, Arch, ArchSpec, Builder};
use tlc_engine::graph::{ActKind, ConvSpec, Graph, LinearSpec, NodeId, Op, PoolSpec};

/// Configuration D: output channels of each 3x3 conv, `None` for a 2x2 max-pool.
const CFG_D: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

pub(super) fn build(spec: &ArchSpec) -> Graph {
    let mut b = Builder::new(spec);
    let mut x: NodeId = 0;
    let mut in_ch = spec.in_ch;
    // torchvision numbers the modules of `features` in order: three per conv, one per pool.
    let mut i = 0;
    for layer in CFG_D {
        match layer {
            Some(c) => {
                let c = scaled(c, spec.width);
                let conv = ConvSpec::new(in_ch, c, 3, 1, 1).with_bias(true);
                x = b.conv(&format!("features.{i}"), conv, x);
                x = b.bn(&format!("features.{}", i + 1), c, x);
                x = b.act(&format!("features.{}", i + 2), ActKind::Relu, x);
                in_ch = c;
                i += 3;
            }
            None => {
                let pool = Op::MaxPool(PoolSpec::new(2, 2, 0));
                x = b.g.push(format!("features.{i}"), pool, &[x]);
                i += 1;
            }
        }
    }
    let side = if spec.arch == Arch::Vgg16BnCifar {
        1
    } else {
        7
    };
    let x =
        b.g.push("avgpool", Op::AdaptiveAvgPool { out: [side, side] }, &[x]);
    let x = b.g.push("flatten", Op::Flatten { start: 1 }, &[x]);
    let hidden = scaled(4096, spec.width);
    let linear = |in_f, out_f| {
        Op::Linear(LinearSpec {
            in_f,
            out_f,
            bias: true,
        })
    };
    let x =
        b.g.push("classifier.0", linear(in_ch * side * side, hidden), &[x]);
    let x = b.act("classifier.1", ActKind::Relu, x);
    let x = b.g.push("classifier.2", Op::Dropout { p: 0.5 }, &[x]);
    let x = b.g.push("classifier.3", linear(hidden, hidden), &[x]);
    let x = b.act("classifier.4", ActKind::Relu, x);
    let x = b.g.push("classifier.5", Op::Dropout { p: 0.5 }, &[x]);
    b.g.push("classifier.6", linear(hidden, spec.classes), &[x]);
    b.g
}
