//! `tlc compress`: TLC on a trained checkpoint -- rank the removable activations, remove the
//! best, fine-tune with the OFF channels held at zero, evaluate, repeat until a target or a floor
//! is met; one checkpoint and one report line per iteration; `--resume` continues a killed run;
//! `--rank-only` prints one iteration's ranking and changes nothing.
//!
//! Every option is optional so `--resume` can tell "not given" (keep the stored value) from
//! "given" (must agree with the stored run, except the stopping criteria, which may change).

use super::progress::{pct, ProgressMode, Reporter};
use super::train::ScheduleArg;
use super::{existing_file, group_digits, load_checkpoint, network_line, CliError, DataShape};
use super::{ModelArgs, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use tlc_models::checkpoint::{Checkpoint, TRAIN_KEY};
use tlc_models::tlc::{
    iteration_file, report, stored_state, CompressConfig, CompressProgress, CompressState,
    Compressor, IterationRecord, RankMode, Ranking, COMPRESSED, LAST,
};
use tlc_models::train::{
    DataSource, EpochMetrics, Progress, Schedule, Splits, StepReport, TrainState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RankArg {
    /// By the validation loss each removal costs (joint top-k trials when removals help).
    Loss,
    /// Data-free: by batch-norm entropy, lowest first, one per iteration.
    Entropy,
}

#[derive(Args, Debug)]
pub struct CompressArgs {
    /// The trained checkpoint to compress (a tlc checkpoint, or a plain export with --model ...).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data set (`fashion-mnist` or a directory). [default: the one the checkpoint was trained on]
    #[arg(long)]
    pub data: Option<String>,
    /// Output directory: iter-NN.safetensors per iteration, last.safetensors (to resume),
    /// compressed.safetensors (the last iteration meeting the accuracy criteria), report.json,
    /// report.csv, scores.csv, accuracy.svg, entropy.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last finished iteration.
    #[arg(long)]
    pub resume: bool,
    /// Print the ranking and the removal decision of one iteration, and stop (writes nothing).
    #[arg(long, alias = "dry-run")]
    pub rank_only: bool,
    /// How candidates are ranked. [default: loss]
    #[arg(long, value_enum)]
    pub rank: Option<RankArg>,
    /// Validation batches (of --eval-batch images) the loss gaps are measured on. [default: 4]
    #[arg(long)]
    pub rank_batches: Option<usize>,
    /// Training batches measuring activations with no batch-norm in front. [default: 4]
    #[arg(long)]
    pub calib_batches: Option<usize>,
    /// At most this many activations removed per iteration. [default: 3]
    #[arg(long)]
    pub max_per_iter: Option<usize>,
    /// Stop once this many activations are removed.
    #[arg(long)]
    pub target_removed: Option<usize>,
    /// Stop when validation accuracy (a fraction, 0.9 = 90 %) falls under this.
    #[arg(long)]
    pub min_acc: Option<f64>,
    /// Stop when validation accuracy falls more than this (a fraction, 0.01 = one point) under
    /// the starting model's. The result is the last iteration within the budget; 1 disables it.
    /// [default: 0.01]
    #[arg(long)]
    pub max_acc_drop: Option<f64>,
    /// Stop after this many iterations (a larger value on --resume continues).
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// Once the loop stops, fine-tune its result this many more epochs (same settings, OFF
    /// channels held at zero): written as final.safetensors, and as the result
    /// (compressed.safetensors) if it still meets the accuracy criteria. [default: 0]
    #[arg(long)]
    pub final_epochs: Option<usize>,
    /// Report training accuracy on this many training images (0: skip). [default: 5000]
    #[arg(long)]
    pub train_eval_limit: Option<usize>,
    /// Fine-tuning epochs per iteration (0: none). [default: 2]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Fine-tuning learning rate (a tenth of the reference's 0.1: the network is trained).
    /// [default: 0.01]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Fine-tuning schedule within each iteration. [default: cosine]
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Epochs (1-based) at which multistep multiplies the rate by --gamma. [default: 50 % and
    /// 75 % of --epochs, where that is after the first epoch]
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Factor of the multistep schedule. [default: 0.1]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// SGD momentum. [default: 0.9]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay. [default: 1e-4]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Fine-tuning mini-batch size. [default: the checkpoint's, else 128]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Evaluation batch size (also the ranking and calibration batches). [default: the
    /// checkpoint's, else 500]
    #[arg(long)]
    pub eval_batch: Option<usize>,
    /// Seed of fine-tuning (iteration i uses seed + i) and of the split. [default: the
    /// checkpoint's]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction of the training images held out for validation. [default: the checkpoint's
    /// training run's (the same held-out images), else 5000/60000]
    #[arg(long)]
    pub val_fraction: Option<f32>,
    /// Use a seeded random subset of this many training images. [default: the checkpoint's]
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first this many test images. [default: the checkpoint's]
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Random-crop padding while fine-tuning. [default: the checkpoint's]
    #[arg(long)]
    pub crop_padding: Option<usize>,
    /// Random horizontal flips while fine-tuning. [default: the checkpoint's]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub hflip: Option<bool>,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// Multistep milestones at 50 % and 75 % of `epochs` (1-based, from epoch 2 on).
fn default_milestones(epochs: usize) -> Vec<usize> {
    let mut m = vec![epochs / 2 + 1, epochs * 3 / 4 + 1];
    m.retain(|&e| e >= 2 && e <= epochs);
    m.dedup();
    m
}

impl CompressArgs {
    /// The flags laid over `base`.
    fn config_over(&self, base: &CompressConfig) -> CompressConfig {
        let mut c = base.clone();
        if let Some(r) = self.rank {
            c.rank = match r {
                RankArg::Loss => RankMode::Loss,
                RankArg::Entropy => RankMode::Entropy,
            };
        }
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => {
                $(if let Some(v) = &self.$flag { c.$field = v.clone(); })*
            };
        }
        set!(rank_batches => rank_batches, calib_batches => calib_batches,
             max_per_iter => max_per_iter, train_eval_limit => train_eval_limit,
             final_epochs => final_epochs);
        macro_rules! set_opt {
            ($($flag:ident),*) => { $(if self.$flag.is_some() { c.$flag = self.$flag; })* };
        }
        set_opt!(target_removed, min_acc, max_acc_drop, max_iters);
        let f = &mut c.finetune;
        macro_rules! set_ft {
            ($($flag:ident => $field:ident),*) => {
                $(if let Some(v) = &self.$flag { f.$field = v.clone(); })*
            };
        }
        set_ft!(epochs => epochs, lr => lr, momentum => momentum, weight_decay => weight_decay,
                batch => batch_size, eval_batch => eval_batch_size, seed => seed,
                val_fraction => val_fraction, data => data);
        if self.train_limit.is_some() {
            f.train_limit = self.train_limit;
        }
        if self.test_limit.is_some() {
            f.test_limit = self.test_limit;
        }
        if let Some(p) = self.crop_padding {
            f.augment.crop_padding = p;
        }
        if let Some(h) = self.hflip {
            f.augment.hflip = h;
        }
        let (base_ms, base_gamma) = match &f.schedule {
            Schedule::MultiStep { milestones, gamma } => (Some(milestones.clone()), *gamma),
            _ => (None, 0.1),
        };
        let epochs = f.epochs;
        let multistep = Schedule::MultiStep {
            milestones: self
                .milestones
                .clone()
                .or(base_ms)
                .unwrap_or_else(|| default_milestones(epochs)),
            gamma: self.gamma.unwrap_or(base_gamma),
        };
        f.schedule = match self.schedule {
            Some(ScheduleArg::Cosine) => Schedule::Cosine,
            Some(ScheduleArg::Constant) => Schedule::Constant,
            Some(ScheduleArg::Multistep) => multistep,
            None if matches!(f.schedule, Schedule::MultiStep { .. }) => multistep,
            None => f.schedule.clone(),
        };
        c
    }
}

/// Paths (`a.b`) where two JSON values differ, with both values.
fn diff(path: &str, given: &serde_json::Value, stored: &serde_json::Value, out: &mut Vec<String>) {
    match (given, stored) {
        (serde_json::Value::Object(g), serde_json::Value::Object(s)) => {
            for (k, v) in g {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(&p, v, s.get(k).unwrap_or(&serde_json::Value::Null), out);
            }
        }
        _ if given != stored => out.push(format!("{path} (stored {stored}, given {given})")),
        _ => {}
    }
}

pub fn run(args: CompressArgs) -> Result<()> {
    if args.resume {
        return resume(args);
    }
    let path = args.checkpoint.clone().ok_or_else(|| {
        CliError::Usage("give --checkpoint (or --resume with the --out of a run)".into())
    })?;
    let path = existing_file(&path, "--checkpoint")?;
    let out = match (&args.out, args.rank_only) {
        (Some(o), _) => Some(o.clone()),
        (None, true) => None,
        (None, false) => {
            return Err(CliError::Usage(
                "give --out DIR for the checkpoints and the report".into(),
            ))
        }
    };
    if let Some(o) = &out {
        if o.join(LAST).exists() && !args.rank_only {
            return Err(CliError::Usage(format!(
                "{} already holds a compression run ({LAST}); pass --resume to continue it, or \
                 choose another --out",
                o.display()
            )));
        }
    }
    if (args.milestones.is_some() || args.gamma.is_some())
        && args.schedule != Some(ScheduleArg::Multistep)
    {
        return Err(CliError::Usage(
            "--milestones and --gamma belong to --schedule multistep".into(),
        ));
    }
    let store = tlc_engine::TensorStore::load(&path)?;
    let trained: Option<TrainState> = store
        .metadata_get(TRAIN_KEY)
        .and_then(|j| serde_json::from_str(j).ok());
    let data_arg = match (&args.data, &trained) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) if !t.config.data.is_empty() => t.config.data.clone(),
        _ => "fashion-mnist".to_string(),
    };
    let source = DataSource::parse(&data_arg)?;
    let (train, test) = source.load_padded(trained.as_ref().and_then(|t| t.config.pad_to))?;
    let shape = Some(DataShape {
        channels: train.channels,
        side: train.height,
        classes: Some(train.classes),
    });
    let loaded = load_checkpoint(&path, &store, &args.model, shape)?;
    let inherited = stored_state(&path, &store)?
        .map(|s| s.masks())
        .unwrap_or_default();

    // Defaults: the training run's batch sizes, augmentation, seed and split, so validation is
    // the images that run held out.
    let mut base = CompressConfig::default();
    let ft = &mut base.finetune;
    ft.data = data_arg.clone();
    ft.augment.crop_padding = if train.height >= 32 { 4 } else { 2 };
    let mut held_out_by_training = false;
    if let Some(t) = &trained {
        let c = &t.config;
        ft.batch_size = c.batch_size;
        ft.eval_batch_size = c.eval_batch_size;
        ft.augment = c.augment;
        ft.pad_to = c.pad_to;
        ft.seed = c.seed;
        ft.train_limit = c.train_limit;
        ft.test_limit = c.test_limit;
        if c.val_fraction > 0.0 {
            ft.val_fraction = c.val_fraction;
            held_out_by_training = true;
        }
    }
    let cfg = args.config_over(&base);
    cfg.validate()?;
    if let Some(t) = &trained {
        let (c, f) = (&t.config, &cfg.finetune);
        if !held_out_by_training
            || (c.val_fraction, c.seed, c.train_limit) != (f.val_fraction, f.seed, f.train_limit)
        {
            eprintln!(
                "note: this validation split is not the one the checkpoint's training held out, so \
                 the model may have trained on some of its images"
            );
        }
    }
    let splits = Splits::new(train, Some(test), &cfg.finetune)?;
    outln!("{}", network_line(&loaded));
    print_data(&splits);
    let mut c = Compressor::new(
        loaded.checkpoint,
        &path.display().to_string(),
        cfg,
        splits,
        out.clone(),
        inherited,
    )?;
    let mut reporter = CompressReporter::new(args.progress);
    if args.rank_only {
        let (_, r) = c.rank_once(&mut reporter)?;
        print_ranking(&r);
        return Ok(());
    }
    let out = out.expect("checked above");
    drive(c, &out, &mut reporter)
}

fn print_data(s: &Splits) {
    outln!(
        "data: {} train, {} val, {} test images",
        s.train.len(),
        s.val.as_ref().map_or(0, |v| v.len()),
        s.test.as_ref().map_or(0, |v| v.len()),
    );
}

fn resume(args: CompressArgs) -> Result<()> {
    let out = args
        .out
        .clone()
        .ok_or_else(|| CliError::Usage("--resume needs --out, the directory of the run".into()))?;
    if args.checkpoint.is_some() || args.rank_only {
        return Err(CliError::Usage(
            "--resume continues the run in --out from its own checkpoint; drop --checkpoint and \
             --rank-only"
                .into(),
        ));
    }
    let last = out.join(LAST);
    if !last.is_file() {
        return Err(CliError::Usage(format!(
            "--resume: {} does not exist (nothing to resume in {})",
            last.display(),
            out.display()
        )));
    }
    let store = tlc_engine::TensorStore::load(&last)?;
    let loaded = Checkpoint::from_store(&last, &store, None)?;
    let mut state = stored_state(&last, &store)?.ok_or_else(|| {
        CliError::Usage(format!(
            "{} holds no compression state (`tlc.compress`)",
            last.display()
        ))
    })?;
    let stored = state.config.clone();
    let given = args.config_over(&stored);
    let mut differ = vec![];
    diff(
        "",
        &serde_json::to_value(given.with_stops_of(&stored)).expect("configs serialise"),
        &serde_json::to_value(&stored).expect("configs serialise"),
        &mut differ,
    );
    if !differ.is_empty() {
        return Err(CliError::Usage(format!(
            "--resume continues the stored run; only the stopping criteria (--target-removed, \
             --min-acc, --max-acc-drop, --max-iters) and --final-epochs may change, but these \
             differ: {}",
            differ.join("; ")
        )));
    }
    state.config = given;
    let source = DataSource::parse(&state.config.finetune.data)?;
    let splits = Splits::load(&source, &state.config.finetune)?;
    let done = state.iterations.len().saturating_sub(1);
    outln!(
        "resuming {} after iteration {done} ({} activations removed)",
        last.display(),
        state.iterations.last().map_or(0, |r| r.removed_total)
    );
    print_data(&splits);
    let c = Compressor::resume(loaded.checkpoint, state, splits, Some(out.clone()))?;
    let mut reporter = CompressReporter::new(args.progress);
    drive(c, &out, &mut reporter)
}

fn drive(mut c: Compressor, out: &std::path::Path, reporter: &mut CompressReporter) -> Result<()> {
    let reason = c.run(reporter)?;
    let s = c.state();
    outln!("stopped: {}", reason.describe());
    let tuned = s
        .final_tune
        .as_ref()
        .filter(|f| f.iteration == s.best && f.accepted);
    let best = tuned.unwrap_or(&s.iterations[s.best]);
    let base = &s.iterations[0];
    outln!(
        "result: iteration {}{} ({} of {} activations removed): val {} (start {}), test {} \
         (start {}); {} -> {} active parameters, {} -> {} active MACs per image",
        best.iteration,
        if tuned.is_some() {
            " after the final fine-tuning"
        } else {
            ""
        },
        best.removed_total,
        base.activations_left,
        pct(best.val_acc),
        pct(base.val_acc),
        best.test_acc.map_or("-".into(), pct),
        base.test_acc.map_or("-".into(), pct),
        group_digits(base.footprint.params_active as u64),
        group_digits(best.footprint.params_active as u64),
        group_digits(base.footprint.macs_active),
        group_digits(best.footprint.macs_active),
    );
    if s.final_tune.is_some() {
        outln!(
            "final fine-tuning: {}",
            out.join(tlc_models::tlc::FINAL).display()
        );
    }
    outln!(
        "checkpoints {} (result), {} .. {}; report {}, {}, {}, {}, {}",
        out.join(COMPRESSED).display(),
        out.join(iteration_file(0)).display(),
        out.join(iteration_file(s.iterations.len() - 1)).display(),
        out.join(report::REPORT_JSON).display(),
        out.join(report::REPORT_CSV).display(),
        out.join(report::SCORES_CSV).display(),
        out.join(report::ACCURACY_SVG).display(),
        out.join(report::ENTROPY_SVG).display(),
    );
    Ok(())
}

fn opt_f(v: Option<f32>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The ranking table, best first, and the decision.
fn print_ranking(r: &Ranking) {
    let mut e: Vec<_> = r.entries.iter().collect();
    e.sort_by_key(|e| if e.rank == 0 { usize::MAX } else { e.rank });
    let aw = e.iter().map(|e| e.row.act.len()).max().unwrap_or(0).max(10);
    let bw = e
        .iter()
        .map(|e| e.row.bn.as_ref().map_or(1, |b| b.len()))
        .max()
        .unwrap_or(0)
        .max(10);
    if let Some(b) = r.base_loss {
        outln!("current loss on the ranking batches: {b:.4}");
    }
    outln!(
        "{:>4}  {:<aw$}  {:<bw$}  {:>8}  {:>4}  {:>4}  {:>8}  {:>10}  {:>9}  {:>9}",
        "rank",
        "activation",
        "batch-norm",
        "channels",
        "ON",
        "OFF",
        "entropy",
        "mean error",
        "loss",
        "gap"
    );
    for x in e {
        outln!(
            "{:>4}  {:<aw$}  {:<bw$}  {:>8}  {:>4}  {:>4}  {:>8}  {:>10}  {:>9}  {:>9}{}",
            if x.rank == 0 {
                "-".into()
            } else {
                x.rank.to_string()
            },
            x.row.act,
            x.row.bn.as_deref().unwrap_or("-"),
            x.row.channels,
            x.row.on.map_or("-".into(), |v| v.to_string()),
            x.row.off.map_or("-".into(), |v| v.to_string()),
            opt_f(x.row.entropy, 4),
            opt_f(x.row.mean_error, 4),
            opt_f(x.loss, 4),
            opt_f(x.gap, 4),
            if x.removed { "  <- remove" } else { "" }
        );
    }
    for j in &r.joint {
        outln!(
            "joint trial {}: loss {}",
            j.acts.join(" + "),
            opt_f(j.loss, 4)
        );
    }
    outln!("decision: remove {}", r.chosen.join(", "));
}

/// Training bars and lines from [`Reporter`], plus a bar (or lines) for the ranking trials and
/// a summary per iteration.
struct CompressReporter {
    inner: Reporter,
    bars: bool,
    plain: bool,
    bar: Option<ProgressBar>,
    iteration: usize,
    trials: usize,
    done: usize,
}

impl CompressReporter {
    fn new(mode: ProgressMode) -> CompressReporter {
        let tty = std::io::stderr().is_terminal();
        CompressReporter {
            inner: Reporter::new(mode),
            bars: mode == ProgressMode::Bars || (mode == ProgressMode::Auto && tty),
            plain: mode == ProgressMode::Plain || (mode == ProgressMode::Auto && !tty),
            bar: None,
            iteration: 0,
            trials: 0,
            done: 0,
        }
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for CompressReporter {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.inner.epoch_start(epoch, epochs, batches)
    }
    fn step(&mut self, r: &StepReport) {
        self.inner.step(r)
    }
    fn eval_start(&mut self, what: &str, batches: usize) {
        self.inner.eval_start(what, batches)
    }
    fn eval_step(&mut self) {
        self.inner.eval_step()
    }
    fn eval_end(&mut self) {
        self.inner.eval_end()
    }
    fn epoch_end(&mut self, m: &EpochMetrics) {
        out!("  fine-tune ");
        self.inner.epoch_end(m)
    }
    fn note(&mut self, msg: &str) {
        self.inner.note(msg)
    }
}

impl CompressProgress for CompressReporter {
    fn iteration_start(&mut self, i: usize) {
        self.iteration = i;
        if i == 0 {
            outln!("measuring the starting model");
        } else {
            outln!("== iteration {i}");
        }
    }

    fn trials_start(&mut self, n: usize) {
        self.trials = n;
        self.done = 0;
        if self.bars {
            self.clear();
            let bar = ProgressBar::new(n as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30.cyan/blue}] {pos:>4}/{len:4} {msg} [{elapsed_precise}<{eta_precise}]",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix("rank");
            self.bar = Some(bar);
        }
    }

    fn trial(&mut self, name: &str) {
        self.done += 1;
        if let Some(b) = &self.bar {
            if self.done as u64 > b.length().unwrap_or(0) {
                b.set_length(self.done as u64);
            }
            b.set_position(self.done as u64 - 1);
            b.set_message(name.to_string());
        } else if self.plain {
            eprintln!(
                "iteration {} rank trial {}/{}: {name}",
                self.iteration,
                self.done,
                self.trials.max(self.done)
            );
        }
    }

    fn ranked(&mut self, r: &Ranking) {
        self.clear();
        if self.iteration == 0 {
            return; // --rank-only prints the whole table itself
        }
        let why = |a: &str| {
            r.entries
                .iter()
                .find(|e| e.row.act == a)
                .map(|e| match (e.gap, e.row.entropy) {
                    (Some(g), _) => format!("{a} (loss gap {g:+.4})"),
                    (None, Some(h)) => format!("{a} (entropy {h:.4})"),
                    _ => a.to_string(),
                })
                .unwrap_or_else(|| a.to_string())
        };
        let chosen: Vec<String> = r.chosen.iter().map(|a| why(a)).collect();
        outln!("  removing {}", chosen.join(", "));
    }

    fn final_start(&mut self, best: usize, epochs: usize) {
        self.clear();
        outln!("== final fine-tuning of iteration {best}: {epochs} epoch(s)");
    }

    fn final_end(&mut self, r: &IterationRecord, _state: &CompressState) {
        self.clear();
        outln!(
            "  final: val {} (before {}){}{}  {:.0} s{}",
            pct(r.val_acc),
            r.val_acc_before_ft.map_or("-".into(), pct),
            r.test_acc
                .map_or(String::new(), |t| format!("  test {}", pct(t))),
            r.train_acc
                .map_or(String::new(), |t| format!("  train {}", pct(t))),
            r.seconds,
            if r.accepted {
                ""
            } else {
                "  (fails the accuracy criteria: the result stays the untuned iteration)"
            }
        );
    }

    fn iteration_end(&mut self, r: &IterationRecord, state: &CompressState) {
        self.clear();
        let total = state.iterations[0].activations_left;
        let mut s = format!(
            "  iteration {}: {}/{total} activations removed, {} left; val {}",
            r.iteration,
            r.removed_total,
            r.activations_left,
            pct(r.val_acc)
        );
        if let Some(b) = r.val_acc_before_ft {
            s += &format!(" (after removal, before fine-tuning {})", pct(b));
        }
        if let Some(t) = r.test_acc {
            s += &format!("  test {}", pct(t));
        }
        if let Some(t) = r.train_acc {
            s += &format!("  train {}", pct(t));
        }
        s += &format!(
            "  active params {}  active MACs {}  {:.0} s{}",
            group_digits(r.footprint.params_active as u64),
            group_digits(r.footprint.macs_active),
            r.seconds,
            if r.accepted {
                ""
            } else {
                "  (fails the accuracy criteria)"
            }
        );
        outln!("{s}");
    }
}
