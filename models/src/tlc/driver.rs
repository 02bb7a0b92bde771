//! The TLC loop: rank -> apply -> fine-tune (with the OFF channels held at zero) -> evaluate,
//! until a stopping criterion holds. Every finished iteration is a self-describing checkpoint
//! (`iter-NN.safetensors`, and `last.safetensors` to resume from) whose header entry
//! `tlc.compress` holds the whole run so far ([`CompressState`]: configuration, per-iteration
//! records with the removed activations, their OFF channels and masks, relocated paddings,
//! metrics and rankings); the graph entry holds the Identity nodes and moved paddings.
//!
//! Determinism: ranking uses the first validation images in order; calibration the first
//! training images; fine-tuning of iteration `i` uses the seed `seed + i` for its shuffles. A run
//! resumed after a kill redoes the interrupted iteration from the last finished one.

use super::config::{CompressConfig, RankMode, StopReason};
use super::rank::{rank, with_removed, Ranking};
use super::report;
use super::score::{needs_calibration, score_candidates, CandidateScore};
use crate::checkpoint::Checkpoint;
use crate::data::loader::{make_batch, Batch, LoaderConfig};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::train::{
    evaluate, EpochMetrics, EvalMetrics, Normalization, Progress, Silent, Splits, TrainConfig,
    TrainState, Trainer,
};
use crate::zoo::ArchSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tlc_engine::graph::Op;
use tlc_engine::io::atomic::write_atomically;
use tlc_engine::tlc::{candidates, ChannelMask, Linearized};
use tlc_engine::{Model, Rng, Tensor, TensorStore};

/// Header key of the compression state.
pub const COMPRESS_KEY: &str = "tlc.compress";
/// The checkpoint of the last finished iteration (what `--resume` continues from).
pub const LAST: &str = "last.safetensors";
/// The checkpoint of the last iteration that met the accuracy criteria: the result.
pub const COMPRESSED: &str = "compressed.safetensors";
/// The result after the final fine-tuning (`CompressConfig::final_epochs`).
pub const FINAL: &str = "final.safetensors";

/// The training run of the final fine-tuning of iteration `best` (its per-epoch checkpoints).
pub fn final_tune_dir(best: usize) -> String {
    format!("final-tune-{best:02}")
}
/// Layout version of [`CompressState`].
pub const STATE_FORMAT: u32 = 1;

/// File name of iteration `i`'s checkpoint (0 is the starting model).
pub fn iteration_file(i: usize) -> String {
    format!("iter-{i:02}.safetensors")
}

/// Size of a model whose masked rows are zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    /// Trainable scalars.
    pub params: usize,
    /// The same without the masked (held-at-zero) rows.
    pub params_active: usize,
    /// Multiply-accumulates per image of every conv and linear layer ([`tlc_engine::Graph::macs`]).
    pub macs: u64,
    /// The same with each layer's MACs scaled by its fraction of unmasked output channels. The
    /// reads of zeroed channels by the next layer are still counted (a lower bound on savings).
    pub macs_active: u64,
}

/// The footprint of `model` with `masks` applied.
pub fn footprint(model: &Model, masks: &[ChannelMask]) -> Result<Footprint> {
    let g = model.graph();
    let macs = g.macs()?;
    let mut macs_active = 0u64;
    for (id, n) in g.nodes().iter().enumerate() {
        let out = match &n.op {
            Op::Conv2d(c) => c.out_ch,
            Op::Linear(l) => l.out_f,
            _ => continue,
        };
        let weight = format!("{}.weight", n.name);
        let off: usize = masks
            .iter()
            .filter(|m| m.param == weight)
            .map(|m| m.channels.len())
            .sum();
        macs_active += macs[id] * out.saturating_sub(off) as u64 / out.max(1) as u64;
    }
    let masked: usize = masks
        .iter()
        .filter_map(|m| {
            let t = model.get(&m.param)?;
            let rows = t.shape().first().copied().unwrap_or(1).max(1);
            Some(m.channels.len() * (t.numel() / rows))
        })
        .sum();
    let params = model.num_params();
    Ok(Footprint {
        params,
        params_active: params.saturating_sub(masked),
        macs: macs.iter().sum(),
        macs_active,
    })
}

