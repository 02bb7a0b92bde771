//! `tlc calibrate`: time single convolutions through the inference plan on this machine and write
//! the cost table that `tlc collapse --cost-table` decides with (`tlc_engine::passes::cost`).
//!
//! The grid covers what the zoo's linear chains produce and what merging them makes: dense 1x1 to
//! 7x7 kernels at stride 1 and 2, pointwise and depthwise layers, channel counts 4..512 (narrow
//! ones stand for pruned middles) and planes 7x7..112x112, leaving out layers above a MAC budget
//! (the estimate extrapolates linearly in MACs there). Each layer runs behind a ReLU step; the
//! time between the convolution's end and the previous step's is the convolution's alone, with its input fresh in cache as
//! inside a network (and without the plan's copy of its input). `--checkpoint` adds the exact
//! layers collapsing that model prices, so odd shapes the grid cannot foresee (a pruned width
//! that a kernel handles badly) are measured, not interpolated.

use super::bench::LayoutArg;
use super::{existing_file, load_checkpoint, CliError, ModelArgs, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tlc_engine::graph::{ActKind, ConvSpec, Graph, LinearInit, Op};
use tlc_engine::passes::cost::{conv_macs, ConvKind, CostEntry, CostTable};
use tlc_engine::passes::{priced_convs, DeadChannels};
use tlc_engine::plan::{runs_channels_last, Plan, PlanOptions};
use tlc_engine::{Model, Rng, TensorStore};

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Where to write the table (JSON; replaced atomically).
    #[arg(long, default_value = "cost-table.json")]
    pub out: PathBuf,
    /// Samples per inference to measure at: the batch the collapsed model will run at.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// A small grid, each layer timed briefly (a few seconds; a first look, or tests).
    #[arg(long)]
    pub quick: bool,
    /// Also measure every convolution that collapsing this checkpoint prices (the chains'
    /// layers with pruned middles, and their merges), so its decisions rest on measurements
    /// rather than interpolation.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Activation layout of the measured plans: `auto` measures every convolution in the layout
    /// the `--checkpoint` model's plan runs in (channels-last for a MobileNet on a CPU with its
    /// tiles: its merged dense convs run there too), without a checkpoint each in the layout a
    /// network of that one layer gets.
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    pub layout: LayoutArg,
}

/// How long each layer is timed.
struct Budget {
    warmup: usize,
    min_runs: usize,
    max_runs: usize,
    min_time: Duration,
}

/// One layer of the grid: the convolution and its input plane.
struct Point {
    spec: ConvSpec,
    hw: [usize; 2],
}

/// The layers to measure (see the module documentation).
fn grid(quick: bool, batch: usize) -> Vec<Point> {
    let (channels, dw_channels, planes, mac_cap): (&[usize], &[usize], &[usize], u64) = if quick {
        (&[4, 16], &[8, 32], &[7, 14], 2_000_000)
    } else {
        (
            &[4, 16, 64, 256, 512],
            &[16, 64, 256, 1024],
            &[7, 14, 28, 56, 112],
            400_000_000,
        )
    };
    // (kernel, stride): dense geometries, padding k/2 as TLC's relocated paddings have.
    let dense: &[(usize, usize)] = if quick {
        &[(1, 1), (3, 1), (5, 1), (3, 2)]
    } else {
        &[
            (1, 1),
            (1, 2),
            (3, 1),
            (3, 2),
            (5, 1),
            (5, 2),
            (7, 1),
            (7, 2),
        ]
    };
    let depthwise: &[(usize, usize)] = if quick {
        &[(3, 1), (3, 2)]
    } else {
        &[(3, 1), (3, 2), (5, 1), (5, 2)]
    };
    let mut points = vec![];
    let mut push = |spec: ConvSpec, side: usize| {
        let hw = [side, side];
        if conv_macs(&spec, hw, batch).is_some_and(|m| m <= mac_cap) {
            points.push(Point { spec, hw });
        }
    };
    for &side in planes {
        for &(k, s) in dense {
            let pad = if k == 1 { 0 } else { k / 2 };
            for &cin in channels {
                // Channel pairs at most 4x apart: chains widen and narrow gradually.
                for &cout in channels.iter().filter(|&&c| c * 4 >= cin && c <= cin * 4) {
                    push(ConvSpec::new(cin, cout, k, s, pad).with_bias(true), side);
                }
            }
        }
        for &(k, s) in depthwise {
            // MobileNet's expanded widths reach 960 channels.
            for &c in dw_channels {
                push(
                    ConvSpec::new(c, c, k, s, k / 2).groups(c).with_bias(true),
                    side,
                );
            }
        }
    }
    points
}

