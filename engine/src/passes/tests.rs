use super::*;
use crate::graph::{ActKind, BatchNormSpec, ConvSpec, Graph, LinearInit, LinearSpec, Model, Op};
use crate::passes::prune_dead_channels;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::testing::assert_close;

/// A model of `g` with every parameter and BN statistic random (biases and shifts non-zero).
fn random_model(g: Graph, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut m = Model::init(g, LinearInit::Uniform, &mut rng).unwrap();
    crate::testing::randomize_model(&mut m, true, &mut rng);
    m
}

fn bn(ch: usize) -> Op {
    Op::BatchNorm(BatchNormSpec {
        channels: ch,
        eps: 1e-5,
        momentum: 0.1,
    })
}

fn conv(i: usize, o: usize, k: usize, s: usize, p: usize) -> Op {
    Op::Conv2d(ConvSpec::new(i, o, k, s, p))
}

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
