use super::*;
use crate::graph::{ActKind, ConvSpec, Graph, LinearSpec, Model, Op};
use crate::passes::prune_dead_channels;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::testing::assert_close;

use crate::testing::{bn_op as bn, conv_op as conv, random_model};

/// Collapse `g` and check the eval outputs agree and `nodes` nodes remain.
fn check_collapse(g: Graph, input: &[usize], nodes: usize) -> Model {
    let m = random_model(g, 11);
    let x = Tensor::randn(input, &mut Rng::new(5));
    let c = collapse(&m).unwrap();
    assert_close(
        &c.eval(&x).unwrap(),
        &m.eval(&x).unwrap(),
        1e-4,
        "collapsed vs unmerged",
    );
    let kinds: Vec<String> = c
        .graph()
        .nodes()
        .iter()
        .map(|n| format!("{} {}", n.name, n.op.kind_name()))
        .collect();
    assert_eq!(c.graph().nodes().len(), nodes, "{kinds:?}");
    c
}

#[test]
fn batch_norm_folds_into_conv_and_linear() {
    let mut g = Graph::new(&[3, 7, 6]);
    let c = g.push("conv", conv(3, 4, 3, 2, 1), &[0]);
    let b = g.push("bn", bn(4), &[c]);
    let r = g.push("relu", Op::Activation { act: ActKind::Relu }, &[b]);
    let f = g.push("flatten", Op::Flatten { start: 1 }, &[r]);
    let l = g.push(
        "fc",
        Op::Linear(LinearSpec {
            in_f: 48,
            out_f: 5,
            bias: false,
        }),
        &[f],
    );
    g.push("bn1d", bn(5), &[l]);
    let c = check_collapse(g, &[2, 3, 7, 6], 5);
    assert!(c
        .graph()
        .nodes()
        .iter()
        .all(|n| !matches!(n.op, Op::BatchNorm(_))));
}

#[test]
fn conv_pairs_merge_exactly_including_borders_and_stride() {
    // 3x3 s1 (padding relocated: 2) then 3x3 p0 -> one 5x5 p2.
    let mut g = Graph::new(&[3, 9, 8]);
    let c = g.push("a", conv(3, 5, 3, 1, 2), &[0]);
    let b = g.push("a_bn", bn(5), &[c]);
    g.push("b", conv(5, 4, 3, 1, 0), &[b]);
    let m = check_collapse(g, &[2, 3, 9, 8], 2);
    assert_eq!(
        m.graph().nodes()[1].op,
        Op::Conv2d(ConvSpec {
            bias: true,
            ..ConvSpec::new(3, 4, 5, 1, 2)
        })
    );

    // Stride 2 first: 3x3 s2 p3 then 3x3 p0 -> 7x7 s2 p3 (not 5x5).
    let mut g = Graph::new(&[2, 11, 10]);
    let c = g.push("a", conv(2, 3, 3, 2, 3), &[0]);
    g.push("b", conv(3, 4, 3, 1, 0), &[c]);
    let m = check_collapse(g, &[1, 2, 11, 10], 2);
    assert_eq!(
        m.graph().nodes()[1].op,
        Op::Conv2d(ConvSpec {
            bias: true,
            ..ConvSpec::new(2, 4, 7, 2, 3)
        })
    );

    // Three in a row, one strided in the middle, rectangular kernels.
    let mut g = Graph::new(&[2, 12, 12]);
    let a = g.push(
        "a",
        Op::Conv2d(ConvSpec {
            kernel: [1, 3],
            padding: [1, 2],
            ..ConvSpec::new(2, 3, 1, 1, 0)
        }),
        &[0],
    );
    let b = g.push("b", conv(3, 3, 3, 2, 0), &[a]);
    g.push(
        "c",
        Op::Conv2d(ConvSpec {
            kernel: [3, 1],
            ..ConvSpec::new(3, 2, 1, 1, 0)
        }),
        &[b],
    );
    check_collapse(g, &[2, 2, 12, 12], 2);
}