/// What one iteration did and measured (iteration 0: the starting model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    pub iteration: usize,
    /// The activations removed by this iteration, with their OFF channels, masks and any
    /// relocated padding.
    pub removed: Vec<Linearized>,
    /// Activations removed so far, this iteration included.
    pub removed_total: usize,
    /// Candidates (removable activations) left.
    pub activations_left: usize,
    /// The ranking that chose `removed` (scores of the model before this iteration).
    pub ranking: Option<Ranking>,
    /// Validation loss and accuracy right after the removal, before fine-tuning.
    pub val_loss_before_ft: Option<f64>,
    pub val_acc_before_ft: Option<f64>,
    /// The fine-tuning epochs.
    pub fine_tune: Vec<EpochMetrics>,
    /// Accuracy on the first `train_eval_limit` training images (evaluation mode).
    pub train_acc: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_acc: f64,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    pub footprint: Footprint,
    /// Whether the accuracy criteria (`min_acc`, `max_acc_drop`) hold after this iteration.
    pub accepted: bool,
    /// Wall time of the iteration.
    pub seconds: f64,
}

/// A compression run: stored in the header of every checkpoint it writes and as `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompressState {
    pub format: u32,
    /// The checkpoint the run started from.
    pub source: String,
    pub config: CompressConfig,
    /// The input normalisation the model was trained with.
    pub norm: Normalization,
    /// Masks of activations removed before this run (the source was itself compressed).
    pub inherited_masks: Vec<ChannelMask>,
    /// Iteration 0 (the starting model), 1, 2, ...
    pub iterations: Vec<IterationRecord>,
    /// The last accepted iteration (its checkpoint is `compressed.safetensors`).
    pub best: usize,
    /// Why the run stopped, once it has.
    pub stopped: Option<StopReason>,
    /// The final fine-tuning of iteration `best` (its `iteration` field), once done: no removal,
    /// `fine_tune` holds its epochs (absent in older runs).
    #[serde(default)]
    pub final_tune: Option<IterationRecord>,
}

impl CompressState {
    /// Every mask in force: inherited, then each iteration's.
    pub fn masks(&self) -> Vec<ChannelMask> {
        self.masks_through(self.iterations.len())
    }

    /// The masks in force after iteration `last`: inherited, then iterations 1..=last.
    pub fn masks_through(&self, last: usize) -> Vec<ChannelMask> {
        let mut m = self.inherited_masks.clone();
        for it in self.iterations.iter().take(last + 1) {
            for r in &it.removed {
                m.extend(r.masks.iter().cloned());
            }
        }
        m
    }

    /// Whether the final fine-tuning the configuration asks for is still to be done.
    pub fn final_tune_pending(&self) -> bool {
        let epochs = self.config.final_epochs;
        let done = self
            .final_tune
            .as_ref()
            .is_some_and(|f| f.iteration == self.best && f.fine_tune.len() == epochs);
        epochs > 0 && self.best > 0 && !done
    }

    /// Activations removed so far, in order.
    pub fn removed(&self) -> Vec<String> {
        self.iterations
            .iter()
            .flat_map(|it| it.removed.iter().map(|r| r.act.clone()))
            .collect()
    }

    /// Whether `rec` meets the accuracy criteria of the configuration.
    fn accepts(&self, rec: &IterationRecord) -> bool {
        let c = &self.config;
        let base = self.iterations.first().map_or(rec.val_acc, |b| b.val_acc);
        let floor = !matches!(c.min_acc, Some(m) if rec.val_acc < m);
        let drop = !matches!(c.max_acc_drop, Some(d) if base - rec.val_acc > d + 1e-12);
        rec.iteration == 0 || (floor && drop)
    }

    /// Recompute which iterations are accepted (after the criteria changed on resume); returns
    /// whether the best iteration changed.
    pub fn refresh_acceptance(&mut self) -> bool {
        let flags: Vec<bool> = self.iterations.iter().map(|r| self.accepts(r)).collect();
        for (r, f) in self.iterations.iter_mut().zip(flags) {
            r.accepted = f;
        }
        if let Some(f) = &self.final_tune {
            let ok = self.accepts(f);
            self.final_tune.as_mut().expect("checked").accepted = ok;
        }
        let best = self
            .iterations
            .iter()
            .rposition(|r| r.accepted)
            .unwrap_or(0);
        let changed = best != self.best;
        self.best = best;
        changed
    }

