use super::*;
use crate::graph::{ActKind, BatchNormSpec, ConvSpec, Graph, LinearInit, LinearSpec, Model, Op};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::testing::assert_close;

fn bn(ch: usize) -> Op {
    Op::BatchNorm(BatchNormSpec {
        channels: ch,
        eps: 1e-5,
        momentum: 0.1,
    })
}

/// stem conv-bn-relu, a downsampling residual block, a classifier with a hidden ReLU.
fn net() -> Graph {
    let mut g = Graph::new(&[2, 8, 8]);
    let c = g.push("conv1", Op::Conv2d(ConvSpec::new(2, 4, 3, 1, 1)), &[0]);
    let b = g.push("bn1", bn(4), &[c]);
    let x = g.push("relu", Op::Activation { act: ActKind::Relu }, &[b]);
    let c = g.push("b.conv1", Op::Conv2d(ConvSpec::new(4, 6, 3, 2, 1)), &[x]);
    let b = g.push("b.bn1", bn(6), &[c]);
    let r = g.push("b.relu1", Op::Activation { act: ActKind::Relu }, &[b]);
    let c = g.push("b.conv2", Op::Conv2d(ConvSpec::new(6, 6, 3, 1, 1)), &[r]);
    let b2 = g.push("b.bn2", bn(6), &[c]);
    let d = g.push(
        "b.downsample.0",
        Op::Conv2d(ConvSpec::new(4, 6, 1, 2, 0)),
        &[x],
    );
    let d = g.push("b.downsample.1", bn(6), &[d]);
    let a = g.push("b.add", Op::Add, &[d, b2]);
    let r = g.push("b.relu2", Op::Activation { act: ActKind::Relu }, &[a]);
    let p = g.push("pool", Op::AdaptiveAvgPool { out: [1, 1] }, &[r]);
    let f = g.push("flatten", Op::Flatten { start: 1 }, &[p]);
    let l = g.push(
        "fc1",
        Op::Linear(LinearSpec {
            in_f: 6,
            out_f: 5,
            bias: true,
        }),
        &[f],
    );
    let r = g.push("fc_relu", Op::Activation { act: ActKind::Relu }, &[l]);
    g.push(
        "fc2",
        Op::Linear(LinearSpec {
            in_f: 5,
            out_f: 3,
            bias: true,
        }),
        &[r],
    );
    g
}

fn model(seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut m = Model::init(net(), LinearInit::Uniform, &mut rng).unwrap();
    for n in ["bn1", "b.bn1", "b.bn2", "b.downsample.1"] {
        let c = m.get(&format!("{n}.weight")).unwrap().numel();
        for (role, lo, hi) in [
            ("weight", 0.5, 1.5),
            ("bias", -1.0, 1.0),
            ("running_mean", -0.3, 0.3),
            ("running_var", 0.5, 2.0),
        ] {
            let t = Tensor::rand_uniform(&[c], lo, hi, &mut rng);
            let slot = m.get_mut(&format!("{n}.{role}")).unwrap();
            *slot = if role == "weight" || role == "bias" {
                t.with_requires_grad(true)
            } else {
                t
            };
        }
    }
    m
}

fn id(g: &Graph, name: &str) -> usize {
    g.find(name).unwrap()
}

#[test]
fn candidates_follow_bn_through_residual_adds_and_fall_back_to_calibration() {
    let g = net();
    let c = candidates(&g).unwrap();
    let names: Vec<&str> = c.iter().map(|c| g.node(c.act).name.as_str()).collect();
    assert_eq!(names, ["relu", "b.relu1", "b.relu2", "fc_relu"]);
    assert_eq!(c[0].source, ScoreSource::BatchNorm(id(&g, "bn1")));
    assert_eq!(c[0].producer, Some(id(&g, "conv1")));
    // The main branch's bn2, not the (shallower) downsample BN listed first in the add.
    assert_eq!(c[2].source, ScoreSource::BatchNorm(id(&g, "b.bn2")));
    assert_eq!(c[2].residual, Some(id(&g, "b.add")));
    assert_eq!(c[2].producer, Some(id(&g, "b.conv2")));
    assert_eq!((c[2].channels, c[3].channels), (6, 5));
    assert_eq!(c[3].source, ScoreSource::Calibration);
    assert_eq!(c[3].producer, Some(id(&g, "fc1")));
}

fn bn_eval(m: &Model, x: &Tensor, n: &str) -> Tensor {
    let p = |r: &str| m.get(&format!("{n}.{r}")).unwrap().clone();
    let (mut rm, mut rv) = (p("running_mean"), p("running_var"));
    x.batch_norm(
        Some(&p("weight")),
        Some(&p("bias")),
        Some((&mut rm, &mut rv)),
        false,
        0.1,
        1e-5,
    )
    .unwrap()
}

