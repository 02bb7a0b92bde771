//! The loop on the synthetic bars task with a narrow ResNet-18 (CIFAR form) from the zoo: it
//! learns, it is deterministic, resuming equals not stopping, divergence stops it cleanly.

use super::*;
use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::zoo::{Arch, ArchSpec};
use std::path::{Path, PathBuf};

const SIDE: usize = 16;

fn spec() -> ArchSpec {
    ArchSpec {
        width: 0.0625,
        in_ch: 1,
        classes: 4,
        image: [SIDE, SIDE],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    }
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        eval_batch_size: 256,
        lr: 0.05,
        weight_decay: 1e-4,
        seed: 7,
        val_fraction: 0.25,
        augment: AugmentConfig {
            crop_padding: 1,
            hflip: false,
        },
        ..TrainConfig::default()
    }
}

fn splits(n: usize, cfg: &TrainConfig) -> Splits {
    let train = synthetic::bars(n, SIDE, 1, synthetic::Difficulty::Easy);
    let test = synthetic::bars(256, SIDE, 2, synthetic::Difficulty::Easy);
    Splits::new(train, Some(test), cfg).unwrap()
}

fn trainer(cfg: TrainConfig, n: usize, out: Option<PathBuf>) -> Trainer {
    let s = splits(n, &cfg);
    let model = init_model(&spec(), cfg.seed).unwrap();
    Trainer::new(model, Some(spec()), cfg, s, out).unwrap()
}

/// A fresh empty directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tlc-train-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn params(m: &tlc_engine::Model) -> Vec<Vec<f32>> {
    m.params()
        .iter()
        .chain(m.buffers())
        .map(|t| t.to_vec())
        .collect()
}

/// The metrics without wall-clock figures (which differ run to run).
fn numbers(h: &[EpochMetrics]) -> Vec<EpochMetrics> {
    h.iter()
        .map(|m| EpochMetrics {
            images_per_s: 0.0,
            seconds: 0.0,
            ..m.clone()
        })
        .collect()
}

/// Metrics equal up to the last bits lost in a JSON round trip (checkpoints store them as text).
fn assert_same_metrics(a: &[EpochMetrics], b: &[EpochMetrics]) {
    let flat = |h: &[EpochMetrics]| -> Vec<f64> {
        h.iter()
            .flat_map(|m| {
                [
                    Some(m.epoch as f64),
                    Some(m.lr),
                    Some(m.train_loss),
                    Some(m.train_acc),
                    m.val_loss,
                    m.val_acc,
                    m.test_loss,
                    m.test_acc,
                ]
            })
            .map(|v| v.unwrap_or(f64::NAN))
            .collect()
    };
    let (fa, fb) = (flat(a), flat(b));
    assert_eq!(fa.len(), fb.len(), "{a:?} vs {b:?}");
    for (x, y) in fa.iter().zip(&fb) {
        assert!(
            (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-12 * x.abs().max(1.0),
            "{a:?} vs {b:?}"
        );
    }
}

#[test]
fn loss_falls_and_accuracy_beats_chance() {
    let mut t = trainer(cfg(3), 1024, None);
    t.run(&mut Silent).unwrap();
    let h = &t.state().history;
    assert_eq!(h.len(), 3);
    assert!(
        h[2].train_loss < 0.7 * h[0].train_loss,
        "train loss {} -> {}",
        h[0].train_loss,
        h[2].train_loss
    );
    let test = h[2].test_acc.unwrap();
    assert!(test > 0.6, "test accuracy {test} (chance 0.25)");
    assert!(h[2].val_acc.unwrap() > 0.6);
    // The cosine schedule ends near zero on the run's last step.
    assert!(h[2].lr < 0.01 * t.state().config.lr, "{}", h[2].lr);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut t = trainer(TrainConfig { seed, ..cfg(1) }, 256, None);
        t.run(&mut Silent).unwrap();
        (numbers(&t.state().history), params(t.model()))
    };
    let (h1, p1) = run(3);
    let (h2, p2) = run(3);
    assert_eq!(h1, h2);
    assert_eq!(p1, p2);
    let (h3, _) = run(4);
    assert_ne!(h1[0].train_loss, h3[0].train_loss);
}

#[test]
fn resuming_from_a_checkpoint_equals_the_uninterrupted_run() {
    let c = TrainConfig {
        // Exercise every kind of optimizer state and schedule position.
        nesterov: true,
        warmup_epochs: 0.5,
        ..cfg(3)
    };
    let whole_dir = TempDir::new("whole");
    let mut whole = trainer(c.clone(), 384, Some(whole_dir.path().into()));
    whole.run(&mut Silent).unwrap();

    let dir = TempDir::new("resumed");
    let mut first = trainer(c.clone(), 384, Some(dir.path().into()));
    first.run_epochs(1, &mut Silent).unwrap();
    drop(first);
    let loaded = Checkpoint::load(dir.path().join(LAST), None).unwrap();
    assert_eq!(loaded.checkpoint.train.as_ref().unwrap().epochs_done, 1);
    let state = loaded.checkpoint.train.clone().unwrap();
    let s = splits(384, &state.config);
    // As if a run had been killed while writing its checkpoint.
    let stale = dir.path().join(".last.safetensors.tmp-999999-0");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let mut resumed =
        Trainer::resume(loaded.checkpoint, state.config, s, Some(dir.path().into())).unwrap();
    resumed.run(&mut Silent).unwrap();

    assert_same_metrics(&resumed.state().history, &whole.state().history);
    assert_eq!(params(resumed.model()), params(whole.model()));
    assert!(!stale.exists());
    // The log matches the history, one line per epoch.
    let log = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
    let lines: Vec<EpochMetrics> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_same_metrics(&lines, &whole.state().history);
    // A best-by-validation checkpoint exists and describes itself.
    let best = Checkpoint::load(dir.path().join(BEST), None).unwrap();
    let b = best.checkpoint.train.unwrap().best.unwrap();
    assert!(b.epoch >= 1 && b.epoch <= 3);
    assert!(best.checkpoint.optim.is_none());
}

