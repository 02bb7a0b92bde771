//! MobileNetV2 in torchvision's layout: `features.0` (3x3/2 conv, BN, ReLU6), inverted residual
//! blocks `features.1` .. `features.17`, `features.18` (1x1 conv to the last channel count, BN,
//! ReLU6), then `avgpool`, `flatten`, `classifier.0` (Dropout 0.2) and `classifier.1` (Linear).
//!
//! A block with expansion t > 1 is `conv.0.{0,1,2}` (1x1 expand, BN, ReLU6), `conv.1.{0,1,2}`
//! (3x3 depthwise, BN, ReLU6), `conv.2` (1x1 projection) and `conv.3` (BN); with t = 1 the expand
//! step is absent and the rest shifts down by one. Blocks of stride 1 whose input and output widths
//! agree end in `features.N.add`, the residual join. torchvision pools with a function call, not a
//! module; `avgpool` and `flatten` own no parameters, so the state_dict is unchanged.
//!
//! The width multiplier follows torchvision's `_make_divisible(c * width, 8)` for every channel
//! count and keeps the last 1280 channels unless width > 1. The multiplier is computed in f64 from
//! the spec's f32 width, so a width such as 0.35 lands on the same counts as Python's float.

use super::{ArchSpec, Builder};
use tlc_engine::graph::{ActKind, ConvSpec, Graph, LinearSpec, NodeId, Op};

/// (expansion t, output channels c, repeats n, first stride s), torchvision's table.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// torchvision's `_make_divisible(v, 8)`: round to the nearest multiple of 8 (at least 8), one
/// step up if that lost more than 10%.
pub(crate) fn make_divisible(v: f64) -> usize {
    const D: usize = 8;
    let mut new_v = ((v + D as f64 / 2.0) as usize / D * D).max(D);
    if (new_v as f64) < 0.9 * v {
        new_v += D;
    }
    new_v
}

pub(super) fn build(spec: &ArchSpec) -> Graph {
    let width = spec.width as f64;
    let mut b = Builder::new(spec);
    let mut in_ch = make_divisible(32.0 * width);
    let last_ch = make_divisible(1280.0 * width.max(1.0));
    let mut x = conv_bn_relu6(&mut b, "features.0", spec.in_ch, in_ch, 3, 2, 1, 0);
    let mut n = 1;
    for (t, c, repeats, s) in SETTINGS {
        let out_ch = make_divisible(c as f64 * width);
        for r in 0..repeats {
            let stride = if r == 0 { s } else { 1 };
            x = inverted_residual(
                &mut b,
                &format!("features.{n}"),
                x,
                in_ch,
                out_ch,
                stride,
                t,
            );
            in_ch = out_ch;
            n += 1;
        }
    }
    let x = conv_bn_relu6(&mut b, &format!("features.{n}"), in_ch, last_ch, 1, 1, 1, x);
    let x =
        b.g.push("avgpool", Op::AdaptiveAvgPool { out: [1, 1] }, &[x]);
    let x = b.g.push("flatten", Op::Flatten { start: 1 }, &[x]);
    let x = b.g.push("classifier.0", Op::Dropout { p: 0.2 }, &[x]);
    b.g.push(
        "classifier.1",
        Op::Linear(LinearSpec {
            in_f: last_ch,
            out_f: spec.classes,
            bias: true,
        }),
        &[x],
    );
    b.g
}

/// torchvision's `Conv2dNormActivation` with ReLU6: `p.0` conv (no bias, "same" padding),
/// `p.1` BN, `p.2` ReLU6.
#[allow(clippy::too_many_arguments)]
fn conv_bn_relu6(
    b: &mut Builder,
    p: &str,
    in_ch: usize,
    out_ch: usize,
    k: usize,
    stride: usize,
    groups: usize,
    x: NodeId,
) -> NodeId {
    let conv = ConvSpec::new(in_ch, out_ch, k, stride, (k - 1) / 2).groups(groups);
    let y = b.conv(&format!("{p}.0"), conv, x);
    let y = b.bn(&format!("{p}.1"), out_ch, y);
    b.act(&format!("{p}.2"), ActKind::Relu6, y)
}

fn inverted_residual(
    b: &mut Builder,
    p: &str,
    x: NodeId,
    in_ch: usize,
    out_ch: usize,
    stride: usize,
    t: usize,
) -> NodeId {
    let hidden = in_ch * t;
    let mut y = x;
    let mut i = 0;
    if t != 1 {
        y = conv_bn_relu6(b, &format!("{p}.conv.0"), in_ch, hidden, 1, 1, 1, y);
        i = 1;
    }
    y = conv_bn_relu6(
        b,
        &format!("{p}.conv.{i}"),
        hidden,
        hidden,
        3,
        stride,
        hidden,
        y,
    );
    y = b.conv(
        &format!("{p}.conv.{}", i + 1),
        ConvSpec::new(hidden, out_ch, 1, 1, 0),
        y,
    );
    y = b.bn(&format!("{p}.conv.{}", i + 2), out_ch, y);
    if stride == 1 && in_ch == out_ch {
        y = b.g.push(format!("{p}.add"), Op::Add, &[y, x]);
    }
    y
}