/// Add the convolutions collapsing the checkpoint at `path` prices (with or without pruning) that
/// `points` lacks; returns how many, and whether the model's plan runs channels-last.
fn model_points(path: &std::path::Path, points: &mut Vec<Point>) -> Result<(usize, bool)> {
    let path = existing_file(path, "--checkpoint")?;
    let store = TensorStore::load(&path)?;
    let loaded = load_checkpoint(&path, &store, &ModelArgs::default(), None)?;
    let before = points.len();
    // Both ways `tlc collapse` may price it: dead channels pruned (the default) or kept
    // (`--no-prune`).
    let model = &loaded.checkpoint.model;
    for dead in [DeadChannels::Pruned, DeadChannels::Kept] {
        for (spec, hw) in priced_convs(model, dead)? {
            let spec = spec.with_bias(true);
            if !points.iter().any(|p| p.spec == spec && p.hw == hw) {
                points.push(Point { spec, hw });
            }
        }
    }
    let channels_last = runs_channels_last(model.graph(), &PlanOptions::default());
    Ok((points.len() - before, channels_last))
}

/// Median milliseconds of `spec`'s plan step on `batch` inputs of `hw` pixels.
/// `channels_last` as [`PlanOptions::channels_last`].
fn measure(
    spec: &ConvSpec,
    hw: [usize; 2],
    batch: usize,
    budget: &Budget,
    channels_last: Option<bool>,
) -> Result<f64> {
    let mut rng = Rng::new(7);
    let mut g = Graph::new(&[spec.in_ch, hw[0], hw[1]]);
    let relu = g.push("relu", Op::Activation { act: ActKind::Relu }, &[0]);
    g.push("conv", Op::Conv2d(spec.clone()), &[relu]);
    let model = Model::init(g, LinearInit::Uniform, &mut rng)?;
    let options = PlanOptions {
        channels_last,
        ..PlanOptions::default()
    };
    let mut plan = Plan::compile_with(&model, batch, &options)?;
    // The ReLU, the convolution, and around it steps moving the activation to the layout the
    // convolution runs in and back, if the plan picked another (depthwise layers run
    // channels-last).
    let conv_step = plan.steps().position(|s| s.name == "conv");
    let conv_step = match conv_step {
        Some(i) if i > 0 && plan.steps().next().is_some_and(|s| s.name == "relu") => i,
        _ => {
            return Err(CliError::Usage(format!(
                "calibrate: expected a ReLU step, then a convolution step, the plan has {:?}",
                plan.steps().map(|s| s.name.clone()).collect::<Vec<_>>()
            )))
        }
    };
    let input: Vec<f32> = (0..batch * spec.in_ch * hw[0] * hw[1])
        .map(|_| rng.normal())
        .collect();
    let start = Instant::now();
    let mut times = vec![];
    for run in 0.. {
        let (mut before, mut conv_ms) = (None, 0.0);
        plan.run_observed(&input, |step| {
            let now = Instant::now();
            if step + 1 == conv_step {
                before = Some(now);
            } else if let (true, Some(t)) = (step == conv_step, before) {
                conv_ms = (now - t).as_secs_f64() * 1e3;
            }
        });
        if run >= budget.warmup {
            times.push(conv_ms);
        }
        let enough = times.len() >= budget.min_runs && start.elapsed() >= budget.min_time;
        if enough || times.len() >= budget.max_runs {
            break;
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2].max(1e-6))
}

fn describe(spec: &ConvSpec, hw: [usize; 2]) -> String {
    format!(
        "{} {}x{}/s{} {}->{} @{}x{}",
        ConvKind::of(spec).name(),
        spec.kernel[0],
        spec.kernel[1],
        spec.stride[0],
        spec.in_ch,
        spec.out_ch,
        hw[0],
        hw[1]
    )
}

