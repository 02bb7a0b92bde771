//! Times full SGD training steps of a zoo model (default: ResNet-18 CIFAR form, width 0.25,
//! 1x28x28 input, 10 classes, batch 128) on random data: Mode::Train forward, cross-entropy,
//! backward, SGD with momentum and weight decay. Prints one JSON line: the median (and every)
//! step time and images/s. With `--profile`, also the wall time per op kind, forward and backward,
//! averaged per step (the timing hook is off otherwise and costs nothing).
//!
//! With `--convs`, instead times the kernels of each distinct convolution of the model alone
//! (forward, input gradient, weight gradient), median ms over `--steps` calls each; `--filter S`
//! keeps the shapes whose name (e.g. `16->16 28x28 k3 s1`) contains S.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example train_step -- [--batch 128] [--steps 10]
//!  [--warmup 3] [--width 0.25] [--profile]`
//!
//! benches/peers/train_vs_torch.py runs this next to the same step in PyTorch.

use std::time::Instant;
use tlc::engine::autograd::profile;
use tlc::engine::graph::{Graph, Op};
use tlc::engine::{Mode, Model, Optimizer, Rng, Sgd, SgdConfig, Tensor};
use tlc::kernels::conv::{self as kconv, Conv2dShape};
use tlc_models::zoo::{build, Arch, ArchSpec};

struct Args {
    batch: usize,
    steps: usize,
    warmup: usize,
    width: f32,
    profile: bool,
    convs: bool,
    filter: String,
}

