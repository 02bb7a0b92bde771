//! The training loop: epochs of shuffled, augmented mini-batches prepared on a prefetch thread,
//! SGD/AdamW steps with a per-step learning-rate schedule, evaluation, a checkpoint after every
//! epoch, and resumption from such a checkpoint.
//!
//! Every random stream is a pure function of (seed, epoch, batch): the shuffle and augmentation
//! of an epoch (the loader seeds them from the epoch number) and dropout (seeded per batch here).
//! So a run resumed from the checkpoint of epoch k replays exactly what the uninterrupted run
//! would have done, with no generator state to save.

use super::data::{Normalization, Splits};
use super::progress::{Progress, StepReport};
use super::{EpochMetrics, TrainConfig};
use crate::checkpoint::{Checkpoint, OPTIM_PREFIX};
use crate::data::loader::{batches_per_epoch, LoaderConfig, Prefetcher};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::zoo::{self, ArchSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tlc_engine::io::atomic::write_atomically;
use tlc_engine::tlc::ChannelMask;
use tlc_engine::{clip_grad_norm, Gradients, LrSchedule, Mode, Model, Optimizer, Rng, Tensor};

/// File names inside a run's output directory.
pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
pub const LOG: &str = "metrics.jsonl";

/// The best validation result so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub val_acc: f64,
}

/// Where a run stands; stored in every checkpoint it writes (`tlc.train`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed (the checkpoint holds the model after this many).
    pub epochs_done: usize,
    pub config: TrainConfig,
    /// The input normalisation the model was trained with (eval and infer apply it too).
    pub norm: Normalization,
    pub history: Vec<EpochMetrics>,
    pub best: Option<Best>,
}

/// Loss and accuracy over a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalMetrics {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    /// Fraction of images whose arg-max logit is their label.
    pub accuracy: f64,
    pub images: usize,
    /// Per class: (correct, total).
    pub per_class: Vec<(usize, usize)>,
}

/// Remove the half-written files a run killed while saving leaves behind. The engine's atomic
/// writer names its temporary `.<target>.tmp-<pid>-<n>` beside the target; the target itself is
/// always whole, so these are garbage once their writer is gone.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if [LAST, BEST, LOG]
            .iter()
            .any(|t| name.starts_with(&format!(".{t}.tmp-")))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A freshly initialised model of `spec`, seeded by `seed`.
pub fn init_model(spec: &ArchSpec, seed: u64) -> Result<Model> {
    let (graph, init) = zoo::build(spec)?;
    Ok(Model::init(graph, init, &mut Rng::new(seed))?)
}

/// The seed of batch `batch` of epoch `epoch`'s dropout stream.
fn stream_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let x = ((epoch as u64) << 32 | batch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    seed ^ x ^ 0xD1B5_4A32_D192_ED03
}

/// Check that `model` takes `ds`'s images and predicts its classes.
pub fn check_fits(model: &Model, ds: &Dataset) -> Result<()> {
    let g = model.graph();
    let want = [ds.channels, ds.height, ds.width];
    if g.input_shape() != want {
        return Err(Error::Config(format!(
            "the model takes inputs of shape {:?} but the data set's images are {want:?} \
             (set --in-ch / --image to match the data)",
            g.input_shape()
        )));
    }
    let out = &g.infer_shapes()?[g.output()];
    if out.as_slice() != [ds.classes] {
        return Err(Error::Config(format!(
            "the model outputs {out:?} logits but the data set has {} classes (set --classes)",
            ds.classes
        )));
    }
    Ok(())
}

/// Evaluate `model` (evaluation mode: running statistics, no dropout, no autograd) on `ds`.
pub fn evaluate(
    model: &Model,
    ds: &Arc<Dataset>,
    norm: &Normalization,
    batch_size: usize,
    what: &str,
    progress: &mut dyn Progress,
) -> Result<EvalMetrics> {
    check_fits(model, ds)?;
    // Eval mode never writes the model; a clone shares every tensor and lends `forward` its `&mut`.
    let mut m = model.clone();
    let mut rng = Rng::new(0);
    evaluate_with(ds, norm, batch_size, what, progress, &mut |images| {
        Ok(m.forward(images, Mode::Eval, &mut rng)?)
    })
}