    /// Why the run must stop now, if it must (checked before each iteration).
    pub fn stop_reason(&self) -> Option<StopReason> {
        let c = &self.config;
        let last = self.iterations.last()?;
        let base = &self.iterations[0];
        if c.min_acc.is_some_and(|m| last.val_acc < m) {
            return Some(StopReason::BelowMinAcc);
        }
        if c.max_acc_drop
            .is_some_and(|d| base.val_acc - last.val_acc > d + 1e-12)
        {
            return Some(StopReason::AccDropExceeded);
        }
        if c.target_removed.is_some_and(|t| last.removed_total >= t) {
            return Some(StopReason::TargetRemoved);
        }
        if last.activations_left <= 1 {
            return Some(StopReason::OneActivationLeft);
        }
        if c.max_iters.is_some_and(|n| self.iterations.len() > n) {
            return Some(StopReason::MaxIters);
        }
        None
    }
}

/// What the loop reports besides training progress. Every method has a do-nothing default.
pub trait CompressProgress: Progress {
    /// Iteration `i` (1-based; 0 measures the starting model) begins.
    fn iteration_start(&mut self, _i: usize) {}
    /// Ranking begins with `n` single-candidate trials (joint trials may follow).
    fn trials_start(&mut self, _n: usize) {}
    /// A trial (a candidate, or `a+b+...`) is about to be measured.
    fn trial(&mut self, _name: &str) {}
    /// Ranking is done; `r.chosen` go.
    fn ranked(&mut self, _r: &Ranking) {}
    /// An iteration finished and its checkpoint and reports are written.
    fn iteration_end(&mut self, _r: &IterationRecord, _state: &CompressState) {}
    /// The final fine-tuning of iteration `best` begins.
    fn final_start(&mut self, _best: usize, _epochs: usize) {}
    /// The final fine-tuning finished (`r.iteration` is the iteration it tuned).
    fn final_end(&mut self, _r: &IterationRecord, _state: &CompressState) {}
}

impl CompressProgress for Silent {}

/// The compression state in the header of `store` (loaded from `path`), if it has one.
pub fn stored_state(path: &Path, store: &TensorStore) -> Result<Option<CompressState>> {
    store
        .metadata_get(COMPRESS_KEY)
        .map(serde_json::from_str::<CompressState>)
        .transpose()
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            detail: format!("header entry `{COMPRESS_KEY}`: {e}"),
        })
}

/// A compression run in progress.
pub struct Compressor {
    model: Model,
    spec: Option<ArchSpec>,
    state: CompressState,
    splits: Splits,
    out: Option<PathBuf>,
    rank_batches: Vec<Batch>,
    calib: Option<Vec<Tensor>>,
    train_eval: Option<Arc<Dataset>>,
}

fn first_batches(ds: &Dataset, n_batches: usize, bs: usize, norm: &Normalization) -> Vec<Batch> {
    let cfg = LoaderConfig::eval(bs, norm.mean.clone(), norm.std.clone());
    let n = ds.len().min(n_batches * bs);
    let idx: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(0);
    idx.chunks(bs)
        .map(|c| make_batch(ds, c, &cfg, &mut rng))
        .collect()
}

impl Compressor {
    /// Start compressing `ckpt` (loaded from `source`) with `config` on `splits` (prepared from
    /// `config.finetune`), writing into `out` when given. The model's own normalisation (from its
    /// training state) replaces the splits' when the checkpoint has one. `inherited_masks` are the
    /// masks of a source that was itself compressed (they stay in force).
    pub fn new(
        ckpt: Checkpoint,
        source: &str,
        config: CompressConfig,
        mut splits: Splits,
        out: Option<PathBuf>,
        inherited_masks: Vec<ChannelMask>,
    ) -> Result<Compressor> {
        config.validate()?;
        if let Some(t) = &ckpt.train {
            splits.norm = t.norm.clone();
        }
        let state = CompressState {
            format: STATE_FORMAT,
            source: source.to_string(),
            config,
            norm: splits.norm.clone(),
            inherited_masks,
            iterations: vec![],
            best: 0,
            stopped: None,
            final_tune: None,
        };
        Compressor::with_state(ckpt.model, ckpt.spec, state, splits, out)
    }

