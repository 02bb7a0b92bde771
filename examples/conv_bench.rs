//! Times `Tensor::conv2d` (and its backward) at the shapes of `benches/conv.rs` and prints JSON:
//! the median milliseconds per shape, with each shape's full description so a peer script
//! (benches/peers/conv_vs_torch.py) can time PyTorch at exactly the same shapes in the same run.
//!
//! With one thread (`RAYON_NUM_THREADS=1`) it also reports `cpu_ms`: this thread's on-CPU time per
//! call, averaged over at least 0.3 s of CPU. On a shared, oversubscribed machine wall-clock times
//! mostly measure the scheduler; CPU time measures the code.
//!
//! `cargo run --release --example conv_bench -- [--reps N] [--filter SUBSTRING]`

use std::time::Instant;
use tlc::engine::{Conv2dParams, Rng, Tensor};

/// (name, batch, in channels, size, out channels, kernel, stride, padding, groups, backward).
type Spec = (
    String,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
);

fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    // ResNet-18, CIFAR form: 3x3 pad 1, each stage and the stride-2 transitions into it.
    let resnet = [
        (64, 32, 64, 1),
        (64, 32, 128, 2),
        (128, 16, 128, 1),
        (128, 16, 256, 2),
        (256, 8, 256, 1),
        (256, 8, 512, 2),
        (512, 4, 512, 1),
    ];
    for batch in [1, 32] {
        for &(cin, hw, cout, s) in &resnet {
            let name = format!("resnet_{cin}to{cout}@{hw}_s{s}_b{batch}");
            v.push((name, batch, cin, hw, cout, 3, s, 1, 1, false));
        }
    }
    v.push((
        "resnet_64to64@32_s1_b32_fwdbwd".into(),
        32,
        64,
        32,
        64,
        3,
        1,
        1,
        1,
        true,
    ));
    // MobileNetV2 (224x224) depthwise 3x3 pad 1, batch 1.
    let mobilenet = [
        (32, 112, 1),
        (96, 112, 2),
        (144, 56, 1),
        (144, 56, 2),
        (192, 28, 1),
        (192, 28, 2),
        (384, 14, 1),
        (576, 14, 1),
        (576, 14, 2),
        (960, 7, 1),
    ];
    for &(c, hw, s) in &mobilenet {
        let name = format!("dw_{c}@{hw}_s{s}_b1");
        v.push((name, 1, c, hw, c, 3, s, 1, c, false));
    }
    // MobileNetV2 pointwise 1x1 (expand / project), batch 1.
    for &(cin, hw, cout) in &[
        (32, 112, 16),
        (16, 112, 96),
        (144, 56, 24),
        (192, 28, 64),
        (960, 7, 320),
    ] {
        let name = format!("pw_{cin}to{cout}@{hw}_b1");
        v.push((name, 1, cin, hw, cout, 1, 1, 0, 1, false));
    }
    v
}

/// Nanoseconds this thread has been on a CPU (Linux; None elsewhere).
fn thread_cpu_ns() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .map(|i| args[i + 1].clone())
    };
    let reps: usize = arg("--reps").map_or(11, |r| r.parse().expect("--reps N"));
    let filter = arg("--filter").unwrap_or_default();
    let mut rng = Rng::new(1);
    let mut results = Vec::new();
    for (name, n, cin, hw, cout, k, s, p, g, bwd) in specs() {
        if !name.contains(&filter) {
            continue;
        }
        let x = Tensor::randn(&[n, cin, hw, hw], &mut rng).with_requires_grad(bwd);
        let w = Tensor::randn(&[cout, cin / g, k, k], &mut rng).with_requires_grad(bwd);
        let b = Tensor::randn(&[cout], &mut rng).with_requires_grad(bwd);
        let params = Conv2dParams::default().stride(s, s).padding(p, p).groups(g);
        let run = || {
            let y = x.conv2d(&w, Some(&b), params).expect("conv2d");
            if bwd {
                let ones = Tensor::ones(y.shape());
                std::hint::black_box(y.backward_with(ones).expect("backward"));
            } else {
                std::hint::black_box(y);
            }
        };
        // Warm up (thread pool, scratch buffers, page faults), at least ~50 ms worth.
        let t0 = Instant::now();
        let mut warm = 0;
        while warm < 3 || (t0.elapsed().as_secs_f64() < 0.05 && warm < 50) {
            run();
            warm += 1;
        }
        let samples: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let ms = median(samples);
        // schedstat advances at context switches and ticks: average over enough calls.
        let cpu_ms = if rayon::current_num_threads() == 1 {
            let calls = ((300.0 / ms).ceil() as usize).clamp(reps, 5000);
            let c0 = thread_cpu_ns();
            (0..calls).for_each(|_| run());
            c0.zip(thread_cpu_ns())
                .map(|(a, b)| (b - a) / 1e6 / calls as f64)
        } else {
            None
        };
        results.push(serde_json::json!({
            "name": name, "batch": n, "cin": cin, "hw": hw, "cout": cout, "k": k,
            "stride": s, "padding": p, "groups": g, "backward": bwd,
            "ms": ms, "cpu_ms": cpu_ms,
        }));
    }
    let out = serde_json::json!({
        "isa": tlc::kernels::isa::current().name(),
        "threads": rayon::current_num_threads(),
        "results": results,
    });
    println!("{out}");
}