#[test]
fn depthwise_and_grouped_convs_merge() {
    // dw ∘ dw stays depthwise.
    let mut g = Graph::new(&[4, 8, 8]);
    let a = g.push(
        "a",
        Op::Conv2d(ConvSpec::new(4, 4, 3, 1, 2).groups(4)),
        &[0],
    );
    g.push(
        "b",
        Op::Conv2d(ConvSpec::new(4, 4, 3, 2, 0).groups(4)),
        &[a],
    );
    let m = check_collapse(g, &[2, 4, 8, 8], 2);
    let Op::Conv2d(c) = &m.graph().nodes()[1].op else {
        panic!()
    };
    assert_eq!((c.groups, c.kernel, c.stride), (4, [5, 5], [2, 2]));

    // MobileNetV2 block with both ReLU6 gone: pw(+relocated padding) -> bn -> dw -> bn -> pw -> bn
    // becomes one dense 3x3 conv.
    let mut g = Graph::new(&[3, 7, 7]);
    let x = g.push("pw1", conv(3, 12, 1, 1, 1), &[0]);
    let x = g.push("bn1", bn(12), &[x]);
    let x = g.push(
        "dw",
        Op::Conv2d(ConvSpec::new(12, 12, 3, 1, 0).groups(12)),
        &[x],
    );
    let x = g.push("bn2", bn(12), &[x]);
    let x = g.push("pw2", conv(12, 5, 1, 1, 0), &[x]);
    g.push("bn3", bn(5), &[x]);
    let m = check_collapse(g, &[2, 3, 7, 7], 2);
    assert_eq!(
        m.graph().nodes()[1].op,
        Op::Conv2d(ConvSpec {
            bias: true,
            ..ConvSpec::new(3, 5, 3, 1, 1)
        })
    );

    // Grouped (2 groups) then dense.
    let mut g = Graph::new(&[4, 6, 6]);
    let a = g.push(
        "a",
        Op::Conv2d(ConvSpec::new(4, 6, 3, 1, 1).groups(2)),
        &[0],
    );
    g.push("b", conv(6, 3, 1, 1, 0), &[a]);
    check_collapse(g, &[1, 4, 6, 6], 2);
}

#[test]
fn padded_second_conv_is_not_merged() {
    // Without relocation the merge would be wrong in a border band: it must be refused.
    let mut g = Graph::new(&[2, 6, 6]);
    let a = g.push("a", conv(2, 3, 3, 1, 1), &[0]);
    g.push("b", conv(3, 3, 3, 1, 1), &[a]);
    check_collapse(g, &[1, 2, 6, 6], 3);
}

#[test]
fn linear_chains_merge() {
    let mut g = Graph::new(&[6]);
    let a = g.push(
        "fc1",
        Op::Linear(LinearSpec {
            in_f: 6,
            out_f: 24,
            bias: true,
        }),
        &[0],
    );
    let d = g.push("drop", Op::Dropout { p: 0.5 }, &[a]);
    let i = g.push("gelu_removed", Op::Identity, &[d]);
    g.push(
        "fc2",
        Op::Linear(LinearSpec {
            in_f: 24,
            out_f: 4,
            bias: true,
        }),
        &[i],
    );
    let m = check_collapse(g, &[3, 6], 2);
    assert_eq!(
        m.graph().nodes()[1].op,
        Op::Linear(LinearSpec {
            in_f: 6,
            out_f: 4,
            bias: true
        })
    );
}