/// Loss, accuracy and per-class counts on `ds` of the logits `forward` computes for each batch of
/// normalised images (`[n, classes]`): the executor's ([`evaluate`]) or a compiled plan's.
pub fn evaluate_with(
    ds: &Arc<Dataset>,
    norm: &Normalization,
    batch_size: usize,
    what: &str,
    progress: &mut dyn Progress,
    forward: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<EvalMetrics> {
    if ds.is_empty() {
        return Err(Error::Config(format!("the {what} set holds no images")));
    }
    let cfg = LoaderConfig::eval(batch_size, norm.mean.clone(), norm.std.clone());
    progress.eval_start(what, batches_per_epoch(ds.len(), &cfg));
    let batches = Prefetcher::start(ds.clone(), cfg, 0, 0)?;
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    let mut per_class = vec![(0usize, 0usize); ds.classes];
    for b in batches {
        let logits = forward(&b.images)?;
        let loss = logits.cross_entropy(&b.labels, 0.0)?.item()?;
        loss_sum += loss as f64 * b.labels.len() as f64;
        for (p, &l) in logits.argmax(1)?.iter().zip(&b.labels) {
            per_class[l].1 += 1;
            if *p == l {
                per_class[l].0 += 1;
                correct += 1;
            }
        }
        progress.eval_step();
    }
    progress.eval_end();
    let n = ds.len();
    Ok(EvalMetrics {
        loss: loss_sum / n as f64,
        accuracy: correct as f64 / n as f64,
        images: n,
        per_class,
    })
}

/// A training run in progress.
pub struct Trainer {
    model: Model,
    spec: Option<ArchSpec>,
    optim: Box<dyn Optimizer>,
    state: TrainState,
    splits: Splits,
    out: Option<PathBuf>,
    /// Rows held at zero through training (TLC's OFF channels): see [`Trainer::set_channel_masks`].
    masks: Vec<ChannelMask>,
}

impl Trainer {
    /// A new run of `model` (freshly initialised) with `cfg` on `splits`, writing checkpoints and
    /// the metrics log into `out` when given.
    pub fn new(
        model: Model,
        spec: Option<ArchSpec>,
        cfg: TrainConfig,
        splits: Splits,
        out: Option<PathBuf>,
    ) -> Result<Trainer> {
        cfg.validate()?;
        check_fits(&model, &splits.train)?;
        let optim = cfg.optimizer()?;
        let state = TrainState {
            epochs_done: 0,
            norm: splits.norm.clone(),
            config: cfg,
            history: vec![],
            best: None,
        };
        Ok(Trainer {
            model,
            spec,
            optim,
            state,
            splits,
            out,
            masks: vec![],
        })
    }

    /// Continue the run saved in `ckpt` (a `last.safetensors`) with `cfg` -- the stored
    /// configuration, possibly with more epochs -- on `splits` (prepared from that configuration).
    pub fn resume(
        ckpt: Checkpoint,
        cfg: TrainConfig,
        splits: Splits,
        out: Option<PathBuf>,
    ) -> Result<Trainer> {
        let Some(mut state) = ckpt.train else {
            return Err(Error::Config(
                "the checkpoint holds no training state (not a `last.safetensors` of tlc train)"
                    .into(),
            ));
        };
        cfg.validate()?;
        check_fits(&ckpt.model, &splits.train)?;
        let mut optim = cfg.optimizer()?;
        match &ckpt.optim {
            Some(s) => optim.load_state(s)?,
            None if state.epochs_done > 0 => {
                return Err(Error::Config(format!(
                    "the checkpoint holds no optimizer state (tensors `{OPTIM_PREFIX}*`), so the \
                     run cannot continue exactly"
                )))
            }
            None => {}
        }
        state.config = cfg;
        Ok(Trainer {
            model: ckpt.model,
            spec: ckpt.spec,
            optim,
            state,
            splits,
            out,
            masks: vec![],
        })
    }

    /// Hold rows of parameters at zero from now on (TLC's OFF channels): every step zeroes the
    /// masked rows of the gradients before the optimizer sees them (so momentum and adaptive
    /// moments stay zero there and clipping ignores them), and of the parameters after the step
    /// (weight decay of a zero row is zero, but a parameter updated by anything else stays exact).
    /// The parameters are zeroed at once. Errors if a mask names a parameter the model does not
    /// have or a row it does not have; nothing is changed then.
    pub fn set_channel_masks(&mut self, masks: Vec<ChannelMask>) -> Result<()> {
        for m in &masks {
            let p = self.model.get(&m.param).ok_or_else(|| {
                Error::Config(format!(
                    "channel mask for `{}`, which the model does not have",
                    m.param
                ))
            })?;
            let rows = p.shape().first().copied().unwrap_or(1);
            if let Some(&c) = m.channels.iter().find(|&&c| c >= rows) {
                return Err(Error::Config(format!(
                    "channel mask for `{}` names row {c} of {rows}",
                    m.param
                )));
            }
        }
        self.masks = masks;
        self.mask_params();
        Ok(())
    }

    /// The masks held (see [`Trainer::set_channel_masks`]).
    pub fn channel_masks(&self) -> &[ChannelMask] {
        &self.masks
    }

    fn mask_params(&mut self) {
        for m in &self.masks {
            if let Some(p) = self.model.get_mut(&m.param) {
                m.apply(p);
            }
        }
    }

    fn mask_grads(&self, grads: &mut Gradients) {
        for m in &self.masks {
            if let Some(p) = self.model.get(&m.param) {
                if let Some(mut g) = grads.remove(p) {
                    m.apply(&mut g);
                    grads.insert(p, g);
                }
            }
        }
    }

    /// The model as trained so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Progress, configuration and history.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The data.
    pub fn splits(&self) -> &Splits {
        &self.splits
    }

    fn loader(&self) -> LoaderConfig {
        let c = &self.state.config;
        LoaderConfig {
            batch_size: c.batch_size,
            shuffle: true,
            seed: c.seed,
            augment: c.augment.loader(),
            mean: self.state.norm.mean.clone(),
            std: self.state.norm.std.clone(),
            // A ragged last batch would make batch-norm statistics of a handful of images.
            drop_last: true,
        }
    }

    /// Train until the configured number of epochs is done.
    pub fn run(&mut self, progress: &mut dyn Progress) -> Result<()> {
        self.run_epochs(usize::MAX, progress)
    }

    /// Train at most `n` more epochs (stopping at the configured total).
    pub fn run_epochs(&mut self, n: usize, progress: &mut dyn Progress) -> Result<()> {
        if let Some(dir) = &self.out {
            std::fs::create_dir_all(dir).map_err(|e| tlc_engine::Error::io(dir, e))?;
            remove_stale_temporaries(dir);
            // A killed run may have died before rewriting the log; make it match the checkpoint.
            self.write_log(dir)?;
        }
        let spe = batches_per_epoch(self.splits.train.len(), &self.loader());
        let schedule = self.state.config.lr_schedule(spe)?;
        let end = self
            .state
            .config
            .epochs
            .min(self.state.epochs_done.saturating_add(n));
        while self.state.epochs_done < end {
            self.epoch(spe, &schedule, progress)?;
        }
        Ok(())
    }

    fn epoch(
        &mut self,
        spe: usize,
        schedule: &LrSchedule,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let cfg = self.state.config.clone();
        let epoch = self.state.epochs_done;
        let e1 = epoch + 1;
        progress.epoch_start(e1, cfg.epochs, spe);
        let start = Instant::now();
        let batches = Prefetcher::start(self.splits.train.clone(), self.loader(), epoch, 0)?;
        let (mut loss_sum, mut correct, mut seen, mut lr) = (0f64, 0usize, 0usize, cfg.lr);
        for (b, batch) in batches.enumerate() {
            let diverged = |detail: String| {
                let kept = if epoch == 0 {
                    "no checkpoint was written yet".to_string()
                } else {
                    format!("the last checkpoint (epoch {epoch}) is kept")
                };
                Error::Diverged {
                    epoch: e1,
                    batch: b + 1,
                    detail: format!(
                        "{detail}; {kept} -- lower --lr, add --warmup or --clip-grad-norm"
                    ),
                }
            };
            lr = schedule.lr(cfg.lr, epoch * spe + b);
            self.optim.set_lr(lr);
            let mut rng = Rng::new(stream_seed(cfg.seed, epoch, b));
            let logits = self.model.forward(&batch.images, Mode::Train, &mut rng)?;
            let loss = logits.cross_entropy(&batch.labels, cfg.label_smoothing)?;
            let loss_v = loss.item()?;
            if !loss_v.is_finite() {
                return Err(diverged(format!("the loss is {loss_v}")));
            }
            let mut grads = loss.backward()?;
            drop(loss);
            self.mask_grads(&mut grads);
            if let Some(max) = cfg.clip_grad_norm {
                clip_grad_norm(&mut grads, max)?;
            }
            if !grads.all_finite() {
                return Err(diverged("a gradient holds NaN or infinity".into()));
            }
            self.optim.step(self.model.params_mut(), &grads)?;
            self.mask_params();
            let n = batch.labels.len();
            let pred = logits.argmax(1)?;
            correct += pred
                .iter()
                .zip(&batch.labels)
                .filter(|(p, l)| p == l)
                .count();
            loss_sum += loss_v as f64 * n as f64;
            seen += n;
            progress.step(&StepReport {
                epoch: e1,
                batch: b + 1,
                batches: spe,
                lr,
                loss: loss_v,
                mean_loss: loss_sum / seen as f64,
                accuracy: correct as f64 / seen as f64,
                images_per_s: seen as f64 / start.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let train_secs = start.elapsed().as_secs_f64();
        let eval = |set: &Option<Arc<Dataset>>, what: &str, p: &mut dyn Progress| {
            set.as_ref()
                .map(|ds| {
                    evaluate(
                        &self.model,
                        ds,
                        &self.state.norm,
                        cfg.eval_batch_size,
                        what,
                        p,
                    )
                })
                .transpose()
        };
        let val = eval(&self.splits.val, "val", progress)?;
        let test = if cfg.test_every_epoch || e1 == cfg.epochs {
            eval(&self.splits.test, "test", progress)?
        } else {
            None
        };
        let metrics = EpochMetrics {
            epoch: e1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: val.as_ref().map(|m| m.loss),
            val_acc: val.as_ref().map(|m| m.accuracy),
            test_loss: test.as_ref().map(|m| m.loss),
            test_acc: test.as_ref().map(|m| m.accuracy),
            images_per_s: seen as f64 / train_secs.max(1e-9),
            seconds: start.elapsed().as_secs_f64(),
        };
        self.state.epochs_done = e1;
        self.state.history.push(metrics.clone());
        let improved = match (&val, &self.state.best) {
            (Some(v), Some(b)) => v.accuracy > b.val_acc,
            (Some(_), None) => true,
            _ => false,
        };
        if let (true, Some(v)) = (improved, &val) {
            self.state.best = Some(Best {
                epoch: e1,
                val_acc: v.accuracy,
            });
        }
        if let Some(dir) = self.out.clone() {
            if improved {
                self.checkpoint(false).save(dir.join(BEST))?;
                progress.note(&format!(
                    "epoch {e1}: best validation accuracy so far, saved {}",
                    dir.join(BEST).display()
                ));
            }
            self.checkpoint(true).save(dir.join(LAST))?;
            self.write_log(&dir)?;
        }
        progress.epoch_end(&metrics);
        Ok(())
    }

    /// The run as a checkpoint (with the optimizer state when `with_optim`, for resuming).
    pub fn checkpoint(&self, with_optim: bool) -> Checkpoint {
        Checkpoint {
            model: self.model.clone(),
            spec: self.spec.clone(),
            train: Some(self.state.clone()),
            optim: with_optim.then(|| self.optim.state()),
        }
    }

    /// Rewrite the metrics log from the history (atomically, so it always matches a checkpoint).
    fn write_log(&self, dir: &Path) -> Result<()> {
        let path = dir.join(LOG);
        let mut text = String::new();
        for m in &self.state.history {
            text += &serde_json::to_string(m).expect("metrics serialise");
            text.push('\n');
        }
        write_atomically(&path, |w| {
            w.write_all(text.as_bytes())
                .map_err(|e| tlc_engine::Error::io(&path, e))
        })?;
        Ok(())
    }
}
