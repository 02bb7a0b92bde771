//! `tlc eval`: loss and accuracy (overall and per class) of a checkpoint on a data set.
//!
//! By default through the graph executor (`Model::eval`, the reference). `--weights f32|f16|bf16`
//! evaluates through the fused inference plan instead, with the conv and linear weights stored
//! that way: `--weights f32` and `--weights bf16` side by side give the accuracy change of 16-bit
//! weights on the same engine.

use super::bench::WeightsArg;
use super::progress::{pct, ProgressMode, Reporter};
use super::{existing_file, load_checkpoint, network_line, CliError, DataShape, ModelArgs, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use tlc_engine::plan::{Plan, PlanOptions, WeightDtype};
use tlc_engine::{Model, Tensor};
use tlc_models::data::Dataset;
use tlc_models::train::{
    check_fits, evaluate, evaluate_with, DataSource, EvalMetrics, Normalization, Progress, Splits,
    TrainConfig,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    /// The data set's test images.
    Test,
    /// The validation images held out by the checkpoint's training run (same seed, same fraction).
    Val,
    /// The training images of that run.
    Train,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint (a tlc checkpoint, or a plain safetensors export with --model ...).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data set (`fashion-mnist` or a directory). [default: the one the checkpoint was trained on]
    #[arg(long)]
    pub data: Option<String>,
    /// Which images.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Evaluate the first this many images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Per-channel normalisation means (comma-separated). [default: the checkpoint's, else the
    /// data's training-set statistics]
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel normalisation standard deviations (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// Evaluate through the inference plan with the conv and linear weights stored this way
    /// (default: the graph executor, f32).
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let path = existing_file(&args.checkpoint, "--checkpoint")?;
    if args.batch == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    // The data first: for a plain export it supplies the input shape and class count.
    let store = tlc_engine::TensorStore::load(&path)?;
    let stored_cfg: Option<TrainConfig> = store
        .metadata_get(tlc_models::checkpoint::TRAIN_KEY)
        .and_then(|j| serde_json::from_str::<tlc_models::train::TrainState>(j).ok())
        .map(|s| s.config);
    let data_arg = match (&args.data, &stored_cfg) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) if !c.data.is_empty() => c.data.clone(),
        _ => {
            return Err(CliError::Usage(
                "give --data (the checkpoint does not say what it was trained on)".into(),
            ))
        }
    };
    let source = DataSource::parse(&data_arg)?;
    let (train, test) = source.load_padded(stored_cfg.as_ref().and_then(|c| c.pad_to))?;
    let shape = Some(DataShape {
        channels: train.channels,
        side: train.height,
        classes: Some(train.classes),
    });
    let loaded = load_checkpoint(&path, &store, &args.model, shape)?;
    outln!("{}", network_line(&loaded));
    let ckpt = &loaded.checkpoint;
    let trained_norm = ckpt.train.as_ref().map(|t| t.norm.clone());

    // Rebuild the run's split when asked for its validation or training images.
    let (ds, norm_from_data) = match args.split {
        Split::Test => (test, None),
        Split::Val | Split::Train => {
            let cfg = stored_cfg.clone().ok_or_else(|| {
                CliError::Usage(
                    "--split val/train needs a checkpoint written by tlc train (it holds the split)"
                        .into(),
                )
            })?;
            let s = Splits::new(train.clone(), None, &cfg)?;
            let set = if args.split == Split::Val {
                s.val.ok_or_else(|| {
                    CliError::Usage("the training run held out no validation images".into())
                })?
            } else {
                s.train
            };
            (Arc::unwrap_or_clone(set), None::<Normalization>)
        }
    };
    let ds = match args.limit {
        Some(n) => ds.take(n),
        None => ds,
    };
    let norm = match (&args.mean, &args.std, trained_norm) {
        (Some(m), Some(s), _) => Normalization {
            mean: m.clone(),
            std: s.clone(),
        },
        (None, None, Some(n)) => n,
        (None, None, None) => {
            let n = norm_from_data.unwrap_or_else(|| Normalization::of(&train));
            eprintln!(
                "note: no normalisation stored in the checkpoint; using the training images' \
                 mean {:?} std {:?} (set --mean/--std otherwise)",
                n.mean, n.std
            );
            n
        }
        _ => return Err(CliError::Usage("give both --mean and --std".into())),
    };
    let mut reporter = Reporter::new(args.progress);
    let ds = Arc::new(ds);
    let split = format!("{:?}", args.split).to_lowercase();
    let (m, engine) = match args.weights {
        None => (
            evaluate(&ckpt.model, &ds, &norm, args.batch, &split, &mut reporter)?,
            String::new(),
        ),
        Some(w) => {
            let dtype = w.dtype();
            let m = evaluate_plan(
                &ckpt.model,
                &ds,
                &norm,
                args.batch,
                dtype,
                &split,
                &mut reporter,
            )?;
            (m, format!("  (inference plan, {} weights)", dtype.name()))
        }
    };
    outln!(
        "{split}: {} images  loss {:.4}  accuracy {}{engine}",
        m.images,
        m.loss,
        pct(m.accuracy)
    );
    let names = source.class_names();
    for (c, (ok, total)) in m.per_class.iter().enumerate() {
        if *total > 0 {
            outln!(
                "  {:>2} {:<12} {:>7}  ({ok}/{total})",
                c,
                names.get(c).copied().unwrap_or(""),
                pct(*ok as f64 / *total as f64)
            );
        }
    }
    Ok(())
}

/// What `evaluate` computes, through the inference plan with `weights` storage: a plan compiled
/// per batch size met (the full one and the last, shorter batch).
fn evaluate_plan(
    model: &Model,
    ds: &Arc<Dataset>,
    norm: &Normalization,
    batch_size: usize,
    weights: WeightDtype,
    what: &str,
    progress: &mut dyn Progress,
) -> Result<EvalMetrics> {
    check_fits(model, ds)?;
    let options = PlanOptions {
        weights,
        ..PlanOptions::default()
    };
    let mut plans: Vec<Plan> = Vec::new();
    let metrics = evaluate_with(ds, norm, batch_size, what, progress, &mut |images| {
        let n = images.shape()[0];
        let plan = match plans.iter().position(|p| p.batch() == n) {
            Some(i) => &mut plans[i],
            None => {
                plans.push(Plan::compile_with(model, n, &options)?);
                plans.last_mut().expect("just pushed")
            }
        };
        let logits = plan.run(&images.contiguous_data()).to_vec();
        Ok(Tensor::from_vec(logits, &[n, ds.classes])?)
    })?;
    Ok(metrics)
}
