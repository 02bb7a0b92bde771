use super::*;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::testing::assert_close;

/// conv-bn-relu, a residual conv-bn, relu, global pool, linear: every op kind a CNN uses.
fn small_net() -> Graph {
    let mut g = Graph::new(&[3, 9, 7]);
    let c1 = g.push("conv1", Op::Conv2d(ConvSpec::new(3, 4, 3, 1, 1)), &[0]);
    let b1 = g.push(
        "bn1",
        Op::BatchNorm(BatchNormSpec {
            channels: 4,
            eps: 1e-5,
            momentum: 0.1,
        }),
        &[c1],
    );
    let r1 = g.push("relu", Op::Activation { act: ActKind::Relu }, &[b1]);
    let c2 = g.push(
        "block.conv",
        Op::Conv2d(ConvSpec::new(4, 4, 3, 1, 1).with_bias(true)),
        &[r1],
    );
    let b2 = g.push(
        "block.bn",
        Op::BatchNorm(BatchNormSpec {
            channels: 4,
            eps: 1e-5,
            momentum: 0.1,
        }),
        &[c2],
    );
    let add = g.push("block.add", Op::Add, &[b2, r1]);
    let r2 = g.push("block.relu", Op::Activation { act: ActKind::Relu }, &[add]);
    let mp = g.push("maxpool", Op::MaxPool(PoolSpec::new(2, 2, 0)), &[r2]);
    let gp = g.push("avgpool", Op::AdaptiveAvgPool { out: [1, 1] }, &[mp]);
    let fl = g.push("flatten", Op::Flatten { start: 1 }, &[gp]);
    let dr = g.push("drop", Op::Dropout { p: 0.5 }, &[fl]);
    g.push(
        "fc",
        Op::Linear(LinearSpec {
            in_f: 4,
            out_f: 5,
            bias: true,
        }),
        &[dr],
    );
    g
}

fn randomised(g: Graph, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut m = Model::init(g, LinearInit::Uniform, &mut rng).unwrap();
    // Non-trivial BN statistics and affine parameters so eval mode is not the identity.
    for name in ["bn1", "block.bn"] {
        for (role, lo, hi) in [
            ("weight", 0.5, 1.5),
            ("bias", -0.5, 0.5),
            ("running_mean", -0.3, 0.3),
            ("running_var", 0.5, 2.0),
        ] {
            let t = Tensor::rand_uniform(&[4], lo, hi, &mut rng);
            let slot = m.get_mut(&format!("{name}.{role}")).unwrap();
            *slot = if role == "weight" || role == "bias" {
                t.with_requires_grad(true)
            } else {
                t
            };
        }
    }
    m
}

#[test]
fn shapes_macs_and_json_round_trip() {
    let g = small_net();
    g.validate().unwrap();
    let shapes = g.infer_shapes().unwrap();
    assert_eq!(shapes[g.find("block.relu").unwrap()], vec![4, 9, 7]);
    assert_eq!(shapes[g.find("maxpool").unwrap()], vec![4, 4, 3]);
    assert_eq!(shapes[g.output()], vec![5]);
    let macs = g.macs().unwrap();
    assert_eq!(macs[g.find("conv1").unwrap()], (4 * 9 * 7 * 3 * 9) as u64);
    assert_eq!(macs[g.output()], 20);
    let back = Graph::from_json(&g.to_json()).unwrap();
    assert_eq!(back, g);
}

#[test]
fn malformed_graphs_are_rejected_with_the_node_named() {
    let mut g = small_net();
    g.node_mut(2).inputs = vec![5];
    assert!(g
        .validate()
        .unwrap_err()
        .to_string()
        .contains("does not come before"));

    let mut g = small_net();
    g.node_mut(3).name = "conv1".into();
    assert!(g
        .validate()
        .unwrap_err()
        .to_string()
        .contains("two nodes are called `conv1`"));

    let mut g = Graph::new(&[3, 8, 8]);
    g.push("conv", Op::Conv2d(ConvSpec::new(4, 8, 3, 1, 1)), &[0]);
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("`conv`") && e.contains("[4, H, W]"), "{e}");

    let mut g = Graph::new(&[3, 2, 2]);
    g.push("conv", Op::Conv2d(ConvSpec::new(3, 8, 5, 1, 0)), &[0]);
    assert!(g
        .validate()
        .unwrap_err()
        .to_string()
        .contains("does not fit"));

    assert!(Graph::from_json("{\"nodes\": 3}").is_err());
}

