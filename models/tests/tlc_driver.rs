//! The compression loop on a synthetic task: it stops where it is told, writes its checkpoints and
//! report, and a run stopped after iteration 1 and resumed equals the run that did not stop.

use std::path::{Path, PathBuf};
use tlc_engine::graph::Op;
use tlc_engine::TensorStore;
use tlc_models::checkpoint::Checkpoint;
use tlc_models::tlc::{
    final_tune_dir, iteration_file, report, stored_state, CompressConfig, CompressState,
    Compressor, IterationRecord, StopReason, COMPRESSED, FINAL, LAST,
};
use tlc_models::train::synthetic::{bars, Difficulty};
use tlc_models::train::{
    init_model, AugmentConfig, EpochMetrics, Silent, Splits, TrainConfig, Trainer,
};
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

fn finetune() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.01,
        weight_decay: 1e-4,
        seed: 4,
        val_fraction: 0.25,
        augment: AugmentConfig {
            crop_padding: 1,
            hflip: false,
        },
        ..CompressConfig::default_finetune()
    }
}

fn splits() -> Splits {
    Splits::new(
        bars(480, 16, 1, Difficulty::Easy),
        Some(bars(128, 16, 2, Difficulty::Easy)),
        &finetune(),
    )
    .unwrap()
}

/// A model trained for two epochs on the task.
fn trained() -> Checkpoint {
    let cfg = TrainConfig {
        epochs: 2,
        lr: 0.05,
        ..finetune()
    };
    let mut t = Trainer::new(
        init_model(&spec(), 1).unwrap(),
        Some(spec()),
        cfg,
        splits(),
        None,
    )
    .unwrap();
    t.run(&mut Silent).unwrap();
    t.checkpoint(false)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tlc-driver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(max_iters: usize) -> CompressConfig {
    CompressConfig {
        rank_batches: 1,
        max_per_iter: 2,
        max_iters: Some(max_iters),
        max_acc_drop: None,
        train_eval_limit: 100,
        finetune: finetune(),
        ..CompressConfig::default()
    }
}

fn load(dir: &Path) -> (Checkpoint, CompressState) {
    let path = dir.join(LAST);
    let store = TensorStore::load(&path).unwrap();
    let ckpt = Checkpoint::from_store(&path, &store, None)
        .unwrap()
        .checkpoint;
    (ckpt, stored_state(&path, &store).unwrap().unwrap())
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9,
        (None, None) => true,
        _ => false,
    }
}

#[test]
fn stopped_and_resumed_equals_straight_through() {
    let start = trained();
    let (a_dir, b_dir) = (TempDir::new("a"), TempDir::new("b"));

    let mut a = Compressor::new(
        start.clone(),
        "memory",
        config(2),
        splits(),
        Some(a_dir.0.clone()),
        vec![],
    )
    .unwrap();
    assert_eq!(a.run(&mut Silent).unwrap(), StopReason::MaxIters);

    let mut b = Compressor::new(
        start,
        "memory",
        config(1),
        splits(),
        Some(b_dir.0.clone()),
        vec![],
    )
    .unwrap();
    assert_eq!(b.run(&mut Silent).unwrap(), StopReason::MaxIters);
    drop(b);
    let (ckpt, mut state) = load(&b_dir.0);
    assert_eq!(state.iterations.len(), 2);
    assert_eq!(state.stopped, Some(StopReason::MaxIters));
    state.config.max_iters = Some(2);
    let mut b = Compressor::resume(ckpt, state, splits(), Some(b_dir.0.clone())).unwrap();
    assert_eq!(b.run(&mut Silent).unwrap(), StopReason::MaxIters);

    let (sa, sb) = (a.state(), b.state());
    assert_eq!(sa.iterations.len(), 3);
    assert_eq!(sa.removed(), sb.removed());
    assert_eq!(sa.masks(), sb.masks());
    for (x, y) in sa.iterations.iter().zip(&sb.iterations) {
        assert_eq!(x.removed, y.removed);
        assert_eq!(x.footprint, y.footprint);
        assert!(close(Some(x.val_acc), Some(y.val_acc)) && close(x.test_acc, y.test_acc));
        assert!(close(x.val_loss, y.val_loss) && close(x.train_acc, y.train_acc));
    }
    for (p, q) in a.model().params().iter().zip(b.model().params()) {
        assert_eq!(
            p.to_vec(),
            q.to_vec(),
            "the resumed run trains the same weights"
        );
    }
    // Removed activations are identities in the graph; every mask holds.
    let g = a.model().graph();
    for act in sa.removed() {
        assert_eq!(g.node(g.find(&act).unwrap()).op, Op::Identity);
    }
    for m in sa.masks() {
        let t = a.model().get(&m.param).unwrap();
        let row = t.numel() / t.shape()[0];
        let v = t.to_vec();
        assert!(m
            .channels
            .iter()
            .all(|&c| v[c * row..(c + 1) * row].iter().all(|x| *x == 0.0)));
    }
    for f in [
        "iter-00.safetensors",
        "iter-01.safetensors",
        "iter-02.safetensors",
        "compressed.safetensors",
        report::REPORT_JSON,
        report::REPORT_CSV,
        report::SCORES_CSV,
        report::ACCURACY_SVG,
        report::ENTROPY_SVG,
    ] {
        assert!(
            a_dir.0.join(f).is_file() && b_dir.0.join(f).is_file(),
            "{f}"
        );
    }
}

