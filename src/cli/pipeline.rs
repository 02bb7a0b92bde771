//! `tlc pipeline`: the whole story in one command — train (or take a trained checkpoint), make it
//! shallower with TLC, collapse the linear layers left behind (decided by this machine's measured
//! kernel costs), and time the three networks side by side at batch 1 — then write a summary.
//!
//! Each stage is one of tlc's own commands, printed as `$ tlc ...` before it runs so any stage can
//! be repeated or varied by hand; the stages write into one directory and are resumable (a killed
//! pipeline started again continues where it stopped). The default is sized to finish in minutes
//! on two cores; `--full` uses the full-size settings of BENCHMARKS.md.

use super::bench::{stats, time_runs};
use super::{dispatch, group_digits, Cli, CliError, Result};
use clap::{Args, Parser};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tlc_engine::io::atomic::write_atomically;
use tlc_engine::plan::Plan;
use tlc_engine::{Model, Rng, Tensor};
use tlc_models::checkpoint::Checkpoint;
use tlc_models::tlc::{CompressState, COMPRESSED, LAST};
use tlc_models::train::{evaluate, DataSource, Silent, BEST};

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Directory of every stage's output (train/, tlc/, cost-table.json, collapsed.safetensors,
    /// summary.md, summary.json).
    #[arg(long, default_value = "runs/pipeline")]
    pub out: PathBuf,
    /// Start from this trained checkpoint instead of training.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Architecture to train (any of `tlc train --model`'s).
    #[arg(long, default_value = "resnet18-cifar")]
    pub model: String,
    /// Channel width multiplier of the trained network.
    #[arg(long, default_value_t = 0.25)]
    pub width: f32,
    /// Data set (`fashion-mnist`: Debian's dataset-fashion-mnist package, fetched into
    /// ~/.cache/tlc when not installed; or a directory).
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Training epochs. [default: 4; --full: 15]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Train on a seeded subset of this many images (0: all). [default: 12000; --full: 0]
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Stop TLC once this many activations are removed. [default: 6; --full: 10]
    #[arg(long)]
    pub target_removed: Option<usize>,
    /// Fine-tuning epochs per TLC iteration.
    #[arg(long, default_value_t = 1)]
    pub tlc_epochs: usize,
    /// Fine-tuning epochs of TLC's result once it stops. [default: 1; --full: 4]
    #[arg(long)]
    pub final_epochs: Option<usize>,
    /// Merge every exact chain instead of deciding by measured cost (skips calibration).
    #[arg(long)]
    pub merge_all: bool,
    /// Seconds of timing per network and round (three rounds, interleaved).
    #[arg(long, default_value_t = 2.0)]
    pub bench_seconds: f64,
    /// The full-size run (all 54k training images, 15 epochs, TLC to 10 removals, 4 final
    /// fine-tuning epochs): about two hours on two cores.
    #[arg(long)]
    pub full: bool,
}

/// One network's row of the summary.
#[derive(Debug)]
struct Row {
    name: &'static str,
    checkpoint: String,
    activations_removed: usize,
    layers: usize,
    params: usize,
    macs: u64,
    test_acc: f64,
    median_ms: f64,
    p90_ms: f64,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        json!({
            "network": self.name,
            "checkpoint": self.checkpoint,
            "activations_removed": self.activations_removed,
            "layers": self.layers,
            "params": self.params,
            "macs": self.macs,
            "test_acc": self.test_acc,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
        })
    }
}

