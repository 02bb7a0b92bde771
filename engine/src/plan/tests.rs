use super::*;
use crate::graph::{ActKind, ConvSpec, LinearSpec, PoolSpec};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::testing::assert_close;
use tlc_kernels::half_weights::{HalfKind, HalfVec};

use crate::testing::{bn_op as bn, conv_op as conv, random_model};

fn act(a: ActKind) -> Op {
    Op::Activation { act: a }
}

/// Compile `g` (random weights) for `batch`, run it twice, compare with `Model::eval`; the kinds.
fn check(g: Graph, batch: usize) -> Vec<String> {
    let m = random_model(g, 7);
    let mut shape = vec![batch];
    shape.extend_from_slice(m.graph().input_shape());
    let mut plan = Plan::compile(&m, batch).unwrap();
    let mut out_shape = vec![batch];
    out_shape.extend_from_slice(plan.output_shape());
    for seed in [1, 2, 1] {
        let x = Tensor::randn(&shape, &mut Rng::new(seed));
        let y = plan.run(&x.to_vec()).to_vec();
        let e = m.eval(&x).unwrap();
        assert_close(
            &Tensor::from_vec(y, &out_shape).unwrap(),
            &e,
            1e-4,
            "plan vs eval",
        );
    }
    plan.steps().map(|s| s.kind.clone()).collect()
}

#[test]
fn conv_bn_relu_fuses_into_one_step() {
    let mut g = Graph::new(&[3, 9, 9]);
    let c = g.push("c", conv(3, 8, 3, 2, 1), &[0]);
    let b = g.push("bn", bn(8), &[c]);
    g.push("r", act(ActKind::Relu6), &[b]);
    assert_eq!(check(g.clone(), 1), ["conv3x3/s2 +bias+relu6"]);
    assert_eq!(check(g, 3).len(), 1);
}

#[test]
fn residual_block_fuses_add_and_activation() {
    let mut g = Graph::new(&[4, 8, 8]);
    let c1 = g.push("c1", conv(4, 4, 3, 1, 1), &[0]);
    let b1 = g.push("b1", bn(4), &[c1]);
    let r1 = g.push("r1", act(ActKind::Relu), &[b1]);
    let c2 = g.push("c2", conv(4, 4, 3, 1, 1), &[r1]);
    let b2 = g.push("b2", bn(4), &[c2]);
    let a = g.push("add", Op::Add, &[b2, r1]);
    let r2 = g.push("r2", act(ActKind::Relu), &[a]);
    // A downsample-like shortcut: conv on the block output, added to a later conv.
    let c3 = g.push("c3", conv(4, 6, 1, 2, 0), &[r2]);
    let c4 = g.push("c4", conv(4, 6, 3, 2, 1), &[r2]);
    let a2 = g.push("add2", Op::Add, &[c3, c4]);
    g.push("r3", act(ActKind::Silu), &[a2]);
    assert_eq!(
        check(g, 2),
        [
            "conv3x3/s1 +bias+relu",
            "conv3x3/s1 +bias+add+relu",
            "conv1x1/s2",
            "conv3x3/s2 +add+silu"
        ]
    );
}

#[test]
fn unfusable_nodes_get_their_own_steps() {
    let mut g = Graph::new(&[3, 10, 10]);
    let c = g.push("c", conv(3, 4, 3, 1, 1).clone(), &[0]);
    // The conv feeds two readers: nothing fuses; BN after an add does not fold.
    let r = g.push("r", act(ActKind::Relu), &[c]);
    let a = g.push("a", Op::Add, &[c, r, c]);
    let b = g.push("bn", bn(4), &[a]);
    let mp = g.push("mp", Op::MaxPool(PoolSpec::new(3, 2, 1)), &[b]);
    let ap = g.push("ap", Op::AvgPool(PoolSpec::new(2, 1, 1)), &[mp]);
    let gp = g.push("gp", Op::AdaptiveAvgPool { out: [2, 2] }, &[ap]);
    let f = g.push("f", Op::Flatten { start: 1 }, &[gp]);
    let d = g.push("d", Op::Dropout { p: 0.5 }, &[f]);
    let l1 = g.push(
        "l1",
        Op::Linear(LinearSpec {
            in_f: 16,
            out_f: 12,
            bias: true,
        }),
        &[d],
    );
    let t = g.push("t", act(ActKind::Tanh), &[l1]);
    g.push(
        "l2",
        Op::Linear(LinearSpec {
            in_f: 12,
            out_f: 5,
            bias: false,
        }),
        &[t],
    );
    let kinds = check(g.clone(), 1);
    assert_eq!(
        kinds,
        [
            "conv3x3/s1",
            "relu",
            "add",
            "batch_norm",
            "max_pool3x3/s2",
            "avg_pool2x2/s1",
            "adaptive_avg_pool2x2",
            "linear +bias+tanh",
            "linear"
        ]
    );
    let kinds = check(g, 4);
    assert_eq!(kinds[7], "linear +bias+tanh");
}

