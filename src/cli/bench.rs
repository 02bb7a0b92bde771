//! `tlc bench`: compile a checkpoint into the fused inference plan ([`Plan`]) and time it on
//! random input: median and p90 latency per batch, peak resident memory, and a per-step profile
//! (median time of each fused step). `--eval` also times the graph executor (`Model::eval`) on the
//! same input for comparison. Without `--checkpoint`, `--model` (and its options) is benchmarked
//! with freshly initialised weights. `--weights f16|bf16` stores the conv and linear weights in 16
//! bits (f32 arithmetic): the report gives the weight bytes and how far the logits move from the
//! f32 plan's on the same input.

use super::{
    existing_file, group_digits, load_checkpoint, network_line, CliError, DataShape, ModelArgs,
    Result,
};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tlc_engine::plan::{Plan, PlanOptions, WeightDtype};
use tlc_engine::{Model, Rng, Tensor, TensorStore};
use tlc_models::checkpoint::describe;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The checkpoint (a tlc checkpoint, or a plain safetensors export with --model ...).
    /// Without it, --model is timed with freshly initialised weights.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Samples per inference.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Per-sample input shape `C,H,W` (default: the one the graph was built for).
    #[arg(long, value_parser = parse_shape)]
    pub input_shape: Option<Shape>,
    /// Timed runs at most (after the warm-up).
    #[arg(long, default_value_t = 1000)]
    pub iters: usize,
    /// Stop timing after this many seconds (at least 10 runs are timed).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Untimed runs first (kernel scratch buffers and caches warm up).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Also time the graph executor (`Model::eval`) on the same input.
    #[arg(long)]
    pub eval: bool,
    /// Print only one line of JSON on stdout: median_ms, p90_ms, peak_rss_mb, steps, ...
    #[arg(long)]
    pub json: bool,
    /// Run the timed loop on a worker-pool thread, as an application that calls the plan from
    /// inside the pool (`ThreadPool::install`) does. By default the loop runs on the main
    /// thread, and with more than one thread every inference pays one hand-off to the pool and
    /// back (10-30 us, most of it visible in the first step's time).
    #[arg(long)]
    pub in_pool: bool,
    /// Storage of the conv and linear weights (the arithmetic is f32 either way).
    #[arg(long, value_enum, default_value_t = WeightsArg::F32)]
    pub weights: WeightsArg,
    /// Fuse each large 1x1 expansion (>= 128 K floats of output per sample) with the 3x3
    /// depthwise conv that reads it, so the expanded activation is never stored: a smaller
    /// activation arena (MobileNetV2 at 224: 3.9 instead of 8.4 MB); as fast on two threads,
    /// ~10 % slower on one (see BENCHMARKS.md).
    #[arg(long)]
    pub fuse_expand: bool,
    /// Activation layout of the plan: `auto` runs networks with depthwise convolutions (the
    /// MobileNets) channels-last on CPUs with its SIMD tiles, the rest NCHW except convs with
    /// at most 8 output pixels and 1 MB of weights (channels-last streams their weights faster).
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    pub layout: LayoutArg,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--weights`: how the plan stores conv and linear weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// 32-bit floats, as trained.
    F32,
    /// IEEE half precision: half the bytes, about 3 decimal digits.
    F16,
    /// bfloat16: half the bytes, about 2 decimal digits, f32's range.
    Bf16,
}

impl WeightsArg {
    pub fn dtype(self) -> WeightDtype {
        match self {
            WeightsArg::F32 => WeightDtype::F32,
            WeightsArg::F16 => WeightDtype::F16,
            WeightsArg::Bf16 => WeightDtype::Bf16,
        }
    }
}

/// `--layout`: the plan's activation layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Channels-last for networks with depthwise convolutions where the CPU has the tiles;
    /// elsewhere NCHW but for the few-pixel convs that stream large weights.
    Auto,
    /// NCHW throughout.
    Nchw,
    /// Every convolution that can, channels-last.
    ChannelsLast,
}

impl LayoutArg {
    pub fn option(self) -> Option<bool> {
        match self {
            LayoutArg::Auto => None,
            LayoutArg::Nchw => Some(false),
            LayoutArg::ChannelsLast => Some(true),
        }
    }
}

/// How far `a` is from `b`: the largest absolute difference, and that relative to `b`'s largest
/// magnitude (element-wise ratios blow up on logits near zero).
pub fn logit_difference(a: &[f32], b: &[f32]) -> (f64, f64) {
    let scale = b.iter().fold(0f64, |s, v| s.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |d, (x, y)| d.max((x - y).abs() as f64));
    (diff, if scale > 0.0 { diff / scale } else { diff })
}

/// A per-sample shape (`--input-shape 3,32,32`).
#[derive(Clone, Debug)]
pub struct Shape(pub Vec<usize>);

fn parse_shape(s: &str) -> std::result::Result<Shape, String> {
    let dims: Vec<usize> = s
        .split([',', 'x'])
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("`{s}` is not a shape like 3,32,32: {e}"))?;
    if dims.is_empty() || dims.contains(&0) {
        return Err(format!("`{s}`: dimensions must be positive"));
    }
    Ok(Shape(dims))
}

/// Median and 90th percentile of `v` (sorted in place), in milliseconds.
pub(super) fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let p90 = v[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
    (median, p90)
}

/// Peak resident set size of this process in MiB (Linux: `VmHWM`; `None` elsewhere).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Time `f` `warmup` times untimed, then until `iters` runs or `seconds` (at least 10 runs).
pub(super) fn time_runs(
    warmup: usize,
    iters: usize,
    seconds: f64,
    mut f: impl FnMut(),
) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut times = Vec::with_capacity(iters);
    while times.len() < iters && (times.len() < 10 || start.elapsed() < budget) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.iters == 0 {
        return Err(CliError::Usage(
            "--batch and --iters must be at least 1".into(),
        ));
    }
    let data = args.input_shape.as_ref().and_then(|Shape(s)| {
        (s.len() == 3 && s[1] == s[2]).then(|| DataShape {
            channels: s[0],
            side: s[1],
            classes: None,
        })
    });
    let (model, what) = match &args.checkpoint {
        Some(p) => {
            let path = existing_file(p, "--checkpoint")?;
            let store = TensorStore::load(&path)?;
            let loaded = load_checkpoint(&path, &store, &args.model, data)?;
            let line = network_line(&loaded);
            (loaded.checkpoint.model, line)
        }
        None => {
            let spec = args.model.spec_over(None, data)?;
            let (graph, init) = tlc_models::zoo::build(&spec)?;
            let m = Model::init(graph, init, &mut Rng::new(0))?;
            let line = format!(
                "{} with freshly initialised weights, {} parameters",
                describe(&spec),
                group_digits(m.num_params() as u64)
            );
            (m, line)
        }
    };
    let model = &model;
    let shape = args
        .input_shape
        .clone()
        .map_or_else(|| model.graph().input_shape().to_vec(), |s| s.0);
    let compile = |weights: WeightDtype| {
        let options = PlanOptions {
            weights,
            input_shape: Some(shape.clone()),
            fuse_expand_dw: args.fuse_expand,
            channels_last: args.layout.option(),
        };
        Plan::compile_with(model, args.batch, &options).map_err(|e| {
            CliError::Usage(format!(
                "cannot compile the network for input {shape:?} with {} weights: {e}",
                weights.name()
            ))
        })
    };
    let dtype = args.weights.dtype();
    let mut plan = compile(dtype)?;
    let mut full = vec![args.batch];
    full.extend_from_slice(&shape);
    let x = Tensor::randn(&full, &mut Rng::new(0));
    let xv = x.to_vec();

    // Timed runs, each step timed through the observer (one clock read per step).
    let n_steps = plan.len();
    for _ in 0..args.warmup {
        plan.run(&xv);
    }
    let mut step_ms: Vec<Vec<f64>> = vec![Vec::with_capacity(args.iters); n_steps];
    let mut times = Vec::with_capacity(args.iters);
    let budget = Duration::from_secs_f64(args.seconds);
    let mut timed_loop = || {
        let start = Instant::now();
        while times.len() < args.iters && (times.len() < 10 || start.elapsed() < budget) {
            let t0 = Instant::now();
            let mut last = t0;
            plan.run_observed(&xv, |i| {
                let now = Instant::now();
                step_ms[i].push((now - last).as_secs_f64() * 1e3);
                last = now;
            });
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    };
    if args.in_pool {
        rayon::scope(|_| timed_loop());
    } else {
        timed_loop();
    }
    let runs = times.len();
    let (median, p90) = stats(&mut times);
    // Before the executor runs: its temporaries are not the plan's footprint.
    let rss = peak_rss_mb();
    let eval = if args.eval {
        let xe = if shape == model.graph().input_shape() {
            x.clone()
        } else {
            return Err(CliError::Usage(
                "--eval needs the graph's own input shape (drop --input-shape)".into(),
            ));
        };
        let mut t = time_runs(args.warmup.min(2), args.iters, args.seconds, || {
            let _ = model.eval(&xe);
        });
        Some(stats(&mut t))
    } else {
        None
    };
    // 16-bit weights: the same input through the f32 plan (compiled only now, so the timing and
    // the peak RSS above are the 16-bit plan's alone).
    let against_f32 = if dtype == WeightDtype::F32 {
        None
    } else {
        let mut reference = compile(WeightDtype::F32)?;
        let f32_bytes = reference.weight_bytes();
        let want = reference.run(&xv).to_vec();
        Some((logit_difference(plan.run(&xv), &want), f32_bytes))
    };
    let steps: Vec<_> = plan
        .steps()
        .zip(step_ms.iter_mut())
        .map(|(s, t)| (s.clone(), stats(t).0))
        .collect();
    let threads = rayon::current_num_threads();

    if args.json {
        let mut obj = json!({
            "median_ms": median,
            "p90_ms": p90,
            "peak_rss_mb": rss,
            "runs": runs,
            "batch": args.batch,
            "input_shape": shape,
            "threads": threads,
            "in_pool": args.in_pool,
            "steps": steps.iter().map(|(s, ms)| json!({
                "name": s.name,
                "kind": s.kind,
                "median_ms": ms,
                "macs": s.macs,
            })).collect::<Vec<_>>(),
        });
        if let Some((m, p)) = eval {
            obj["eval_median_ms"] = json!(m);
            obj["eval_p90_ms"] = json!(p);
        }
        obj["weights"] = json!(dtype.name());
        obj["weight_bytes"] = json!(plan.weight_bytes());
        obj["param_bytes"] = json!(plan.param_bytes());
        if let Some(((abs, rel), f32_bytes)) = against_f32 {
            obj["f32_weight_bytes"] = json!(f32_bytes);
            obj["max_abs_diff"] = json!(abs);
            obj["max_rel_diff"] = json!(rel);
        }
        outln!("{obj}");
        return Ok(());
    }
    outln!("{what}");
    let (bufs, floats) = plan.arena();
    outln!(
        "plan: {} fused steps, batch {}, input {}, {threads} thread(s){}; arena {bufs} buffers, {:.2} MB",
        n_steps,
        args.batch,
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x"),
        if args.in_pool {
            ", timed inside the pool"
        } else {
            ""
        },
        floats as f64 * 4.0 / 1e6
    );
    outln!(
        "weights: {}, {:.3} MB (all parameters {:.3} MB){}",
        dtype.name(),
        plan.weight_bytes() as f64 / 1e6,
        plan.param_bytes() as f64 / 1e6,
        against_f32.map_or(String::new(), |(_, b)| format!(
            "; as f32 {:.3} MB",
            b as f64 / 1e6
        ))
    );
    if let Some(((abs, rel), _)) = against_f32 {
        outln!(
            "logits vs the f32 plan on the same input: max |diff| {abs:.3e}, relative {rel:.3e} \
             (of the largest f32 logit)"
        );
    }
    outln!(
        "latency: median {median:.3} ms, p90 {p90:.3} ms over {runs} runs; peak RSS {}",
        rss.map_or("unknown".into(), |r| format!("{r:.1} MB"))
    );
    if let Some((m, p)) = eval {
        outln!(
            "Model::eval: median {m:.3} ms, p90 {p:.3} ms ({:.2}x the plan's median)",
            m / median
        );
    }
    let total: f64 = steps.iter().map(|(_, ms)| ms).sum();
    let nw = steps
        .iter()
        .map(|(s, _)| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let kw = steps
        .iter()
        .map(|(s, _)| s.kind.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "\n{:>3}  {:<nw$}  {:<kw$}  {:>9}  {:>6}  {:>10}",
        "#",
        "step",
        "kind",
        "median ms",
        "share",
        "MMACs"
    );
    for (i, (s, ms)) in steps.iter().enumerate() {
        outln!(
            "{:>3}  {:<nw$}  {:<kw$}  {:>9.4}  {:>5.1}%  {:>10.3}",
            i + 1,
            s.name,
            s.kind,
            ms,
            100.0 * ms / total.max(1e-12),
            s.macs as f64 / 1e6
        );
    }
    Ok(())
}