    /// Continue the run whose last finished iteration is `ckpt` with `state` (its
    /// configuration's stopping criteria may have changed) on `splits` (from that configuration).
    pub fn resume(
        ckpt: Checkpoint,
        mut state: CompressState,
        mut splits: Splits,
        out: Option<PathBuf>,
    ) -> Result<Compressor> {
        if state.format != STATE_FORMAT {
            return Err(Error::Config(format!(
                "compression state layout {} is not one this tlc reads ({STATE_FORMAT})",
                state.format
            )));
        }
        state.config.validate()?;
        splits.norm = state.norm.clone();
        state.stopped = None;
        let best_changed = state.refresh_acceptance();
        let c = Compressor::with_state(ckpt.model, ckpt.spec, state, splits, out)?;
        if best_changed {
            c.copy_best()?;
        }
        Ok(c)
    }

    fn with_state(
        model: Model,
        spec: Option<ArchSpec>,
        state: CompressState,
        splits: Splits,
        out: Option<PathBuf>,
    ) -> Result<Compressor> {
        crate::train::check_fits(&model, &splits.train)?;
        let val = splits.val.clone().ok_or_else(|| {
            Error::Config("compression needs validation images (--val-fraction > 0)".into())
        })?;
        let cfg = &state.config;
        let rank_batches = if cfg.rank == RankMode::Loss {
            first_batches(
                &val,
                cfg.rank_batches,
                cfg.finetune.eval_batch_size,
                &state.norm,
            )
        } else {
            vec![]
        };
        let train_eval =
            (cfg.train_eval_limit > 0).then(|| Arc::new(splits.train.take(cfg.train_eval_limit)));
        let mut model = model;
        for m in &state.masks() {
            let t = model.get_mut(&m.param).ok_or_else(|| {
                Error::Config(format!(
                    "mask for `{}`, which the model does not have",
                    m.param
                ))
            })?;
            m.apply(t);
        }
        Ok(Compressor {
            model,
            spec,
            state,
            splits,
            out,
            rank_batches,
            calib: None,
            train_eval,
        })
    }

    /// The model as compressed so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The run so far.
    pub fn state(&self) -> &CompressState {
        &self.state
    }

    fn calibration(&mut self) -> Result<&[Tensor]> {
        if self.calib.is_none() {
            let cfg = &self.state.config;
            let b = if needs_calibration(&self.model)? {
                first_batches(
                    &self.splits.train,
                    cfg.calib_batches,
                    cfg.finetune.eval_batch_size,
                    &self.state.norm,
                )
                .into_iter()
                .map(|b| b.images)
                .collect()
            } else {
                vec![]
            };
            self.calib = Some(b);
        }
        Ok(self.calib.as_deref().unwrap_or(&[]))
    }

    /// Every candidate of the current model, scored (calibration candidates on training images).
    pub fn scores(&mut self) -> Result<Vec<CandidateScore>> {
        let calib = self.calibration()?.to_vec();
        score_candidates(&self.model, &calib)
    }

    /// How many activations the next iteration may remove, with `left` candidates.
    fn cap(&self, left: usize) -> usize {
        let c = &self.state.config;
        let removed = self.state.iterations.last().map_or(0, |r| r.removed_total);
        let mut cap = c.max_per_iter.min(left.saturating_sub(1));
        if let Some(t) = c.target_removed {
            cap = cap.min(t.saturating_sub(removed));
        }
        cap.max(1)
    }

    /// Score and rank the current model's candidates and decide what the next iteration would
    /// remove, changing nothing (`tlc compress --rank-only`).
    pub fn rank_once(
        &mut self,
        p: &mut dyn CompressProgress,
    ) -> Result<(Vec<CandidateScore>, Ranking)> {
        let scores = self.scores()?;
        if scores.is_empty() {
            return Err(Error::Config(
                "the model has no removable activations left".into(),
            ));
        }
        let cap = self.cap(scores.len());
        p.trials_start(scores.iter().filter(|s| s.score.is_some()).count());
        let mode = self.state.config.rank;
        let r = rank(
            &self.model,
            &scores,
            mode,
            &self.rank_batches,
            cap,
            &mut |name| p.trial(name),
        )?;
        p.ranked(&r);
        Ok((scores, r))
    }

    fn eval_on(
        &self,
        ds: &Option<Arc<Dataset>>,
        what: &str,
        p: &mut dyn Progress,
    ) -> Result<Option<EvalMetrics>> {
        ds.as_ref()
            .map(|d| {
                evaluate(
                    &self.model,
                    d,
                    &self.state.norm,
                    self.state.config.finetune.eval_batch_size,
                    what,
                    p,
                )
            })
            .transpose()
    }

