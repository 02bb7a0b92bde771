//! Ranking on a constructed tiny network: the candidate whose removal lowers the loss goes first,
//! a no-op removal joins it, a damaging one stops the joint trial; entropy ranking picks the most
//! linear layer; calibration measures activations with no batch-norm in front.

use tlc_engine::graph::{ActKind, BatchNormSpec, Graph, LinearInit, LinearSpec, Op};
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::data::loader::Batch;
use tlc_models::tlc::{mean_loss, rank, score_candidates, with_removed, RankMode};

fn linear(in_f: usize, out_f: usize) -> Op {
    Op::Linear(LinearSpec {
        in_f,
        out_f,
        bias: true,
    })
}

fn bn(c: usize) -> Op {
    Op::BatchNorm(BatchNormSpec {
        channels: c,
        eps: 1e-5,
        momentum: 0.1,
    })
}

const RELU: Op = Op::Activation { act: ActKind::Relu };

/// fc1 -> bn1 -> act1 -> fc2 -> bn2 -> act2 -> fc3 -> bn3 -> act3 -> fc4, 8 features wide.
fn mlp() -> Model {
    let mut g = Graph::new(&[4]);
    let mut x = 0;
    for i in 1..=3 {
        let in_f = if i == 1 { 4 } else { 8 };
        x = g.push(format!("fc{i}"), linear(in_f, 8), &[x]);
        x = g.push(format!("bn{i}"), bn(8), &[x]);
        x = g.push(format!("act{i}"), RELU, &[x]);
    }
    g.push("fc4", linear(8, 3), &[x]);
    let mut m = Model::init(g, LinearInit::Uniform, &mut Rng::new(11)).unwrap();
    let set = |m: &mut Model, name: &str, v: Vec<f32>| {
        let shape = m.get(name).unwrap().shape().to_vec();
        *m.get_mut(name).unwrap() = Tensor::from_vec(v, &shape)
            .unwrap()
            .with_requires_grad(true);
    };
    // act1: beta 20, gamma 1: always positive, so removing it changes nothing.
    set(&mut m, "bn1.weight", vec![1.0; 8]);
    set(&mut m, "bn1.bias", vec![20.0; 8]);
    // act2: channels mostly ON or mostly OFF (|beta| = 1.5 gamma): nearly linear. fc2's bias
    // takes away act1's offset, and bn2's running variance makes its input roughly N(0, 1).
    let w2 = m.get("fc2.weight").unwrap().to_vec();
    let b2: Vec<f32> = w2
        .chunks(8)
        .map(|r| -20.0 * r.iter().sum::<f32>())
        .collect();
    set(&mut m, "fc2.bias", b2);
    *m.get_mut("bn2.running_var").unwrap() = Tensor::full(&[8], 0.1);
    set(&mut m, "bn2.weight", vec![1.0; 8]);
    set(
        &mut m,
        "bn2.bias",
        vec![1.5, -1.5, 1.5, -1.5, 1.5, 1.5, -1.5, 1.5],
    );
    // act3: beta 0, wide gamma: every channel decided OFF, and removing it silences the layer.
    set(&mut m, "bn3.weight", vec![3.0; 8]);
    set(&mut m, "bn3.bias", vec![0.0; 8]);
    // Confident logits.
    let w: Vec<f32> = m.get("fc4.weight").unwrap().to_vec();
    set(&mut m, "fc4.weight", w.iter().map(|v| v * 10.0).collect());
    m
}

fn inputs(n: usize, seed: u64) -> Tensor {
    Tensor::randn(&[n, 4], &mut Rng::new(seed))
}

