//! Prints our SGEMM's GFLOP/s per shape as one JSON object (used by benches/peers/sgemm_vs_numpy.py).
//!
//! `cargo run --release --example sgemm_gflops -- [--secs S] [--reference] [--packed] [MxKxN ...]`
//! Shapes default to the square and skinny set of benches/sgemm.rs. `--reference` also times
//! matrixmultiply; `--packed` times `gemm_packed` with B packed ahead (the inference path).
//! `--cpu` measures this thread's on-CPU time instead of wall time (Linux; single-threaded
//! runs on a machine shared with other work). Threads follow `RAYON_NUM_THREADS`.

use std::time::{Duration, Instant};
use tlc::kernels::gemm::{gemm, gemm_packed, pack_b, reference_gemm, MatMut, MatRef};

const DEFAULT_SHAPES: &[(usize, usize, usize)] = &[
    (64, 64, 64),
    (128, 128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (1, 512, 4096),
    (1, 384, 1536),
    (8, 512, 512),
    (128, 384, 1536),
];

/// Seconds this thread has spent on a CPU (from /proc/thread-self/schedstat, which the kernel
/// updates at scheduler ticks: only long batches measure well with it).
fn thread_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1e-9
}

/// Median seconds per call of `f`, over batches of about 10 ms (100 ms of CPU time with `cpu`)
/// for `secs` seconds.
fn time_per_call(secs: f64, cpu: bool, mut f: impl FnMut()) -> f64 {
    let clock = || {
        if cpu {
            thread_cpu_secs()
        } else {
            EPOCH.elapsed().as_secs_f64()
        }
    };
    f();
    f();
    // Size batches by wall time: the CPU clock only advances at scheduler ticks.
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let batch = if cpu { 0.1 } else { 0.01 };
    let reps = ((batch / once) as usize).max(1);
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || start.elapsed() < Duration::from_secs_f64(secs) {
        let t = clock();
        for _ in 0..reps {
            f();
        }
        let dt = clock() - t;
        if dt > 0.0 {
            samples.push(dt / reps as f64);
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn parse_shape(s: &str) -> Option<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split('x')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 3).then(|| (v[0], v[1], v[2]))
}

fn main() {
    let mut secs = 0.5;
    let mut with_ref = false;
    let mut packed = false;
    let mut cpu = false;
    let mut shapes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).expect("--secs S"),
            "--reference" => with_ref = true,
            "--packed" => packed = true,
            "--cpu" => cpu = true,
            s => shapes.push(parse_shape(s).unwrap_or_else(|| panic!("bad shape {s}, want MxKxN"))),
        }
    }
    if shapes.is_empty() {
        shapes = DEFAULT_SHAPES.to_vec();
    }
    let mut rows = Vec::new();
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 + 3) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 + 1) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let mut c = vec![0.0f32; m * n];
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let flops = 2.0 * (m * n * k) as f64;
        let t = if packed {
            let pb = pack_b(bv);
            time_per_call(secs, cpu, || {
                gemm_packed(av, &pb, 0.0, MatMut::row_major(&mut c, m, n), &[])
            })
        } else {
            time_per_call(secs, cpu, || {
                gemm(av, bv, 0.0, MatMut::row_major(&mut c, m, n), &[])
            })
        };
        let mut row = format!(
            "{{\"m\":{m},\"k\":{k},\"n\":{n},\"gflops\":{:.3}",
            flops / t / 1e9
        );
        if with_ref {
            let t = time_per_call(secs, cpu, || {
                reference_gemm(av, bv, 0.0, MatMut::row_major(&mut c, m, n), &[])
            });
            row += &format!(",\"reference_gflops\":{:.3}", flops / t / 1e9);
        }
        row.push('}');
        rows.push(row);
    }
    println!(
        "{{\"isa\":\"{} (gemm {})\",\"threads\":{},\"results\":[{}]}}",
        tlc::kernels::isa::current().name(),
        tlc::kernels::gemm::kernel_name(),
        rayon::current_num_threads(),
        rows.join(",")
    );
}