#[test]
fn stops_at_the_target_and_at_the_accuracy_floor() {
    let start = trained();
    // Two removals wanted, at most two per iteration.
    let mut c = Compressor::new(
        start.clone(),
        "memory",
        CompressConfig {
            target_removed: Some(2),
            max_iters: None,
            ..config(9)
        },
        splits(),
        None,
        vec![],
    )
    .unwrap();
    assert_eq!(c.run(&mut Silent).unwrap(), StopReason::TargetRemoved);
    let s = c.state();
    assert_eq!(s.iterations.last().unwrap().removed_total, 2);
    assert_eq!(s.best, s.iterations.len() - 1);

    // A floor above any accuracy: the starting model is measured, nothing is removed.
    let mut c = Compressor::new(
        start,
        "memory",
        CompressConfig {
            min_acc: Some(1.0),
            max_iters: None,
            ..config(9)
        },
        splits(),
        None,
        vec![],
    )
    .unwrap();
    let r = c.run(&mut Silent).unwrap();
    let s = c.state();
    if s.iterations[0].val_acc < 1.0 {
        assert_eq!(r, StopReason::BelowMinAcc);
        assert_eq!(s.iterations.len(), 1);
        assert_eq!(s.best, 0);
    }
}

/// `final_epochs`: once the loop stops, the result is fine-tuned further with its masks held; it
/// becomes the result, and a resumed run that has nothing left to do keeps it (and does not tune
/// again).
/// The final fine-tuning checkpoints every epoch in its own run directory: a resume that finds
/// it short of the configured epochs (killed, or `--final-epochs` raised) continues from its
/// last epoch rather than starting the tuning over.
#[test]
fn an_interrupted_final_fine_tuning_continues_from_its_last_epoch() {
    let dir = TempDir::new("final-resume");
    let cfg = CompressConfig {
        final_epochs: 1,
        ..config(2)
    };
    let mut c = Compressor::new(
        trained(),
        "memory",
        cfg,
        splits(),
        Some(dir.0.clone()),
        vec![],
    )
    .unwrap();
    c.run(&mut Silent).unwrap();
    let first = c.state().final_tune.clone().expect("tuned");
    let run_dir = dir.0.join(final_tune_dir(first.iteration));
    assert!(
        run_dir.join("last.safetensors").exists(),
        "no per-epoch checkpoint"
    );

    let (ckpt, state) = load(&dir.0);
    let more = CompressState {
        config: CompressConfig {
            final_epochs: 2,
            ..state.config.clone()
        },
        ..state
    };
    let mut r = Compressor::resume(ckpt, more, splits(), Some(dir.0.clone())).unwrap();
    r.run(&mut Silent).unwrap();
    let fin = r.state().final_tune.clone().expect("tuned again");
    assert_eq!(fin.iteration, first.iteration);
    assert_eq!(fin.fine_tune.len(), 2);
    // Epoch 1 is the interrupted run's own, bit for bit (its wall-clock throughput aside).
    let same = |a: &EpochMetrics, b: &EpochMetrics| {
        EpochMetrics {
            images_per_s: 0.0,
            ..a.clone()
        } == EpochMetrics {
            images_per_s: 0.0,
            ..b.clone()
        }
    };
    assert!(
        same(&fin.fine_tune[0], &first.fine_tune[0]),
        "{:?} vs {:?}",
        fin.fine_tune[0],
        first.fine_tune[0]
    );
}

