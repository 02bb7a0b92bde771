//! SGEMM: our kernels against matrixmultiply (`reference_gemm`), square and skinny shapes.
//! `cargo bench --bench sgemm -- --warm-up-time 1 --measurement-time 3`; RAYON_NUM_THREADS=1/2.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tlc::kernels::gemm::{gemm, gemm_packed, pack_b, reference_gemm, MatMut, MatRef};

fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v: Vec<_> = [64, 128, 256, 512, 1024]
        .iter()
        .map(|&n| (n, n, n))
        .collect();
    v.extend([
        (1, 512, 4096),
        (1, 384, 1536),
        (8, 512, 512),
        (128, 384, 1536),
    ]);
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sgemm");
    for (m, k, n) in shapes() {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
        let mut out = vec![0.0f32; m * n];
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let pb = pack_b(bv);
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        g.bench_function(BenchmarkId::new("tlc", &id), |bench| {
            bench.iter(|| gemm(av, bv, 0.0, MatMut::row_major(&mut out, m, n), &[]))
        });
        g.bench_function(BenchmarkId::new("tlc_packed_b", &id), |bench| {
            bench.iter(|| gemm_packed(av, &pb, 0.0, MatMut::row_major(&mut out, m, n), &[]))
        });
        g.bench_function(BenchmarkId::new("matrixmultiply", &id), |bench| {
            bench.iter(|| reference_gemm(av, bv, 0.0, MatMut::row_major(&mut out, m, n), &[]))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
