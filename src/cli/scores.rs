//! `tlc scores`: the per-layer TLC table of a checkpoint, without data: one row per candidate
//! activation with its batch-norm, channels, ON and OFF counts, entropy and mean error likelihood.
//! Candidates with no batch-norm in front (scored on calibration data by `tlc compress`) are
//! listed as "needs data" (`null` scores in `--json`).

use super::{existing_file, load_checkpoint, network_line, ModelArgs, Result};
use clap::Args;
use std::path::PathBuf;
use tlc_models::tlc::score_candidates;

#[derive(Args, Debug)]
pub struct ScoresArgs {
    /// The checkpoint (a tlc checkpoint, or a plain safetensors export with --model ...).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Print only a JSON array of objects (act, bn, source, channels, on, off, entropy,
    /// mean_error) on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: ScoresArgs) -> Result<()> {
    let path = existing_file(&args.checkpoint, "--checkpoint")?;
    let store = tlc_engine::TensorStore::load(&path)?;
    let loaded = load_checkpoint(&path, &store, &args.model, None)?;
    let scores = score_candidates(&loaded.checkpoint.model, &[])?;
    let rows: Vec<_> = scores.iter().map(|s| s.row()).collect();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialise")
        );
        return Ok(());
    }
    outln!("{}", network_line(&loaded));
    let aw = rows.iter().map(|r| r.act.len()).max().unwrap_or(0).max(10);
    let bw = rows
        .iter()
        .map(|r| r.bn.as_ref().map_or(0, |b| b.len()))
        .max()
        .unwrap_or(0)
        .max(10);
    outln!(
        "\n{:>3}  {:<aw$}  {:<bw$}  {:>8}  {:>5}  {:>5}  {:>8}  {:>10}",
        "#",
        "activation",
        "batch-norm",
        "channels",
        "ON",
        "OFF",
        "entropy",
        "mean error"
    );
    for (i, r) in rows.iter().enumerate() {
        let bn = r.bn.as_deref().unwrap_or("-");
        match (r.on, r.off, r.entropy, r.mean_error) {
            (Some(on), Some(off), Some(h), Some(e)) => outln!(
                "{:>3}  {:<aw$}  {:<bw$}  {:>8}  {:>5}  {:>5}  {:>8.4}  {:>10.4}",
                i + 1,
                r.act,
                bn,
                r.channels,
                on,
                off,
                h,
                e
            ),
            _ => outln!(
                "{:>3}  {:<aw$}  {:<bw$}  {:>8}  needs data (no batch-norm in front: tlc compress \
                 measures it on calibration batches)",
                i + 1,
                r.act,
                bn,
                r.channels
            ),
        }
    }
    if rows.is_empty() {
        outln!("(no removable activations)");
    } else {
        let scored: Vec<f32> = rows.iter().filter_map(|r| r.entropy).collect();
        if !scored.is_empty() {
            outln!(
                "\n{} candidates; mean entropy {:.4} bits (0: already linear, 1: every channel ON half the \
                 time)",
                rows.len(),
                scored.iter().sum::<f32>() / scored.len() as f32
            );
        }
    }
    Ok(())
}