#[test]
fn linear_resnet_blocks_collapse_to_one_conv() {
    // Identity block with relu1 removed (padding relocated): x + bn2(conv2(bn1(conv1 x))), then relu2.
    let mut g = Graph::new(&[4, 8, 8]);
    let c1 = g.push("conv1", conv(4, 4, 3, 1, 2), &[0]);
    let b1 = g.push("bn1", bn(4), &[c1]);
    let c2 = g.push("conv2", conv(4, 4, 3, 1, 0), &[b1]);
    let b2 = g.push("bn2", bn(4), &[c2]);
    let a = g.push("add", Op::Add, &[b2, 0]);
    g.push("relu2", Op::Activation { act: ActKind::Relu }, &[a]);
    let m = check_collapse(g, &[2, 4, 8, 8], 3);
    let Op::Conv2d(c) = &m.graph().nodes()[1].op else {
        panic!()
    };
    assert_eq!((c.kernel, c.padding), ([5, 5], [2, 2]));

    // Downsampling block: main 3x3 s2 (relocated p3) + 3x3 p0, shortcut 1x1 s2 conv + bn.
    let mut g = Graph::new(&[3, 9, 9]);
    let c1 = g.push("conv1", conv(3, 6, 3, 2, 3), &[0]);
    let b1 = g.push("bn1", bn(6), &[c1]);
    let c2 = g.push("conv2", conv(6, 6, 3, 1, 0), &[b1]);
    let b2 = g.push("bn2", bn(6), &[c2]);
    let d = g.push("downsample.0", conv(3, 6, 1, 2, 0), &[0]);
    let d = g.push("downsample.1", bn(6), &[d]);
    g.push("add", Op::Add, &[b2, d]);
    let m = check_collapse(g, &[2, 3, 9, 9], 2);
    let Op::Conv2d(c) = &m.graph().nodes()[1].op else {
        panic!()
    };
    assert_eq!((c.kernel, c.stride, c.padding), ([7, 7], [2, 2], [3, 3]));
}

#[test]
fn residual_with_a_depthwise_branch_folds() {
    let mut g = Graph::new(&[4, 6, 6]);
    let c = g.push(
        "dw",
        Op::Conv2d(ConvSpec::new(4, 4, 3, 1, 1).groups(4)),
        &[0],
    );
    g.push("add", Op::Add, &[0, c]);
    check_collapse(g, &[2, 4, 6, 6], 2);
}

#[test]
fn non_linear_graphs_are_left_alone() {
    let mut g = Graph::new(&[2, 6, 6]);
    let a = g.push("a", conv(2, 3, 3, 1, 1), &[0]);
    let r = g.push("relu", Op::Activation { act: ActKind::Relu }, &[a]);
    let b = g.push("b", conv(3, 3, 3, 1, 0), &[r]);
    g.push("add", Op::Add, &[b, b]);
    check_collapse(g, &[1, 2, 6, 6], 5);
}

#[test]
fn dead_channels_are_cut_from_producer_and_readers() {
    // conv a -> relu -> conv b, and a linear pair; channels 1 and 3 of `a` and feature 2 of `fc1`
    // are dead (zero rows and bias).
    let mut g = Graph::new(&[2, 6, 6]);
    let a = g.push(
        "a",
        Op::Conv2d(ConvSpec::new(2, 4, 3, 1, 1).with_bias(true)),
        &[0],
    );
    let r = g.push("relu", Op::Activation { act: ActKind::Relu }, &[a]);
    let b = g.push(
        "b",
        Op::Conv2d(ConvSpec::new(4, 3, 3, 1, 1).with_bias(true)),
        &[r],
    );
    let p = g.push("pool", Op::AdaptiveAvgPool { out: [1, 1] }, &[b]);
    let f = g.push("flatten", Op::Flatten { start: 1 }, &[p]);
    let l = g.push(
        "fc1",
        Op::Linear(LinearSpec {
            in_f: 3,
            out_f: 4,
            bias: true,
        }),
        &[f],
    );
    g.push(
        "fc2",
        Op::Linear(LinearSpec {
            in_f: 4,
            out_f: 2,
            bias: true,
        }),
        &[l],
    );
    let mut m = random_model(g, 3);
    for (name, rows, row) in [("a", vec![1, 3], 18), ("fc1", vec![2], 3)] {
        for role in ["weight", "bias"] {
            let t = m.get_mut(&format!("{name}.{role}")).unwrap();
            let len = if role == "weight" { row } else { 1 };
            t.update_data(|d| {
                rows.iter()
                    .for_each(|&o| d[o * len..(o + 1) * len].fill(0.0))
            });
        }
    }
    let x = Tensor::randn(&[2, 2, 6, 6], &mut Rng::new(1));
    let p = prune_dead_channels(&m).unwrap();
    assert_close(
        &p.eval(&x).unwrap(),
        &m.eval(&x).unwrap(),
        1e-5,
        "pruned vs zeroed",
    );
    assert_eq!(p.get("a.weight").unwrap().shape(), [2, 2, 3, 3]);
    assert_eq!(p.get("b.weight").unwrap().shape(), [3, 2, 3, 3]);
    assert_eq!(p.get("fc2.weight").unwrap().shape(), [2, 3]);
    assert!(p.num_params() < m.num_params());
}

