//! The Trainer's channel-mask hook: OFF channels that TLC zeroed stay exactly zero through
//! fine-tuning steps (and without the hook they would not).

use tlc_engine::tlc::{candidates, linearize, ChannelMask, ChannelStats, LayerScore};
use tlc_engine::Model;
use tlc_models::train::synthetic::{bars, Difficulty};
use tlc_models::train::{init_model, AugmentConfig, Silent, Splits, TrainConfig, Trainer};
use tlc_models::zoo::{Arch, ArchSpec};

fn spec() -> ArchSpec {
    ArchSpec {
        width: 0.0625,
        in_ch: 1,
        classes: 4,
        image: [16, 16],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    }
}

fn cfg() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 32,
        eval_batch_size: 128,
        lr: 0.05,
        weight_decay: 1e-3,
        seed: 5,
        val_fraction: 0.2,
        augment: AugmentConfig {
            crop_padding: 1,
            hflip: false,
        },
        ..TrainConfig::default()
    }
}

/// Rows `channels` of parameter `name`.
fn rows(m: &Model, name: &str, channels: &[usize]) -> Vec<f32> {
    let t = m.get(name).unwrap();
    let row = t.numel() / t.shape()[0];
    let v = t.to_vec();
    channels
        .iter()
        .flat_map(|&c| v[c * row..(c + 1) * row].to_vec())
        .collect()
}

#[test]
fn off_channels_stay_exactly_zero_through_fine_tuning() {
    let mut model = init_model(&spec(), 3).unwrap();
    // layer1.0.relu1: conv1 -> bn1 -> relu -> conv2, with channels 1 and 2 decided OFF.
    let cand = candidates(model.graph()).unwrap()[1].clone();
    assert_eq!(model.graph().node(cand.act).name, "layer1.0.relu1");
    let mut score = LayerScore::new(&ChannelStats {
        shift: vec![1.0; cand.channels],
        scale: vec![1.0; cand.channels],
    });
    score.on[1] = false;
    score.on[2] = false;
    let rec = linearize(&mut model, &cand, &score).unwrap();
    let names: Vec<&str> = rec.masks.iter().map(|m| m.param.as_str()).collect();
    assert_eq!(
        names,
        [
            "layer1.0.conv1.weight",
            "layer1.0.bn1.weight",
            "layer1.0.bn1.bias"
        ]
    );
    let splits = Splits::new(
        bars(400, 16, 1, Difficulty::Easy),
        Some(bars(64, 16, 2, Difficulty::Easy)),
        &cfg(),
    )
    .unwrap();

    // Without the hook, training moves the zeroed rows (batch-norm's beta gets a gradient).
    let mut plain = Trainer::new(model.clone(), None, cfg(), splits.clone(), None).unwrap();
    plain.run(&mut Silent).unwrap();
    assert!(
        rec.masks
            .iter()
            .any(|m| rows(plain.model(), &m.param, &m.channels)
                .iter()
                .any(|v| *v != 0.0)),
        "the control run should move some masked row"
    );

    // With it, every masked row is exactly zero after every step; the other rows train.
    let mut t = Trainer::new(model.clone(), None, cfg(), splits, None).unwrap();
    t.set_channel_masks(rec.masks.clone()).unwrap();
    t.run(&mut Silent).unwrap();
    assert_eq!(t.state().epochs_done, 1);
    for m in &rec.masks {
        let r = rows(t.model(), &m.param, &m.channels);
        assert!(
            r.iter().all(|v| *v == 0.0),
            "{} masked rows: {r:?}",
            m.param
        );
        let kept = rows(t.model(), &m.param, &[0]);
        let before = rows(&model, &m.param, &[0]);
        assert_ne!(kept, before, "{} row 0 should train", m.param);
    }

    // Masks that name what the model does not have are refused.
    let bad = |param: &str, c: usize| ChannelMask {
        param: param.into(),
        channels: vec![c],
    };
    assert!(t.set_channel_masks(vec![bad("nope.weight", 0)]).is_err());
    assert!(t
        .set_channel_masks(vec![bad("layer1.0.bn1.bias", 999)])
        .unwrap_err()
        .to_string()
        .contains("row 999"));
    assert_eq!(
        t.channel_masks().len(),
        3,
        "a refused set leaves the masks as they were"
    );
}