/// CPU, architecture, instruction set and cores, for the table's header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cpu}, {} {} (gemm {}), {cores} cores",
        std::env::consts::ARCH,
        tlc_kernels::isa::current().name(),
        tlc_kernels::gemm::kernel_name()
    )
}

/// Progress on stderr: a bar on a terminal, otherwise a line every tenth of the grid.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "calibrate [{bar:30.cyan/blue}] {pos:>4}/{len:4} {msg} [{elapsed_precise}<{eta_precise}]",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            b
        });
        Progress { bar, total }
    }

    fn done(&self, i: usize, what: &str, ms: f64) {
        let msg = format!("{what}: {ms:.4} ms");
        match &self.bar {
            Some(b) => {
                b.set_position(i as u64 + 1);
                b.set_message(msg);
            }
            None if (i + 1).is_multiple_of((self.total / 10).max(1)) || i + 1 == self.total => {
                eprintln!("calibrate: {}/{} {msg}", i + 1, self.total);
            }
            None => {}
        }
    }

    fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// One line per kind, kernel and stride: how many layers, their effective throughput range.
fn summary(table: &CostTable) {
    let mut by: BTreeMap<(ConvKind, [usize; 2], [usize; 2]), Vec<f64>> = BTreeMap::new();
    for e in &table.entries {
        let gmacs = e.macs() / e.ms / 1e6;
        by.entry((e.kind, e.kernel, e.stride))
            .or_default()
            .push(gmacs);
    }
    for ((kind, k, s), rates) in by {
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        outln!(
            "  {:<9} {}x{}/s{}: {:>3} layers, {lo:.2} .. {hi:.2} GMAC/s",
            kind.name(),
            k[0],
            k[1],
            s[0],
            rates.len()
        );
    }
    for kind in ConvKind::ALL {
        let fixed = table
            .entries
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.ms)
            .fold(f64::INFINITY, f64::min);
        outln!(
            "  fixed cost per {} layer (cheapest measured): {:.1} us",
            kind.name(),
            fixed * 1e3
        );
    }
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    if args.batch == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    let budget = if args.quick {
        Budget {
            warmup: 1,
            min_runs: 3,
            max_runs: 20,
            min_time: Duration::from_millis(2),
        }
    } else {
        Budget {
            warmup: 2,
            min_runs: 7,
            max_runs: 200,
            min_time: Duration::from_millis(60),
        }
    };
    // Fail before a minute of measurements, not after.
    let dir = match args.out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if args.out.is_dir() {
        return Err(CliError::Usage(format!(
            "--out {} is a directory; name the table's file",
            args.out.display()
        )));
    }
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "--out {}: there is no directory {} to write it in",
            args.out.display(),
            dir.display()
        )));
    }
    let mut points = grid(args.quick, args.batch);
    let mut channels_last = args.layout.option();
    if let Some(p) = &args.checkpoint {
        let (added, model_cl) = model_points(p, &mut points)?;
        outln!(
            "{added} more convolutions: the ones collapsing {} prices",
            p.display()
        );
        if args.layout == LayoutArg::Auto && model_cl {
            channels_last = Some(true);
            outln!("measuring channels-last, as the model's plan runs");
        }
    }
    let threads = rayon::current_num_threads();
    let machine = machine();
    outln!(
        "calibrating {} convolutions at batch {} on {machine} with {threads} thread(s){}",
        points.len(),
        args.batch,
        if args.quick { " (quick)" } else { "" }
    );
    let start = Instant::now();
    let progress = Progress::new(points.len());
    let mut entries = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let ms = measure(&p.spec, p.hw, args.batch, &budget, channels_last)?;
        progress.done(i, &describe(&p.spec, p.hw), ms);
        entries.push(CostEntry::new(&p.spec, p.hw, args.batch, ms));
    }
    progress.finish();
    let table = CostTable::new(machine, threads, args.batch, entries)?;
    table.save(&args.out)?;
    summary(&table);
    outln!(
        "wrote {} ({} measurements in {:.2} s); use it with `tlc collapse --cost-table {}`",
        args.out.display(),
        table.entries.len(),
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