#[test]
fn buffers_are_reused_by_liveness() {
    // A chain of 12 convs needs two buffers besides the input (and the output may share them).
    let mut g = Graph::new(&[4, 6, 6]);
    let mut x = 0;
    for i in 0..12 {
        x = g.push(format!("c{i}"), conv(4, 4, 3, 1, 1), &[x]);
        x = g.push(format!("r{i}"), act(ActKind::Relu), &[x]);
    }
    let m = random_model(g, 3);
    let plan = Plan::compile(&m, 2).unwrap();
    assert_eq!(plan.len(), 12);
    let (bufs, floats) = plan.arena();
    assert!(bufs <= 3, "{bufs} buffers");
    assert_eq!(floats, bufs * 2 * 4 * 36);
}

#[test]
fn another_resolution_compiles_for_convolutional_graphs() {
    let mut g = Graph::new(&[3, 8, 8]);
    let c = g.push("c", conv(3, 5, 3, 1, 1), &[0]);
    let p = g.push("p", Op::AdaptiveAvgPool { out: [1, 1] }, &[c]);
    g.push("f", Op::Flatten { start: 1 }, &[p]);
    let m = random_model(g, 2);
    let mut plan = Plan::compile_for(&m, 1, &[3, 16, 12]).unwrap();
    assert_eq!(plan.output_shape(), [5]);
    assert_eq!(plan.run(&vec![0.5; 3 * 16 * 12]).len(), 5);
    assert!(Plan::compile_for(&m, 1, &[4, 8, 8]).is_err());
    assert!(Plan::compile(&m, 0).is_err());
}

#[test]
fn linear_residual_fuses_into_the_gemm_epilogue() {
    // A transformer-style MLP block on tokens: x + fc2(gelu(fc1(x))), then a ReLU.
    let lin = |i, o| {
        Op::Linear(LinearSpec {
            in_f: i,
            out_f: o,
            bias: true,
        })
    };
    let mut g = Graph::new(&[5, 12]);
    let f1 = g.push("fc1", lin(12, 20), &[0]);
    let a = g.push("gelu", act(ActKind::Gelu), &[f1]);
    let f2 = g.push("fc2", lin(20, 12), &[a]);
    let s = g.push("add", Op::Add, &[0, f2]);
    g.push("relu", act(ActKind::Relu), &[s]);
    let want = ["linear +bias+gelu", "linear +bias+add+relu"];
    assert_eq!(check(g.clone(), 1), want);
    assert_eq!(check(g, 3), want);
}