#[test]
fn channels_read_by_an_add_are_kept() {
    let mut g = Graph::new(&[2, 5, 5]);
    let a = g.push("a", Op::Conv2d(ConvSpec::new(2, 2, 3, 1, 1)), &[0]);
    g.push("add", Op::Add, &[a, 0]);
    let mut m = random_model(g, 4);
    m.get_mut("a.weight")
        .unwrap()
        .update_data(|d| d[..18].fill(0.0));
    let p = prune_dead_channels(&m).unwrap();
    assert_eq!(p.get("a.weight").unwrap().shape(), [2, 2, 3, 3]);
}

// ---- Latency-aware collapse ----

use crate::passes::cost::{ConvKind, CostEntry, CostModel, CostTable};
use crate::passes::{collapse_with, DeadChannels, DecisionKind};

/// A table holding `dense` (spec, input size, ms) plus one pointwise and one depthwise entry (a
/// valid table measures every kind).
fn table(dense: &[(ConvSpec, [usize; 2], f64)]) -> CostTable {
    let mut entries: Vec<CostEntry> = dense
        .iter()
        .map(|(s, hw, ms)| CostEntry::new(s, *hw, 1, *ms))
        .collect();
    entries.push(CostEntry::new(
        &ConvSpec::new(8, 8, 1, 1, 0),
        [8, 8],
        1,
        0.01,
    ));
    entries.push(CostEntry::new(
        &ConvSpec::new(8, 8, 3, 1, 1).groups(8),
        [8, 8],
        1,
        0.01,
    ));
    CostTable::new("test", 1, 1, entries).unwrap()
}

fn assert_near(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
}

/// Zero the weight rows and bias of output channels `rows` of layer `name` (TLC's OFF channels
/// once batch-norms are folded).
fn kill_rows(m: &mut Model, name: &str, rows: &[usize]) {
    let w = m.get_mut(&format!("{name}.weight")).unwrap();
    let per_row = w.numel() / w.shape()[0];
    w.update_data(|d| {
        rows.iter()
            .for_each(|&o| d[o * per_row..][..per_row].fill(0.0))
    });
    if let Some(b) = m.get_mut(&format!("{name}.bias")) {
        b.update_data(|d| rows.iter().for_each(|&o| d[o] = 0.0));
    }
}

/// Collapse with `cost`, prune, and check the result computes what `m` does; returns the result
/// and the decisions.
fn check_collapse_with(
    m: &Model,
    cost: &CostModel,
    input: &[usize],
) -> (Model, Vec<crate::passes::Decision>) {
    let (c, decisions) = collapse_with(m, cost, DeadChannels::Pruned).unwrap();
    let c = prune_dead_channels(&c).unwrap();
    let x = Tensor::randn(input, &mut Rng::new(8));
    assert_close(
        &c.eval(&x).unwrap(),
        &m.eval(&x).unwrap(),
        1e-4,
        "cost-aware collapse vs linearized",
    );
    (c, decisions)
}

/// A 3x3 pair (padding relocated) whose middle has channels 1 and 3 of 4 dead.
fn pair_with_dead_middle() -> Model {
    let mut g = Graph::new(&[4, 8, 8]);
    let a = g.push(
        "a",
        Op::Conv2d(ConvSpec::new(4, 4, 3, 1, 2).with_bias(true)),
        &[0],
    );
    g.push(
        "b",
        Op::Conv2d(ConvSpec::new(4, 4, 3, 1, 0).with_bias(true)),
        &[a],
    );
    let mut m = random_model(g, 21);
    kill_rows(&mut m, "a", &[1, 3]);
    m
}

