//! `tlc collapse`: write the collapsed form of a checkpoint as a self-describing tlc checkpoint
//! whose `tlc.graph` is the rewritten graph: batch-norms folded into their layers, identities and
//! dropout dropped, linear conv/linear chains merged where that is cheaper (each chain's grouping
//! chosen by a cost model: measured kernel times from `tlc calibrate`'s table, or MAC counts
//! without one; `--merge-all` merges every exact chain), parallel linear branches summed, residual
//! identities folded, dead channels pruned. Prints the decision per chain and what was merged, and
//! checks the result against the original on random input.

use super::{
    existing_file, group_digits, load_checkpoint, network_line, CliError, ModelArgs, Result,
};
use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tlc_engine::graph::{Graph, Op};
use tlc_engine::passes::{
    collapse, collapse_with, fold_batch_norms, prune_dead_channels, remove_passthrough, CostModel,
    CostTable, DeadChannels, Decision, DecisionKind,
};
use tlc_engine::plan::Plan;
use tlc_engine::{Model, Rng, Tensor, TensorStore};
use tlc_models::checkpoint::Checkpoint;

#[derive(Args, Debug)]
pub struct CollapseArgs {
    /// The checkpoint (a tlc checkpoint, or a plain safetensors export with --model ...).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the collapsed checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep dead channels (all-zero output rows) instead of pruning them.
    #[arg(long)]
    pub no_prune: bool,
    /// Decide each chain by this machine's measured kernel times (`tlc calibrate` writes the
    /// table). Without it, chains are decided by multiply-accumulate counts.
    #[arg(long, conflicts_with = "merge_all")]
    pub cost_table: Option<PathBuf>,
    /// Merge every exact chain, whatever it costs.
    #[arg(long)]
    pub merge_all: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Node counts by kind, e.g. `13 conv2d, 2 linear`.
fn census(g: &Graph) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for n in g.nodes().iter().skip(1) {
        *by.entry(n.op.kind_name()).or_default() += 1;
    }
    by.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn layer(op: &Op) -> String {
    match op {
        Op::Conv2d(c) => format!(
            "conv {}x{}/s{} pad {}{}, {} -> {} channels",
            c.kernel[0],
            c.kernel[1],
            c.stride[0],
            c.padding[0],
            if c.is_depthwise() { ", depthwise" } else { "" },
            c.in_ch,
            c.out_ch
        ),
        Op::Linear(l) => format!("linear {} -> {}", l.in_f, l.out_f),
        other => other.kind_name().to_string(),
    }
}

fn out_channels(op: &Op) -> Option<usize> {
    match op {
        Op::Conv2d(c) => Some(c.out_ch),
        Op::Linear(l) => Some(l.out_f),
        _ => None,
    }
}

/// The cost model of `--cost-table`, or MAC counts; says which on stdout.
fn cost_model(table: Option<&std::path::Path>) -> Result<CostModel> {
    let Some(path) = table else {
        outln!(
            "cost model: multiply-accumulate counts (no --cost-table; `tlc calibrate` measures \
             this machine's kernels)"
        );
        return Ok(CostModel::Macs);
    };
    let path = existing_file(path, "--cost-table")?;
    let table = CostTable::load(&path).map_err(|e| {
        CliError::Usage(format!(
            "--cost-table: {e} (write one with `tlc calibrate`)"
        ))
    })?;
    outln!(
        "cost model: measured kernel times from {} ({}, {} thread(s), batch {}, {} measurements)",
        path.display(),
        table.machine,
        table.threads,
        table.batch,
        table.entries.len()
    );
    let threads = rayon::current_num_threads();
    if table.threads != threads {
        outln!(
            "note: the table was measured with {} thread(s), this run has {threads}",
            table.threads
        );
    }
    let here = super::calibrate::machine();
    if table.machine != here {
        outln!("note: the table was measured on another machine (this is {here})");
    }
    Ok(CostModel::Measured(table))
}

/// `v` with about four significant digits.
fn num(v: f64) -> String {
    let digits = if v > 0.0 {
        (3 - v.log10().floor() as i32).clamp(0, 7) as usize
    } else {
        0
    };
    format!("{v:.digits$}")
}

/// One line per decision, then the chains' totals.
fn print_decisions(decisions: &[Decision], unit: &str) {
    for d in decisions {
        let u = d.unit;
        let choice = if d.merges_all() {
            "merge".to_string()
        } else if d.keeps_all() {
            "keep apart".to_string()
        } else {
            let groups: Vec<String> = d.groups.iter().map(|g| g.join("+")).collect();
            format!("merge as {}", groups.join(" | "))
        };
        let line = match d.kind {
            DecisionKind::Chain => {
                let widths: Vec<String> = d
                    .widths
                    .iter()
                    .zip(&d.full_widths)
                    .map(|(w, f)| {
                        if w < f {
                            format!("{w}/{f}")
                        } else {
                            w.to_string()
                        }
                    })
                    .collect();
                let absorbs = d
                    .absorbs
                    .as_ref()
                    .map(|a| format!(" (absorbing {a})"))
                    .unwrap_or_default();
                format!(
                    "chain {} (channels {}): merged {} {u}{absorbs}, apart {} {u} -> {choice}{}",
                    d.layers.join(" > "),
                    widths.join(" > "),
                    num(d.merged),
                    num(d.separate),
                    if d.merges_all() || d.keeps_all() {
                        String::new()
                    } else {
                        format!(" ({} {u})", num(d.chosen))
                    }
                )
            }
            DecisionKind::Branches => format!(
                "branches {}: summed {} {u}, apart {} {u} -> {}",
                d.layers.join(" + "),
                num(d.merged),
                num(d.separate),
                if d.merges_all() { "sum" } else { "keep apart" }
            ),
        };
        outln!("{line}");
    }
    let chains: Vec<&Decision> = decisions
        .iter()
        .filter(|d| d.kind == DecisionKind::Chain && d.unit == unit)
        .collect();
    if !chains.is_empty() {
        let sum = |f: fn(&Decision) -> f64| chains.iter().map(|d| f(d)).sum::<f64>();
        outln!(
            "{} chain(s): {} {unit} as chosen; {} {unit} all merged, {} {unit} all apart",
            chains.len(),
            num(sum(|d| d.chosen)),
            num(sum(|d| d.merged)),
            num(sum(|d| d.separate))
        );
    }
}

fn total_macs(g: &Graph) -> Result<u64> {
    Ok(g.macs()?.iter().sum())
}

fn plan_steps(m: &Model) -> Result<usize> {
    Ok(Plan::compile(m, 1)?.len())
}

pub fn run(args: CollapseArgs) -> Result<()> {
    let path = existing_file(&args.checkpoint, "--checkpoint")?;
    let store = TensorStore::load(&path)?;
    let loaded = load_checkpoint(&path, &store, &args.model, None)?;
    outln!("{}", network_line(&loaded));
    let original = &loaded.checkpoint.model;
    let folded = remove_passthrough(&fold_batch_norms(original)?)?;
    let (g0, g1) = (original.graph(), folded.graph());
    let count = |g: &Graph, f: fn(&Op) -> bool| g.nodes().iter().filter(|n| f(&n.op)).count();
    let is_bn = |op: &Op| matches!(op, Op::BatchNorm(_));
    let is_pass = |op: &Op| matches!(op, Op::Identity | Op::Dropout { .. });
    outln!(
        "folded {} batch-norm(s) into their layers, dropped {} identity/dropout node(s)",
        count(g0, is_bn) - count(g1, is_bn),
        count(g0, is_pass)
    );
    let mut kept_apart = 0;
    let merged = if args.merge_all {
        outln!("merging every exact chain (--merge-all)");
        collapse(&folded)?
    } else {
        let cost = cost_model(args.cost_table.as_deref())?;
        let dead = if args.no_prune {
            DeadChannels::Kept
        } else {
            DeadChannels::Pruned
        };
        let (merged, decisions) = collapse_with(&folded, &cost, dead)?;
        print_decisions(&decisions, cost.unit());
        kept_apart = decisions
            .iter()
            .filter(|d| d.kind == DecisionKind::Chain && d.keeps_all())
            .count();
        merged
    };
    let result = if args.no_prune {
        merged.clone()
    } else {
        prune_dead_channels(&merged)?
    };

    let g2 = result.graph();
    let before: HashMap<&str, &Op> = g1
        .nodes()
        .iter()
        .map(|n| (n.name.as_str(), &n.op))
        .collect();
    let mut chains = 0;
    for n in g2.nodes() {
        if before.contains_key(n.name.as_str()) {
            continue;
        }
        chains += 1;
        outln!(
            "merged {} layers into {}: {}",
            n.name.matches('+').count() + 1,
            n.name,
            layer(&n.op)
        );
    }
    let is_add = |op: &Op| matches!(op, Op::Add);
    let folded_adds = count(g1, is_add) - count(g2, is_add);
    if folded_adds > 0 {
        outln!("absorbed {folded_adds} add(s) (residual identities, parallel branches) into convolutions");
    }
    if chains == 0 && folded_adds == 0 {
        if kept_apart > 0 {
            outln!("nothing merged: every chain is cheaper kept apart");
        } else {
            outln!("no linear chain to merge (every layer is followed by a non-linearity)");
        }
    }
    let merged_ch: HashMap<&str, &Op> = merged
        .graph()
        .nodes()
        .iter()
        .map(|n| (n.name.as_str(), &n.op))
        .collect();
    for n in g2.nodes() {
        if let (Some(a), Some(b)) = (
            merged_ch
                .get(n.name.as_str())
                .and_then(|op| out_channels(op)),
            out_channels(&n.op),
        ) {
            if b < a {
                outln!("pruned {}: {a} -> {b} output channels", n.name);
            }
        }
    }
    outln!("layers: {} -> {}", census(g0), census(g2));
    let (m0, m2) = (total_macs(g0)?, total_macs(g2)?);
    outln!(
        "multiply-accumulates per sample: {} -> {} ({:.2}x fewer); parameters {} -> {}; fused plan \
         steps at batch 1: {} -> {}",
        group_digits(m0),
        group_digits(m2),
        m0 as f64 / m2.max(1) as f64,
        group_digits(original.num_params() as u64),
        group_digits(result.num_params() as u64),
        plan_steps(original)?,
        plan_steps(&result)?
    );

    let mut shape = vec![2];
    shape.extend_from_slice(g0.input_shape());
    let x = Tensor::randn(&shape, &mut Rng::new(0));
    let (y0, y2) = (original.eval(&x)?.to_vec(), result.eval(&x)?.to_vec());
    let scale = y0.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let err = y0
        .iter()
        .zip(&y2)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    outln!(
        "check on 2 random inputs: max |difference| {err:.3e} (outputs up to {scale:.3e}, relative \
         {:.1e})",
        err / scale
    );

    let ckpt = Checkpoint {
        model: result,
        spec: loaded.checkpoint.spec.clone(),
        train: loaded.checkpoint.train.clone(),
        optim: None,
    };
    ckpt.save(&args.out)?;
    outln!(
        "wrote {} (tlc.graph holds the collapsed graph)",
        args.out.display()
    );
    Ok(())
}