/// A one-row linear layer with long rows keeps its weights as rows for the matrix-vector
/// kernel, epilogue included (bias, residual, ReLU, and a ragged last group of 8 outputs); with
/// two rows, or short rows, it runs on the packed panels. Both match eval.
#[test]
fn one_row_long_linear_layers_match_eval() {
    let lin = |i, o| {
        Op::Linear(LinearSpec {
            in_f: i,
            out_f: o,
            bias: true,
        })
    };
    let mut g = Graph::new(&[GEMV_ROWS_MIN_IN + 3]);
    let f1 = g.push("fc1", lin(GEMV_ROWS_MIN_IN + 3, GEMV_ROWS_MIN_IN + 3), &[0]);
    let s = g.push("add", Op::Add, &[0, f1]);
    let r = g.push("relu", act(ActKind::Relu), &[s]);
    g.push("fc2", lin(GEMV_ROWS_MIN_IN + 3, 13), &[r]);
    for batch in [1, 2] {
        let m = random_model(g.clone(), 3);
        let plan = Plan::compile(&m, batch).unwrap();
        let rows = plan
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    &s.kernel,
                    Kernel::Linear {
                        weight: LinearWeight::Rows(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(rows, if batch == 1 { 2 } else { 0 }, "batch {batch}");
        check(g.clone(), batch);
    }
}

/// `m` with every conv and linear weight replaced by its value rounded to `kind`: what a 16-bit
/// plan of a graph without batch-norms (nothing folded into the weights) computes with.
fn rounded(m: &Model, kind: HalfKind) -> Model {
    let mut r = m.clone();
    for (id, node) in m.graph().nodes().iter().enumerate() {
        if id == 0 || !matches!(node.op, Op::Conv2d(_) | Op::Linear(_)) {
            continue;
        }
        let name = format!("{}.weight", node.name);
        let w = r.get_mut(&name).unwrap();
        let v = HalfVec::encode(kind, &w.to_vec()).unwrap().to_f32();
        *w = Tensor::from_vec(v, w.shape()).unwrap();
    }
    r
}

/// A batch-norm-free network with every weight kind: dense, strided, depthwise and pointwise
/// convolutions, a residual add, pooling, and linear layers (batch 1 takes the row path).
fn no_bn_graph() -> Graph {
    let lin = |i, o| {
        Op::Linear(LinearSpec {
            in_f: i,
            out_f: o,
            bias: true,
        })
    };
    let mut g = Graph::new(&[3, 12, 12]);
    let c1 = g.push("c1", conv(3, 8, 3, 1, 1), &[0]);
    let r1 = g.push("r1", act(ActKind::Relu), &[c1]);
    let mut dw = ConvSpec::new(8, 8, 3, 1, 1);
    dw.groups = 8;
    let d = g.push("dw", Op::Conv2d(dw), &[r1]);
    let p = g.push("pw", conv(8, 8, 1, 1, 0), &[d]);
    let a = g.push("add", Op::Add, &[p, r1]);
    let c2 = g.push("c2", conv(8, 16, 3, 2, 1), &[a]);
    let mp = g.push("mp", Op::MaxPool(PoolSpec::new(2, 2, 0)), &[c2]);
    let f = g.push("f", Op::Flatten { start: 1 }, &[mp]);
    let l1 = g.push("l1", lin(16 * 9, 20), &[f]);
    let t = g.push("t", act(ActKind::Gelu), &[l1]);
    g.push("l2", lin(20, 6), &[t]);
    g
}

#[test]
fn half_weight_plans_compute_with_the_rounded_weights() {
    let m = random_model(no_bn_graph(), 11);
    for batch in [1, 3] {
        let x = Tensor::randn(&[batch, 3, 12, 12], &mut Rng::new(4)).to_vec();
        let exact = Plan::compile(&m, batch).unwrap().run(&x).to_vec();
        for (dtype, kind) in [
            (WeightDtype::F16, HalfKind::F16),
            (WeightDtype::Bf16, HalfKind::Bf16),
        ] {
            let options = PlanOptions {
                weights: dtype,
                ..PlanOptions::default()
            };
            let mut half = Plan::compile_with(&m, batch, &options).unwrap();
            let mut reference = Plan::compile(&rounded(&m, kind), batch).unwrap();
            let want = reference.run(&x).to_vec();
            let got = half.run(&x).to_vec();
            let shape = [batch, 6];
            assert_close(
                &Tensor::from_vec(got.clone(), &shape).unwrap(),
                &Tensor::from_vec(want, &shape).unwrap(),
                1e-5,
                &format!("{dtype:?} plan vs f32 plan of the rounded weights, batch {batch}"),
            );
            // Rounding did happen: the output moved from the f32 weights' one.
            assert!(got.iter().zip(&exact).any(|(a, b)| a != b), "{dtype:?}");
            assert_eq!(half.weight_dtype(), dtype);
            assert_eq!(2 * half.weight_bytes(), reference.weight_bytes());
            assert_eq!(
                half.param_bytes() - half.weight_bytes(),
                reference.param_bytes() - reference.weight_bytes(),
                "biases stay f32"
            );
            assert!(half.steps().all(|s| {
                let weighted = s.kind.starts_with("conv") || s.kind.starts_with("linear");
                weighted == s.kind.contains(dtype.name())
            }));
        }
    }
}

#[test]
fn f16_weights_beyond_its_range_are_an_error() {
    let mut m = random_model(no_bn_graph(), 12);
    let w = m.get_mut("c2.weight").unwrap();
    let mut v = w.to_vec();
    v[5] = 1e5;
    *w = Tensor::from_vec(v, w.shape()).unwrap();
    let f16 = PlanOptions {
        weights: WeightDtype::F16,
        ..PlanOptions::default()
    };
    let err = Plan::compile_with(&m, 1, &f16).err().unwrap().to_string();
    assert!(err.contains("`c2`") && err.contains("f16"), "{err}");
    let bf16 = PlanOptions {
        weights: WeightDtype::Bf16,
        ..PlanOptions::default()
    };
    assert!(Plan::compile_with(&m, 1, &bf16).is_ok());
}

/// A plan whose kernels split under a two-thread pool stays on the pool whichever thread ran
/// their jobs (decided by counting forks, not by whether another thread happened to take one);
/// a plan whose kernels never split moves to the calling thread after its probing runs.
#[test]
fn plans_stay_on_the_pool_exactly_when_a_kernel_forks() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut big = Graph::new(&[16, 32, 32]);
    big.push("c", conv(16, 32, 3, 1, 1), &[0]);
    let mut small = Graph::new(&[2, 6, 6]);
    small.push("c", conv(2, 2, 3, 1, 1), &[0]);
    pool.install(|| {
        for (g, want) in [(big, Threading::Pool), (small, Threading::Caller)] {
            let m = random_model(g, 3);
            let mut shape = vec![1];
            shape.extend_from_slice(m.graph().input_shape());
            let x = Tensor::randn(&shape, &mut Rng::new(1));
            let mut plan = Plan::compile(&m, 1).unwrap();
            for _ in 0..=QUIET_RUNS {
                plan.run(&x.to_vec());
            }
            assert_eq!(plan.threading, want, "{:?}", m.graph().input_shape());
        }
    });
}
