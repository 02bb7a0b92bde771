//! `tlc train`: a new run, or `--resume` of the run in `--out`.
//!
//! Every hyperparameter flag is optional so a resumed run can tell "not given" (keep the stored
//! value) from "given" (must agree with the stored run, except `--epochs`, which may extend it).

use super::progress::{epoch_line, pct, ProgressMode, Reporter};
use super::{group_digits, CliError, DataShape, ModelArgs, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tlc_models::checkpoint::{describe, Checkpoint};
use tlc_models::train::{
    init_model, DataSource, OptimizerKind, Schedule, Splits, TrainConfig, Trainer, LAST, LOG,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// Cosine annealing to 0 over the run (per step).
    Cosine,
    /// Multiply by --gamma at each of --milestones.
    Multistep,
    /// The base rate throughout.
    Constant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// SGD with momentum (PyTorch's rule).
    Sgd,
    /// AdamW (--momentum is beta1).
    Adamw,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data set: `fashion-mnist` (Debian's dataset-fashion-mnist package, fetched into
    /// ~/.cache/tlc when not installed), or a directory of Fashion-MNIST IDX files or CIFAR-10
    /// binary batches. [default: fashion-mnist]
    #[arg(long)]
    pub data: Option<String>,
    /// Output directory: last.safetensors (every epoch), best.safetensors (best validation
    /// accuracy), metrics.jsonl (one line per epoch).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last.safetensors (after a kill, or with more --epochs).
    #[arg(long)]
    pub resume: bool,
    /// Total epochs. [default: 15]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Mini-batch size. [default: 128]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Batch size for evaluation. [default: 500]
    #[arg(long)]
    pub eval_batch: Option<usize>,
    /// Optimizer. [default: sgd]
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Base (peak) learning rate. [default: 0.1]
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum (AdamW beta1). [default: 0.9]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum (SGD). [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub nesterov: Option<bool>,
    /// Weight decay (L2 for SGD, decoupled for AdamW). [default: 5e-4]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule after warm-up. [default: cosine]
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Epochs (1-based) at which multistep multiplies the rate by --gamma, e.g. `8,12`.
    /// [default: half and three quarters of --epochs]
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Factor of the multistep schedule. [default: 0.1]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Linear warm-up from lr/10, in epochs (fractions allowed). [default: 0]
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Label smoothing of the training loss. [default: 0]
    #[arg(long)]
    pub label_smoothing: Option<f32>,
    /// Clip the global gradient norm to this value. [default: no clipping]
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Seed of initialisation, split, shuffling, augmentation and dropout. [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction of the training images held out for validation. [default: 0.1]
    #[arg(long)]
    pub val_fraction: Option<f32>,
    /// Random-crop padding in pixels (0: no cropping). [default: 2 for 28x28 images, 4 larger]
    #[arg(long)]
    pub crop_padding: Option<usize>,
    /// Random horizontal flips. [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub hflip: Option<bool>,
    /// Train on a seeded random subset of this many images (before the validation split).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first this many test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Zero-pad the images to this side length (centred), e.g. 32 so 28x28 Fashion-MNIST passes
    /// VGG's five 2x2 pools. Stored in the checkpoint; evaluation and compression pad the same way.
    #[arg(long)]
    pub pad_to: Option<usize>,
    /// Evaluate the test set after every epoch (false: after the last only). [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub test_every_epoch: Option<bool>,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

impl TrainArgs {
    /// The flags laid over `base` (the defaults for a new run, the stored run when resuming).
    fn config_over(&self, base: &TrainConfig) -> TrainConfig {
        let mut c = base.clone();
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => {
                $(if let Some(v) = &self.$flag { c.$field = v.clone(); })*
            };
        }
        set!(epochs => epochs, batch => batch_size, eval_batch => eval_batch_size, lr => lr,
             momentum => momentum, nesterov => nesterov, weight_decay => weight_decay,
             warmup => warmup_epochs, label_smoothing => label_smoothing, seed => seed,
             val_fraction => val_fraction, test_every_epoch => test_every_epoch, data => data);
        if let Some(o) = self.optimizer {
            c.optimizer = match o {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adamw => OptimizerKind::Adamw,
            };
        }
        if self.clip_grad_norm.is_some() {
            c.clip_grad_norm = self.clip_grad_norm;
        }
        if self.pad_to.is_some() {
            c.pad_to = self.pad_to;
        }
        if self.train_limit.is_some() {
            c.train_limit = self.train_limit;
        }
        if self.test_limit.is_some() {
            c.test_limit = self.test_limit;
        }
        if let Some(p) = self.crop_padding {
            c.augment.crop_padding = p;
        }
        if let Some(f) = self.hflip {
            c.augment.hflip = f;
        }
        let (base_ms, base_gamma) = match &c.schedule {
            Schedule::MultiStep { milestones, gamma } => (Some(milestones.clone()), *gamma),
            _ => (None, 0.1),
        };
        let multistep = |c: &TrainConfig| Schedule::MultiStep {
            milestones: self
                .milestones
                .clone()
                .or(base_ms.clone())
                .unwrap_or_else(|| vec![(c.epochs / 2).max(1), (c.epochs * 3 / 4).max(1)]),
            gamma: self.gamma.unwrap_or(base_gamma),
        };
        c.schedule = match self.schedule {
            Some(ScheduleArg::Cosine) => Schedule::Cosine,
            Some(ScheduleArg::Constant) => Schedule::Constant,
            Some(ScheduleArg::Multistep) => multistep(&c),
            None if matches!(c.schedule, Schedule::MultiStep { .. }) => multistep(&c),
            None => c.schedule.clone(),
        };
        c
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.resume {
        return resume(args);
    }
    let last = args.out.join(LAST);
    if last.exists() {
        return Err(CliError::Usage(format!(
            "{} already holds a run ({LAST}); pass --resume to continue it, or choose another --out",
            args.out.display()
        )));
    }
    if (args.milestones.is_some() || args.gamma.is_some())
        && args.schedule != Some(ScheduleArg::Multistep)
    {
        return Err(CliError::Usage(
            "--milestones and --gamma belong to --schedule multistep".into(),
        ));
    }
    let base = TrainConfig {
        data: "fashion-mnist".into(),
        ..TrainConfig::default()
    };
    let mut cfg = args.config_over(&base);
    let source = DataSource::parse(&cfg.data)?;
    let (train, test) = source.load_padded(cfg.pad_to)?;
    if args.crop_padding.is_none() {
        cfg.augment.crop_padding = if train.height >= 32 { 4 } else { 2 };
    }
    cfg.validate()?;
    let shape = Some(DataShape {
        channels: train.channels,
        side: train.height,
        classes: Some(train.classes),
    });
    let spec = args.model.spec_over(None, shape)?;
    let splits = Splits::new(train, Some(test), &cfg)?;
    let model = init_model(&spec, cfg.seed)?;
    outln!(
        "training {}: {} parameters",
        describe(&spec),
        group_digits(model.num_params() as u64)
    );
    print_data(&splits);
    let trainer = Trainer::new(model, Some(spec), cfg, splits, Some(args.out.clone()))?;
    fit(trainer, &args)
}

fn print_data(s: &Splits) {
    outln!(
        "data: {} train, {} val, {} test images; normalisation mean {:?} std {:?}",
        s.train.len(),
        s.val.as_ref().map_or(0, |v| v.len()),
        s.test.as_ref().map_or(0, |v| v.len()),
        s.norm.mean,
        s.norm.std
    );
}

/// The names of the fields where `a` and `b` differ.
fn differing_fields(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let (va, vb) = (
        serde_json::to_value(a).expect("configs serialise"),
        serde_json::to_value(b).expect("configs serialise"),
    );
    match (va, vb) {
        (serde_json::Value::Object(ma), serde_json::Value::Object(mb)) => ma
            .iter()
            .filter(|(k, v)| mb.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} (stored {}, given {})", mb[k], v))
            .collect(),
        _ => vec![],
    }
}

fn resume(args: TrainArgs) -> Result<()> {
    let last = args.out.join(LAST);
    if !last.is_file() {
        return Err(CliError::Usage(format!(
            "--resume: {} does not exist (nothing to resume in {})",
            last.display(),
            args.out.display()
        )));
    }
    let loaded = Checkpoint::load(&last, None)?;
    let ckpt = loaded.checkpoint;
    let state = ckpt.train.clone().ok_or_else(|| {
        CliError::Usage(format!(
            "{} holds no training state; it cannot be resumed",
            last.display()
        ))
    })?;
    let stored = &state.config;
    let cfg = args.config_over(stored);
    let mut same_epochs = cfg.clone();
    same_epochs.epochs = stored.epochs;
    let diff = differing_fields(&same_epochs, stored);
    if !diff.is_empty() {
        return Err(CliError::Usage(format!(
            "--resume continues the stored run, but these options differ from it: {}",
            diff.join("; ")
        )));
    }
    if let Some(spec) = &ckpt.spec {
        let given = args.model.spec_over(Some(spec), None)?;
        if given != *spec {
            return Err(CliError::Usage(format!(
                "--resume continues the stored {}, not {}",
                describe(spec),
                describe(&given)
            )));
        }
    }
    if state.epochs_done >= cfg.epochs {
        outln!(
            "{} already finished {} of {} epochs; pass a larger --epochs to train further",
            last.display(),
            state.epochs_done,
            cfg.epochs
        );
        return Ok(());
    }
    let source = DataSource::parse(&cfg.data)?;
    let splits = Splits::load(&source, &cfg)?;
    outln!(
        "resuming {} after epoch {} of {}",
        last.display(),
        state.epochs_done,
        cfg.epochs
    );
    print_data(&splits);
    let trainer = Trainer::resume(ckpt, cfg, splits, Some(args.out.clone()))?;
    fit(trainer, &args)
}

fn fit(mut trainer: Trainer, args: &TrainArgs) -> Result<()> {
    let mut reporter = Reporter::new(args.progress);
    trainer.run(&mut reporter)?;
    let s = trainer.state();
    if let Some(m) = s.history.last() {
        outln!("done: {}", epoch_line(m, s.config.epochs));
    }
    if let Some(b) = &s.best {
        outln!(
            "best validation accuracy {} at epoch {}",
            pct(b.val_acc),
            b.epoch
        );
    }
    outln!(
        "checkpoint {}, log {}",
        args.out.join(LAST).display(),
        args.out.join(LOG).display()
    );
    Ok(())
}
