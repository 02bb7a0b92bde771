//! `tlc info`: what a checkpoint holds -- the network (every layer with its output shape,
//! parameters and multiply-accumulates per image), its training state and optimizer state.

use super::progress::{epoch_line, pct};
use super::{existing_file, group_digits, load_checkpoint, network_line, ModelArgs, Result};
use clap::Args;
use std::path::PathBuf;
use tlc_models::checkpoint::GraphSource;
use tlc_models::train::{OptimizerKind, Schedule};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The checkpoint (a tlc checkpoint, or a plain safetensors export with --model ...).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn dims(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

pub fn run(args: InfoArgs) -> Result<()> {
    let path = existing_file(&args.checkpoint, "--checkpoint")?;
    let store = tlc_engine::TensorStore::load(&path)?;
    let loaded = load_checkpoint(&path, &store, &args.model, None)?;
    let ckpt = &loaded.checkpoint;
    let model = &ckpt.model;
    let graph = model.graph();
    outln!("{}", network_line(&loaded));
    outln!(
        "graph: {} nodes, {}",
        graph.nodes().len(),
        match loaded.graph_source {
            GraphSource::Stored => "stored in the checkpoint",
            GraphSource::StoredSpec => "rebuilt from the stored architecture",
            GraphSource::Given => "built from the command-line architecture",
        }
    );

    let shapes = graph.infer_shapes()?;
    let macs = graph.macs()?;
    let name_w = graph
        .nodes()
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "\n{:>4}  {:<name_w$}  {:<20}  {:<12}  {:>10}  {:>14}",
        "#",
        "name",
        "kind",
        "output",
        "params",
        "MACs"
    );
    for (i, n) in graph.nodes().iter().enumerate() {
        let params: usize =
            n.op.param_roles()
                .iter()
                .filter_map(|r| model.get(&format!("{}.{r}", n.name)))
                .map(|t| t.numel())
                .sum();
        let show = |v: u64| {
            if v == 0 {
                "-".to_string()
            } else {
                group_digits(v)
            }
        };
        outln!(
            "{i:>4}  {:<name_w$}  {:<20}  {:<12}  {:>10}  {:>14}",
            n.name,
            n.op.kind_name(),
            dims(&shapes[i]),
            show(params as u64),
            show(macs[i])
        );
    }
    let total_macs: u64 = macs.iter().sum();
    outln!(
        "\ntotal: {} parameters, {} MACs per image ({})",
        group_digits(model.num_params() as u64),
        group_digits(total_macs),
        if total_macs >= 1_000_000_000 {
            format!("{:.2} GMACs", total_macs as f64 / 1e9)
        } else {
            format!("{:.2} MMACs", total_macs as f64 / 1e6)
        }
    );
    let buffers: usize = model.buffers().iter().map(|b| b.numel()).sum();
    outln!(
        "buffers: {} values (batch-norm running statistics)",
        group_digits(buffers as u64)
    );

    if let Some(t) = &ckpt.train {
        let c = &t.config;
        let schedule = match &c.schedule {
            Schedule::Constant => "constant".to_string(),
            Schedule::Cosine => "cosine".to_string(),
            Schedule::MultiStep { milestones, gamma } => {
                format!("multistep x{gamma} at epochs {milestones:?}")
            }
        };
        let optimizer = match c.optimizer {
            OptimizerKind::Sgd if c.nesterov => "SGD (Nesterov)",
            OptimizerKind::Sgd => "SGD",
            OptimizerKind::Adamw => "AdamW",
        };
        outln!(
            "\ntraining: {} of {} epochs done on `{}`; {optimizer}, batch {}, lr {} ({schedule}, \
             warm-up {} epochs), momentum {}, weight decay {}, seed {}",
            t.epochs_done,
            c.epochs,
            c.data,
            c.batch_size,
            c.lr,
            c.warmup_epochs,
            c.momentum,
            c.weight_decay,
            c.seed
        );
        outln!("normalisation: mean {:?} std {:?}", t.norm.mean, t.norm.std);
        if let Some(m) = t.history.last() {
            outln!("last epoch: {}", epoch_line(m, c.epochs));
        }
        if let Some(b) = &t.best {
            outln!(
                "best validation accuracy: {} at epoch {}",
                pct(b.val_acc),
                b.epoch
            );
        }
    }
    if let Some(o) = &ckpt.optim {
        outln!(
            "optimizer state: {} for {} parameters ({} tensors), lr {}",
            o.kind,
            o.num_params,
            o.tensors.len(),
            o.lr
        );
    }
    Ok(())
}