/// Run `tlc <args>` in this process, printing the command first.
fn tlc(args: &[String]) -> Result<()> {
    outln!("\n$ tlc {}", args.join(" "));
    let cli = Cli::try_parse_from(std::iter::once("tlc".to_string()).chain(args.iter().cloned()))
        .map_err(|e| {
        CliError::Usage(format!("pipeline stage `tlc {}`: {e}", args.join(" ")))
    })?;
    dispatch(cli.command)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(args: PipelineArgs) -> Result<()> {
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| tlc_engine::Error::io(out, e))?;
    let pick = |given: Option<usize>, small: usize, full: usize| {
        given.unwrap_or(if args.full { full } else { small })
    };
    let epochs = pick(args.epochs, 4, 15);
    let train_limit = pick(args.train_limit, 12000, 0);
    let target = pick(args.target_removed, 6, 10);
    let final_epochs = pick(args.final_epochs, 1, 4);
    // Fail on bad input before any work (the data set's error names the install command).
    if !(args.bench_seconds.is_finite() && args.bench_seconds > 0.0) {
        return Err(CliError::Usage(format!(
            "--bench-seconds must be a positive number, got {}",
            args.bench_seconds
        )));
    }
    if !(args.width.is_finite() && args.width > 0.0) {
        return Err(CliError::Usage(format!(
            "--width must be positive, got {}",
            args.width
        )));
    }
    DataSource::parse(&args.data)?;

    // 1. Train (resumable), or take the given checkpoint.
    let trained = match &args.checkpoint {
        Some(c) => c.clone(),
        None => {
            let dir = out.join("train");
            let mut a: Vec<String> = vec!["train".into(), "--out".into(), s(&dir)];
            if dir.join(LAST).is_file() {
                // The stored run's settings apply; --epochs may extend it.
                outln!(
                    "\n{} holds a training run: resuming it (its architecture and data options \
                     apply)",
                    dir.display()
                );
                a.extend(["--resume".into(), "--epochs".into(), epochs.to_string()]);
            } else {
                a.extend(
                    [
                        "--model",
                        &args.model,
                        "--width",
                        &args.width.to_string(),
                        "--data",
                        &args.data,
                        "--epochs",
                        &epochs.to_string(),
                    ]
                    .map(String::from),
                );
                if train_limit > 0 {
                    a.extend(["--train-limit".into(), train_limit.to_string()]);
                }
            }
            tlc(&a)?;
            dir.join(BEST)
        }
    };

    // 2. TLC (resumable).
    let tlc_dir = out.join("tlc");
    let mut a: Vec<String> = vec!["compress".into(), "--out".into(), s(&tlc_dir)];
    if tlc_dir.join(LAST).is_file() {
        outln!(
            "\n{} holds a TLC run: resuming it (its ranking and fine-tuning options apply)",
            tlc_dir.display()
        );
        a.push("--resume".into());
    } else {
        a.extend(["--checkpoint".into(), s(&trained)]);
        a.extend(["--epochs".into(), args.tlc_epochs.to_string()]);
    }
    a.extend(["--target-removed".into(), target.to_string()]);
    a.extend(["--final-epochs".into(), final_epochs.to_string()]);
    a.extend(["--progress".into(), "quiet".into()]);
    tlc(&a)?;
    let compressed = tlc_dir.join(COMPRESSED);

    // 3. Calibrate this machine's kernels on the layers collapsing will price, then collapse.
    let collapsed = out.join("collapsed.safetensors");
    let mut a: Vec<String> = vec![
        "collapse".into(),
        "--checkpoint".into(),
        s(&compressed),
        "--out".into(),
        s(&collapsed),
    ];
    if args.merge_all {
        a.push("--merge-all".into());
    } else {
        // Measured once: a restarted pipeline decides with the same table.
        let table = out.join("cost-table.json");
        if !table.is_file() {
            tlc(&[
                "calibrate".into(),
                "--quick".into(),
                "--checkpoint".into(),
                s(&compressed),
                "--out".into(),
                s(&table),
            ])?;
        }
        a.extend(["--cost-table".into(), s(&table)]);
    }
    tlc(&a)?;

    // 4. Accuracy and batch-1 latency of the three networks.
    outln!("\n== measuring the trained, TLC-linearized and collapsed networks (batch 1)");
    let state = load_state(&compressed)?;
    let removed = state
        .final_tune
        .as_ref()
        .filter(|f| f.iteration == state.best && f.accepted)
        .unwrap_or(&state.iterations[state.best])
        .removed_total;
    let nets = [
        ("trained", trained.clone(), 0),
        ("TLC (linearized)", compressed.clone(), removed),
        ("collapsed", collapsed.clone(), removed),
    ];
    let rows = measure(&nets, &state, &args.data, args.bench_seconds)?;
    let summary = summary_markdown(&rows, &state);
    outln!("\n{summary}");
    write_text(&out.join("summary.md"), &summary)?;
    let json = serde_json::to_string_pretty(&rows.iter().map(Row::json).collect::<Vec<_>>())
        .expect("rows serialise")
        + "\n";
    write_text(&out.join("summary.json"), &json)?;
    outln!(
        "summary: {}, {}; TLC report and plots in {}",
        s(&out.join("summary.md")),
        s(&out.join("summary.json")),
        s(&tlc_dir)
    );
    Ok(())
}