#[test]
fn loss_ranking_takes_the_helpful_removal_with_the_harmless_one_and_stops_before_damage() {
    let m = mlp();
    let scores = score_candidates(&m, &[]).unwrap();
    let acts: Vec<&str> = scores.iter().map(|s| s.act.as_str()).collect();
    assert_eq!(acts, ["act1", "act2", "act3"]);
    // Labels come from the network with act2 linearized: removing act2 is what the data demands.
    let (teacher, _) = with_removed(&m, &scores, &[1]).unwrap();
    let batches: Vec<Batch> = (0..4)
        .map(|k| {
            let x = inputs(128, 100 + k);
            let labels = teacher.eval(&x).unwrap().argmax(1).unwrap();
            Batch { images: x, labels }
        })
        .collect();
    let base = mean_loss(&m, &batches).unwrap();
    let mut trials = vec![];
    let r = rank(&m, &scores, RankMode::Loss, &batches, 3, &mut |t| {
        trials.push(t.to_string())
    })
    .unwrap();
    assert_eq!(r.base_loss, Some(base));
    let gap = |i: usize| r.entries[i].gap.unwrap();
    assert_eq!(gap(0), 0.0, "act1 is always ON: removing it is exact");
    assert!(
        gap(1) < 0.0,
        "act2's removal matches the labels: {}",
        gap(1)
    );
    assert!(
        gap(2) > 0.5,
        "act3's removal silences the network: {}",
        gap(2)
    );
    let ranks: Vec<usize> = r.entries.iter().map(|e| e.rank).collect();
    assert_eq!(ranks, [2, 1, 3]);
    // The best gap is negative: act2+act1 together does not hurt, act2+act1+act3 does.
    assert_eq!(r.chosen, ["act2", "act1"]);
    assert_eq!(
        trials,
        ["act1", "act2", "act3", "act2+act1", "act2+act1+act3"]
    );
    assert_eq!(r.joint.len(), 2);
    assert!(r.joint[0].loss.unwrap() <= base && r.joint[1].loss.unwrap() > base);
    let removed: Vec<bool> = r.entries.iter().map(|e| e.removed).collect();
    assert_eq!(removed, [true, true, false]);

    // A cap of one: only the best, no joint trial.
    let r1 = rank(&m, &scores, RankMode::Loss, &batches, 1, &mut |_| {}).unwrap();
    assert_eq!(r1.chosen, ["act2"]);
    assert!(r1.joint.is_empty());

    // Labels from the network itself: no removal helps, so only the harmless act1 goes.
    let own: Vec<Batch> = batches
        .iter()
        .map(|b| Batch {
            images: b.images.clone(),
            labels: m.eval(&b.images).unwrap().argmax(1).unwrap(),
        })
        .collect();
    let r2 = rank(&m, &scores, RankMode::Loss, &own, 3, &mut |_| {}).unwrap();
    if r2.entries[1].gap.unwrap() >= 0.0 {
        assert_eq!(r2.chosen, ["act1"]);
        assert!(r2.joint.is_empty());
    }
}

#[test]
fn entropy_ranking_picks_the_most_linear_layer() {
    let m = mlp();
    let scores = score_candidates(&m, &[]).unwrap();
    let r = rank(&m, &scores, RankMode::Entropy, &[], 3, &mut |_| {
        panic!("entropy ranking measures nothing")
    })
    .unwrap();
    assert_eq!(r.chosen, ["act1"]);
    let h: Vec<f32> = r.entries.iter().map(|e| e.row.entropy.unwrap()).collect();
    assert!(
        h[0] < 1e-3 && (h[1] - 0.3539).abs() < 1e-3 && (h[2] - 1.0).abs() < 1e-6,
        "{h:?}"
    );
    let ranks: Vec<usize> = r.entries.iter().map(|e| e.rank).collect();
    assert_eq!(ranks, [1, 2, 3]);
    assert!(r.entries.iter().all(|e| e.gap.is_none()));
    let on: Vec<usize> = r.entries.iter().map(|e| e.row.on.unwrap()).collect();
    assert_eq!(on, [8, 5, 0]);
}

#[test]
fn calibration_scores_activations_without_batch_norm() {
    // fc1 -> relu -> fc2: the ReLU has no batch-norm in front.
    let mut g = Graph::new(&[4]);
    let x = g.push("fc1", linear(4, 5), &[0]);
    let x = g.push("relu", RELU, &[x]);
    g.push("fc2", linear(5, 2), &[x]);
    let m = Model::init(g, LinearInit::Uniform, &mut Rng::new(2)).unwrap();
    let unscored = score_candidates(&m, &[]).unwrap();
    assert_eq!(unscored.len(), 1);
    assert!(unscored[0].score.is_none() && unscored[0].bn.is_none());
    let row = unscored[0].row();
    assert_eq!(
        (row.source.as_str(), row.on, row.entropy),
        ("calibration", None, None)
    );

    let batches = [inputs(200, 1), inputs(100, 2)];
    let s = score_candidates(&m, &batches).unwrap();
    let score = s[0].score.as_ref().unwrap();
    // By hand: per-feature mean and std of fc1's output over both batches.
    let (w, b) = (m.get("fc1.weight").unwrap(), m.get("fc1.bias").unwrap());
    let mut cols = vec![vec![]; 5];
    for x in &batches {
        let y = x.linear(w, Some(b)).unwrap().to_vec();
        for (i, v) in y.iter().enumerate() {
            cols[i % 5].push(*v as f64);
        }
    }
    for (c, col) in cols.iter().enumerate() {
        let n = col.len() as f64;
        let mean = col.iter().sum::<f64>() / n;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let p = tlc_engine::tlc::p_off(mean as f32, std as f32);
        assert!((score.p_off[c] - p).abs() < 1e-4, "channel {c}");
        assert_eq!(score.on[c], mean > 0.0);
    }
    // A calibrated candidate can be ranked and removed like any other.
    let r = rank(&m, &s, RankMode::Entropy, &[], 1, &mut |_| {}).unwrap();
    assert_eq!(r.chosen, ["relu"]);
}