fn args() -> Args {
    let mut a = Args {
        batch: 128,
        steps: 10,
        warmup: 3,
        width: 0.25,
        profile: false,
        convs: false,
        filter: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--batch" => a.batch = val().parse().expect("--batch"),
            "--steps" => a.steps = val().parse().expect("--steps"),
            "--warmup" => a.warmup = val().parse().expect("--warmup"),
            "--width" => a.width = val().parse().expect("--width"),
            "--profile" => a.profile = true,
            "--convs" => a.convs = true,
            "--filter" => a.filter = val(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn main() {
    tlc_kernels::alloc::keep_freed_memory();
    let a = args();
    let spec = ArchSpec {
        arch: Arch::Resnet18Cifar,
        width: a.width,
        classes: 10,
        in_ch: 1,
        image: [28, 28],
    };
    let (graph, init) = build(&spec).expect("model builds");
    if a.convs {
        return conv_shapes(&graph, a.batch, a.steps, &a.filter);
    }
    let mut rng = Rng::new(0);
    let mut model = Model::init(graph, init, &mut rng).expect("model initialises");
    let mut opt = Sgd::new(SgdConfig::new(0.01).momentum(0.9).weight_decay(5e-4)).expect("sgd");
    let x = Tensor::randn(&[a.batch, 1, 28, 28], &mut rng);
    let targets: Vec<usize> = (0..a.batch).map(|_| rng.below(10)).collect();

    let mut step = |model: &mut Model, rng: &mut Rng| {
        let logits = model.forward(&x, Mode::Train, rng).expect("forward");
        let loss = logits.cross_entropy(&targets, 0.0).expect("loss");
        let t0 = profile::start();
        let grads = loss.backward().expect("backward");
        drop(loss);
        drop(logits);
        profile::stop(t0, "total", "backward");
        let t0 = profile::start();
        opt.step(model.params_mut(), &grads).expect("sgd step");
        profile::stop(t0, "total", "sgd");
    };

    for _ in 0..a.warmup {
        step(&mut model, &mut rng);
    }
    let mut times = Vec::with_capacity(a.steps);
    let c0 = process_cpu_secs();
    for _ in 0..a.steps {
        let t = Instant::now();
        step(&mut model, &mut rng);
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu_ms = (process_cpu_secs() - c0) * 1e3 / a.steps.max(1) as f64;
    let med = median(&times);

    let mut prof = String::new();
    if a.profile {
        profile::set_enabled(true);
        let n = a.steps.max(1);
        for _ in 0..n {
            let t0 = profile::start();
            step(&mut model, &mut rng);
            profile::stop(t0, "total", "step");
        }
        profile::set_enabled(false);
        let rows: Vec<String> = profile::take()
            .into_iter()
            .map(|(phase, kind, s, calls)| {
                format!(
                    "{{\"phase\":\"{phase}\",\"kind\":\"{kind}\",\"ms_per_step\":{:.3},\"calls_per_step\":{}}}",
                    s * 1e3 / n as f64,
                    calls / n as u64
                )
            })
            .collect();
        prof = format!(",\"profile\":[{}]", rows.join(","));
    }
    let all: Vec<String> = times.iter().map(|t| format!("{:.2}", t * 1e3)).collect();
    println!(
        "{{\"batch\":{},\"threads\":{},\"median_ms\":{:.3},\"cpu_ms\":{cpu_ms:.3},\"img_per_s\":{:.1},\"step_ms\":[{}]{}}}",
        a.batch,
        rayon::current_num_threads(),
        med * 1e3,
        a.batch as f64 / med,
        all.join(","),
        prof
    );
}

/// On-CPU seconds of all this process's threads so far (Linux schedstat, nanosecond resolution):
/// on a machine shared with other work, CPU time measures the code where wall time measures the
/// scheduler. Rayon workers spinning for work count too.
fn process_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(|e| {
        let s = std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok()?;
        s.split_whitespace().next()?.parse::<f64>().ok()
    })
    .sum::<f64>()
        * 1e-9
}

/// (median wall ms, mean process CPU ms) of `f` over `reps` calls after one warm-up call.
fn time_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let c0 = process_cpu_secs();
    let v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let cpu = (process_cpu_secs() - c0) * 1e3 / reps.max(1) as f64;
    (median(&v), cpu)
}

/// Time each distinct convolution of `graph` at batch `batch`: forward, input and weight gradient.
fn conv_shapes(graph: &Graph, batch: usize, reps: usize, filter: &str) {
    let shapes = graph.infer_shapes().expect("shapes");
    let mut seen: Vec<(Conv2dShape, usize)> = Vec::new();
    for n in graph.nodes() {
        if let Op::Conv2d(c) = &n.op {
            let x = &shapes[n.inputs[0]];
            let s = c.shape(batch, x);
            match seen.iter_mut().find(|(t, _)| *t == s) {
                Some((_, k)) => *k += 1,
                None => seen.push((s, 1)),
            }
        }
    }
    let mut rng = Rng::new(1);
    let mut rows = Vec::new();
    let mut total = [0.0f64; 3];
    let mut total_cpu = [0.0f64; 3];
    for (s, count) in seen {
        let name = format!(
            "{}->{} {}x{} k{} s{}",
            s.in_channels, s.out_channels, s.in_h, s.in_w, s.kernel_h, s.params.stride.0
        );
        if !name.contains(filter) {
            continue;
        }
        let x: Vec<f32> = (0..s.input_len()).map(|_| rng.normal()).collect();
        let w: Vec<f32> = (0..s.weight_len()).map(|_| rng.normal()).collect();
        let dy: Vec<f32> = (0..s.output_len()).map(|_| rng.normal()).collect();
        let mut y = vec![0.0f32; s.output_len()];
        let mut dx = vec![0.0f32; s.input_len()];
        let mut dw = vec![0.0f32; s.weight_len()];
        let (f, fc) = time_ms(reps, || kconv::forward(&s, &x, &w, &mut y, &[]));
        let (bi, bic) = time_ms(reps, || kconv::backward_input(&s, &dy, &w, &mut dx));
        let (bw, bwc) = time_ms(reps, || kconv::backward_weight(&s, &x, &dy, &mut dw));
        let gflops = |ms: f64| 2.0 * s.macs() as f64 / ms / 1e6;
        for (t, v) in total.iter_mut().zip([f, bi, bw]) {
            *t += v * count as f64;
        }
        for (t, v) in total_cpu.iter_mut().zip([fc, bic, bwc]) {
            *t += v * count as f64;
        }
        rows.push(format!(
            "{{\"shape\":\"{name}\",\"count\":{count},\"fwd_ms\":{f:.3},\"bwd_input_ms\":{bi:.3},\"bwd_weight_ms\":{bw:.3},\"fwd_gflops\":{:.1},\"bwd_input_gflops\":{:.1},\"bwd_weight_gflops\":{:.1},\"cpu_ms\":[{fc:.3},{bic:.3},{bwc:.3}]}}",
            gflops(f), gflops(bi), gflops(bw)
        ));
    }
    println!(
        "{{\"batch\":{batch},\"threads\":{},\"total_ms\":{{\"fwd\":{:.2},\"bwd_input\":{:.2},\"bwd_weight\":{:.2}}},\"total_cpu_ms\":{{\"fwd\":{:.2},\"bwd_input\":{:.2},\"bwd_weight\":{:.2}}},\"convs\":[\n{}\n]}}",
        rayon::current_num_threads(),
        total[0],
        total[1],
        total[2],
        total_cpu[0],
        total_cpu[1],
        total_cpu[2],
        rows.join(",\n")
    );
}