#[test]
fn a_chain_stays_apart_when_the_table_says_the_merged_kernel_is_slower() {
    let m = pair_with_dead_middle();
    // What the decision must price: each layer apart with the middle at its 2 live channels, and
    // the merged 5x5 on the same input.
    let first = ConvSpec::new(4, 2, 3, 1, 2).with_bias(true);
    let second = ConvSpec::new(2, 4, 3, 1, 0).with_bias(true);
    let merged = ConvSpec::new(4, 4, 5, 1, 2).with_bias(true);
    let slow_merge = table(&[
        (first.clone(), [8, 8], 1.0),
        (second.clone(), [10, 10], 1.0),
        (merged.clone(), [8, 8], 3.0),
    ]);
    let (c, d) = check_collapse_with(&m, &CostModel::Measured(slow_merge), &[2, 4, 8, 8]);
    assert_eq!(d.len(), 1, "{d:?}");
    let d = &d[0];
    assert_eq!(d.kind, DecisionKind::Chain);
    assert_eq!(d.layers, ["a", "b"]);
    assert_eq!(
        (d.widths.clone(), d.full_widths.clone()),
        (vec![4, 2, 4], vec![4, 4, 4])
    );
    assert_eq!((d.merged, d.separate, d.chosen), (3.0, 2.0, 2.0));
    assert!(d.keeps_all() && d.unit == "ms", "{d:?}");
    assert_eq!(c.graph().nodes().len(), 3);
    assert_eq!(c.get("a.weight").unwrap().shape(), [2, 4, 3, 3]);

    let fast_merge = table(&[
        (first, [8, 8], 1.0),
        (second, [10, 10], 1.0),
        (merged, [8, 8], 1.5),
    ]);
    let (c, d) = check_collapse_with(&m, &CostModel::Measured(fast_merge), &[2, 4, 8, 8]);
    assert_eq!((d[0].merged, d[0].separate, d[0].chosen), (1.5, 2.0, 1.5));
    assert!(d[0].merges_all());
    assert_eq!(c.graph().nodes().len(), 2);
    assert_eq!(c.graph().nodes()[1].name, "a+b");
}

#[test]
fn the_convolutions_a_decision_prices_are_listed_for_calibration() {
    let priced =
        crate::passes::priced_convs(&pair_with_dead_middle(), DeadChannels::Pruned).unwrap();
    let expect = [
        (ConvSpec::new(4, 2, 3, 1, 2).with_bias(true), [8, 8]),
        (ConvSpec::new(2, 4, 3, 1, 0).with_bias(true), [10, 10]),
        (ConvSpec::new(4, 4, 5, 1, 2).with_bias(true), [8, 8]),
    ];
    assert_eq!(priced.len(), expect.len(), "{priced:?}");
    for e in &expect {
        assert!(priced.contains(e), "{e:?} not in {priced:?}");
    }
}

#[test]
fn multiply_accumulates_keep_a_3x3_pair_apart_and_merge_an_inverted_residual() {
    // Without a table: 18 C m MACs apart against 25 C^2 merged.
    let m = pair_with_dead_middle();
    let (c, d) = check_collapse_with(&m, &CostModel::Macs, &[2, 4, 8, 8]);
    assert!(d[0].keeps_all() && d[0].unit == "MMAC", "{d:?}");
    // 4->2 3x3 on 10x10 out, then 2->4 3x3 on 8x8 out; merged 4->4 5x5 on 8x8.
    assert_near(d[0].separate, (9 * 8 * 100 + 9 * 8 * 64) as f64 / 1e6);
    assert_near(d[0].merged, (25 * 16 * 64) as f64 / 1e6);
    assert_eq!(c.graph().nodes().len(), 3);

    // MobileNetV2 block, both ReLU6 gone: pw 3->12 (padding relocated), dw 3x3, pw 12->5. One dense
    // 3x3 (9*3*5 per pixel) beats the three (3*12 + 9*12 + 12*5) and both partial merges.
    let mut g = Graph::new(&[3, 7, 7]);
    let x = g.push("pw1", conv(3, 12, 1, 1, 1), &[0]);
    let x = g.push("bn1", bn(12), &[x]);
    let x = g.push(
        "dw",
        Op::Conv2d(ConvSpec::new(12, 12, 3, 1, 0).groups(12)),
        &[x],
    );
    let x = g.push("bn2", bn(12), &[x]);
    g.push("pw2", conv(12, 5, 1, 1, 0), &[x]);
    let m = random_model(g, 5);
    let (c, d) = check_collapse_with(&m, &CostModel::Macs, &[2, 3, 7, 7]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].layers, ["pw1", "dw", "pw2"]);
    assert!(d[0].merges_all(), "{d:?}");
    // The depthwise reader keeps every channel: nothing is pruned in the middles.
    assert_eq!(d[0].widths, [3, 12, 12, 5]);
    assert_eq!(c.graph().nodes().len(), 2);

    // A wide 1x1 after it is cheaper apart (5*64 per pixel against 9*3*64 merged in): a partial
    // grouping, decided once (the merged block and the 1x1 are not decided again).
    let mut g = m.graph().clone();
    let last = g.nodes().len() - 1;
    g.push("pw3", conv(5, 64, 1, 1, 0), &[last]);
    let m = random_model(g, 6);
    let (c, d) = check_collapse_with(&m, &CostModel::Macs, &[2, 3, 7, 7]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].groups, [vec!["pw1", "dw", "pw2"], vec!["pw3"]]);
    assert!(!d[0].merges_all() && !d[0].keeps_all());
    assert!(d[0].chosen < d[0].merged.min(d[0].separate), "{d:?}");
    assert_eq!(c.graph().nodes().len(), 3);
}