#[test]
fn final_fine_tuning_tunes_the_result_and_a_resume_keeps_it() {
    let dir = TempDir::new("final");
    let cfg = CompressConfig {
        final_epochs: 1,
        ..config(2)
    };
    let mut c = Compressor::new(
        trained(),
        "memory",
        cfg.clone(),
        splits(),
        Some(dir.0.clone()),
        vec![],
    )
    .unwrap();
    assert_eq!(c.run(&mut Silent).unwrap(), StopReason::MaxIters);
    let s = c.state().clone();
    let f = s.final_tune.clone().expect("the final fine-tuning ran");
    assert_eq!((f.iteration, f.fine_tune.len()), (s.best, 1));
    assert!(f.removed.is_empty() && f.accepted);
    assert_eq!(f.removed_total, s.iterations[s.best].removed_total);
    assert!(f.test_acc.is_some() && f.train_acc.is_some());

    // The tuned model: other weights than the iteration's, OFF channels still exactly zero.
    let tuned = Checkpoint::load(dir.0.join(FINAL), None)
        .unwrap()
        .checkpoint
        .model;
    let untuned = Checkpoint::load(dir.0.join(iteration_file(s.best)), None)
        .unwrap()
        .checkpoint
        .model;
    let masks = s.masks_through(s.best);
    assert!(!masks.is_empty());
    let mut changed = false;
    for m in &masks {
        let t = tuned.get(&m.param).unwrap().to_vec();
        let row = t.len() / tuned.get(&m.param).unwrap().shape()[0];
        for &ch in &m.channels {
            assert!(
                t[ch * row..(ch + 1) * row].iter().all(|&v| v == 0.0),
                "{}",
                m.param
            );
        }
        changed |= t != untuned.get(&m.param).unwrap().to_vec();
    }
    assert!(changed, "fine-tuning changed no masked layer's weights");
    let bytes = |name: &str| std::fs::read(dir.0.join(name)).unwrap();
    assert_eq!(bytes(COMPRESSED), bytes(FINAL));
    let csv = std::fs::read_to_string(dir.0.join(report::REPORT_CSV)).unwrap();
    assert!(csv.lines().last().unwrap().starts_with("final,"), "{csv}");

    // Resumed with nothing left to do: the result stays the tuned model, tuned once (the same
    // record: its wall time would differ after a second tuning; JSON may round the last digit).
    let same = |a: &Option<IterationRecord>| {
        let a = a.as_ref().expect("a final record");
        a.iteration == f.iteration
            && a.fine_tune.len() == f.fine_tune.len()
            && (a.seconds - f.seconds).abs() <= 1e-9 * f.seconds
            && (a.val_acc - f.val_acc).abs() <= 1e-12
    };
    let (ckpt, state) = load(&dir.0);
    assert!(same(&state.final_tune));
    let mut r = Compressor::resume(ckpt, state, splits(), Some(dir.0.clone())).unwrap();
    assert_eq!(r.run(&mut Silent).unwrap(), StopReason::MaxIters);
    assert!(same(&r.state().final_tune));
    assert_eq!(bytes(COMPRESSED), bytes(FINAL));

    // Resumed with a floor the tuned model misses: the result falls back to the untuned
    // iteration (and the final record says it is not accepted).
    let (ckpt, state) = load(&dir.0);
    let floor = f.val_acc + 1e-6;
    let mut r = Compressor::resume(
        ckpt,
        CompressState {
            config: CompressConfig {
                min_acc: Some(floor),
                ..state.config.clone()
            },
            ..state
        },
        splits(),
        Some(dir.0.clone()),
    )
    .unwrap();
    r.run(&mut Silent).unwrap();
    let fin = r.state().final_tune.clone().unwrap();
    assert!(!fin.accepted);
    assert_ne!(bytes(COMPRESSED), bytes(FINAL));
}
