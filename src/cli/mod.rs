//! Arguments (clap derive) and dispatch. Each command lives in its own file; this one holds what
//! they share: the global options, the architecture flags, and the error type.

/// `println!` that ends the process quietly (exit status 141, as SIGPIPE would) when stdout is
/// a closed pipe (`tlc bench | head`) rather than panicking mid-report.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` with [`outln!`]'s handling of a closed pipe.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::write_stdout(format_args!($($t)*))
    };
}

mod bench;
mod calibrate;
mod collapse;
mod compress;
mod demo;
mod eval;
mod infer;
mod info;
mod pipeline;
mod progress;
mod scores;
mod train;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use tlc_engine::TensorStore;
use tlc_models::checkpoint::{describe, Checkpoint, Loaded, ARCH_KEY};
use tlc_models::zoo::{Arch, ArchSpec};

/// What the commands can fail with; printed as `error: ...` with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Models(#[from] tlc_models::Error),
    #[error(transparent)]
    Engine(#[from] tlc_engine::Error),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
    #[error("cannot set up {threads} worker threads: {detail}")]
    Threads { threads: usize, detail: String },
}

pub type Result<T> = std::result::Result<T, CliError>;

/// Write a report line to stdout (see [`outln!`]): a closed pipe ends the process with status
/// 141; any other failure to write is reported on stderr and ends it with status 1.
pub(crate) fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Till the Layers Collapse: a from-scratch tensor engine that trains, inspects and runs image
/// classifiers (and makes them shallower).
#[derive(Parser, Debug)]
#[command(name = "tlc", version, about, propagate_version = true)]
pub struct Cli {
    /// Worker threads for the compute kernels (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model of the zoo on Fashion-MNIST or CIFAR-10, checkpointing every epoch.
    Train(train::TrainArgs),
    /// Loss and accuracy of a checkpoint on a data set.
    Eval(eval::EvalArgs),
    /// Describe a checkpoint: architecture, training state, and every layer's shape, parameters
    /// and multiply-accumulates.
    Info(info::InfoArgs),
    /// Run a checkpoint on the tensor `input` of a safetensors file (NCHW f32) and write the
    /// logits as `output`.
    Infer(infer::InferArgs),
    /// TLC: remove activations layer by layer (rank by validation loss or entropy, linearize,
    /// fine-tune with OFF channels held at zero), one checkpoint and report line per iteration.
    Compress(compress::CompressArgs),
    /// The per-layer TLC scores of a checkpoint (no data needed): channels, ON/OFF counts,
    /// entropy and mean error likelihood of every removable activation.
    Scores(scores::ScoresArgs),
    /// Write the collapsed checkpoint: batch-norms folded, linear chains merged, dead channels
    /// pruned (exact in evaluation mode); prints what was merged per chain.
    Collapse(collapse::CollapseArgs),
    /// Time convolutions on this machine and write the cost table `collapse --cost-table` decides
    /// with (merge a chain, or keep it apart with dead channels pruned).
    Calibrate(calibrate::CalibrateArgs),
    /// Compile a checkpoint into the fused inference plan and time it: median and p90 latency,
    /// peak RSS and a per-step profile.
    Bench(bench::BenchArgs),
    /// A self-contained demo of the engine: a tiny CNN trained with tlc's autograd and SGD on a
    /// synthetic image task for a few seconds.
    Demo(demo::DemoArgs),
    /// The whole story in one command: train (or load), TLC, calibrate, collapse, and time the
    /// trained, linearized and collapsed networks at batch 1; writes a summary.
    Pipeline(pipeline::PipelineArgs),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if cli.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cli.threads)
            .build_global()
            .map_err(|e| CliError::Threads {
                threads: cli.threads,
                detail: e.to_string(),
            })?;
    }
    dispatch(cli.command)
}

/// Run one command (the thread pool is set up already).
fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => info::run(a),
        Command::Infer(a) => infer::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Scores(a) => scores::run(a),
        Command::Collapse(a) => collapse::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Pipeline(a) => pipeline::run(a),
        Command::Calibrate(a) => calibrate::run(a),
    }
}