#[test]
fn a_downsampling_block_weighs_its_shortcut_and_stays_exact() {
    // Main 3x3 s2 (relocated p3) + 3x3 p0, shortcut 1x1 s2; `dead` middle channels OFF.
    let block = |dead: &[usize]| {
        let mut g = Graph::new(&[2, 9, 9]);
        let c1 = g.push("conv1", conv(2, 8, 3, 2, 3), &[0]);
        let b1 = g.push("bn1", bn(8), &[c1]);
        let c2 = g.push("conv2", conv(8, 8, 3, 1, 0), &[b1]);
        let b2 = g.push("bn2", bn(8), &[c2]);
        let d = g.push("downsample.0", conv(2, 8, 1, 2, 0), &[0]);
        let d = g.push("downsample.1", bn(8), &[d]);
        g.push("add", Op::Add, &[b2, d]);
        let mut m = random_model(g, 17);
        for role in ["weight", "bias"] {
            m.get_mut(&format!("bn1.{role}"))
                .unwrap()
                .update_data(|v| dead.iter().for_each(|&c| v[c] = 0.0));
        }
        m
    };
    // One 7x7 s2 absorbing the shortcut (49*2*8 MACs per output pixel) against 3x3 s2 to `mid`
    // channels on 7x7 pixels, 3x3 back to 8 and the 1x1 shortcut on 5x5: merged with every
    // middle channel live, apart with one.
    for (dead, merges) in [(vec![], true), (vec![0, 1, 2, 3, 4, 5, 6], false)] {
        let m = block(&dead);
        let (c, d) = check_collapse_with(&m, &CostModel::Macs, &[2, 2, 9, 9]);
        let chain = &d[0];
        assert_eq!(chain.absorbs.as_deref(), Some("downsample.0"), "{d:?}");
        let mid = 8 - dead.len();
        assert_eq!(chain.widths, [2, mid, 8]);
        let apart = (9 * 2 * mid * 49 + 9 * mid * 8 * 25 + 2 * 8 * 25) as f64 / 1e6;
        assert_near(chain.separate, apart);
        assert_near(chain.merged, (49 * 2 * 8 * 25) as f64 / 1e6);
        assert_eq!(chain.merges_all(), merges, "{chain:?}");
        let convs = c
            .graph()
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Conv2d(_)))
            .count();
        assert_eq!(convs, if merges { 1 } else { 3 }, "{d:?}");
        // The shortcut sum was decided too, when the chain merged.
        let sums = d
            .iter()
            .filter(|x| x.kind == DecisionKind::Branches)
            .count();
        assert_eq!(sums, usize::from(merges), "{d:?}");
    }
}