#[test]
fn a_diverging_run_stops_with_the_epoch_and_batch_and_keeps_the_last_checkpoint() {
    // A sane first epoch, then the rate jumps by 1e9 and the weights overflow within a few steps.
    let c = TrainConfig {
        schedule: Schedule::MultiStep {
            milestones: vec![2],
            gamma: 1e9,
        },
        ..cfg(3)
    };
    let dir = TempDir::new("diverge");
    let mut t = trainer(c, 512, Some(dir.path().into()));
    let err = t.run(&mut Silent).unwrap_err();
    match &err {
        Error::Diverged { epoch, batch, .. } => {
            assert_eq!(*epoch, 2, "{err}");
            assert!(*batch >= 1);
        }
        other => panic!("expected a divergence error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("epoch 2") && msg.contains("last checkpoint (epoch 1)"),
        "{msg}"
    );
    let kept = Checkpoint::load(dir.path().join(LAST), None).unwrap();
    let state = kept.checkpoint.train.unwrap();
    assert_eq!(state.epochs_done, 1);
    assert!(params(&kept.checkpoint.model)
        .iter()
        .flatten()
        .all(|v| v.is_finite()));
    let log = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
    assert_eq!(log.lines().count(), 1);
}

#[test]
fn a_model_that_does_not_fit_the_data_is_refused() {
    let c = cfg(1);
    let s = splits(128, &c);
    let wrong = ArchSpec {
        classes: 10,
        ..spec()
    };
    let model = init_model(&wrong, 0).unwrap();
    let e = Trainer::new(model, Some(wrong), c.clone(), s.clone(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("4 classes"), "{e}");
    let wrong = ArchSpec { in_ch: 3, ..spec() };
    let model = init_model(&wrong, 0).unwrap();
    let e = Trainer::new(model, Some(wrong), c, s, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--in-ch"), "{e}");
}

#[test]
fn configuration_is_validated_and_schedules_count_steps() {
    assert!(cfg(1).validate().is_ok());
    for (bad, what) in [
        (
            TrainConfig {
                epochs: 0,
                ..cfg(1)
            },
            "--epochs",
        ),
        (TrainConfig { lr: -1.0, ..cfg(1) }, "--lr"),
        (
            TrainConfig {
                momentum: 1.5,
                ..cfg(1)
            },
            "--momentum",
        ),
        (
            TrainConfig {
                val_fraction: 1.0,
                ..cfg(1)
            },
            "--val-fraction",
        ),
        (
            TrainConfig {
                nesterov: true,
                momentum: 0.0,
                ..cfg(1)
            },
            "--nesterov",
        ),
        (
            TrainConfig {
                schedule: Schedule::MultiStep {
                    milestones: vec![0],
                    gamma: 0.1,
                },
                ..cfg(1)
            },
            "1-based",
        ),
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    // 10 steps an epoch, warm-up of half an epoch, lr drops at the start of epoch 3.
    let c = TrainConfig {
        epochs: 4,
        lr: 1.0,
        warmup_epochs: 0.5,
        schedule: Schedule::MultiStep {
            milestones: vec![3],
            gamma: 0.1,
        },
        ..cfg(4)
    };
    let s = c.lr_schedule(10).unwrap();
    assert!((s.lr(1.0, 0) - 0.1).abs() < 1e-12);
    assert_eq!(s.lr(1.0, 5), 1.0);
    assert_eq!(s.lr(1.0, 19), 1.0);
    assert!((s.lr(1.0, 20) - 0.1).abs() < 1e-12);
    let cos = TrainConfig {
        schedule: Schedule::Cosine,
        warmup_epochs: 0.0,
        ..c
    }
    .lr_schedule(10)
    .unwrap();
    assert_eq!(cos.lr(1.0, 0), 1.0);
    assert!((cos.lr(1.0, 20) - 0.5).abs() < 1e-12);
}

#[test]
fn splits_follow_the_limits_and_fractions() {
    let c = TrainConfig {
        train_limit: Some(200),
        test_limit: Some(50),
        val_fraction: 0.1,
        ..cfg(1)
    };
    let s = splits(1000, &c);
    assert_eq!(s.train.len() + s.val.as_ref().unwrap().len(), 200);
    assert_eq!(s.val.as_ref().unwrap().len(), 20);
    assert_eq!(s.test.as_ref().unwrap().len(), 50);
    assert_eq!(s.norm.mean.len(), 1);
    // Deterministic for the seed.
    let again = splits(1000, &c);
    assert_eq!(again.train.pixels, s.train.pixels);
    let e = Splits::new(
        synthetic::bars(10, SIDE, 0, synthetic::Difficulty::Easy),
        None,
        &cfg(1),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("fewer than one batch"), "{e}");
}
