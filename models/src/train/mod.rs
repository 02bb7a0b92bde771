//! Training image classifiers: configuration ([`TrainConfig`]), data preparation ([`Splits`]),
//! the loop ([`Trainer`]: checkpoints every epoch, resumption, divergence detection),
//! evaluation ([`evaluate`]), and a progress callback ([`Progress`]) the CLI draws bars with.

mod config;
mod data;
mod fit;
mod progress;
pub mod synthetic;

pub use config::{AugmentConfig, OptimizerKind, Schedule, TrainConfig};
pub use data::{random_subset, DataSource, Normalization, Splits};
pub use fit::{
    check_fits, evaluate, evaluate_with, init_model, Best, EvalMetrics, TrainState, Trainer, BEST,
    LAST, LOG,
};
pub use progress::{Progress, Silent, StepReport};

use serde::{Deserialize, Serialize};

/// One epoch's line of the metrics log (`metrics.jsonl`). Accuracies are fractions in [0, 1];
/// validation and test entries are null when that set was not evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    /// Training throughput (the training steps only).
    pub images_per_s: f64,
    /// Wall time of the whole epoch, evaluation included.
    pub seconds: f64,
}

#[cfg(test)]
mod tests;
