//! What the training loop reports while it runs: the CLI draws progress bars from these calls,
//! tests ignore them. Keeping the trait here keeps terminal code out of the models crate.

use super::EpochMetrics;

/// One training step's numbers.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based batch within the epoch.
    pub batch: usize,
    pub batches: usize,
    pub lr: f64,
    /// This batch's loss.
    pub loss: f32,
    /// Mean loss and accuracy over the epoch so far.
    pub mean_loss: f64,
    pub accuracy: f64,
    /// Training images per second over the epoch so far.
    pub images_per_s: f64,
}

/// Receives the loop's progress. Every method has a do-nothing default.
pub trait Progress {
    /// An epoch of `batches` training steps begins.
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// A training step finished.
    fn step(&mut self, _r: &StepReport) {}
    /// Evaluation of `what` ("val", "test") over `batches` batches begins.
    fn eval_start(&mut self, _what: &str, _batches: usize) {}
    /// One evaluation batch finished.
    fn eval_step(&mut self) {}
    /// Evaluation finished.
    fn eval_end(&mut self) {}
    /// An epoch finished and its checkpoint is written.
    fn epoch_end(&mut self, _m: &EpochMetrics) {}
    /// A note for the user (resuming, a new best model, ...).
    fn note(&mut self, _msg: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
