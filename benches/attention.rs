//! Scaled-dot-product attention forward at BERT-small shapes (12 heads, head dim 32, batch 1):
//! the fused kernel against a materialising GEMM + softmax + GEMM composition and the f64 naive
//! reference, at L = 128, plus L = 512 and the backward at L = 128.
//!
//! `cargo bench --bench attention -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tlc::kernels::attention::{self, Attention, AttentionGrads, Dims, HeadsRef};
use tlc::kernels::gemm::{gemm, MatMut, MatRef};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

struct Problem {
    dims: Dims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Problem {
    fn new(heads: usize, l: usize, d: usize) -> Problem {
        let n = heads * l * d;
        Problem {
            dims: Dims {
                batch: 1,
                heads,
                lq: l,
                lk: l,
                d,
                dv: d,
            },
            q: values(n, 1),
            k: values(n, 2),
            v: values(n, 3),
        }
    }

    fn attn(&self) -> Attention<'_> {
        let Dims { heads, lq, d, .. } = self.dims;
        Attention {
            dims: self.dims,
            q: HeadsRef::contiguous(&self.q, heads, lq, d),
            k: HeadsRef::contiguous(&self.k, heads, lq, d),
            v: HeadsRef::contiguous(&self.v, heads, lq, d),
            mask: None,
            bias: None,
            scale: attention::default_scale(d),
        }
    }
}

/// The unfused baseline: per head, the whole `[L, L]` score matrix by GEMM, a libm softmax over
/// it, then a second GEMM (what an engine without an attention kernel runs).
fn unfused(p: &Problem, scores: &mut [f32], out: &mut [f32]) {
    let Dims { heads, lq, d, .. } = p.dims;
    let scale = attention::default_scale(d);
    for h in 0..heads {
        let r = h * lq * d..(h + 1) * lq * d;
        let s = &mut scores[h * lq * lq..(h + 1) * lq * lq];
        gemm(
            MatRef::row_major(&p.q[r.clone()], lq, d),
            MatRef::row_major(&p.k[r.clone()], lq, d).t(),
            0.0,
            MatMut::row_major(s, lq, lq),
            &[],
        );
        for row in s.chunks_exact_mut(lq) {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
            let mut sum = 0.0;
            row.iter_mut().for_each(|x| {
                *x = (*x * scale - m).exp();
                sum += *x;
            });
            row.iter_mut().for_each(|x| *x /= sum);
        }
        gemm(
            MatRef::row_major(s, lq, lq),
            MatRef::row_major(&p.v[r.clone()], lq, d),
            0.0,
            MatMut::row_major(&mut out[r], lq, d),
            &[],
        );
    }
}

fn bench(c: &mut Criterion) {
    println!(
        "isa {}, {} threads",
        tlc::kernels::isa::current().name(),
        tlc::kernels::parallel::num_threads()
    );
    for l in [128usize, 512] {
        let p = Problem::new(12, l, 32);
        let a = p.attn();
        let mut out = vec![0.0f32; 12 * l * 32];
        let mut scores = vec![0.0f32; 12 * l * l];
        let mut g = c.benchmark_group(format!("attention_fwd/b1_h12_l{l}_d32"));
        g.bench_function("fused", |b| {
            b.iter(|| attention::forward(black_box(&a), &mut out, None))
        });
        g.bench_function("unfused_gemm_softmax", |b| {
            b.iter(|| unfused(black_box(&p), &mut scores, &mut out))
        });
        if l == 128 {
            g.bench_function("naive_f64", |b| {
                b.iter(|| attention::forward_naive(black_box(&a), &mut out, None))
            });
        }
        g.finish();
    }
    let p = Problem::new(12, 128, 32);
    let a = p.attn();
    let n = 12 * 128 * 32;
    let (mut out, mut lse) = (vec![0.0f32; n], vec![0.0f32; 12 * 128]);
    attention::forward(&a, &mut out, Some(&mut lse));
    let go = values(n, 4);
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut g = c.benchmark_group("attention_bwd/b1_h12_l128_d32");
    g.bench_function("fused", |b| {
        b.iter(|| {
            let grads = AttentionGrads {
                dq: Some(&mut dq),
                dk: Some(&mut dk),
                dv: Some(&mut dv),
                dbias: None,
            };
            attention::backward(black_box(&a), &out, &lse, &go, grads)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
