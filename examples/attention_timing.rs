//! Median latency of `Tensor::scaled_dot_product_attention` at batch 1, 12 heads, head dim 32,
//! for the sequence lengths given (default 128 and 512): the forward under no_grad, or with `bwd`
//! among the arguments the forward with autograd plus the backward to q, k and v. Prints one line
//! per length, `L <len> median_ms <ms>`, for benches/peers/attention_vs_torch.py to read.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example attention_timing -- 128 512 [bwd]`

use std::time::Instant;
use tlc::engine::{no_grad, Rng, Tensor};

fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.div_ceil(10) {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bwd = args.iter().any(|a| a == "bwd");
    let lens: Vec<usize> = args
        .iter()
        .filter(|a| *a != "bwd")
        .map(|a| a.parse().expect("sequence lengths are integers"))
        .collect();
    let lens = if lens.is_empty() {
        vec![128, 512]
    } else {
        lens
    };
    let mut rng = Rng::new(0);
    for l in lens {
        let [q, k, v] =
            [(); 3].map(|_| Tensor::randn(&[1, 12, l, 32], &mut rng).with_requires_grad(bwd));
        let iters = (200 * 128 * 128 / (l * l)).clamp(20, 400);
        let run = || {
            let o = q.scaled_dot_product_attention(&k, &v, None, None, None);
            let o = o.expect("valid shapes");
            if bwd {
                let g = o.backward_with(Tensor::ones(o.shape()));
                std::hint::black_box(g.expect("differentiable"));
            } else {
                std::hint::black_box(o);
            }
        };
        let ms = if bwd {
            median_ms(iters, run)
        } else {
            no_grad(|| median_ms(iters, run))
        };
        println!("L {l} median_ms {ms:.4}");
    }
}