    /// Run iterations until a stopping criterion holds; returns it.
    pub fn run<P: CompressProgress>(&mut self, p: &mut P) -> Result<StopReason> {
        if let Some(dir) = &self.out {
            std::fs::create_dir_all(dir).map_err(|e| tlc_engine::Error::io(dir, e))?;
            remove_stale_temporaries(dir);
        }
        if self.state.iterations.is_empty() {
            self.baseline(p)?;
        }
        loop {
            if let Some(reason) = self.state.stop_reason() {
                self.state.stopped = Some(reason);
                // A finished final fine-tuning of the best iteration stays the result.
                let best_is_last = self.state.best + 1 == self.state.iterations.len();
                self.save(best_is_last && !self.final_is_result())?;
                if self.state.final_tune_pending() {
                    self.final_tune(p)?;
                }
                return Ok(reason);
            }
            self.iteration(p)?;
        }
    }

    fn baseline<P: CompressProgress>(&mut self, p: &mut P) -> Result<()> {
        let start = Instant::now();
        p.iteration_start(0);
        let val = self
            .eval_on(&self.splits.val, "val", p)?
            .expect("checked at construction");
        let test = self.eval_on(&self.splits.test, "test", p)?;
        let train = self.eval_on(&self.train_eval, "train", p)?;
        let rec = IterationRecord {
            iteration: 0,
            removed: vec![],
            removed_total: 0,
            activations_left: candidates(self.model.graph())?.len(),
            ranking: None,
            val_loss_before_ft: None,
            val_acc_before_ft: None,
            fine_tune: vec![],
            train_acc: train.map(|m| m.accuracy),
            val_loss: finite(val.loss),
            val_acc: val.accuracy,
            test_loss: test.as_ref().and_then(|m| finite(m.loss)),
            test_acc: test.map(|m| m.accuracy),
            footprint: footprint(&self.model, &self.state.masks())?,
            accepted: true,
            seconds: start.elapsed().as_secs_f64(),
        };
        self.state.iterations.push(rec);
        self.state.best = 0;
        self.save(true)?;
        let (r, s) = (self.state.iterations.last().expect("pushed"), &self.state);
        p.iteration_end(r, s);
        Ok(())
    }

    fn iteration<P: CompressProgress>(&mut self, p: &mut P) -> Result<()> {
        let start = Instant::now();
        let i = self.state.iterations.len();
        p.iteration_start(i);
        let (scores, ranking) = self.rank_once(p)?;
        let chosen: Vec<usize> = ranking
            .chosen
            .iter()
            .filter_map(|a| scores.iter().position(|s| &s.act == a))
            .collect();
        let (model, removed) = with_removed(&self.model, &scores, &chosen)?;
        self.model = model;
        let masks = {
            let mut m = self.state.masks();
            m.extend(removed.iter().flat_map(|r| r.masks.iter().cloned()));
            m
        };
        let before = self.eval_on(&self.splits.val, "val", p)?;
        let cfg = self.state.config.clone();
        let mut fine_tune = vec![];
        if cfg.finetune.epochs > 0 {
            let mut ft = cfg.finetune.clone();
            ft.seed = ft.seed.wrapping_add(i as u64);
            ft.test_every_epoch = false;
            let mut t = Trainer::new(
                self.model.clone(),
                self.spec.clone(),
                ft,
                self.splits.clone(),
                None,
            )?;
            t.set_channel_masks(masks.clone())?;
            t.run(p)?;
            fine_tune = t.state().history.clone();
            self.model = t.model().clone();
        }
        // The trainer evaluated validation and test after its last epoch; without fine-tuning
        // this measures them.
        let (val_loss, val_acc, test_loss, test_acc) = match fine_tune.last() {
            Some(m) => (
                m.val_loss,
                m.val_acc.expect("validation images exist"),
                m.test_loss,
                m.test_acc,
            ),
            None => {
                let v = before.clone().expect("validation images exist");
                let t = self.eval_on(&self.splits.test, "test", p)?;
                (
                    finite(v.loss),
                    v.accuracy,
                    t.as_ref().and_then(|m| finite(m.loss)),
                    t.map(|m| m.accuracy),
                )
            }
        };
        let train = self.eval_on(&self.train_eval, "train", p)?;
        let removed_total =
            self.state.iterations.last().map_or(0, |r| r.removed_total) + removed.len();
        let mut rec = IterationRecord {
            iteration: i,
            removed,
            removed_total,
            activations_left: candidates(self.model.graph())?.len(),
            ranking: Some(ranking),
            val_loss_before_ft: before.as_ref().and_then(|m| finite(m.loss)),
            val_acc_before_ft: before.map(|m| m.accuracy),
            fine_tune,
            train_acc: train.map(|m| m.accuracy),
            val_loss: val_loss.and_then(finite),
            val_acc,
            test_loss: test_loss.and_then(finite),
            test_acc,
            footprint: footprint(&self.model, &masks)?,
            accepted: false,
            seconds: 0.0,
        };
        rec.accepted = self.state.accepts(&rec);
        let accepted = rec.accepted;
        rec.seconds = start.elapsed().as_secs_f64();
        self.state.iterations.push(rec);
        if accepted {
            self.state.best = i;
        }
        self.save(accepted)?;
        let (r, s) = (self.state.iterations.last().expect("pushed"), &self.state);
        p.iteration_end(r, s);
        Ok(())
    }

