//! ResNet-18/34 (BasicBlock) in torchvision's layout: `conv1 bn1 relu maxpool layer1..4 avgpool
//! fc`, blocks `layerL.B.{conv1,bn1,relu1,conv2,bn2,add,relu2}` and `downsample.{0,1}`. The CIFAR
//! form swaps the 7x7/2 stem and max-pool for a 3x3/1 conv, keeping every parameter name.
//!
//! torchvision uses one `relu` module twice per block; here the two uses are separate nodes,
//! `relu1` (after bn1) and `relu2` (after the residual add), since TLC removes them one at a time.

use super::{scaled, Arch, ArchSpec, Builder};
use tlc_engine::graph::{ActKind, ConvSpec, Graph, LinearSpec, NodeId, Op, PoolSpec};

pub(super) fn build(spec: &ArchSpec) -> Graph {
    let cifar = matches!(spec.arch, Arch::Resnet18Cifar | Arch::Resnet34Cifar);
    let blocks: [usize; 4] = match spec.arch {
        Arch::Resnet34 | Arch::Resnet34Cifar => [3, 4, 6, 3],
        _ => [2, 2, 2, 2],
    };
    let mut b = Builder::new(spec);
    let base = scaled(64, spec.width);
    let stem = if cifar {
        ConvSpec::new(spec.in_ch, base, 3, 1, 1)
    } else {
        ConvSpec::new(spec.in_ch, base, 7, 2, 3)
    };
    let x = b.conv("conv1", stem, 0);
    let x = b.bn("bn1", base, x);
    let mut x = b.act("relu", ActKind::Relu, x);
    if !cifar {
        x =
            b.g.push("maxpool", Op::MaxPool(PoolSpec::new(3, 2, 1)), &[x]);
    }
    let mut in_ch = base;
    for (l, &count) in blocks.iter().enumerate() {
        let out_ch = scaled(64 << l, spec.width);
        for i in 0..count {
            let stride = if l > 0 && i == 0 { 2 } else { 1 };
            x = basic_block(
                &mut b,
                &format!("layer{}.{i}", l + 1),
                x,
                in_ch,
                out_ch,
                stride,
            );
            in_ch = out_ch;
        }
    }
    let x =
        b.g.push("avgpool", Op::AdaptiveAvgPool { out: [1, 1] }, &[x]);
    let x = b.g.push("flatten", Op::Flatten { start: 1 }, &[x]);
    b.g.push(
        "fc",
        Op::Linear(LinearSpec {
            in_f: in_ch,
            out_f: spec.classes,
            bias: true,
        }),
        &[x],
    );
    b.g
}

fn basic_block(
    b: &mut Builder,
    p: &str,
    x: NodeId,
    in_ch: usize,
    out_ch: usize,
    stride: usize,
) -> NodeId {
    let y = b.conv(
        &format!("{p}.conv1"),
        ConvSpec::new(in_ch, out_ch, 3, stride, 1),
        x,
    );
    let y = b.bn(&format!("{p}.bn1"), out_ch, y);
    let y = b.act(&format!("{p}.relu1"), ActKind::Relu, y);
    let y = b.conv(
        &format!("{p}.conv2"),
        ConvSpec::new(out_ch, out_ch, 3, 1, 1),
        y,
    );
    let y = b.bn(&format!("{p}.bn2"), out_ch, y);
    let shortcut = if stride != 1 || in_ch != out_ch {
        let s = b.conv(
            &format!("{p}.downsample.0"),
            ConvSpec::new(in_ch, out_ch, 1, stride, 0),
            x,
        );
        b.bn(&format!("{p}.downsample.1"), out_ch, s)
    } else {
        x
    };
    let y = b.g.push(format!("{p}.add"), Op::Add, &[y, shortcut]);
    b.act(&format!("{p}.relu2"), ActKind::Relu, y)
}
