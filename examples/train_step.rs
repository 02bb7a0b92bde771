//! Times full SGD training steps of a zoo model (default: ResNet-18 CIFAR form, width 0.25,
//! 1x28x28 input, 10 classes, batch 128) on random data: Mode::Train forward, cross-entropy,
//! backward, SGD with momentum and weight decay. Prints one JSON line: the median (and every)
//! step time and images/s. With `--profile`, also the wall time per op kind, forward and backward,
//! averaged per step (the timing hook is off otherwise and costs nothing).
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example train_step -- [--batch 128] [--steps 10]
//!  [--warmup 3] [--width 0.25] [--profile]`
//!
//! benches/peers/train_vs_torch.py runs this next to the same step in PyTorch.

use std::time::Instant;
use tlc::engine::autograd::profile;
use tlc::engine::{Mode, Model, Optimizer, Rng, Sgd, SgdConfig, Tensor};
use tlc_models::zoo::{build, Arch, ArchSpec};

struct Args {
    batch: usize,
    steps: usize,
    warmup: usize,
    width: f32,
    profile: bool,
}

fn args() -> Args {
    let mut a = Args {
        batch: 128,
        steps: 10,
        warmup: 3,
        width: 0.25,
        profile: false,
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
    let a = args();
    let spec = ArchSpec {
        arch: Arch::Resnet18Cifar,
        width: a.width,
        classes: 10,
        in_ch: 1,
        image: [28, 28],
    };
    let (graph, init) = build(&spec).expect("model builds");
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
    for _ in 0..a.steps {
        let t = Instant::now();
        step(&mut model, &mut rng);
        times.push(t.elapsed().as_secs_f64());
    }
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
        "{{\"batch\":{},\"threads\":{},\"median_ms\":{:.3},\"img_per_s\":{:.1},\"step_ms\":[{}]{}}}",
        a.batch,
        rayon::current_num_threads(),
        med * 1e3,
        a.batch as f64 / med,
        all.join(","),
        prof
    );
}