    /// The model of iteration `i`: the current one for the last iteration, else its checkpoint.
    fn iteration_model(&self, i: usize) -> Result<Model> {
        if i + 1 == self.state.iterations.len() {
            return Ok(self.model.clone());
        }
        let dir = self.out.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "fine-tuning iteration {i}, not the last, needs the run's directory"
            ))
        })?;
        Ok(Checkpoint::load(dir.join(iteration_file(i)), None)?
            .checkpoint
            .model)
    }

    /// Fine-tune the result (iteration `best`) `final_epochs` more epochs with its masks held,
    /// evaluate it, and write it as `final.safetensors` — and as `compressed.safetensors` when it
    /// still meets the accuracy criteria.
    fn final_tune<P: CompressProgress>(&mut self, p: &mut P) -> Result<()> {
        let start = Instant::now();
        let best = self.state.best;
        let cfg = self.state.config.clone();
        p.final_start(best, cfg.final_epochs);
        let masks = self.state.masks_through(best);
        let mut ft = cfg.finetune.clone();
        ft.epochs = cfg.final_epochs;
        // A seed no iteration uses (iteration i fine-tunes with seed + i).
        ft.seed = ft.seed.wrapping_add(1 << 32).wrapping_add(best as u64);
        ft.test_every_epoch = false;
        // Its own training run in a subdirectory (one per result iteration), checkpointed every
        // epoch: a kill during the final tuning loses at most the epoch in progress.
        let run_dir = self.out.as_ref().map(|d| d.join(final_tune_dir(best)));
        let mut t = match self.resumable_final_tune(run_dir.as_deref(), &ft)? {
            Some(ckpt) => {
                p.note(&format!(
                    "resuming the final fine-tuning after epoch {} of {}",
                    ckpt.train.as_ref().map_or(0, |s| s.epochs_done),
                    ft.epochs
                ));
                Trainer::resume(ckpt, ft, self.splits.clone(), run_dir)?
            }
            None => Trainer::new(
                self.iteration_model(best)?,
                self.spec.clone(),
                ft,
                self.splits.clone(),
                run_dir,
            )?,
        };
        t.set_channel_masks(masks.clone())?;
        t.run(p)?;
        let history = t.state().history.clone();
        let last = history.last().expect("final_epochs > 0").clone();
        // Measure and store the tuned model through the same paths as an iteration's, then put
        // the last iteration's model back (a resumed run continues from it).
        let current = std::mem::replace(&mut self.model, t.model().clone());
        let outcome = (|| {
            let train = self.eval_on(&self.train_eval, "train", p)?;
            let from = &self.state.iterations[best];
            let mut rec = IterationRecord {
                iteration: best,
                removed: vec![],
                removed_total: from.removed_total,
                activations_left: from.activations_left,
                ranking: None,
                val_loss_before_ft: from.val_loss,
                val_acc_before_ft: Some(from.val_acc),
                fine_tune: history.clone(),
                train_acc: train.map(|m| m.accuracy),
                val_loss: last.val_loss.and_then(finite),
                val_acc: last.val_acc.expect("validation images exist"),
                test_loss: last.test_loss.and_then(finite),
                test_acc: last.test_acc,
                footprint: footprint(&self.model, &masks)?,
                accepted: false,
                seconds: 0.0,
            };
            rec.accepted = self.state.accepts(&rec);
            rec.seconds = start.elapsed().as_secs_f64();
            self.state.final_tune = Some(rec.clone());
            if let Some(dir) = &self.out {
                let store = self.store_of(history);
                store.save(dir.join(FINAL))?;
                if rec.accepted {
                    store.save(dir.join(COMPRESSED))?;
                }
            }
            Ok::<_, Error>(rec)
        })();
        self.model = current;
        let rec = outcome?;
        // `last` carries the state (now with the final record) for a later --resume.
        if let Some(dir) = &self.out {
            self.store().save(dir.join(LAST))?;
            report::write_all(dir, &self.state)?;
        }
        p.final_end(&rec, &self.state);
        Ok(())
    }

    /// The checkpoint of an interrupted final fine-tuning in `dir` to continue, if there is one
    /// that `ft` can continue: the same seed and schedule, no more epochs done than `ft` asks.
    fn resumable_final_tune(
        &self,
        dir: Option<&Path>,
        ft: &TrainConfig,
    ) -> Result<Option<Checkpoint>> {
        let Some(path) = dir.map(|d| d.join(crate::train::LAST)) else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let ckpt = Checkpoint::load(&path, None)?.checkpoint;
        let fits = ckpt.train.as_ref().is_some_and(|s| {
            s.epochs_done < ft.epochs
                && s.config.seed == ft.seed
                && s.config.lr == ft.lr
                && s.config.batch_size == ft.batch_size
        });
        Ok(fits.then_some(ckpt))
    }

    /// The current model as a checkpoint store with the state in its header.
    fn store(&self) -> TensorStore {
        let history = self
            .state
            .iterations
            .last()
            .map(|r| r.fine_tune.clone())
            .unwrap_or_default();
        self.store_of(history)
    }

    /// The current model as a checkpoint store whose training state holds `history`.
    fn store_of(&self, history: Vec<EpochMetrics>) -> TensorStore {
        let mut config = self.state.config.finetune.clone();
        config.test_every_epoch = false;
        let train = TrainState {
            epochs_done: history.len(),
            config,
            norm: self.state.norm.clone(),
            history,
            best: None,
        };
        let ckpt = Checkpoint {
            model: self.model.clone(),
            spec: self.spec.clone(),
            train: Some(train),
            optim: None,
        };
        let mut store = ckpt.to_store();
        store.set_metadata(
            COMPRESS_KEY,
            serde_json::to_string(&self.state).expect("the state serialises"),
        );
        store
    }

    /// Write this iteration's checkpoint, `last`, the result when `is_best`, and the reports.
    fn save(&self, is_best: bool) -> Result<()> {
        let Some(dir) = &self.out else {
            return Ok(());
        };
        let i = self.state.iterations.len() - 1;
        let store = self.store();
        store.save(dir.join(iteration_file(i)))?;
        store.save(dir.join(LAST))?;
        if is_best {
            store.save(dir.join(COMPRESSED))?;
        }
        report::write_all(dir, &self.state)
    }

    /// Whether the final fine-tuning of the current best iteration is the run's result.
    fn final_is_result(&self) -> bool {
        let epochs = self.state.config.final_epochs;
        self.state.final_tune.as_ref().is_some_and(|f| {
            epochs > 0
                && f.iteration == self.state.best
                && f.fine_tune.len() == epochs
                && f.accepted
        })
    }

    /// Make `compressed.safetensors` the best iteration's checkpoint again.
    fn copy_best(&self) -> Result<()> {
        let Some(dir) = &self.out else {
            return Ok(());
        };
        let from = dir.join(iteration_file(self.state.best));
        let bytes = std::fs::read(&from).map_err(|e| tlc_engine::Error::io(&from, e))?;
        let to = dir.join(COMPRESSED);
        write_atomically(&to, |w| {
            w.write_all(&bytes)
                .map_err(|e| tlc_engine::Error::io(&to, e))
        })?;
        Ok(())
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Remove the temporaries a run killed while saving left in `dir` (the atomic writer names them
/// `.<target>.tmp-<pid>-<n>`; the targets themselves are always whole).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
