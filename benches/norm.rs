//! Normalisation and pooling kernels at the shapes that matter: batch norm (training forward +
//! backward, eval forward) at ResNet-18 CIFAR stage shapes with batch 32, layer norm at BERT
//! widths, and the ResNet stem's 3x3/2 max-pool at batch 1.
//!
//! `cargo bench --bench norm -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tlc::kernels::norm::{self, ChannelDims, NormGrads};
use tlc::kernels::pool::{self, PoolDims, Window2d};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) % 10_000) as f32 / 2500.0 - 2.0
        })
        .collect()
}

fn batch_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_norm");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for (ch, side) in [(64usize, 32usize), (128, 16), (256, 8), (512, 4)] {
        let dims = ChannelDims {
            n: 32,
            c: ch,
            hw: side * side,
        };
        let label = format!("32x{ch}x{side}x{side}");
        let (x, dy) = (data(dims.len(), 1), data(dims.len(), 2));
        let (gamma, beta) = (data(ch, 3), data(ch, 4));
        let mut y = vec![0.0f32; dims.len()];
        let mut dx = vec![0.0f32; dims.len()];
        let (mut dg, mut db) = (vec![0.0f32; ch], vec![0.0f32; ch]);
        g.throughput(Throughput::Elements(dims.len() as u64));
        g.bench_function(BenchmarkId::new("train_fwd_bwd", &label), |b| {
            b.iter(|| {
                let st = norm::batch_norm_train_forward(
                    &x,
                    dims,
                    Some(&gamma),
                    Some(&beta),
                    1e-5,
                    &mut y,
                );
                let grads = NormGrads {
                    dx: Some(&mut dx),
                    dgamma: Some(&mut dg),
                    dbeta: Some(&mut db),
                };
                norm::batch_norm_train_backward(
                    &dy,
                    &x,
                    dims,
                    &st.mean,
                    &st.invstd,
                    Some(&gamma),
                    grads,
                );
                black_box(&dx);
            })
        });
        g.bench_function(BenchmarkId::new("eval_fwd", &label), |b| {
            b.iter(|| {
                norm::channel_scale_shift(&x, dims, &gamma, &beta, &mut y);
                black_box(&y);
            })
        });
    }
    g.finish();
}

/// Batch norm + ReLU in training (forward and backward) at the ResNet-18 CIFAR-form width 0.25
/// shapes of a batch-128 Fashion-MNIST step: fused into one op, against batch norm then a
/// separate ReLU pass each way.
fn batch_norm_relu(c: &mut Criterion) {
    use tlc::kernels::{activation, Activation};
    let mut g = c.benchmark_group("batch_norm_relu");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for (ch, side) in [(16usize, 28usize), (32, 14), (64, 7), (128, 4)] {
        let dims = ChannelDims {
            n: 128,
            c: ch,
            hw: side * side,
        };
        let label = format!("128x{ch}x{side}x{side}");
        let (x, dy) = (data(dims.len(), 1), data(dims.len(), 2));
        let (gamma, beta) = (data(ch, 3), data(ch, 4));
        let (mut y, mut r) = (vec![0.0f32; dims.len()], vec![0.0f32; dims.len()]);
        let (mut dx, mut dr) = (vec![0.0f32; dims.len()], vec![0.0f32; dims.len()]);
        let (mut dg, mut db) = (vec![0.0f32; ch], vec![0.0f32; ch]);
        g.throughput(Throughput::Elements(dims.len() as u64));
        g.bench_function(BenchmarkId::new("fused", &label), |b| {
            b.iter(|| {
                let (gm, bt) = (Some(&gamma[..]), Some(&beta[..]));
                let st = norm::batch_norm_act_train_forward(
                    &x,
                    dims,
                    gm,
                    bt,
                    1e-5,
                    Activation::Relu,
                    &mut y,
                );
                let grads = NormGrads {
                    dx: Some(&mut dx),
                    dgamma: Some(&mut dg),
                    dbeta: Some(&mut db),
                };
                let stats = (&st.mean[..], &st.invstd[..]);
                norm::batch_norm_act_backward(
                    &dy,
                    &x,
                    dims,
                    stats,
                    (gm, bt),
                    Activation::Relu,
                    true,
                    grads,
                );
                black_box(&dx);
            })
        });
        g.bench_function(BenchmarkId::new("separate", &label), |b| {
            b.iter(|| {
                let (gm, bt) = (Some(&gamma[..]), Some(&beta[..]));
                let st = norm::batch_norm_train_forward(&x, dims, gm, bt, 1e-5, &mut y);
                activation::apply(Activation::Relu, &y, &mut r);
                activation::backward(Activation::Relu, &y, &dy, &mut dr);
                let grads = NormGrads {
                    dx: Some(&mut dx),
                    dgamma: Some(&mut dg),
                    dbeta: Some(&mut db),
                };
                norm::batch_norm_train_backward(&dr, &x, dims, &st.mean, &st.invstd, gm, grads);
                black_box(&dx);
            })
        });
    }
    g.finish();
}

fn layer_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_norm");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for d in [384usize, 768] {
        let rows = 128;
        let x = data(rows * d, 5);
        let (gamma, beta) = (data(d, 6), data(d, 7));
        let mut y = vec![0.0f32; rows * d];
        g.throughput(Throughput::Elements((rows * d) as u64));
        g.bench_function(BenchmarkId::new("fwd", format!("{rows}x{d}")), |b| {
            b.iter(|| {
                norm::layer_norm_infer(&x, d, Some(&gamma), Some(&beta), 1e-12, &mut y);
                black_box(&y);
            })
        });
    }
    g.finish();
}

fn max_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("max_pool2d");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let win = Window2d::square(3, 2, 1);
    let dims = PoolDims {
        planes: 64,
        h: 112,
        w: 112,
        out_h: 56,
        out_w: 56,
    };
    let x = data(dims.planes * dims.in_plane(), 8);
    let mut y = vec![0.0f32; dims.planes * dims.out_plane()];
    let mut idx = vec![0u32; y.len()];
    g.throughput(Throughput::Elements(x.len() as u64));
    g.bench_function("3x3s2_1x64x112x112/infer", |b| {
        b.iter(|| {
            pool::max_pool2d(&x, dims, win, &mut y);
            black_box(&y);
        })
    });
    g.bench_function("3x3s2_1x64x112x112/with_indices", |b| {
        b.iter(|| {
            pool::max_pool2d_with_indices(&x, dims, win, &mut y, &mut idx);
            black_box(&y);
        })
    });
    g.finish();
}

criterion_group!(benches, batch_norm, batch_norm_relu, layer_norm, max_pool);
criterion_main!(benches);
