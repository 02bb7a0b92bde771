//! Point-wise kernels, scalar reference vs SIMD (the ISA this CPU has), single-threaded and with
//! the pool: row softmax over attention scores [12*128, 128] and classifier logits [128, 1000],
//! and GELU over a BERT-base FFN activation [128, 1536].
//!
//! `cargo bench --bench softmax -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tlc::kernels::activation::{self, Activation};
use tlc::kernels::isa::{self, Isa};
use tlc::kernels::softmax;

fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0)
        .collect()
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if isa::detect() != Isa::Scalar {
        v.push(isa::detect());
    }
    v
}

fn one_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
}

fn bench_softmax(c: &mut Criterion) {
    let single = one_thread();
    for (name, rows, cols) in [("attention", 12 * 128, 128), ("logits", 128, 1000)] {
        let x = data(rows * cols);
        let mut y = vec![0.0f32; x.len()];
        let mut g = c.benchmark_group(format!("softmax_{name}_{rows}x{cols}"));
        g.throughput(Throughput::Elements(x.len() as u64));
        for isa in isas() {
            g.bench_function(format!("{}/1t", isa.name()), |b| {
                single.install(|| {
                    b.iter(|| softmax::softmax_on(isa, black_box(&x), &mut y, rows, cols, 1))
                })
            });
            g.bench_function(format!("{}/pool", isa.name()), |b| {
                b.iter(|| softmax::softmax_on(isa, black_box(&x), &mut y, rows, cols, 1))
            });
        }
        g.finish();
    }
}

fn bench_gelu(c: &mut Criterion) {
    let single = one_thread();
    let x = data(128 * 1536);
    let mut y = vec![0.0f32; x.len()];
    let mut g = c.benchmark_group("gelu_128x1536");
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in isas() {
        g.bench_function(format!("{}/1t", isa.name()), |b| {
            single.install(|| {
                b.iter(|| activation::apply_on(isa, Activation::Gelu, black_box(&x), &mut y))
            })
        });
        g.bench_function(format!("{}/pool", isa.name()), |b| {
            b.iter(|| activation::apply_on(isa, Activation::Gelu, black_box(&x), &mut y))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_softmax, bench_gelu);
criterion_main!(benches);