#[test]
fn eval_forward_equals_the_ops_composed_by_hand() {
    let m = randomised(small_net(), 1);
    let x = Tensor::randn(&[2, 3, 9, 7], &mut Rng::new(2));
    let y = m.eval(&x).unwrap();

    let p = |n: &str| m.get(n).unwrap().clone();
    let bn = |t: &Tensor, n: &str| {
        let (mut rm, mut rv) = (
            p(&format!("{n}.running_mean")),
            p(&format!("{n}.running_var")),
        );
        t.batch_norm(
            Some(&p(&format!("{n}.weight"))),
            Some(&p(&format!("{n}.bias"))),
            Some((&mut rm, &mut rv)),
            false,
            0.1,
            1e-5,
        )
        .unwrap()
    };
    let params = ConvSpec::new(3, 4, 3, 1, 1).params();
    let r1 = bn(&x.conv2d(&p("conv1.weight"), None, params).unwrap(), "bn1")
        .relu()
        .unwrap();
    let c2 = r1
        .conv2d(&p("block.conv.weight"), Some(&p("block.conv.bias")), params)
        .unwrap();
    let r2 = bn(&c2, "block.bn").add(&r1).unwrap().relu().unwrap();
    let mp = r2
        .max_pool2d(&crate::ops::pool::MaxPool2dParams::new(2))
        .unwrap();
    let f = mp.global_avg_pool().unwrap().flatten(1).unwrap();
    let expect = f.linear(&p("fc.weight"), Some(&p("fc.bias"))).unwrap();
    assert_close(&y, &expect, 1e-6, "graph eval");
}

#[test]
fn train_forward_updates_running_stats_and_reaches_every_parameter() {
    let mut m = randomised(small_net(), 3);
    let before = m.get("bn1.running_mean").unwrap().to_vec();
    let x = Tensor::randn(&[4, 3, 9, 7], &mut Rng::new(4));
    let y = m.forward(&x, Mode::Train, &mut Rng::new(5)).unwrap();
    let loss = y.cross_entropy(&[0, 1, 2, 3], 0.0).unwrap();
    let grads = loss.backward().unwrap();
    for (name, p) in m.param_names().iter().zip(m.params()) {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            g.to_vec().iter().any(|v| *v != 0.0),
            "zero gradient for {name}"
        );
    }
    assert_ne!(m.get("bn1.running_mean").unwrap().to_vec(), before);
    assert_eq!(
        m.get("bn1.num_batches_tracked").unwrap().to_vec(),
        vec![1.0]
    );
    // Eval mode records nothing and leaves the statistics alone.
    let stats = m.get("block.bn.running_var").unwrap().to_vec();
    let e = m.forward(&x, Mode::Eval, &mut Rng::new(5)).unwrap();
    assert!(!e.requires_grad());
    assert_eq!(m.get("block.bn.running_var").unwrap().to_vec(), stats);
}

#[test]
fn wrong_input_shape_is_an_error() {
    let m = randomised(small_net(), 1);
    let e = m
        .eval(&Tensor::zeros(&[2, 1, 9, 7]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected [N, 3, 9, 7]"), "{e}");
}

#[test]
fn loading_checks_every_tensor_against_the_graph() {
    let m = randomised(small_net(), 1);
    let store = m.to_store();
    let back = Model::from_store(small_net(), &store, &[]).unwrap();
    let x = Tensor::randn(&[1, 3, 9, 7], &mut Rng::new(9));
    assert_eq!(
        back.eval(&x).unwrap().to_vec(),
        m.eval(&x).unwrap().to_vec()
    );

    let mut missing = store.clone();
    missing.remove("block.conv.bias");
    let e = Model::from_store(small_net(), &missing, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("block.conv.bias"), "{e}");

    let mut wrong = store.clone();
    wrong.insert("bn1.weight", Tensor::ones(&[5]));
    let e = Model::from_store(small_net(), &wrong, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bn1.weight"), "{e}");

    let mut extra = store.clone();
    extra.insert("layer9.weight", Tensor::ones(&[1]));
    let e = Model::from_store(small_net(), &extra, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer9.weight"), "{e}");
    extra.insert("optim.step", Tensor::ones(&[1]));
    extra.remove("layer9.weight");
    Model::from_store(small_net(), &extra, &["optim."]).unwrap();
}

#[test]
fn consumers_and_activations() {
    let g = small_net();
    let c = g.consumers();
    let relu = g.find("relu").unwrap();
    let readers: Vec<&str> = c[relu].iter().map(|&i| g.node(i).name.as_str()).collect();
    assert_eq!(readers, ["block.conv", "block.add"]);
    let acts: Vec<&str> = g
        .activations()
        .iter()
        .map(|&i| g.node(i).name.as_str())
        .collect();
    assert_eq!(acts, ["relu", "block.relu"]);
}

#[test]
fn conv_init_uses_pytorch_fan_out_for_grouped_convs() {
    // torch.nn.init.kaiming_normal_(mode="fan_out") on a [64, 1, 3, 3] depthwise weight:
    // fan-out = 64 * 9, std = sqrt(2 / 576) = 0.0589 (not sqrt(2 / 9) = 0.471).
    let mut g = Graph::new(&[64, 8, 8]);
    g.push(
        "dw",
        Op::Conv2d(ConvSpec::new(64, 64, 3, 1, 1).groups(64)),
        &[0],
    );
    let m = Model::init(g, LinearInit::Uniform, &mut Rng::new(3)).unwrap();
    let w = m.get("dw.weight").unwrap().to_vec();
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    let want = (2.0f32 / 576.0).sqrt();
    assert!((std / want - 1.0).abs() < 0.1, "std {std}, expected {want}");
}
