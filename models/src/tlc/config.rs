//! What a compression run is: how candidates are ranked, how many go per iteration, how the
//! network is fine-tuned after each removal, and when to stop. Stored in every checkpoint the run
//! writes (`tlc.compress`), so `--resume` continues with the same settings.

use crate::error::{Error, Result};
use crate::train::{Schedule, TrainConfig};
use serde::{Deserialize, Serialize};

/// How the candidates of one iteration are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankMode {
    /// By measured damage: the validation loss with the candidate alone linearized minus the
    /// current loss, on the first `rank_batches` validation batches (TLC.md, "Ranking"); the
    /// removal policy (joint top-k trial) then decides how many go.
    Loss,
    /// Data-free: by layer entropy, lowest first; one activation per iteration (without a loss
    /// there is no evidence that several can go together).
    Entropy,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// One removable activation is left (TLC never removes the last one).
    OneActivationLeft,
    /// `target_removed` activations are gone.
    TargetRemoved,
    /// Validation accuracy fell under `min_acc`.
    BelowMinAcc,
    /// Validation accuracy fell more than `max_acc_drop` under the starting model's.
    AccDropExceeded,
    /// `max_iters` iterations are done.
    MaxIters,
}

impl StopReason {
    /// A sentence for the user.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::OneActivationLeft => "one removable activation is left",
            StopReason::TargetRemoved => "the target number of removed activations is reached",
            StopReason::BelowMinAcc => "validation accuracy fell under --min-acc",
            StopReason::AccDropExceeded => "validation accuracy dropped more than --max-acc-drop",
            StopReason::MaxIters => "--max-iters iterations are done",
        }
    }
}

/// A compression run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompressConfig {
    pub rank: RankMode,
    /// Validation batches (of `finetune.eval_batch_size` images) the loss gaps are measured on.
    pub rank_batches: usize,
    /// Training batches (of `finetune.eval_batch_size` images, evaluation mode) whose activation
    /// inputs give the per-channel mean and std of candidates with no batch-norm in front.
    pub calib_batches: usize,
    /// At most this many activations go in one iteration.
    pub max_per_iter: usize,
    /// Stop once this many activations are removed (counting from the starting model).
    pub target_removed: Option<usize>,
    /// Stop when validation accuracy (a fraction) falls under this.
    pub min_acc: Option<f64>,
    /// Stop when validation accuracy falls more than this (a fraction: 0.01 is one point) under
    /// the starting model's. Default: one point, so a run with no target ends by itself where
    /// removals start to cost accuracy.
    pub max_acc_drop: Option<f64>,
    /// Stop after this many iterations.
    pub max_iters: Option<usize>,
    /// Report training accuracy on the first this many training images (evaluation mode; 0: do
    /// not measure it).
    pub train_eval_limit: usize,
    /// Fine-tuning after each removal and the data split: `epochs` per iteration (0: no
    /// fine-tuning), optimizer, schedule, batch sizes, seed, validation fraction, data set.
    pub finetune: TrainConfig,
    /// Once the loop stops, fine-tune its result (the last accepted iteration) this many more
    /// epochs with the same settings and masks: the reference re-trains fully after each removal,
    /// which short per-iteration fine-tuning only approximates (0: none; absent in older runs).
    #[serde(default)]
    pub final_epochs: usize,
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            rank: RankMode::Loss,
            rank_batches: 4,
            calib_batches: 4,
            max_per_iter: 3,
            target_removed: None,
            min_acc: None,
            max_acc_drop: Some(0.01),
            max_iters: None,
            train_eval_limit: 5000,
            finetune: CompressConfig::default_finetune(),
            final_epochs: 0,
        }
    }
}

impl CompressConfig {
    /// Fine-tuning defaults: the reference's SGD (momentum 0.9, weight decay 1e-4, batch 128) at a
    /// tenth of its learning rate (0.01: the network is trained already), 2 epochs per iteration
    /// with cosine annealing (a per-epoch multistep schedule cannot act inside 1-2 epochs), and
    /// 5000 of the 60000 Fashion-MNIST training images held out for validation.
    pub fn default_finetune() -> TrainConfig {
        TrainConfig {
            epochs: 2,
            lr: 0.01,
            weight_decay: 1e-4,
            schedule: Schedule::Cosine,
            val_fraction: 5000.0 / 60000.0,
            test_every_epoch: false,
            ..TrainConfig::default()
        }
    }

    /// Reject settings no run can use, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let mut ft = self.finetune.clone();
        ft.epochs = ft.epochs.max(1); // 0 epochs: no fine-tuning, which is allowed here
        ft.validate()?;
        if self.finetune.val_fraction <= 0.0 {
            return bad("compression needs validation images: --val-fraction must be > 0".into());
        }
        if self.rank == RankMode::Loss && self.rank_batches == 0 {
            return bad("--rank-batches must be at least 1".into());
        }
        if self.max_per_iter == 0 {
            return bad("--max-per-iter must be at least 1".into());
        }
        if self.target_removed == Some(0) || self.max_iters == Some(0) {
            return bad("--target-removed and --max-iters must be at least 1".into());
        }
        for (name, v) in [
            ("--min-acc", self.min_acc),
            ("--max-acc-drop", self.max_acc_drop),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return bad(format!(
                        "{name} is a fraction in [0, 1] (0.01 is one point), got {v}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The same configuration with the stopping criteria and the final fine-tuning of `other`
    /// (what `--resume` may change).
    pub fn with_stops_of(&self, other: &CompressConfig) -> CompressConfig {
        CompressConfig {
            target_removed: other.target_removed,
            min_acc: other.min_acc,
            max_acc_drop: other.max_acc_drop,
            max_iters: other.max_iters,
            final_epochs: other.final_epochs,
            ..self.clone()
        }
    }
}