fn load_state(path: &Path) -> Result<CompressState> {
    let store = tlc_engine::TensorStore::load(path)?;
    tlc_models::tlc::stored_state(path, &store)?
        .ok_or_else(|| CliError::Usage(format!("{} holds no TLC state", path.display())))
}

/// Test accuracy of each network (the data and normalisation the run used), then latency: the
/// networks' plans timed in turn for three rounds, each network's best-of-rounds median kept, so
/// all three see the same machine.
fn measure(
    nets: &[(&'static str, PathBuf, usize)],
    state: &CompressState,
    data: &str,
    seconds: f64,
) -> Result<Vec<Row>> {
    let cfg = &state.config.finetune;
    let (_, test) = DataSource::parse(data)?.load_padded(cfg.pad_to)?;
    let test = Arc::new(match cfg.test_limit {
        Some(n) => test.take(n),
        None => test,
    });
    let models: Vec<Model> = nets
        .iter()
        .map(|(_, p, _)| Ok(Checkpoint::load(p, None)?.checkpoint.model))
        .collect::<Result<_>>()?;
    let mut plans = Vec::new();
    for m in &models {
        plans.push(Plan::compile(m, 1)?);
    }
    let input = Tensor::randn(plans[0].input_shape(), &mut Rng::new(7)).to_vec();
    let mut best = vec![(f64::INFINITY, f64::INFINITY); nets.len()];
    for _round in 0..3 {
        for (plan, b) in plans.iter_mut().zip(best.iter_mut()) {
            let mut t = time_runs(5, 100_000, seconds, || {
                plan.run(&input);
            });
            let (median, p90) = stats(&mut t);
            if median < b.0 {
                *b = (median, p90);
            }
        }
    }
    let mut rows = Vec::new();
    for (((name, path, removed), model), (median, p90)) in nets.iter().zip(&models).zip(best) {
        let m = evaluate(
            model,
            &test,
            &state.norm,
            cfg.eval_batch_size,
            "test",
            &mut Silent,
        )?;
        let g = model.graph();
        let layers = g
            .nodes()
            .iter()
            .filter(|n| {
                matches!(
                    n.op,
                    tlc_engine::graph::Op::Conv2d(_) | tlc_engine::graph::Op::Linear(_)
                )
            })
            .count();
        rows.push(Row {
            name,
            checkpoint: s(path),
            activations_removed: *removed,
            layers,
            params: model.num_params(),
            macs: g.macs()?.iter().sum(),
            test_acc: m.accuracy,
            median_ms: median,
            p90_ms: p90,
        });
    }
    Ok(rows)
}

fn summary_markdown(rows: &[Row], state: &CompressState) -> String {
    let base = &rows[0];
    let mut t = String::from(
        "| network | activations removed | conv/linear layers | parameters | MACs/image | test accuracy | batch-1 median ms (p90) | speed-up |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        t += &format!(
            "| {} | {} | {} | {} | {} | {:.2} % | {:.3} ({:.3}) | {:.2}x |\n",
            r.name,
            r.activations_removed,
            r.layers,
            group_digits(r.params as u64),
            group_digits(r.macs),
            r.test_acc * 100.0,
            r.median_ms,
            r.p90_ms,
            base.median_ms / r.median_ms
        );
    }
    let threads = rayon::current_num_threads();
    format!(
        "TLC pipeline summary ({} of {} activations removed; {threads} thread(s))\n\n{t}",
        rows[1].activations_removed, state.iterations[0].activations_left
    )
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |w| {
        w.write_all(text.as_bytes())
            .map_err(|e| tlc_engine::Error::io(path, e))
    })?;
    Ok(())
}