#[test]
fn linearized_network_equals_the_same_network_by_hand() {
    let mut m = model(7);
    let cands = candidates(m.graph()).unwrap();
    let cand = cands[1].clone(); // b.relu1: conv(s2) -> bn -> relu -> conv, a private chain
    let b = vec![0.5, -0.5, 0.3, -0.2, 0.8, -0.9];
    *m.get_mut("b.bn1.bias").unwrap() = Tensor::from_slice(&b, &[6])
        .unwrap()
        .with_requires_grad(true);
    let score = LayerScore::new(&ChannelStats {
        shift: b.clone(),
        scale: m.get("b.bn1.weight").unwrap().to_vec(),
    });
    assert_eq!(score.on, [true, false, true, false, true, false]);
    let rec = linearize(&mut m, &cand, &score).unwrap();
    assert_eq!(rec.act, "b.relu1");
    assert_eq!(
        rec.relocated_padding,
        Some(("b.conv1".into(), "b.conv2".into()))
    );
    let params: Vec<&str> = rec.masks.iter().map(|k| k.param.as_str()).collect();
    assert_eq!(params, ["b.conv1.weight", "b.bn1.weight", "b.bn1.bias"]);
    assert_eq!(m.graph().node(cand.act).op, Op::Identity);
    assert_eq!(candidates(m.graph()).unwrap().len(), 3);
    for o in &rec.off_channels {
        assert!(
            m.get("b.conv1.weight").unwrap().to_vec()[o * 36..(o + 1) * 36]
                .iter()
                .all(|v| *v == 0.0)
        );
        assert_eq!(m.get("b.bn1.weight").unwrap().to_vec()[*o], 0.0);
    }

    let x = Tensor::randn(&[2, 2, 8, 8], &mut Rng::new(3));
    let y = m.eval(&x).unwrap();
    let p = |n: &str| m.get(n).unwrap().clone();
    let conv = |t: &Tensor, n: &str, s: usize, pad: usize| {
        t.conv2d(
            &p(&format!("{n}.weight")),
            None,
            ConvSpec::new(1, 1, 1, s, pad).params(),
        )
        .unwrap()
    };
    let r = bn_eval(&m, &conv(&x, "conv1", 1, 1), "bn1").relu().unwrap();
    // Padding moved: conv1 of the block pads 1 + 2 * 1, conv2 none; no ReLU between them.
    let h = bn_eval(&m, &conv(&r, "b.conv1", 2, 3), "b.bn1");
    let main = bn_eval(&m, &conv(&h, "b.conv2", 1, 0), "b.bn2");
    let short = bn_eval(&m, &conv(&r, "b.downsample.0", 2, 0), "b.downsample.1");
    let f = main
        .add(&short)
        .unwrap()
        .relu()
        .unwrap()
        .global_avg_pool()
        .unwrap()
        .flatten(1)
        .unwrap();
    let f = f
        .linear(&p("fc1.weight"), Some(&p("fc1.bias")))
        .unwrap()
        .relu()
        .unwrap();
    let expect = f.linear(&p("fc2.weight"), Some(&p("fc2.bias"))).unwrap();
    assert_close(&y, &expect, 1e-5, "linearized by hand");
}

#[test]
fn residual_and_calibration_candidates_do_not_move_padding() {
    let mut m = model(8);
    let cands = candidates(m.graph()).unwrap();
    let all_on = |c: usize| {
        LayerScore::new(&ChannelStats {
            shift: vec![1.0; c],
            scale: vec![1.0; c],
        })
    };
    let rec = linearize(&mut m, &cands[2], &all_on(6)).unwrap();
    assert_eq!(rec.relocated_padding, None);
    assert!(rec.masks.is_empty() && rec.off_channels.is_empty());
    let mut half = all_on(5);
    half.on[1] = false;
    let rec = linearize(&mut m, &cands[3], &half).unwrap();
    let params: Vec<&str> = rec.masks.iter().map(|k| k.param.as_str()).collect();
    assert_eq!(params, ["fc1.weight", "fc1.bias"]);
    assert_eq!(m.get("fc1.bias").unwrap().to_vec()[1], 0.0);
    // The stem relu: its conv feeds both the block and the shortcut, so no relocation there either.
    let rec = linearize(&mut m, &cands[0], &all_on(4)).unwrap();
    assert_eq!(rec.relocated_padding, None);
}

#[test]
fn masks_keep_off_channels_at_zero_through_training_steps() {
    use crate::optim::{Optimizer, Sgd, SgdConfig};
    let mut m = model(9);
    let cand = candidates(m.graph()).unwrap()[1].clone();
    let mut score = LayerScore::new(&ChannelStats {
        shift: vec![1.0; 6],
        scale: vec![1.0; 6],
    });
    score.on[2] = false;
    score.on[4] = false;
    let rec = linearize(&mut m, &cand, &score).unwrap();
    let mut opt = Sgd::new(SgdConfig {
        momentum: 0.9,
        weight_decay: 1e-3,
        ..SgdConfig::new(0.1)
    })
    .unwrap();
    let mut rng = Rng::new(1);
    for _ in 0..3 {
        let x = Tensor::randn(&[4, 2, 8, 8], &mut rng);
        let loss = m
            .forward(&x, crate::graph::Mode::Train, &mut rng)
            .unwrap()
            .cross_entropy(&[0, 1, 2, 0], 0.0)
            .unwrap();
        let grads = loss.backward().unwrap();
        opt.step(m.params_mut(), &grads).unwrap();
        for k in &rec.masks {
            k.apply(m.get_mut(&k.param).unwrap());
        }
    }
    let w = m.get("b.conv1.weight").unwrap().to_vec();
    assert!(w[2 * 36..3 * 36]
        .iter()
        .chain(&w[4 * 36..5 * 36])
        .all(|v| *v == 0.0));
    assert!(w[..36].iter().any(|v| *v != 0.0));
    assert_eq!(m.get("b.bn1.bias").unwrap().to_vec()[4], 0.0);
}

#[test]
fn bad_decisions_are_errors() {
    let mut m = model(1);
    let cand = candidates(m.graph()).unwrap()[0].clone();
    let wrong = LayerScore::new(&ChannelStats {
        shift: vec![1.0; 3],
        scale: vec![1.0; 3],
    });
    assert!(linearize(&mut m, &cand, &wrong)
        .unwrap_err()
        .to_string()
        .contains("3 channel decisions"));
    let ok = LayerScore::new(&ChannelStats {
        shift: vec![1.0; 4],
        scale: vec![1.0; 4],
    });
    linearize(&mut m, &cand, &ok).unwrap();
    assert!(linearize(&mut m, &cand, &ok)
        .unwrap_err()
        .to_string()
        .contains("not an activation"));
}
