//! What a training run is: hyperparameters, schedule, augmentation and data options, stored in
//! every checkpoint so a run can be resumed (and audited) from the file alone.

use crate::data::loader::Augment;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tlc_engine::{AdamW, AdamWConfig, LrSchedule, Optimizer, Sgd, SgdConfig};

/// The optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with (optionally Nesterov) momentum and L2 weight decay.
    Sgd,
    /// AdamW (decoupled weight decay); `momentum` is its beta1.
    Adamw,
}

/// The learning-rate curve after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Cosine annealing from the base rate to 0 over the run, updated every step.
    Cosine,
    /// Multiply by `gamma` at the start of each epoch in `milestones` (1-based epoch numbers:
    /// `[10]` lowers the rate from the 10th epoch on).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
}

/// Training-time augmentation (see [`Augment`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Zero padding for the random crop; 0 disables cropping.
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub hflip: bool,
}

impl AugmentConfig {
    /// The loader's form.
    pub fn loader(self) -> Augment {
        Augment {
            crop_padding: self.crop_padding,
            hflip: self.hflip,
        }
    }
}

/// A training run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Total epochs of the run.
    pub epochs: usize,
    pub batch_size: usize,
    /// Batch size for evaluation (no gradients, so it can be larger).
    pub eval_batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Base (peak) learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Linear warm-up from lr/10 over this many epochs (fractions allowed; counted in steps).
    pub warmup_epochs: f64,
    pub label_smoothing: f32,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// Seeds initialisation, the validation split, subsetting, shuffling, augmentation, dropout.
    pub seed: u64,
    /// Fraction of the training images held out for validation (0 for none).
    pub val_fraction: f32,
    pub augment: AugmentConfig,
    /// Use only this many training images (a seeded random subset, taken before the split).
    pub train_limit: Option<usize>,
    /// Evaluate on only the first this many test images.
    pub test_limit: Option<usize>,
    /// Evaluate the test set after every epoch (otherwise only after the last).
    pub test_every_epoch: bool,
    /// The data set as given on the command line (`fashion-mnist`, or a directory), so a resumed
    /// run finds its data; empty for data supplied in memory.
    pub data: String,
    /// Zero-pad every image to this side length before anything else (absent in older checkpoints).
    #[serde(default)]
    pub pad_to: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 15,
            batch_size: 128,
            eval_batch_size: 500,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            schedule: Schedule::Cosine,
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            clip_grad_norm: None,
            seed: 0,
            val_fraction: 0.1,
            augment: AugmentConfig {
                crop_padding: 2,
                hflip: true,
            },
            train_limit: None,
            test_limit: None,
            test_every_epoch: true,
            data: String::new(),
            pad_to: None,
        }
    }
}

impl TrainConfig {
    /// Reject settings no run can use, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch sizes must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if self.nesterov && (self.optimizer != OptimizerKind::Sgd || self.momentum == 0.0) {
            return bad("--nesterov needs SGD with momentum > 0".into());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(format!(
                "--warmup must be >= 0 epochs, got {}",
                self.warmup_epochs
            ));
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "--label-smoothing must be in [0, 1], got {}",
                self.label_smoothing
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("--clip-grad-norm must be positive, got {c}"));
            }
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "--val-fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        if let Schedule::MultiStep { milestones, gamma } = &self.schedule {
            if !(gamma.is_finite() && *gamma > 0.0) {
                return bad(format!("--gamma must be positive, got {gamma}"));
            }
            if milestones.contains(&0) {
                return bad("--milestones are 1-based epoch numbers".into());
            }
        }
        if self.train_limit == Some(0) || self.test_limit == Some(0) {
            return bad("--train-limit and --test-limit must be at least 1".into());
        }
        Ok(())
    }

    /// The learning-rate schedule, indexed by optimizer step, for `steps_per_epoch` steps an epoch.
    pub fn lr_schedule(&self, steps_per_epoch: usize) -> Result<LrSchedule> {
        let spe = steps_per_epoch.max(1);
        let warmup = (self.warmup_epochs * spe as f64).round() as usize;
        let total = self.epochs * spe;
        let after = match &self.schedule {
            Schedule::Constant => LrSchedule::Constant,
            Schedule::Cosine => LrSchedule::cosine(total.saturating_sub(warmup).max(1), 0.0)?,
            Schedule::MultiStep { milestones, gamma } => LrSchedule::multi_step(
                milestones
                    .iter()
                    .map(|&m| ((m - 1) * spe).saturating_sub(warmup))
                    .collect(),
                *gamma,
            )?,
        };
        Ok(if warmup > 0 {
            LrSchedule::warmup(warmup, 0.1, after)?
        } else {
            after
        })
    }

    /// A fresh optimizer for this configuration.
    pub fn optimizer(&self) -> Result<Box<dyn Optimizer + Send>> {
        Ok(match self.optimizer {
            OptimizerKind::Sgd => Box::new(Sgd::new(
                SgdConfig::new(self.lr)
                    .momentum(self.momentum)
                    .nesterov(self.nesterov)
                    .weight_decay(self.weight_decay),
            )?),
            OptimizerKind::Adamw => Box::new(AdamW::new(
                AdamWConfig::new(self.lr)
                    .betas(self.momentum, 0.999)
                    .weight_decay(self.weight_decay),
            )?),
        })
    }
}