/// `--model`: one of the zoo's names (listed in `--help` and in error messages).
fn arch_parser() -> impl clap::builder::TypedValueParser<Value = Arch> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Arch::ALL.map(Arch::name))
        .try_map(|s| Arch::parse(&s).map_err(|e| e.to_string()))
}

/// The architecture flags. For training they define the network; for the other commands they
/// are needed only for a plain export without tlc metadata, or to override the stored
/// architecture (the file's tensors must then fit it).
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Architecture.
    #[arg(long, value_parser = arch_parser())]
    pub model: Option<Arch>,
    /// Channel width multiplier (0.25: a quarter of torchvision's channels).
    #[arg(long)]
    pub width: Option<f32>,
    /// Input channels (1 for grey images). Default: the data's, else 3.
    #[arg(long)]
    pub in_ch: Option<usize>,
    /// Number of classes. Default: the data's, else the architecture's.
    #[arg(long)]
    pub classes: Option<usize>,
    /// Input height and width. Default: the data's, else the architecture's.
    #[arg(long)]
    pub image: Option<usize>,
}

/// What the data says the network's input and output look like (defaults for a plain export).
#[derive(Clone, Copy, Debug)]
pub struct DataShape {
    pub channels: usize,
    pub side: usize,
    pub classes: Option<usize>,
}

impl ModelArgs {
    fn any(&self) -> bool {
        self.model.is_some()
            || self.width.is_some()
            || self.in_ch.is_some()
            || self.classes.is_some()
            || self.image.is_some()
    }

    /// The flags applied over `base`, or over the defaults of `--model` and the data's shape.
    pub fn spec_over(&self, base: Option<&ArchSpec>, data: Option<DataShape>) -> Result<ArchSpec> {
        let mut spec = match (self.model, base) {
            (Some(m), Some(b)) if b.arch == m => b.clone(),
            (Some(m), _) => {
                let mut s = ArchSpec::new(m);
                if let Some(d) = data {
                    s.in_ch = d.channels;
                    s.image = [d.side, d.side];
                    s.classes = d.classes.unwrap_or(s.classes);
                }
                s
            }
            (None, Some(b)) => b.clone(),
            (None, None) => {
                return Err(CliError::Usage(
                    "give the architecture with --model (and --width, --in-ch, ... as needed)"
                        .into(),
                ))
            }
        };
        if let Some(w) = self.width {
            spec.width = w;
        }
        if let Some(c) = self.in_ch {
            spec.in_ch = c;
        }
        if let Some(c) = self.classes {
            spec.classes = c;
        }
        if let Some(s) = self.image {
            spec.image = [s, s];
        }
        spec.check()?;
        Ok(spec)
    }
}

/// Load a checkpoint from its file's `store`. Architecture flags, when given, override the
/// stored architecture (or supply it for a plain export, with defaults from `data`).
pub fn load_checkpoint(
    path: &Path,
    store: &TensorStore,
    flags: &ModelArgs,
    data: Option<DataShape>,
) -> Result<Loaded> {
    let stored = store
        .metadata_get(ARCH_KEY)
        .and_then(|j| tlc_models::zoo::ArchSpec::from_json(j).ok());
    let given = if flags.any() {
        Some(flags.spec_over(stored.as_ref(), data)?)
    } else {
        None
    };
    Ok(Checkpoint::from_store(path, store, given.as_ref())?)
}

/// One line naming a loaded checkpoint's network.
pub fn network_line(l: &Loaded) -> String {
    let m = &l.checkpoint.model;
    let what = match &l.checkpoint.spec {
        Some(s) => describe(s),
        None => "a custom graph".into(),
    };
    format!(
        "{}: {what}, {} parameters",
        l.path.display(),
        group_digits(m.num_params() as u64)
    )
}

/// 1234567 -> "1,234,567".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A path argument that must name an existing file.
pub fn existing_file(p: &Path, what: &str) -> Result<PathBuf> {
    if !p.is_file() {
        return Err(CliError::Usage(format!(
            "{what} {} does not exist or is not a file",
            p.display()
        )));
    }
    Ok(p.to_path_buf())
}