#[test]
fn linear_chains_are_priced_by_macs() {
    let lin = |i, o| {
        Op::Linear(LinearSpec {
            in_f: i,
            out_f: o,
            bias: true,
        })
    };
    // 6 -> 24 -> 4 merged is 24 MACs a row against 6*24 + 24*4: merge. 32 -> 2 -> 32 is cheaper
    // apart (64 + 64 against 1024).
    for (hidden, outer, merges) in [(24, 6, true), (2, 32, false)] {
        let mut g = Graph::new(&[outer]);
        let a = g.push("fc1", lin(outer, hidden), &[0]);
        g.push("fc2", lin(hidden, outer.min(4)), &[a]);
        let m = random_model(g, 2);
        let table = CostModel::Measured(table(&[(ConvSpec::new(8, 8, 3, 1, 1), [8, 8], 0.1)]));
        let (c, d) = check_collapse_with(&m, &table, &[3, outer]);
        assert_eq!((d[0].merges_all(), d[0].unit), (merges, "MMAC"), "{d:?}");
        assert_eq!(c.graph().nodes().len(), if merges { 2 } else { 3 });
    }
}

#[test]
fn cost_estimates_interpolate_between_measurements_and_keep_a_floor() {
    let spec = |c: usize| ConvSpec::new(c, c, 3, 1, 1).with_bias(true);
    let t = table(&[(spec(8), [16, 16], 0.1), (spec(32), [16, 16], 0.8)]);
    let est = |c: usize, hw: usize| t.estimate(&spec(c), [hw, hw], 1).unwrap();
    // A measured shape is its measurement.
    assert_eq!(est(8, 16), 0.1);
    assert_eq!(est(32, 16), 0.8);
    // Between the two in every feature: between their times, and between their throughputs.
    let mid = est(16, 16);
    let rate = |c: usize, ms: f64| (c * c * 9 * 256) as f64 / ms;
    assert!(mid > 0.1 && mid < 0.8, "{mid}");
    let (lo, hi) = (rate(8, 0.1), rate(32, 0.8));
    assert!(rate(16, mid) > lo.min(hi) && rate(16, mid) < lo.max(hi));
    // Far beyond the grid (16x the pixels), time grows with MACs at the grid's throughput.
    let big = est(32, 64);
    let big_rate = (32 * 32 * 9 * 4096) as f64 / big;
    assert!(big_rate > lo.min(hi) && big_rate < lo.max(hi), "{big}");
    // Below the grid: never cheaper than the cheapest measured dense layer.
    assert_eq!(est(2, 4), 0.1);
    // Other kinds are priced by their own measurements.
    let dw = ConvSpec::new(8, 8, 3, 1, 1).groups(8);
    assert_eq!(ConvKind::of(&dw), ConvKind::Depthwise);
    assert_eq!(t.estimate(&dw, [8, 8], 1).unwrap(), 0.01);
    assert!(t.estimate(&spec(8), [1, 1], 1).is_ok());
    assert!(t
        .estimate(&ConvSpec::new(8, 8, 5, 1, 0), [3, 3], 1)
        .is_err());
}

#[test]
fn cost_tables_round_trip_and_bad_ones_are_refused_clearly() {
    let t = table(&[(ConvSpec::new(8, 8, 3, 1, 1), [8, 8], 0.1)]);
    let dir = std::env::temp_dir().join(format!("tlc-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("table.json");
    t.save(&path).unwrap();
    assert_eq!(CostTable::load(&path).unwrap(), t);

    let refuse = |json: String, what: &str| {
        let e = CostTable::from_json("t.json", &json)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.json: ") && e.contains(what), "{e}");
    };
    refuse("{ not json".into(), "not a tlc cost table");
    refuse("{}".into(), "not a tlc cost table: missing field");
    let json = t.to_json();
    refuse(
        json.replace("\"version\": 1", "\"version\": 7"),
        "version 7",
    );
    refuse(json.replace("tlc-cost-table", "other"), "format `other`");
    refuse(
        json.replace("\"ms\":0.1", "\"ms\":-0.1"),
        "entry 0: time -0.1",
    );
    refuse(
        json.replace("\"kind\":\"pointwise\"", "\"kind\":\"dense\""),
        "is called dense but its geometry runs as pointwise",
    );
    let mut no_dw = t.clone();
    no_dw.entries.retain(|e| e.kind != ConvKind::Depthwise);
    refuse(no_dw.to_json(), "no depthwise convolution measured");
    let e = CostTable::load(dir.join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
