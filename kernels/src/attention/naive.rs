//! The reference attention: every score materialised, softmax and products in f64, no blocking.
//! Slow and memory-hungry by design (a `[Lq, Lk]` buffer per head); the fused kernels are tested
//! against it, and the benches use it as the "naive" baseline.

use super::{Attention, AttentionGrads, Dims};

/// Scores of head (b, h) after scale, mask and bias, as `[Lq, Lk]` row-major.
fn scores(a: &Attention, b: usize, h: usize) -> Vec<f64> {
    let Dims { lq, lk, d, .. } = a.dims;
    let mut s = vec![0.0f64; lq * lk];
    for i in 0..lq {
        for j in 0..lk {
            let dot: f64 = (0..d)
                .map(|c| a.q.at(b, h, i, c) as f64 * a.k.at(b, h, j, c) as f64)
                .sum();
            let mut v = a.scale as f64 * dot;
            if let Some(m) = &a.mask {
                v += m.row(b, h, i, lk)[j] as f64;
            }
            if let Some(bias) = a.bias {
                v += bias[(h * lq + i) * lk + j] as f64;
            }
            s[i * lk + j] = v;
        }
    }
    s
}

/// Softmax of each row of `s` in place, returning each row's log-sum-exp. A row whose scores are
/// all -inf becomes all zeros with log-sum-exp -inf (PyTorch's SDPA gives such rows a zero output).
fn softmax_rows(s: &mut [f64], lk: usize) -> Vec<f64> {
    if lk == 0 {
        return vec![f64::NEG_INFINITY; s.len()];
    }
    s.chunks_mut(lk)
        .map(|row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                row.fill(0.0);
                return f64::NEG_INFINITY;
            }
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
            m + sum.ln()
        })
        .collect()
}

/// Reference forward: `out` `[B, H, Lq, dv]`, `lse` (if given) `[B, H, Lq]`.
pub fn forward_naive(a: &Attention, out: &mut [f32], mut lse: Option<&mut [f32]>) {
    a.check();
    let Dims {
        batch,
        heads,
        lq,
        lk,
        dv,
        ..
    } = a.dims;
    assert_eq!(
        out.len(),
        batch * heads * lq * dv,
        "forward_naive: out length"
    );
    for b in 0..batch {
        for h in 0..heads {
            let bh = b * heads + h;
            let mut p = scores(a, b, h);
            let row_lse = softmax_rows(&mut p, lk);
            for i in 0..lq {
                for c in 0..dv {
                    let o: f64 = (0..lk)
                        .map(|j| p[i * lk + j] * a.v.at(b, h, j, c) as f64)
                        .sum();
                    out[(bh * lq + i) * dv + c] = o as f32;
                }
                if let Some(l) = lse.as_deref_mut() {
                    l[bh * lq + i] = row_lse[i] as f32;
                }
            }
        }
    }
}

/// Reference backward from the upstream gradient `grad_out` `[B, H, Lq, dv]`; recomputes the
/// probabilities and writes each requested gradient (overwriting).
pub fn backward_naive(a: &Attention, grad_out: &[f32], grads: AttentionGrads) {
    a.check();
    let Dims {
        batch,
        heads,
        lq,
        lk,
        d,
        dv,
    } = a.dims;
    assert_eq!(
        grad_out.len(),
        batch * heads * lq * dv,
        "backward_naive: grad_out length"
    );
    let go = |bh: usize, i: usize, c: usize| grad_out[(bh * lq + i) * dv + c] as f64;
    let mut gq = vec![0.0f64; batch * heads * lq * d];
    let mut gk = vec![0.0f64; batch * heads * lk * d];
    let mut gv = vec![0.0f64; batch * heads * lk * dv];
    let mut gb = vec![0.0f64; heads * lq * lk];
    for b in 0..batch {
        for h in 0..heads {
            let bh = b * heads + h;
            let mut p = scores(a, b, h);
            softmax_rows(&mut p, lk);
            for i in 0..lq {
                let dp: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..dv)
                            .map(|c| go(bh, i, c) * a.v.at(b, h, j, c) as f64)
                            .sum()
                    })
                    .collect();
                let dsum: f64 = (0..lk).map(|j| p[i * lk + j] * dp[j]).sum();
                for j in 0..lk {
                    let pij = p[i * lk + j];
                    let ds = pij * (dp[j] - dsum);
                    gb[(h * lq + i) * lk + j] += ds;
                    let dss = ds * a.scale as f64;
                    for c in 0..d {
                        gq[(bh * lq + i) * d + c] += dss * a.k.at(b, h, j, c) as f64;
                        gk[(bh * lk + j) * d + c] += dss * a.q.at(b, h, i, c) as f64;
                    }
                    for c in 0..dv {
                        gv[(bh * lk + j) * dv + c] += pij * go(bh, i, c);
                    }
                }
            }
        }
    }
    let store = |dst: Option<&mut [f32]>, src: &[f64]| {
        if let Some(dst) = dst {
            assert_eq!(dst.len(), src.len(), "backward_naive: gradient length");
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s as f32);
        }
    };
    store(grads.dq, &gq);
    store(grads.dk, &gk);
    store(grads.dv, &gv);
    store(grads.dbias, &gb);
}
